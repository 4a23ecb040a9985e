"""Attaching the host's terminal to a command in a workspace: `exec -i/-t`, `pyro shell`.

Input: what `exec` passes to the command's stdin. A pipe or a file is passed through until
its end (as ssh does); a terminal only with -i or -t, so a plain `pyro exec -- pytest` never
waits on the keyboard. With -t the command runs on a pseudo-terminal in the workspace and
the host terminal goes raw for the duration: every key (Ctrl-C, Ctrl-Z, arrows) reaches the
workspace's terminal, whose line discipline signals the foreground process as a local
terminal would, and the workspace's terminal follows the host's size (SIGWINCH).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO

from pyro_loop.errors import InvalidInputError

if TYPE_CHECKING:
    from pyro_loop.workspace.client import ExecChannel, ExecResult

STDIN_HELP = (
    "Pass this terminal's input to the command. Piped or redirected input is always passed"
    " through; without -i a terminal's is not (the command's stdin is then empty)."
)
TTY_HELP = "Run the command on a pseudo-terminal (colours, line editing, Ctrl-C); implies -i."


def _stdin() -> BinaryIO | None:
    try:
        st = os.fstat(0)
    except OSError:
        return None  # no stdin at all
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.stat(os.devnull).st_rdev:
        return None  # /dev/null: the command's stdin is empty either way, and no thread feeds it
    return sys.stdin.buffer if sys.stdin is not None else open(0, "rb", closefd=False)


def input_mode(
    *, interactive: bool, tty: bool, shell: bool = False
) -> tuple[BinaryIO | None, tuple[int, int] | None]:
    """What to pass: the host's stdin (or None) and the terminal's size for -t (or None)."""
    stdin = _stdin()
    is_tty = stdin is not None and os.isatty(0)
    if tty:
        if not is_tty and shell:
            raise InvalidInputError(
                "a shell needs a terminal, and stdin is not one",
                hint="run it from a terminal; for a script, `pyro exec -- sh -c '...'`, or "
                "a shell that stays open between commands: `pyro workspace shell open ID`",
            )
        if not is_tty:
            raise InvalidInputError(
                "-t needs a terminal, and stdin is not one",
                hint="drop -t: piped input is passed to the command without it",
            )
        return stdin, window_size()
    if is_tty and not interactive:
        return None, None
    return stdin, None


def window_size() -> tuple[int, int]:
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            cols, rows = os.get_terminal_size(fd)
            return rows, cols
    return 24, 80


@contextlib.contextmanager
def _raw_terminal(on_resize: Callable[[int, int], None]) -> Iterator[None]:
    import termios
    import tty

    def on_winch(_signum: int, _frame: object) -> None:
        # Sent from a thread: the handler may run while this thread is inside a send (the
        # lock that keeps frames whole is not re-entrant, and a send must not interleave).
        threading.Thread(target=on_resize, args=window_size(), daemon=True).start()

    saved = termios.tcgetattr(0)
    previous = signal.signal(signal.SIGWINCH, on_winch)
    tty.setraw(0, termios.TCSANOW)  # not TCSAFLUSH: keys typed ahead are kept
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)


def _write_stdout(_which: str, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def attach(
    channel: ExecChannel,
    stdin: BinaryIO | None,
    *,
    tty: bool,
    on_output: Callable[[str, bytes], None] | None,
) -> ExecResult:
    """Pass input to the command and its output to ours until it ends; returns its result."""
    if not tty:
        return channel.run(stdin=stdin, on_output=on_output)
    with _raw_terminal(channel.resize):  # stdin is read unbuffered: a key goes as it is typed
        return channel.run(stdin=stdin, on_output=_write_stdout)


ChannelOpener = Callable[
    [bool, tuple[int, int] | None], contextlib.AbstractContextManager["ExecChannel"]
]


def run_attached(
    open_channel: ChannelOpener,
    *,
    interactive: bool,
    tty: bool,
    on_output: Callable[[str, bytes], None] | None,
    shell: bool = False,
) -> ExecResult:
    """Start a command with `open_channel(stdin?, terminal size)` and attach to it (`shell`:
    an interactive shell, which says so when there is no terminal)."""
    stdin, size = input_mode(interactive=interactive, tty=tty, shell=shell)
    with open_channel(stdin is not None, size) as channel:
        return attach(channel, stdin, tty=size is not None, on_output=on_output)

"""Shell sessions that outlive one call: for a chat host, which cannot hold a terminal, the
MCP tools `workspace_shell_open/read/write/signal/close` drive a shell through these.

A session is an exec on a pseudo-terminal (workspace/shellcmd.py) whose connection stays open: a
thread reads its output into a bounded buffer that `read` takes from by cursor, `write`
sends keys, `signal` signals the terminal's foreground process, `close` ends it (the agent
kills the shell's whole process tree when the connection goes).
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, get_args

from pyro_loop.errors import NotFoundError, PyroError
from pyro_loop.records import dataclass, field

if TYPE_CHECKING:
    from pyro_loop.shapes import ShellReadJSON, ShellStateJSON
    from pyro_loop.workspace.client import ExecChannel, ExecResult

KEEP = 1024 * 1024  # bytes of a shell's output kept for `read`; older output is dropped
TERMINAL = (30, 120)  # rows, cols
IDLE_CAP = 30.0  # seconds a read waiting for quiet (idle) takes at most
START_WAIT = 5.0  # seconds `open` waits for a new shell's first output (or its failure)
ENV = {"TERM": "dumb"}  # few escape sequences in what a model or a script reads back
Signal = Literal["INT", "TERM", "KILL", "HUP", "QUIT", "TSTP", "CONT", "USR1", "USR2"]
SIGNALS: tuple[str, ...] = get_args(Signal)


# An escape sequence: CSI, OSC / DCS / APC / PM / SOS strings (to BEL or ST), or a short one.
_ESCAPE = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -/]*[0-~])?"
)


def plain_text(text: str) -> str:
    """Terminal output as plain lines: escape sequences dropped, CR+LF as LF, a CR or a
    backspace overwriting what it returns over (as the screen shows it), other control
    characters dropped."""
    lines = []
    for line in _ESCAPE.sub("", text).replace("\r\n", "\n").split("\n"):
        cells: list[str] = []
        column = 0
        for char in line:
            if char == "\r":
                column = 0
            elif char == "\b":
                column = max(column - 1, 0)
            elif char == "\t" or (char >= " " and not "\x7f" <= char <= "\x9f"):
                cells[column : column + 1] = [char]
                column += 1
        lines.append("".join(cells))
    return "\n".join(lines)


@dataclass
class ShellSession:
    id: str
    workspace_id: str
    channel: ExecChannel
    stack: contextlib.ExitStack
    output: bytearray = field(default_factory=bytearray)
    start: int = 0  # the cursor of output[0]: bytes dropped before it
    result: ExecResult | None = None
    error: str | None = None
    failure: PyroError | None = None  # what ended it, when that was an error
    lock: threading.Condition = field(default_factory=threading.Condition)

    def _pump(self) -> None:
        try:
            while True:
                event = self.channel.next_event()
                if not isinstance(event, tuple):
                    with self.lock:
                        self.result = event
                        self.lock.notify_all()
                    return
                with self.lock:
                    self.output += event[1]
                    if len(self.output) > KEEP:
                        cut = len(self.output) - KEEP
                        del self.output[:cut]
                        self.start += cut
                    self.lock.notify_all()
        except PyroError as exc:
            with self.lock:
                self.error, self.failure = exc.message, exc
                self.lock.notify_all()

    def started(self, timeout: float) -> None:
        """Wait until the shell shows something (its prompt) or ends, up to `timeout` s: a
        shell that cannot start (a working directory that does not exist) fails here, not
        at the first read."""
        with self.lock:
            if not self.output and self.result is None and self.error is None:
                self.lock.wait(timeout)
            if self.failure is not None:
                raise self.failure

    def read(
        self,
        cursor: int,
        max_bytes: int,
        wait: float,
        *,
        idle: float | None = None,
        plain: bool = False,
    ) -> ShellReadJSON:
        """Output from `cursor` on (at most `max_bytes`), waiting up to `wait` s for some.

        `idle`: once output has come, go on until none has come for `idle` s (IDLE_CAP s at
        most), so a command's whole answer arrives in one read. `plain`: the output as a
        screen would show it, without control sequences (plain_text); cursors stay bytes."""
        with self.lock:
            end = self.start + len(self.output)
            if cursor >= end and self.result is None and self.error is None and wait > 0:
                self.lock.wait(wait)
                end = self.start + len(self.output)
            if idle is not None and end > cursor:
                deadline = time.monotonic() + IDLE_CAP
                while self.result is None and self.error is None and end - cursor < max_bytes:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.lock.wait(min(idle, left))
                    if self.start + len(self.output) == end:
                        break  # quiet for `idle`: the answer is complete
                    end = self.start + len(self.output)
            begin = max(cursor, self.start)
            data = bytes(self.output[begin - self.start : begin - self.start + max_bytes])
            text = data.decode("utf-8", "replace")
            return {
                "shell_id": self.id,
                "output": plain_text(text) if plain else text,
                "cursor": begin,
                "next_cursor": begin + len(data),
                "dropped_bytes": begin - cursor if cursor < begin else 0,
                "more": begin + len(data) < end,
                **self.state(),
            }

    def state(self) -> ShellStateJSON:
        if self.result is not None:
            return {"state": "exited", "exit_code": self.result.exit_code}
        if self.error is not None:
            return {"state": "lost", "exit_code": None, "error": self.error}
        return {"state": "running", "exit_code": None}


class Shells:
    """The open shell sessions of one process (an MCP server)."""

    def __init__(self) -> None:
        self._sessions: dict[str, ShellSession] = {}
        self._lock = threading.Lock()

    def open(
        self,
        workspace_id: str,
        opener: Callable[[tuple[int, int]], contextlib.AbstractContextManager[ExecChannel]],
        *,
        size: tuple[int, int] = TERMINAL,
    ) -> ShellSession:
        """Start a shell with `opener(terminal size)` (an `open_exec` of SHELL_ARGV)."""
        stack = contextlib.ExitStack()
        channel = stack.enter_context(opener(size))
        session = ShellSession(secrets.token_hex(6), workspace_id, channel, stack)
        threading.Thread(target=session._pump, name="pyro-shell", daemon=True).start()
        try:
            session.started(START_WAIT)
        except PyroError:
            with contextlib.suppress(PyroError, OSError):
                stack.close()
            raise
        with self._lock:
            self._sessions[session.id] = session
        return session

    def get(self, shell_id: str) -> ShellSession:
        with self._lock:
            session = self._sessions.get(shell_id)
        if session is None:
            raise NotFoundError(
                f"no open shell {shell_id!r}", hint="workspace_shell_open starts one"
            )
        return session

    def close(self, shell_id: str) -> ShellSession:
        session = self.get(shell_id)
        with self._lock:
            self._sessions.pop(shell_id, None)
        with contextlib.suppress(OSError):  # wakes the reader thread (a close would not)
            session.channel.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(PyroError, OSError):
            session.stack.close()
        return session

    def close_all(self) -> None:
        with self._lock:
            ids = list(self._sessions)
        for shell_id in ids:
            with contextlib.suppress(PyroError):
                self.close(shell_id)

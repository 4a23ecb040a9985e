"""How the CLI speaks: human text by default, one JSON document with --json.

No typer here: the lean entry of the daily commands speaks through it too."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from pyro_loop.safetext import TerminalText, for_stream, is_terminal
from pyro_loop.units import duration


def emit(data: Any, *, as_json: bool, human: Callable[[], None] | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    elif human is not None:
        human()
    else:
        say(f"{data}")


def say(text: str) -> None:
    """A line of human output; on a terminal, what a workspace put in it is shown harmless
    (safetext.py): a file name, a command line, a service's name."""
    sys.stdout.write(for_stream(text, sys.stdout) + "\n")


def note(text: str) -> None:
    """Progress and notes go to stderr so stdout stays clean for results."""
    sys.stderr.write(for_stream(text, sys.stderr) + "\n")


def show_text(text: str) -> None:
    """Text from a workspace (a patch, a log) as it is: harmless on a terminal, exact
    through a pipe."""
    sys.stdout.write(for_stream(text, sys.stdout))


def show_bytes(data: bytes, *, program: bool = False) -> None:
    """Bytes from a workspace (a file) written whole: shown harmless on a terminal
    (`program`: a program's output, whose colours are kept), exact through a pipe."""
    if is_terminal(sys.stdout):
        filtered = TerminalText(program=program)
        sys.stdout.write(filtered.feed(data) + filtered.flush())
    else:
        sys.stdout.buffer.write(data)


def output_writer(*, program: bool = True) -> tuple[Callable[[bytes], None], Callable[[], None]]:
    """A sink for output that arrives in pieces (a log followed, a shell's screen) and what
    to call at its end: shown harmless on a terminal, exact through a pipe."""
    if not is_terminal(sys.stdout):

        def write(data: bytes) -> None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

        return write, sys.stdout.flush
    filtered = TerminalText(program=program)

    def write_shown(data: bytes) -> None:
        sys.stdout.write(filtered.feed(data))
        sys.stdout.flush()

    def end() -> None:
        sys.stdout.write(filtered.flush())
        sys.stdout.flush()

    return write_shown, end


ms = duration  # the name the commands use


def stream_output(which: str, data: bytes) -> None:
    """Pass a command's output through as it arrives, stdout to stdout, stderr to stderr."""
    out = sys.stdout.buffer if which == "stdout" else sys.stderr.buffer
    out.write(data)
    out.flush()


def emit_changes(changes: list[Any], *, stat: bool, as_json: bool) -> None:
    """Print diff changes: a git-style patch, only the changed paths (--stat), or JSON."""
    from pyro_loop.workspace.diff import render_patch

    if as_json:
        patch = render_patch(changes)
        emit({"changes": [c.to_json() for c in changes], "patch": patch}, as_json=True)
    elif stat:
        for change in changes:
            say(f"{change.status:9} {change.path}")
    else:
        show_text(render_patch(changes))

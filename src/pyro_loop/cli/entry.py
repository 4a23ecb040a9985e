"""`pyro`: the daily commands take the lean entry, everything else the full typer CLI.

A daily command that reads no terminal goes through the fork server first (starter.py),
whose child runs `dispatch` as this process would."""

from __future__ import annotations

import os
import sys


def main() -> None:
    from pyro_loop.cli import starter

    code = starter.run(sys.argv[1:])
    if code is None:
        sys.exit(dispatch(sys.argv[1:]))
    # The command ran in the server's child, which flushed its output: nothing here needs the
    # interpreter's teardown (a millisecond or two of every command).
    sys.stderr.flush()
    os._exit(code & 0xFF)


def dispatch(argv: list[str]) -> int:
    """Run the command `argv` (sys.argv is its command line too); its exit code."""
    from pyro_loop.cli.lean import parse

    call = parse(argv)
    if call is None:
        from pyro_loop.cli.app import main as full

        try:
            full()
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                return exc.code or 0
            sys.stderr.write(f"{exc.code}\n")
            return 1
        return 0
    from pyro_loop.guard import guarded

    return guarded(call)

"""`pyro`: the daily commands take the lean entry, everything else the full typer CLI."""

from __future__ import annotations

import sys


def main() -> None:
    from pyro_loop.cli.lean import parse

    call = parse(sys.argv[1:])
    if call is None:
        from pyro_loop.cli.app import main as full

        full()
        return
    from pyro_loop.guard import guarded

    sys.exit(guarded(call))

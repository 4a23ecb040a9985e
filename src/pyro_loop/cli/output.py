"""How the CLI speaks: human text by default, one JSON document with --json.

No typer here: the lean entry of the daily commands speaks through it too."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from pyro_loop.units import duration


def emit(data: Any, *, as_json: bool, human: Callable[[], None] | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    elif human is not None:
        human()
    else:
        sys.stdout.write(f"{data}\n")


def say(text: str) -> None:
    sys.stdout.write(text + "\n")


def note(text: str) -> None:
    """Progress and notes go to stderr so stdout stays clean for results."""
    sys.stderr.write(text + "\n")


ms = duration  # the name the commands use


def stream_output(which: str, data: bytes) -> None:
    """Pass a command's output through as it arrives, stdout to stdout, stderr to stderr."""
    out = sys.stdout.buffer if which == "stdout" else sys.stderr.buffer
    out.write(data)
    out.flush()


def emit_changes(changes: list[Any], *, stat: bool, as_json: bool) -> None:
    """Print diff changes: a git-style patch, only the changed paths (--stat), or JSON."""
    from pyro_loop.diff import render_patch

    if as_json:
        patch = render_patch(changes)
        emit({"changes": [c.to_json() for c in changes], "patch": patch}, as_json=True)
    elif stat:
        for change in changes:
            say(f"{change.status:9} {change.path}")
    else:
        sys.stdout.write(render_patch(changes))

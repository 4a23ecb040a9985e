"""`pyro init`: write a commented `.pyro.toml` for the repository, a thin call into scaffold."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from pyro_loop.cli.options import JsonOption
from pyro_loop.cli.output import emit, note, say


def init_command(
    path: Path = typer.Argument(
        Path("."),
        metavar="PATH",
        help="Any directory in the repository; the file goes at its root.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace an existing .pyro.toml (the old one is kept as .bak)."
    ),
    print_only: bool = typer.Option(
        False, "--print", help="Print the file it would write, and write nothing."
    ),
    base: str | None = typer.Option(
        None, "--base", help="The environment, e.g. debian:12 (default: host)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Write .pyro.toml at the repository root, with the install commands it detects."""
    from pyro_loop.project.scaffold import init_project

    result = init_project(path, force=force, dry_run=print_only, base=base)
    if result.written:
        # The user ran init: the file it wrote is theirs, trusted as written (an edit, or a
        # version someone else commits, asks again).
        from pyro_loop.home import pyro_home
        from pyro_loop.project.trust import allow_content

        allow_content(pyro_home(), result.path, result.content.encode())
    found = ", ".join(
        e.name if e.directory == "." else f"{e.name} in {e.directory}" for e in result.ecosystems
    )
    summary = f"found: {found}" if found else "found no lock files or manifests"
    for eco in result.ecosystems:
        if not eco.locked:
            manifest = eco.keys[0]
            summary += (
                f"\nnote: {manifest} has no lock beside it: prepare installs the newest "
                "versions it allows (commit a lock file to pin them)"
            )
    if as_json:
        emit(result.to_json(), as_json=True)
    elif print_only:
        # The file alone on stdout, so that `pyro init --print > somewhere` is the file.
        note(f"{summary}; would write {result.path}")
        sys.stdout.write(result.content)
    else:
        say(summary)
        kept = f" (the previous one is {result.backup})" if result.backup else ""
        say(f"wrote {result.path}{kept}")
        if not result.ecosystems:
            say("add your install commands to [prepare] run, then run: pyro prepare")
        else:
            say("next: review it, then run: pyro up")

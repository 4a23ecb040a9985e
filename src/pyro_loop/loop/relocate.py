"""Moving a project's workspace onto the dependency layer its configuration now needs.

After a lockfile edit or a switch of `[environment] base`, the next daily command puts the
live workspace on the new layers instead of running on outdated ones, and keeps the
workspace's own changes (the agent's work, build output) except those inside what the old
dependency layer installed: a file the workspace wrote into `.venv/` or `node_modules/`
belongs to the dependencies it was written over, and the new dependencies replace them.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyro_loop.fs.util import remove_tree


def dependency_roots(dependencies: Path, baseline: Path | None) -> list[str]:
    """The topmost paths the dependency layer `dependencies` added over `baseline` (the
    repository's files): `.venv`, `node_modules`, `web/node_modules`, ... Directories both
    share (`web/`) are looked into; everything else of the layer is one of its roots."""
    roots: list[str] = []

    def walk(rel: str) -> None:
        try:
            entries = list(os.scandir(dependencies / rel if rel else dependencies))
        except OSError:
            return
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            there = baseline / path if baseline is not None else None
            shared = there is not None and there.is_dir() and not there.is_symlink()
            if shared and entry.is_dir(follow_symlinks=False):
                walk(path)
            else:
                roots.append(path)

    walk("")
    return sorted(roots)


def drop_paths(upper: Path, roots: list[str]) -> None:
    """Remove `roots` (and what is below them) from a workspace's changes, `upper`."""
    for rel in roots:
        path = upper / rel
        if path.exists() or path.is_symlink():
            remove_tree(path)

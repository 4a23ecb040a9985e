"""Which of a workspace's changes git would ignore, as the review (`pyro diff`) leaves out.

Two sources of rules: the repository's own (its .gitignore files, info/exclude, the user's
excludes file) and the .gitignore files the workspace wrote itself, which git would honour
as well had the command run in the checkout: pytest's `.pytest_cache/.gitignore` ("*"),
ruff's and mypy's caches, a build tool's output directory. The second kind is read from the
workspace's changes and evaluated by libgit2 in a scratch repository holding only them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from pyro_loop import git
from pyro_loop.project.discovery import Project, repository
from pyro_loop.store.layerview import read_file
from pyro_loop.workspace.diff import Change

MAX_IGNORE_FILE = 1024 * 1024  # a larger .gitignore is not one a tool wrote


def _plain(rel: str) -> bool:
    """A .gitignore at a plain path (never one inside a .git directory)."""
    parts = rel.split("/")
    return parts[-1] == ".gitignore" and not {"", ".", "..", ".git"} & set(parts)


def ignored_changes(project: Project, changes: Sequence[Change]) -> set[str]:
    """The paths among `changes` that git would ignore in the project's checkout."""
    paths = [c.path for c in changes]
    if not paths:
        return set()
    ignored: set[str] = set()
    if project.git_dir is not None:
        repo = repository(project)
        ignored = {p for p in paths if repo.path_is_ignored(p)}
    written = {
        c.path: c.new
        for c in changes
        if c.new is not None and c.new.kind == "file" and _plain(c.path)
    }
    if not written:
        return ignored
    with tempfile.TemporaryDirectory(prefix="pyro-ignore-") as tmp:
        scratch = git.scratch_repository(Path(tmp))
        for rel, entry in written.items():
            content = read_file(entry.layer, rel, limit=MAX_IGNORE_FILE) or b""
            target = Path(tmp, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        ignored |= {p for p in paths if p not in ignored and scratch.path_is_ignored(p)}
    return ignored

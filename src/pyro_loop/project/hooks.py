"""Which git hooks a repository has, and which of them are pyro's (`pyro hooks status`).

pyro's scripts carry a marker line, so pyro only ever rewrites or removes its own; a hook that
was there before is kept beside it as `<hook>.legacy`. Where git runs hooks from: the
repository's common git dir, so one install serves every worktree; a submodule has hooks of
its own. `core.hooksPath` pointing elsewhere means git would never run pyro's.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from pyro_loop.errors import InvalidInputError
from pyro_loop.git import common_dir, config_value
from pyro_loop.project.discovery import Project
from pyro_loop.records import dataclass

if TYPE_CHECKING:
    from pyro_loop.shapes import HookJSON, HooksJSON

MARKER = "# pyro-hook 7f3b9c2e"
KEEP_WARM = ("post-checkout", "post-merge", "post-rewrite")
BLOCKING = ("pre-commit", "pre-push")
HOOKS = KEEP_WARM + BLOCKING
LEGACY_SUFFIX = ".legacy"


@dataclass(frozen=True)
class HookStatus:
    name: str
    state: str  # "pyro" | "absent" | "foreign" (another tool's or the user's own hook)
    legacy: bool  # a hook that was there before pyro's, kept as <name>.legacy, runs first
    python: str | None = None  # the interpreter pyro's script calls
    python_ok: bool = False
    project: str | None = None  # the project directory, relative to the working tree's top

    def to_json(self) -> HookJSON:
        return {
            "name": self.name,
            "state": self.state,
            "legacy": self.legacy,
            "python": self.python,
            "python_ok": self.python_ok,
            "project": self.project,
        }


@dataclass(frozen=True)
class HooksReport:
    hooks_dir: Path
    shared: bool  # a worktree's hooks are its repository's, shared by all its worktrees
    hooks: tuple[HookStatus, ...]
    problem: str | None = None  # why git would not run pyro's hooks (core.hooksPath)

    @property
    def installed(self) -> list[str]:
        return [h.name for h in self.hooks if h.state == "pyro"]

    @property
    def broken(self) -> list[str]:
        return [h.name for h in self.hooks if h.state == "pyro" and not h.python_ok]

    def to_json(self) -> HooksJSON:
        return {
            "hooks_dir": str(self.hooks_dir),
            "shared_with_worktrees": self.shared,
            "installed": self.installed,
            "broken": self.broken,
            "problem": self.problem,
            "hooks": [h.to_json() for h in self.hooks],
        }


def hooks_dir(project: Project) -> tuple[Path, bool]:
    """The directory git runs this repository's hooks from, and whether worktrees share it."""
    if project.git_dir is None or project.repo_root is None:
        raise InvalidInputError(
            f"{project.root} is not in a git repository with a working tree",
            hint="git hooks need a repository: run `git init` first",
        )
    common = common_dir(project.git_dir)
    return common / "hooks", common != project.git_dir


def hooks_path_problem(project: Project, directory: Path) -> str | None:
    """Why git would not run hooks from `directory`: `core.hooksPath` names another one."""
    assert project.repo_root is not None
    assert project.git_dir is not None
    configured = config_value(project.repo_root, project.git_dir, "core.hooksPath")
    if not configured:
        return None
    # git reads a relative core.hooksPath from the top of the working tree.
    path = Path(os.path.expanduser(configured))
    target = path if path.is_absolute() else project.repo_root / path
    if target.resolve() == directory.resolve():
        return None
    return f"core.hooksPath is set to {configured}: git runs the hooks there, not in {directory}"


def status(project: Project) -> HooksReport:
    directory, shared = hooks_dir(project)
    return HooksReport(
        hooks_dir=directory,
        shared=shared,
        hooks=tuple(hook_status(directory, name) for name in HOOKS),
        problem=hooks_path_problem(project, directory),
    )


def is_ours(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return MARKER.encode() in head


def hook_status(directory: Path, name: str) -> HookStatus:
    path = directory / name
    legacy = os.path.lexists(directory / (name + LEGACY_SUFFIX))
    if not os.path.lexists(path):
        return HookStatus(name, "absent", legacy)
    if not is_ours(path):
        return HookStatus(name, "foreign", legacy)
    fields = _script_fields(path)
    python = fields.get("python")
    return HookStatus(
        name,
        "pyro",
        legacy,
        python=python,
        python_ok=bool(python) and os.access(python or "", os.X_OK),
        project=fields.get("project"),
    )


def _script_fields(path: Path) -> dict[str, str]:
    """The `name=value` settings at the top of one of pyro's scripts, unquoted."""
    fields: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines()[:12]:
        name, sep, value = line.partition("=")
        if sep and name in ("hook", "python", "project", "blocking"):
            parts = shlex.split(value)
            fields[name] = parts[0] if parts else ""
    return fields

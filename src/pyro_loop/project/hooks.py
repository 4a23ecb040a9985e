"""Which git hooks a repository has, and which of them are pyro's (`pyro hooks status`).

pyro's scripts carry a marker line, so pyro only ever rewrites or removes its own; a hook that
was there before is kept beside it as `<hook>.legacy`. Where git runs hooks from: the
repository's common git dir, so one install serves every worktree; a submodule has hooks of
its own. `core.hooksPath` pointing elsewhere means git would never run pyro's.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_loop.errors import InvalidInputError
from pyro_loop.git import common_dir, run_git
from pyro_loop.project.discovery import Project

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

    def to_json(self) -> dict[str, Any]:
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

    def to_json(self) -> dict[str, Any]:
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
    if not _may_set_hooks_path(project):
        return None
    # git itself, not libgit2: git also reads `git -c` settings handed down in the
    # environment (GIT_CONFIG_COUNT) and GIT_CONFIG_GLOBAL, which libgit2 ignores.
    result = run_git(["config", "--get", "core.hooksPath"], cwd=project.repo_root)
    configured = result.stdout.strip()
    if result.returncode != 0 or not configured:
        return None
    # git reads a relative core.hooksPath from the top of the working tree.
    path = Path(os.path.expanduser(configured))
    target = path if path.is_absolute() else project.repo_root / path
    if target.resolve() == directory.resolve():
        return None
    return f"core.hooksPath is set to {configured}: git runs the hooks there, not in {directory}"


def _may_set_hooks_path(project: Project) -> bool:
    """Could a configuration git reads set core.hooksPath? Reading its files costs far less
    than starting git (`pyro status` asks every time), and they rarely mention it; whatever
    cannot be read, includes another file or comes from the environment, git is asked."""
    if "GIT_CONFIG_COUNT" in os.environ:
        return True
    assert project.git_dir is not None
    home = os.path.expanduser("~")
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    files = [os.environ.get("GIT_CONFIG_GLOBAL") or os.path.join(home, ".gitconfig"),
             os.path.join(xdg, "git", "config"),
             str(common_dir(project.git_dir) / "config"),
             str(project.git_dir / "config.worktree")]  # fmt: skip
    if not os.environ.get("GIT_CONFIG_NOSYSTEM"):
        git = _which("git")
        prefix = os.path.dirname(os.path.dirname(git)) if git else "/usr"
        files += [os.environ.get("GIT_CONFIG_SYSTEM") or "/etc/gitconfig",
                  os.path.join(prefix, "etc", "gitconfig")]  # fmt: skip
    for path in files:
        try:
            with open(path, "rb") as f:
                text = f.read().lower()
        except FileNotFoundError:
            continue
        except OSError:
            return True
        if b"hookspath" in text or b"include" in text:
            return True
    return False


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


def _which(program: str) -> str | None:
    """shutil.which without shutil (it loads three compression modules; `pyro status` asks)."""
    for directory in os.get_exec_path():
        path = os.path.join(directory, program)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None

"""`pyro hooks install | uninstall`: pyro's scripts in the repository's hooks directory.

Each script is rendered from hooks/pyro-hook.sh and carries a marker line, so pyro only ever
rewrites or removes its own. A hook that was there before is renamed to `<hook>.legacy` (a
rename keeps its content, mode and symlink-ness exactly); pyro's script runs it first, and
uninstall renames it back. The script records the interpreter pyro was installed with, so it
works from any shell, activated virtualenv or not.

Where the hooks go and which are pyro's: project/hooks.py. When `core.hooksPath` points
elsewhere, git would never run what pyro writes, so install refuses and says what to do.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from pyro_loop.errors import ConflictError, InvalidInputError
from pyro_loop.project.discovery import Project
from pyro_loop.project.hooks import (
    BLOCKING,
    HOOKS,
    KEEP_WARM,
    LEGACY_SUFFIX,
    HooksReport,
    hook_status,
    hooks_dir,
    hooks_path_problem,
    is_ours,
    status,
)
from pyro_loop.resources import shipped_text


def install(
    project: Project, *, hooks: Sequence[str] = KEEP_WARM, python: str = sys.executable
) -> HooksReport:
    """Write pyro's script for each of `hooks` (and refresh pyro's scripts already there)."""
    directory, _shared = hooks_dir(project)
    problem = hooks_path_problem(project, directory)
    if problem is not None:
        raise ConflictError(
            f"not installing: {problem}",
            hint="unset it (`git config --unset core.hooksPath`) and install again, or call "
            '`pyro hooks run HOOK "$@"` from the hooks in that directory',
        )
    _check_names(hooks)
    current = {name: hook_status(directory, name) for name in HOOKS}
    wanted = [n for n in HOOKS if n in hooks or current[n].state == "pyro"]
    # Refuse before touching anything: with both <hook> and <hook>.legacy present, moving the
    # hook aside would overwrite the older one.
    for name in wanted:
        if current[name].state == "foreign" and current[name].legacy:
            legacy = directory / (name + LEGACY_SUFFIX)
            raise ConflictError(
                f"{directory / name} and {legacy} both exist, and pyro keeps a hook it replaces "
                f"as {legacy.name}",
                hint=f"merge them into one {name} hook, then install again",
            )
    assert project.repo_root is not None
    relative = os.path.relpath(project.root, project.repo_root)
    directory.mkdir(parents=True, exist_ok=True)
    for name in wanted:
        path = directory / name
        if current[name].state == "foreign":
            os.rename(path, directory / (name + LEGACY_SUFFIX))
        _write_script(path, render(name, python=python, project=relative))
    return status(project)


def uninstall(project: Project, *, hooks: Sequence[str] = HOOKS) -> HooksReport:
    """Remove pyro's scripts among `hooks`, putting back the hooks they replaced."""
    directory, _shared = hooks_dir(project)
    _check_names(hooks)
    for name in hooks:
        path = directory / name
        if not is_ours(path):
            continue  # absent, or not pyro's: never touched
        path.unlink()
        legacy = directory / (name + LEGACY_SUFFIX)
        if os.path.lexists(legacy):
            os.rename(legacy, path)
    return status(project)


def render(name: str, *, python: str, project: str) -> str:
    values = {
        "@HOOK@": shlex.quote(name),
        "@PYTHON@": shlex.quote(python),
        "@PROJECT@": shlex.quote(project),
        "@BLOCKING@": "1" if name in BLOCKING else "0",
    }
    text = shipped_text("hooks", "pyro-hook.sh")
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def _check_names(hooks: Sequence[str]) -> None:
    unknown = [h for h in hooks if h not in HOOKS]
    if unknown:
        raise InvalidInputError(
            f"not a hook pyro provides: {', '.join(unknown)}", hint=f"one of {', '.join(HOOKS)}"
        )


def _write_script(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.pyro-tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, path)

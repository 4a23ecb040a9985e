"""`pyro init`: a commented `.pyro.toml` at the repository root, filled in from what is detected.

The file starts from templates/pyro.toml, edited with tomlkit so that its comments and order
stay as written: they are the documentation a developer reads in their own repository.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_loop import git
from pyro_loop.errors import ConflictError, InvalidInputError
from pyro_loop.project.config import FILENAME
from pyro_loop.project.detect import Ecosystem, detect_ecosystems
from pyro_loop.records import dataclass, replace

if TYPE_CHECKING:
    from pyro_loop.shapes import InitJSON

BACKUP_SUFFIX = ".bak"


@dataclass(frozen=True)
class InitResult:
    root: Path  # the repository's working tree (or the directory, outside git)
    path: Path  # <root>/.pyro.toml
    ecosystems: tuple[Ecosystem, ...]
    content: str
    existed: bool  # a .pyro.toml was there before
    written: bool  # False for a dry run
    backup: Path | None = None  # where the replaced file went, with force

    def to_json(self) -> InitJSON:
        return {
            "root": str(self.root),
            "path": str(self.path),
            "ecosystems": [e.to_json() for e in self.ecosystems],
            "content": self.content,
            "existed": self.existed,
            "written": self.written,
            "backup": str(self.backup) if self.backup else None,
        }


def find_project_root(path: Path) -> Path:
    """The working tree of the git repository containing `path` (a worktree's own directory for
    a linked worktree), or `path` itself when it is in no repository or a bare one."""
    start = path.resolve()
    if not start.is_dir():
        raise InvalidInputError(f"{path} is not a directory")
    repo = git.discover_repository(start)
    return Path(repo.workdir).resolve() if repo is not None and repo.workdir else start


def template_text(name: str = "pyro.toml") -> str:
    """A template shipped as pyro_loop/templates in the wheel, or from the source tree."""
    from pyro_loop.resources import shipped_text

    return shipped_text("templates", name)


def render_config(
    root: Path, ecosystems: Sequence[Ecosystem] | None = None, *, base: str | None = None
) -> str:
    """The template with [prepare] keys and run, [tools] and [check] run filled in from the
    ecosystems found at `root` and what their files pin (see project/conventions.py).

    The environment stays the template's "host" unless `base` names another: a Debian base
    is a choice, not a detection. With it, a project whose commands make a Python venv gets
    the package that makes one (Debian's python3 leaves out python3-venv). With nothing
    detected, `keys` is left out so that `pyro prepare` keeps detecting them.
    """
    import tomlkit
    from tomlkit.items import Table

    from pyro_loop.project.conventions import (
        detect_checks,
        detect_host_toolchains,
        detect_tools,
    )

    found = detect_ecosystems(root) if ecosystems is None else ecosystems
    doc = tomlkit.parse(template_text())
    if base is not None and base != "host":
        from pyro_loop.store.environments import parse_environment

        environment = doc["environment"]
        assert isinstance(environment, Table)
        environment["base"] = parse_environment(base).name
        commands = [c for e in found for c in (*e.run, *e.project)]
        if any("-m venv" in command for command in commands):
            environment["packages"] = _array(["python3-venv"])
    prepare = doc["prepare"]
    assert isinstance(prepare, Table)  # the template's own structure
    keys = sorted({key for e in found for key in e.keys})
    if keys:
        prepare["keys"] = _array(keys)
    else:
        del prepare["keys"]
    prepare["run"] = _array([command for e in found for command in e.run])
    prepare["project"] = _array([command for e in found for command in e.project])
    tools = doc["tools"]
    assert isinstance(tools, Table)
    for name, version in detect_tools(root, list(found)).items():
        tools.add(name, version)
    toolchains = detect_host_toolchains(list(found))
    if toolchains:
        tools["host"] = _array(toolchains)
    check = doc["check"]
    assert isinstance(check, Table)
    checks = detect_checks(root, list(found))
    if checks:
        check["run"] = _array(checks)
    return tomlkit.dumps(doc)


def init_project(
    root: Path, *, force: bool = False, dry_run: bool = False, base: str | None = None
) -> InitResult:
    """Write `.pyro.toml` at the root of the repository containing `root` (any directory in it).

    An existing file is never touched without `force`; with it, the old one is kept as
    `.pyro.toml.bak` and replaced by a fresh render. The new file appears whole or not at all.
    `dry_run` renders without writing (and without minding an existing file).
    """
    root = find_project_root(root)
    target = root / FILENAME
    ecosystems = tuple(detect_ecosystems(root))
    content = render_config(root, ecosystems, base=base)
    existed = os.path.lexists(target)
    result = InitResult(root, target, ecosystems, content, existed=existed, written=False)
    if dry_run:
        return result
    if existed and not force:
        raise _exists(target)
    backup = None
    try:
        tmp = _write_temp(root, content)
        try:
            if existed:
                if os.path.exists(target):  # not a dangling symlink: something to keep
                    backup = target.with_name(FILENAME + BACKUP_SUFFIX)
                    shutil.copyfile(target, backup)
                os.replace(tmp, target)
            else:
                _create(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    except OSError as exc:  # a read-only checkout, a directory named .pyro.toml, ...
        raise InvalidInputError(f"cannot write {target}: {exc.strerror or exc}") from None
    return replace(result, written=True, backup=backup)


def _array(items: list[str]) -> Any:
    import tomlkit

    array = tomlkit.array()
    array.extend(items)
    # One item per line: easy to read, to edit, and to review as a diff.
    return array.multiline(len(items) > 1)


def _write_temp(root: Path, content: str) -> Path:
    tmp = root / f".{FILENAME}.{uuid.uuid4().hex[:12]}.tmp"
    # Mode 0666 less the umask, as for any file the user creates; mkstemp would make it 0600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _create(tmp: Path, target: Path) -> None:
    """Publish `tmp` as `target` only if `target` does not exist, even one appearing meanwhile."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise _exists(target) from None
    except OSError:
        # No hard links on this filesystem: check, then rename (a far narrower window).
        if os.path.lexists(target):
            raise _exists(target) from None
        os.replace(tmp, target)


def _exists(target: Path) -> ConflictError:
    return ConflictError(
        f"{target} already exists",
        hint=f"edit it, or pass --force to write a fresh one (the old one is kept as "
        f"{FILENAME}{BACKUP_SUFFIX})",
    )

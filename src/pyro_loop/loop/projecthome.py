"""A project's files in the pyro home: every path is built here, and nowhere else.

    <home>/projects/<id>.json                 what the last successful prepare produced
    <home>/projects/<id>/last-command.json    what `pyro retry` runs
    <home>/projects/<id>/sync-manifest.json   what the live workspace was last sent (and
                                              its .lock, taken by the syncer beside it)
    <home>/projects/<id>/host-scan            the host scan's saved directory listings
    <home>/projects/<id>/watch.json           the watcher's state, for `pyro status`
    <home>/projects/<id>/key-digests.json     the keying files' digests, by size and mtime
    <home>/projects/<id>/background-prepare.json   the prepare a git hook started
    <home>/projects/<id>/untrusted-noted.json      the unapproved config a hook told of
    <home>/logs/background-prepare-<id>.log   that background prepare's output
    <home>/locks/project-<id>.lock            one command at a time on the live workspace

`<id>` is `Project.id`. Loaded on the path of every daily command and of the keep-warm hook:
the standard library and the pyro home's own helpers only.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from pyro_loop.errors import DamagedFileError
from pyro_loop.fs.util import read_json_object, write_json_atomic
from pyro_loop.records import dataclass, field

if TYPE_CHECKING:
    from pyro_loop.project.discovery import Project

STATE_LIMIT = 4 * 1024 * 1024  # bytes of a state file read: a prepare's are a few KiB


# What a dependency snapshot was built from (loop/prepare.py `PrepareInputs`), as the state
# records it; empty until a prepare had something to install. Declared with real types, not
# as a class: under `from __future__ import annotations` a TypedDict below Python 3.12
# compiles each field's string annotation, on every command's start.
SnapshotInputsJSON = TypedDict(  # noqa: UP013 (the class form compiles, see above)
    "SnapshotInputsJSON",
    {
        "format": int,
        "environment": str,
        "packages": list[str],
        "keys": dict[str, str],  # keying file -> sha256 of its contents
        "run": list[str],
        "env": list[str],  # names of passed-through variables
        "tools": dict[str, str],  # only when declared
        "host_tools": list[str],  # only when exposed
        "path": list[str],  # only when `[workspace] path` is set
    },
    total=False,
)


@dataclass
class ProjectState:
    """What the last successful prepare of a project produced (written only on success)."""

    root: str
    key: str | None = None
    inputs: SnapshotInputsJSON = field(default_factory=SnapshotInputsJSON)
    dependencies_layer: str | None = None
    project_layer: str | None = None  # the project's own install, over the dependencies
    project_keys: dict[str, str] = field(default_factory=dict)  # what keyed it
    baseline_commit: str | None = None
    baseline_tree: str | None = None
    baseline_layer: str | None = None
    prepared_at: float | None = None
    tool_layers: dict[str, str] = field(default_factory=dict)  # tool name -> its layer's key


class ProjectHome:
    """The files the pyro home keeps for project `project_id`."""

    def __init__(self, home: Path, project_id: str) -> None:
        self.home = home
        self.project_id = project_id
        self.dir = home / "projects" / project_id

    @classmethod
    def of(cls, home: Path, project: Project) -> ProjectHome:
        return cls(home, project.id)

    @property
    def state_file(self) -> Path:
        return self.home / "projects" / f"{self.project_id}.json"

    @property
    def last_command_file(self) -> Path:
        return self.dir / "last-command.json"

    @property
    def sync_manifest(self) -> Path:
        return self.dir / "sync-manifest.json"

    @property
    def standby_manifest(self) -> Path:
        """What the host's files put into the workspace's standby sandbox (loop/standby.py)."""
        return self.dir / "sync-manifest-standby.json"

    @property
    def host_scan(self) -> Path:
        return self.dir / "host-scan"

    @property
    def watch_status(self) -> Path:
        return self.dir / "watch.json"

    @property
    def key_digests(self) -> Path:
        return self.dir / "key-digests.json"

    @property
    def background_prepare(self) -> Path:
        """The last background prepare a hook started (key, pid, log)."""
        return self.dir / "background-prepare.json"

    @property
    def background_log(self) -> Path:
        return self.home / "logs" / f"background-prepare-{self.project_id}.log"

    @property
    def untrusted_noted(self) -> Path:
        """Which version of an unapproved `.pyro.toml` a hook has already told of."""
        return self.dir / "untrusted-noted.json"

    @property
    def lock(self) -> Path:
        return self.home / "locks" / f"project-{self.project_id}.lock"

    # -- the prepare's state -------------------------------------------------------------------

    def load_state(self) -> ProjectState | None:
        return read_state(self.state_file)

    def save_state(self, state: ProjectState) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.state_file, state.__dict__)

    # -- the last command ----------------------------------------------------------------------

    def last_command(self) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            data: dict[str, Any] = json.loads(self.last_command_file.read_text())
            return data
        return None

    def save_last_command(self, command: dict[str, Any]) -> None:
        write_json_atomic(self.last_command_file, command, durable=False)

    def forget(self) -> None:
        """Remove everything kept for the project (its layers stay, for gc to judge)."""
        import shutil  # here: the daily commands' start never removes a tree

        shutil.rmtree(self.dir, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)


def read_state(path: Path) -> ProjectState | None:
    """The state at `path`; None when there is none, or it is damaged (the project is then
    cold, and the next prepare writes it anew)."""
    with contextlib.suppress(DamagedFileError):
        return load_state(path)
    return None


def load_state(path: Path) -> ProjectState:
    """The state at `path`, each field checked; DamagedFileError, in one line, when it is
    not what `save_state` writes (cut short, edited, planted)."""
    try:
        data = read_json_object(path, STATE_LIMIT)
        unknown = sorted(set(data) - set(_STATE_CHECKS))
        if unknown:
            raise ValueError(f"unknown field {unknown[0][:40]!r}")
        if "root" not in data:
            raise ValueError("root is missing")
        for name, value in data.items():
            check = _STATE_CHECKS[name]
            if not check(value):
                raise ValueError(f"{name} is not {check.__doc__}")
        inputs = data.get("inputs", {})
        for name, value in inputs.items():
            input_check = _INPUT_CHECKS.get(name)
            if input_check is None:
                raise ValueError(f"unknown input {name[:40]!r}")
            if not input_check(value):
                raise ValueError(f"inputs.{name} is not {input_check.__doc__}")
        return ProjectState(**data)
    except (ValueError, RecursionError) as exc:
        raise DamagedFileError(f"damaged project state {path}: {exc}") from None


def _text(value: object) -> bool:
    """a string"""
    return isinstance(value, str)


def _text_or_none(value: object) -> bool:
    """a string or null"""
    return value is None or isinstance(value, str)


def _number_or_none(value: object) -> bool:
    """a number or null"""
    if value is None:
        return True
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: object) -> bool:
    """an integer"""
    return isinstance(value, int) and not isinstance(value, bool)


def _texts(value: object) -> bool:
    """a list of strings"""
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _text_map(value: object) -> bool:
    """an object of strings"""
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _object(value: object) -> bool:
    """an object"""
    return isinstance(value, dict)


_STATE_CHECKS: dict[str, Callable[[object], bool]] = {
    "root": _text, "key": _text_or_none, "inputs": _object,
    "dependencies_layer": _text_or_none, "project_layer": _text_or_none,
    "project_keys": _text_map, "baseline_commit": _text_or_none,
    "baseline_tree": _text_or_none, "baseline_layer": _text_or_none,
    "prepared_at": _number_or_none, "tool_layers": _text_map,
}  # fmt: skip
_INPUT_CHECKS: dict[str, Callable[[object], bool]] = {
    "format": _integer, "environment": _text, "packages": _texts, "keys": _text_map,
    "run": _texts, "env": _texts, "tools": _text_map, "host_tools": _texts, "path": _texts,
}  # fmt: skip


def prepared_projects(home: Path) -> Iterator[ProjectState]:
    """The state of every project prepared with this home (unreadable ones left out)."""
    projects = home / "projects"
    if not projects.is_dir():
        return
    for path in sorted(projects.glob("*.json")):
        state = read_state(path)
        if state is not None:
            yield state

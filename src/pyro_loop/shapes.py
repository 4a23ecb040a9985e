"""The public JSON shapes: what `--json` prints and what the MCP tools return.

Declared once, here, as TypedDicts: the producers' `to_json` methods are checked against
them (mypy), and the MCP server publishes them as its tools' output schemas, so a client
knows each field's name and type before it calls. Only the standard library's typing is
imported: the daily commands and the MCP server's start load this module.

A change to a shape is a change to pyro's public interface: add fields, never rename one.
"""

# No `from __future__ import annotations` here: below Python 3.12 a TypedDict compiles each
# field's annotation given as a string (about 30 ms for this module, on every command's start).
from typing import Any, Literal, NotRequired, TypedDict

# -- workspaces ------------------------------------------------------------------------------


class MountJSON(TypedDict):
    """A host directory or layer mounted into a workspace's sandbox."""

    source: str
    target: str
    writable: bool


class PortJSON(TypedDict):
    """A workspace port published on the host's loopback."""

    host_port: int
    port: int
    url: str


class WorkspaceJSON(TypedDict):
    """A workspace: `pyro workspace status --json`, workspace_status, workspace_list's rows."""

    id: str
    name: str | None
    state: str  # running | stopped | dead | unresponsive
    detail: str
    environment: str  # "host", "debian:12"
    packages: list[str]
    environment_layer: str | None
    network: Literal["egress", "off"]
    labels: dict[str, str]
    created: float  # seconds since the epoch
    layers: list[str]  # the current lower layers, topmost first
    mounts: list[MountJSON]
    base_layers: list[str]  # the create-time baseline, topmost first
    snapshots: list[str]
    limits: dict[str, Any]
    changed_bytes: int | None
    standby: str  # ready | down | off
    ports: list[PortJSON]


class WorkspaceListJSON(TypedDict):
    workspaces: list[WorkspaceJSON]


class ProjectWorkspaceJSON(TypedDict):
    """One of the project's workspaces in `pyro status`."""

    id: str
    name: str | None
    state: str  # running | stopped | dead | unresponsive
    current: bool  # made for the dependencies the configuration needs now
    ports: list[PortJSON]


class WorkspaceDeletedJSON(TypedDict):
    workspace_id: str
    deleted: bool


class SnapshotJSON(TypedDict):
    name: str
    created: float  # seconds since the epoch


class SnapshotListJSON(TypedDict):
    """snapshot_list: `baseline` (the create-time state) first, then by age."""

    workspace_id: str
    snapshots: list[SnapshotJSON]


class SnapshotCreatedJSON(TypedDict):
    workspace_id: str
    snapshot: str
    created: float


class SnapshotDeletedJSON(TypedDict):
    workspace_id: str
    deleted: str  # the snapshot's name


# -- files -----------------------------------------------------------------------------------


class SkippedJSON(TypedDict):
    path: str
    reason: str


class SyncJSON(TypedDict):
    """What one sync of host files into a workspace did."""

    copied: int  # files, symlinks and directories written
    removed: int  # host deletions carried over
    bytes: int  # file content sent
    skipped: list[SkippedJSON]
    duration_ms: float
    copied_paths: list[str]
    removed_paths: list[str]


class ResetJSON(TypedDict):
    """workspace_reset: for the project's workspace, the host files synced back in."""

    workspace_id: str
    snapshot: str
    synced: NotRequired[SyncJSON]
    duration_ms: float


ChangeStatus = Literal["added", "deleted", "modified", "mode", "type"]


class ChangeJSON(TypedDict):
    """A path a workspace changed, as git names it."""

    path: str
    status: ChangeStatus
    old_mode: str | None  # "100644", "100755", "120000"; None when added
    new_mode: str | None  # None when deleted


class DiffJSON(TypedDict):
    workspace_id: str
    changes: list[ChangeJSON]
    patch: str  # git-style, cut at 64 KiB (`patch_truncated`)
    patch_truncated: bool


class FileReadJSON(TypedDict):
    workspace_id: str
    path: str
    size: int | None
    offset: int
    content: str  # UTF-8, invalid bytes replaced
    binary: bool  # the slice holds a NUL byte
    truncated: bool
    next_offset: int | None  # where to read on when truncated


# -- commands --------------------------------------------------------------------------------


class CapturedJSON(TypedDict):
    """A command's output as a model reads it: each stream's text up to a bound (its head
    and tail), its full size, whether it was cut, and `exec_id` to read the rest."""

    stdout: str
    stdout_bytes: int
    stdout_truncated: bool
    stderr: str
    stderr_bytes: int
    stderr_truncated: bool
    exec_id: str | None


class ExecJSON(CapturedJSON):
    """A command's result: workspace_exec, workspace_retry."""

    workspace_id: str
    exit_code: int
    duration_ms: float
    timed_out: bool
    signal: int | None
    note: NotRequired[str]  # a timeout, a command not found: what to do about it


class VmRunJSON(ExecJSON):
    """vm_run: the result of a command in a one-shot workspace, deleted since."""

    environment: str
    deleted: bool


# -- the project -----------------------------------------------------------------------------


class StatusJSON(TypedDict):
    """`pyro status --json`: is this machine warm for this project."""

    project: str
    project_id: str
    config: str | None  # the .pyro.toml's path; None without one
    warm: bool
    environment: dict[str, Any]  # name, state
    dependencies: dict[str, Any]  # state, key; reasons and background when not warm
    baseline: dict[str, Any]  # state; commit
    workspaces: list[ProjectWorkspaceJSON]
    sync: str
    cache_bytes: int
    hooks: dict[str, Any]
    tools: list[dict[str, Any]]
    trust: dict[str, Any] | None


class WarmupEventJSON(TypedDict):
    time: float
    level: str  # info | warning | error
    message: str


WarmupState = Literal["idle", "running", "ready", "failed"]


class WarmupJSON(TypedDict):
    """The MCP server's background warm-up of the project's workspace."""

    state: WarmupState
    phase: str
    seconds: float | None
    error: str | None
    hint: str | None
    watching: bool
    events: list[WarmupEventJSON]


class ProjectStatusJSON(StatusJSON):
    """project_status: `pyro status` plus the server's warm-up."""

    ready: bool
    warmup: WarmupJSON


class UpJSON(TypedDict):
    """`pyro up --json`: the project's workspace, and how it was made ready."""

    id: str
    name: str | None
    action: str  # reused | started | created | recreated | moved
    duration_ms: float
    synced: SyncJSON | None  # the host files synced into it


class CommandRunJSON(TypedDict):
    command: str
    exit_code: int
    duration_ms: float
    timed_out: bool


class CheckResultJSON(TypedDict):
    """One tree's check: its commands, in order, up to the first that failed."""

    source: str  # staged | working tree | commit <sha>
    tree: str
    ok: bool
    exit_code: int
    commands: list[CommandRunJSON]
    prepared: bool  # the dependency snapshot had to be built first
    duration_ms: float
    setup_ms: float  # all but the commands: layers, workspace start and removal
    warnings: list[str]


class CheckJSON(TypedDict):
    """`pyro check --json`."""

    ok: bool
    results: list[CheckResultJSON]


class PrepareJSON(TypedDict):
    """`pyro prepare --json`: which layers it built, pulled or pushed."""

    key: str
    dependencies_layer: str | None
    baseline_layer: str | None
    project_layer: str | None
    built: list[str]
    pulled: list[str]
    pushed: dict[str, Any] | None
    warm: bool
    duration_ms: float
    log: str | None

"""The public JSON shapes: what `--json` prints and what the MCP tools return.

Declared once, here, as TypedDicts: the producers' `to_json` methods are checked against
them (mypy), and the MCP server publishes them as its tools' output schemas, so a client
knows each field's name and type before it calls. Only the standard library's typing is
imported. The MCP server loads this module as it starts; the library and the CLI import it
for type checking only (`if TYPE_CHECKING`), so the daily commands never pay for it.

A change to a shape is a change to pyro's public interface: add fields, never rename one.
"""

# No `from __future__ import annotations` here: below Python 3.12 a TypedDict compiles each
# field's annotation given as a string (about 30 ms for this module, on the MCP server's start).
from typing import Literal, NotRequired, TypedDict

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


class LimitsJSON(TypedDict):
    """A workspace's resource limits, as its record keeps them (MiB; None: no limit)."""

    processes: int
    open_files: int
    file_size_mib: int | None
    address_space_mib: int | None


class LimitsShownJSON(LimitsJSON):
    """The limits as a workspace's status shows them: with how they are enforced."""

    enforced_by: str
    cgroups: str


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
    limits: LimitsShownJSON
    changed_bytes: int | None
    standby: str  # ready | down | off
    ports: list[PortJSON]


class SandboxHandleJSON(TypedDict):
    """How another process finds a running sandbox: its keeper's pid and start time."""

    keeper_pid: int
    keeper_start: int  # in clock ticks since boot


class SnapshotRecordJSON(TypedDict):
    name: str
    layers: list[str]  # the lower stack it returns to, topmost first
    created: float


class WorkspaceRecordJSON(TypedDict):
    """A workspace's record (its `workspace.json`)."""

    id: str
    name: str | None
    environment: str
    network: bool
    labels: dict[str, str]
    base_layers: list[str]
    layers: list[str]
    created: float
    limits: LimitsJSON
    snapshots: dict[str, SnapshotRecordJSON]
    handle: SandboxHandleJSON | None  # None when stopped on purpose
    generation: int  # bumped by every reset
    standby: bool
    spare: SandboxHandleJSON | None  # the pre-booted sandbox a reset switches to
    packages: list[str]
    environment_layer: str | None
    mounts: list[MountJSON]
    env: dict[str, str]
    uid: int | None
    spare_filled: str | None  # what was written into the standby ahead of a reset
    spare_ready: bool  # the standby's agent has answered
    filled: str | None  # what the running sandbox was given ahead, as a standby
    version: int


class WorkspaceCreatedJSON(WorkspaceRecordJSON):
    """workspace_create: the new workspace's record, and its state (running)."""

    state: str


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


class SnapshotRowJSON(SnapshotJSON):
    """`pyro workspace snapshot list --json`'s rows."""

    layers: int  # how many lower layers it returns to


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


class ExecResultJSON(TypedDict):
    """How a command ended."""

    exit_code: int
    duration_ms: float
    timed_out: bool
    signal: int | None  # the signal that ended it
    stdout_truncated: bool
    stderr_truncated: bool


class CommandHistoryJSON(TypedDict):
    """One command a workspace ran, as its history keeps it."""

    time: float  # when it ended, in seconds since the epoch
    argv: list[str]
    cwd: str | None
    exit_code: int
    duration_ms: float
    timed_out: bool
    signal: int | None
    stdout_truncated: bool
    stderr_truncated: bool


class WorkspaceLogsJSON(TypedDict):
    """A workspace's last commands and the tail of its agent's log."""

    id: str
    commands: list[CommandHistoryJSON]
    agent_log: str


class SavedOutputJSON(TypedDict):
    """A slice of one command's saved full output."""

    exec_id: str
    stream: str  # stdout | stderr
    offset: int
    content: str  # UTF-8, invalid bytes replaced
    bytes: int
    total_bytes: int
    next_offset: int | None  # where the next slice starts; None at the end


class LogsToolJSON(TypedDict, total=False):
    """workspace_logs: without exec_id, the history (id, commands, agent_log); with it, a
    slice of that command's saved output (workspace_id, exec_id, stream, offset, content,
    bytes, total_bytes, next_offset)."""

    id: str
    commands: list[CommandHistoryJSON]
    agent_log: str
    workspace_id: str
    exec_id: str
    stream: str
    offset: int
    content: str
    bytes: int
    total_bytes: int
    next_offset: int | None


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


class FileEntryJSON(TypedDict):
    """An entry of a workspace directory's listing."""

    path: str
    type: str  # dir | file | symlink | other
    size: int
    mode: int  # permission bits
    mtime: float
    target: NotRequired[str]  # a symlink's


class FileListingJSON(TypedDict):
    """A workspace directory's listing: `pyro workspace file list --json`."""

    path: str
    entries: list[FileEntryJSON]
    truncated: bool  # there were more than the entries listed
    ok: bool  # always true


class FileListJSON(TypedDict):
    """workspace_file_list."""

    workspace_id: str
    path: str
    entries: list[FileEntryJSON]
    truncated: bool  # there were more than the entries listed
    ok: bool  # always true


class WriteReplyJSON(TypedDict):
    """A file written in a workspace: `pyro workspace file write --json`."""

    path: str
    written: int  # bytes
    ok: bool  # always true


class FileWrittenJSON(TypedDict):
    """workspace_file_write."""

    workspace_id: str
    path: str
    written: int  # bytes
    ok: bool  # always true


class PatchFilesJSON(TypedDict):
    """The files a patch changed: `pyro workspace patch apply --json`."""

    files: list[str]


class PatchAppliedJSON(TypedDict):
    """workspace_patch_apply: the files it changed."""

    workspace_id: str
    files: list[str]


class ExportedJSON(TypedDict):
    """What an export copied, and where to on the host."""

    path: str | None  # in the workspace
    output: str


class ExportJSON(TypedDict):
    """workspace_export."""

    workspace_id: str
    path: str | None
    output: str


class ReadReplyJSON(TypedDict):
    """A slice of a workspace file as its agent read it."""

    path: str
    size: int  # the whole file's
    offset: int
    truncated: bool  # the file goes on past the slice
    ok: bool  # always true


class FileContentJSON(ReadReplyJSON):
    """`pyro workspace file read --json`."""

    content: str  # UTF-8, invalid bytes replaced


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


# -- shells, services and ports (the workspace-full profile) ----------------------------------


class ShellStateJSON(TypedDict):
    """Whether a shell still runs."""

    state: str  # running | exited | lost
    exit_code: int | None  # once exited
    error: NotRequired[str]  # why a lost shell was lost


class ShellOpenedJSON(ShellStateJSON):
    """workspace_shell_open."""

    shell_id: str
    workspace_id: str


class ShellReadJSON(ShellStateJSON):
    """workspace_shell_read: the shell's output from a cursor on."""

    shell_id: str
    output: str
    cursor: int  # where this output starts (later than asked when older bytes were dropped)
    next_cursor: int
    dropped_bytes: int
    more: bool  # more output is there to read now


class ShellWrittenJSON(ShellStateJSON):
    """workspace_shell_write."""

    shell_id: str
    written: int  # bytes


class ShellSignalledJSON(ShellStateJSON):
    """workspace_shell_signal."""

    shell_id: str
    signal: str  # INT, TERM, ...


class ShellClosedJSON(TypedDict):
    """workspace_shell_close."""

    shell_id: str
    closed: bool
    workspace_id: str


class KeptShellOpenedJSON(ShellStateJSON):
    """`pyro workspace shell open --json`: a shell a keeper process holds between commands."""

    shell_id: str
    cwd: str
    rows: int
    cols: int
    workspace_id: str


class KeptShellReadJSON(ShellReadJSON):
    """`pyro workspace shell read --json`."""

    workspace_id: str


class KeptShellWrittenJSON(ShellWrittenJSON):
    """`pyro workspace shell write --json`."""

    workspace_id: str


class KeptShellSignalledJSON(ShellSignalledJSON):
    """`pyro workspace shell signal --json`."""

    workspace_id: str


class KeptShellClosedJSON(ShellStateJSON):
    """`pyro workspace shell close --json`: the shell, as it was when closed."""

    shell_id: str
    closed: bool
    workspace_id: str


class ServiceJSON(TypedDict):
    """A service: a command started in the background (None: the agent did not say)."""

    name: str
    state: str | None  # running | exited
    pid: int | None
    exit_code: int | None
    signal: int | None
    started: float | None  # seconds since the epoch
    ended: float | None
    cwd: str | None
    argv: list[str]


class ServiceStoppedJSON(ServiceJSON):
    killed: bool  # SIGKILL was needed after the timeout


class ServiceLogsInfoJSON(ServiceJSON):
    dropped_bytes: int  # of its log, before the part kept
    output_truncated: bool  # cut at the size asked for


class WorkspaceServiceJSON(TypedDict):
    """workspace_service_start and workspace_service_status."""

    workspace_id: str
    service: ServiceJSON


class WorkspaceServiceStoppedJSON(TypedDict):
    """workspace_service_stop."""

    workspace_id: str
    service: ServiceStoppedJSON


class WorkspaceServiceListJSON(TypedDict):
    """workspace_service_list."""

    workspace_id: str
    services: list[ServiceJSON]


class WorkspaceServiceLogsJSON(ServiceLogsInfoJSON):
    """workspace_service_logs: the service, and its output."""

    workspace_id: str
    output: str  # stdout and stderr interleaved, UTF-8 with invalid bytes replaced


class ProcessJSON(TypedDict):
    """A process in a workspace."""

    pid: int  # as the workspace sees it
    ppid: int
    state: str  # R, S, D, Z, ... as /proc shows it
    argv: list[str]


class PsJSON(TypedDict):
    """`pyro ps --json`: the services, and every process but pyro's own."""

    services: list[ServiceJSON]
    processes: list[ProcessJSON]


class HttpAnswerJSON(TypedDict):
    """An HTTP server's answer."""

    status: int
    reason: str
    headers: dict[str, str]
    body: str  # UTF-8, invalid bytes replaced
    body_truncated: bool
    duration_ms: float


class PortRequestJSON(HttpAnswerJSON):
    """workspace_port_request: the answer, and where it was asked."""

    workspace_id: str
    url: str


# -- the host and the store ----------------------------------------------------------------------


class HostCheckJSON(TypedDict):
    """One of `pyro doctor`'s checks."""

    name: str
    ok: bool
    required: bool  # a failed one means workspaces cannot run here
    detail: str
    fix: str | None


class DoctorJSON(TypedDict):
    """`pyro doctor --json`."""

    ready: bool
    checks: list[HostCheckJSON]


class LayerJSON(TypedDict):
    """A layer in the store: `pyro cache list --json`'s rows, and what gc and prune removed."""

    key: str
    kind: str  # "?" when its metadata is damaged
    size: int  # bytes in its regular files
    created: float  # seconds since the epoch
    last_used: float
    users: list[str]  # the workspaces and projects that use it


class LayerListJSON(TypedDict):
    layers: list[LayerJSON]


class LayersRemovedJSON(TypedDict):
    """`pyro cache gc --json` and `pyro cache prune --json`."""

    removed: list[LayerJSON]
    freed_bytes: int


class DamageJSON(TypedDict):
    """A damaged layer, or one built on a damaged one."""

    key: str
    kind: str
    problem: str
    users: list[str]
    built_on: str | None  # the damaged layer below it, for a dependent
    action: str | None  # what --repair did: deleted | quarantined; None without it
    stopped: list[str]  # running workspaces stopped for it
    error: str | None  # why repairing it failed
    deleted: bool  # action == "deleted" (the older shape)
    quarantined: bool  # action == "quarantined" (the older shape)


class VerifyJSON(TypedDict):
    """`pyro cache verify --json`."""

    damaged: list[DamageJSON]
    repaired: bool


# -- the project -----------------------------------------------------------------------------


class EnvironmentStateJSON(TypedDict):
    name: str  # "host", "debian:12"
    state: str  # host | cached | missing


class BackgroundPrepareJSON(TypedDict):
    """A prepare a git hook started for the current inputs, while it runs."""

    pid: int
    log: str | None  # its output


class DependenciesStateJSON(TypedDict):
    state: str  # warm | stale | missing | nothing to install
    key: str  # of the environment and dependencies the configuration asks for
    reasons: NotRequired[list[str]]  # when stale or missing: why, in words
    background: NotRequired[BackgroundPrepareJSON]


class BaselineStateJSON(TypedDict):
    """The layer of HEAD's files."""

    state: str  # warm | stale | missing | no commits | not a git repository
    commit: NotRequired[str]


class HooksStateJSON(TypedDict):
    """pyro's git hooks in the project's repository."""

    installed: list[str]
    broken: list[str]  # installed, but their interpreter is gone
    problem: str | None  # why git would not run them (core.hooksPath)


class ToolStateJSON(TypedDict):
    """A tool the configuration declares."""

    name: str
    version: str
    state: str  # cached | missing
    fix: NotRequired[str]  # when missing: how to get it


class TrustJSON(TypedDict):
    """May the .pyro.toml's commands and wider access apply (`pyro trust`)?"""

    state: str  # not needed | trusted | untrusted | changed
    trusted: bool
    path: str | None
    needs_trust: list[str]  # the settings that need it


class StatusJSON(TypedDict):
    """`pyro status --json`: is this machine warm for this project."""

    project: str
    project_id: str
    config: str | None  # the .pyro.toml's path; None without one
    warm: bool
    environment: EnvironmentStateJSON
    dependencies: DependenciesStateJSON
    baseline: BaselineStateJSON
    workspaces: list[ProjectWorkspaceJSON]
    sync: str
    cache_bytes: int
    hooks: HooksStateJSON
    tools: list[ToolStateJSON]
    trust: TrustJSON | None


class HookJSON(TypedDict):
    """One git hook as pyro sees it."""

    name: str  # post-checkout, pre-commit, ...
    state: str  # pyro | absent | foreign (another tool's or the user's own)
    legacy: bool  # the hook that was there before pyro's, kept as <name>.legacy, runs first
    python: str | None  # the interpreter pyro's script calls
    python_ok: bool
    project: str | None  # the project directory, relative to the working tree's top


class HooksJSON(TypedDict):
    """`pyro hooks status --json` and `pyro hooks install --json`."""

    hooks_dir: str
    shared_with_worktrees: bool
    installed: list[str]
    broken: list[str]
    problem: str | None  # why git would not run them (core.hooksPath)
    hooks: list[HookJSON]


class HooksRemovedJSON(HooksJSON):
    """`pyro hooks uninstall --json`."""

    removed: list[str]


class EcosystemJSON(TypedDict):
    """A lockfile ecosystem `pyro init` detected."""

    name: str  # uv, npm, cargo, ...
    directory: str  # relative to the root; "." for the root itself
    keys: list[str]  # the files that key the dependency snapshot
    run: list[str]  # the commands that install the dependencies
    project: list[str]  # the commands that install the project itself
    project_keys: list[str]  # the metadata files that key that install


class InitJSON(TypedDict):
    """`pyro init --json`: the .pyro.toml written (or, for a dry run, that would be)."""

    root: str
    path: str
    ecosystems: list[EcosystemJSON]
    content: str
    existed: bool
    written: bool
    backup: str | None  # where a replaced file went


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


class TransferLayerJSON(TypedDict):
    """One layer of a push or pull: sent (or pulled) now, or already there."""

    kind: str  # "environment", "tool", "dependencies"
    key: str
    action: Literal["sent", "present", "pulled"]
    blob_size: int  # the compressed blob's bytes


class TransferJSON(TypedDict):
    """`pyro cache push|pull --json`, and `pyro prepare --push`'s `pushed`."""

    remote: str
    tag: str
    found: bool  # False: the registry has no manifest for the key (pull only)
    layers: list[TransferLayerJSON]
    bytes: int  # of the blobs sent or pulled


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
    pushed: TransferJSON | None
    warm: bool
    duration_ms: float
    log: str | None

"""Workspaces: create, find, run in, reset, snapshot and delete them.

This is the library behind `pyro workspace ...` (and the MCP server). A workspace is a record
on disk plus a sandbox started by the runtime; it survives the process that created it, and
any later process finds it again by id or name.

Layer stack of a running workspace (topmost first):
    upper.<generation>        writable, private to this workspace, discarded by reset
    snapshot layers           read-only, only after a reset to a snapshot
    seed / baseline layers    read-only, shared with other workspaces

Reset is O(1): the upper dir is renamed away and a sandbox over an empty one takes over. To
make that a matter of milliseconds rather than a sandbox boot, each workspace keeps a
standby sandbox (the next generation, over the baseline layers, with an empty upper dir)
booted ahead of time; a reset to the baseline kills the current sandbox and promotes the
standby, whose socket is renamed into place. Costs one idle agent per workspace; `standby`
in the record turns it off.

A caller that knows what the next reset will write (the project loop puts the host's synced
files back) passes `fill`: the next standby then boots in a thread after the call returns,
holding the workspace's lock, and `fill` writes into it once its agent answers. The name
`fill` gives what it wrote is kept with the standby, and a later reset (or a create taking
it from the pool) promotes it only if its `accept` accepts that name: the caller then writes
only what changed since. A standby left half written is never promoted.
"""

from __future__ import annotations

import builtins  # `list` is also a method of Workspaces
import contextlib
import functools
import json
import os
import time
from _thread import get_ident
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

from pyro_loop import records
from pyro_loop.errors import (
    AgentUnavailableError,
    ConflictError,
    HostUnsupportedError,
    InvalidInputError,
    NotFoundError,
)
from pyro_loop.fs.util import DISK_FULL_ERRNOS, move_to_trash, remove_tree, unless_disk_full
from pyro_loop.home import pyro_home
from pyro_loop.identity import hand_over, sandbox_owner
from pyro_loop.locking import acquire_lock, file_lock
from pyro_loop.names import check_name
from pyro_loop.procutil import remove_in_background, run_in_background, settle_background
from pyro_loop.records import dataclass
from pyro_loop.runtime import HOME_DIR, Limits, Mount, Runtime, SandboxSpec
from pyro_loop.store.layers import Layer, LayerStore
from pyro_loop.workspace import secrets as secretenv
from pyro_loop.workspace.pool import Pool, Pooled, pool_key
from pyro_loop.workspace.record import FILLING, Snapshot, WorkspaceDir, WorkspaceRecord

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pyro_loop.progress import OnProgress
    from pyro_loop.shapes import (
        CommandHistoryJSON,
        ExportedJSON,
        PatchFilesJSON,
        WorkspaceJSON,
        WorkspaceLogsJSON,
    )
    from pyro_loop.workspace.client import (
        AgentClient,
        Cancellation,
        ExecChannel,
        ExecResult,
        OutputSink,
    )
    from pyro_loop.workspace.diff import Change
    from pyro_loop.workspace.ports import Mapping
    from pyro_loop.workspace.services import ServiceClient

BASELINE = "baseline"
READY_TIMEOUT = 15.0

if TYPE_CHECKING:
    # A background job (Workspaces._fill_standby), the workspace lock it holds, and the stop
    # of the sandbox it replaces.
    _Job = tuple[Callable[[], None], int, Callable[[], builtins.list[int]] | None]
    # Writes into a standby sandbox ahead of its use; returns its name for what it wrote.
    Fill = Callable[[AgentClient], str]
    # May a standby holding what a fill named so take over?
    Accept = Callable[[str], bool]


@dataclass(frozen=True)
class WorkspaceStatus:
    record: WorkspaceRecord
    state: str  # "running" | "stopped" | "dead" | "unresponsive"
    detail: str
    changed_bytes: int | None = None
    standby: str = "off"  # "ready" | "down" | "off": the pre-booted sandbox a reset switches to
    ports: tuple[Mapping, ...] = ()  # published at 127.0.0.1 on the host

    def to_json(self) -> WorkspaceJSON:
        r = self.record
        return {
            "id": r.id,
            "name": r.name,
            "state": self.state,
            "detail": self.detail,
            "environment": r.environment,
            "packages": r.packages,
            "environment_layer": r.environment_layer,
            "network": "egress" if r.network else "off",
            "labels": r.labels,
            "created": r.created,
            "layers": r.layers,
            "mounts": [m.to_json() for m in r.mounts],
            "base_layers": r.base_layers,
            "snapshots": sorted(r.snapshots),
            "limits": r.limits.describe(),
            "changed_bytes": self.changed_bytes,
            "standby": self.standby,
            "ports": [m.to_json() for m in self.ports],
        }


class Workspaces:
    """All workspaces under one pyro home."""

    def __init__(self, home: Path | None = None, runtime: Runtime | None = None) -> None:
        self.home = home or pyro_home()
        self.store = LayerStore(self.home)
        if runtime is None:
            from pyro_loop.runtime.bwrap import BwrapRuntime

            runtime = BwrapRuntime()
        self.runtime = runtime
        self.root = self.home / "workspaces"
        self.pool = Pool(self.home, runtime)
        # By thread (an MCP server calls from several): how deep in `deferring` blocks it is,
        # and the jobs they hold back, each with the workspace lock it holds and the stop of
        # the sandbox it replaces.
        self._held: dict[int, tuple[builtins.list[int], builtins.list[_Job]]] = {}
        # Why the last standby booted in the background is missing (its failure is no one
        # call's: the next reset boots a sandbox and fails with the cause, if it persists).
        self.standby_error: BaseException | None = None

    # -- finding ------------------------------------------------------------------------------

    def _all(self) -> list[WorkspaceDir]:
        if not self.root.is_dir():
            return []
        return sorted(
            (WorkspaceDir(p) for p in self.root.iterdir() if (p / "workspace.json").is_file()),
            key=lambda d: d.root.name,
        )

    def resolve(self, ref: str) -> WorkspaceDir:
        """Find a workspace by id, name, or unambiguous id prefix."""
        if not ref or "/" in ref or ref.startswith("."):
            raise InvalidInputError(f"invalid workspace id or name: {ref!r}")
        exact = self.root / ref
        if (exact / "workspace.json").is_file():
            return WorkspaceDir(exact)
        candidates = self._all()
        by_name = [d for d in candidates if d.load().name == ref]
        if by_name:
            return by_name[0]
        by_prefix = [d for d in candidates if len(ref) >= 4 and d.root.name.startswith(ref)]
        if len(by_prefix) == 1:
            return by_prefix[0]
        if len(by_prefix) > 1:
            raise InvalidInputError(f"{ref!r} matches several workspaces: use more of the id")
        raise NotFoundError(
            f"no workspace with id or name {ref!r}", hint="`pyro workspace list` shows them"
        )

    def exists(self, workspace_id: str) -> bool:
        """Is there a workspace with this id (not a name or a prefix)?"""
        return "/" not in workspace_id and (self.root / workspace_id / "workspace.json").is_file()

    def list(self) -> list[WorkspaceStatus]:
        return [self._status(d, d.load(), probe=False) for d in self._all()]

    def records(self) -> builtins.list[WorkspaceRecord]:
        """Every workspace's record, as `list` has them, without looking at its sandbox."""
        return [d.load() for d in self._all()]

    # -- lifecycle ----------------------------------------------------------------------------

    def create(
        self,
        *,
        environment: str = "host",
        packages: builtins.list[str] | None = None,
        seed: Path | None = None,
        layers: builtins.list[str] | None = None,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        network: bool = False,
        limits: Limits | None = None,
        standby: bool = True,
        mounts: builtins.list[Mount] | None = None,
        env: dict[str, str] | None = None,
        on_progress: OnProgress | None = None,
        secrets: dict[str, str] | None = None,
        accept: Accept | None = None,
        fill: Fill | None = None,
    ) -> WorkspaceRecord:
        """Create and start a workspace from a seed path or from layers already in the store.

        `environment` is `host` or `debian:<release>` (with extra `packages`); a Debian
        environment is built into the store the first time it is asked for (tens of seconds,
        reported through `on_progress`), and reused from then on. `mounts` (tool layers,
        host toolchains) and `env` (PATH) hold for every sandbox of the workspace's life.
        `accept` and `fill`: see the module doc (a pooled standby is taken over as a reset
        promotes one; the record's `filled` says what it holds).
        """
        from pyro_loop.store import environments  # imported here: only create needs it

        spec = environments.parse_environment(environment, packages or ())
        if name is not None:
            check_name(name, what="workspace name")
        if seed is not None and layers:
            raise InvalidInputError("give a seed path or layers, not both")
        # Until the record names its layers, garbage collection must not remove them.
        with self.store.in_use():
            self.store.clean_leftovers()
            env_layer = environments.ensure_environment(self.store, spec, on_progress=on_progress)
            if seed is not None:
                from pyro_loop.store.seed import import_seed

                stack = [import_seed(self.store, seed).key]
            elif layers:
                stack = [self.store.require(key).key for key in layers]
            else:
                stack = [self.store.empty_layer().key]
            ws_id = os.urandom(6).hex()
            record = WorkspaceRecord(
                id=ws_id,
                name=name,
                environment=spec.name,
                network=network,
                labels=dict(labels or {}),
                base_layers=stack,
                layers=list(stack),
                created=time.time(),
                limits=limits or Limits(),
                standby=standby,
                packages=list(spec.extra_packages),
                environment_layer=env_layer.key if env_layer is not None else None,
                mounts=list(mounts or ()),
                env=dict(env or {}),
            )
            wdir = WorkspaceDir(self.root / ws_id)
            key = pool_key(record)
            self.root.mkdir(parents=True, exist_ok=True)
            with file_lock(self.root / "names.lock"):
                if name is not None and any(d.load().name == name for d in self._all()):
                    raise ConflictError(f"a workspace named {name!r} exists already")
                # A sandbox booted for these layers.
                pooled = self.pool.take(key, wdir.root, accept)
                if pooled is None:
                    wdir.root.mkdir(parents=True, mode=0o700)
                    record.uid = self._new_uid()
                else:
                    record.handle, record.generation = pooled.handle, pooled.generation
                    record.uid, record.filled = pooled.uid, pooled.filled
                if sandbox_owner() is not None:
                    wdir.root.chmod(0o711)  # the sandbox uid must reach its upper and work dirs
                secretenv.save(wdir.root, secrets or {})  # beside the record, never in it
                wdir.save(record)
        self._start_new(wdir, record, pooled, fill)
        return record

    def _start_new(
        self, wdir: WorkspaceDir, record: WorkspaceRecord, pooled: Pooled | None, fill: Fill | None
    ) -> None:
        """Start a new workspace's sandbox (or take over the pooled one) and its standby;
        on failure, nothing of it is left."""
        lock = acquire_lock(wdir.lock_path)
        handed = False  # to the thread that prepares the next standby
        try:
            try:
                if pooled is None:
                    self._launch(wdir, record)
                else:
                    self._adopt(wdir, record, ready=pooled.ready)
                if fill is None:
                    self._start_spare(wdir, record)
            except BaseException:
                with contextlib.suppress(Exception):
                    self._remove(wdir, record)
                raise
            if fill is not None:
                handed = True
                self._standby_in_background(lock, wdir, fill)
        finally:
            if not handed:
                os.close(lock)

    def _new_uid(self) -> int | None:
        from pyro_loop.runtime.idmap import new_workspace_uid  # ctypes: only when creating

        return new_workspace_uid(self.home, self._uids())

    def _uids(self) -> set[int]:
        """The uids the store's workspaces and pooled sandboxes run as (under root)."""
        records = (d.load().uid for d in self._all())
        return {uid for uid in records if uid is not None} | self.pool.uids()

    def start(self, ref: str) -> WorkspaceRecord:
        """Start a stopped (or crashed) workspace again; its files are kept."""
        wdir = self.resolve(ref)
        with file_lock(wdir.lock_path):
            record = wdir.load()
            if record.handle is not None and self.runtime.is_running(record.handle):
                return record
            self._halt(wdir, record)  # crashed: make sure nothing is left of it
            _sweep_partial_writes(wdir.upper(record.generation))
            self._give_own_uid(wdir, record)
            self._launch(wdir, record)
            self._start_spare(wdir, record)
            return record

    def _give_own_uid(self, wdir: WorkspaceDir, record: WorkspaceRecord) -> None:
        """Under root, a workspace made before each had a uid of its own (all ran as the
        layer owner) gets one on its next start, and its files with it."""
        owner = sandbox_owner()
        if record.uid is not None or owner is None:
            return
        with file_lock(self.root / "names.lock"):
            uid = self._new_uid()
        if uid is None or uid == owner:
            return  # no idmapped mounts here: it stays the layer owner's
        hand_over(wdir.upper(record.generation), recursive=True, uid=uid)
        record.uid = uid
        wdir.save(record)

    def stop(self, ref: str) -> WorkspaceRecord:
        """Stop every process in the workspace; its files are kept for `start`."""
        wdir = self.resolve(ref)
        with file_lock(wdir.lock_path):
            record = wdir.load()
            self._halt(wdir, record)
            return record

    def delete(self, ref: str, *, keep_standby: bool = False) -> WorkspaceRecord:
        """Stop the workspace and remove all it owns (shared layers stay in the store).

        `keep_standby` keeps its standby sandbox in the pool (workspace/pool.py) for the next create
        from the same layers, which then takes it instead of booting one.
        """
        wdir = self.resolve(ref)
        with file_lock(wdir.lock_path):
            record = wdir.load()
            self._remove(wdir, record, pool=keep_standby)
            return record

    def reset(
        self,
        ref: str,
        *,
        snapshot: str = BASELINE,
        accept: Accept | None = None,
        fill: Fill | None = None,
    ) -> WorkspaceRecord:
        """Discard every change since the baseline (or the named snapshot): O(1) in files.
        `accept` and `fill`: see the module doc; the record's `filled` names what the
        promoted standby holds (None: its layers only)."""
        wdir = self.resolve(ref)
        lock = acquire_lock(wdir.lock_path)
        handed = False  # to the thread that prepares the next standby
        halt = None  # the old sandbox's stop, when it is that thread's first step
        try:
            record = wdir.load()
            layers = _reset_layers(record, snapshot)
            spare = record.spare
            filled = record.spare_filled
            usable = filled is None or (filled != FILLING and accept is not None and accept(filled))
            promote = (
                layers == record.base_layers
                and spare is not None
                and usable
                and self.runtime.is_running(spare)
            )
            dying, halt, moved = self._retire(wdir, record, later=promote and fill is not None)
            if not promote:
                self._stop_spare(wdir, record)
            old = [wdir.upper(record.generation), wdir.work(record.generation)]
            if promote:
                old.append(wdir.info)  # the replaced sandbox's, if still there
            trash = [move_to_trash(p, wdir.trash) for p in old if p.exists()] + moved
            record.generation += 1
            record.layers = list(layers)
            if promote:
                trash.append(self._promote(wdir, record))
            else:
                self._launch(wdir, record)
            if fill is None:
                self._start_spare(wdir, record)
            else:
                handed = True
                self._standby_in_background(lock, wdir, fill, trash=trash, dying=dying, halt=halt)
                trash, dying = [], []
        finally:
            if not handed:
                try:
                    if halt is not None:  # failed before the thread took it over
                        halt()
                finally:
                    os.close(lock)
        remove_in_background(trash, after=dying)
        return record

    def _retire(
        self, wdir: WorkspaceDir, record: WorkspaceRecord, *, later: bool
    ) -> tuple[builtins.list[int], Callable[[], builtins.list[int]] | None, builtins.list[Path]]:
        """Stop the sandbox a reset replaces, without waiting: the pids still dying; or,
        `later`, its stop (for the background thread), and its info file moved to the trash
        (the stop reads it; a promoted standby's takes its place)."""
        handle, record.handle = record.handle, None
        if handle is None:
            return [], None, []
        spec = self._spec(wdir, record)
        if not later or not wdir.info.exists():
            return self.runtime.stop(handle, spec, wait=False), None, []
        info = move_to_trash(wdir.info, wdir.trash)
        spec = records.replace(spec, info_path=info)
        return [], functools.partial(self.runtime.stop, handle, spec, wait=False), [info]

    def _promote(self, wdir: WorkspaceDir, record: WorkspaceRecord) -> Path:
        """Make the standby the workspace's sandbox (its files are in place already); where
        the record it replaced is, for the trash."""
        os.replace(wdir.spare_socket, wdir.socket)
        os.rename(wdir.spare_info, wdir.info)
        ready = record.spare_ready
        record.handle, record.spare, record.filled = record.spare, None, record.spare_filled
        record.spare_filled, record.spare_ready = None, False
        # The old record is deleted with the trash, off the reset's path.
        kept = wdir.trash / f"workspace.json.{os.urandom(6).hex()}"
        wdir.save(record, keep=kept)
        if not ready:
            self._wait_ready(wdir, record)
        return kept

    def relayer(
        self,
        ref: str,
        *,
        layers: builtins.list[str],
        environment: str,
        packages: builtins.list[str],
        labels: dict[str, str],
        keep: Callable[[Path], None] | None = None,
        on_progress: OnProgress | None = None,
        mounts: builtins.list[Mount] | None = None,
        env: dict[str, str] | None = None,
    ) -> WorkspaceRecord:
        """Put the workspace on other base layers and environment, keeping its changes.

        Its sandbox (and standby) restart over `layers`; `keep(upper)` first removes from
        its changes what belonged to the layers replaced. `labels` are updated, and so are
        `mounts` and `env` when given.
        """
        from pyro_loop.store import environments

        spec = environments.parse_environment(environment, packages)
        with self.store.in_use():
            env_layer = environments.ensure_environment(self.store, spec, on_progress=on_progress)
            stack = [self.store.require(key).key for key in layers] or [
                self.store.empty_layer().key
            ]
            wdir = self.resolve(ref)
            with file_lock(wdir.lock_path):
                record = wdir.load()
                self._halt(wdir, record)
                if keep is not None:
                    keep(wdir.upper(record.generation))
                # Layers above the base (a snapshot reset to) stay above the new base.
                above = record.layers[: len(record.layers) - len(record.base_layers)]
                record.base_layers, record.layers = stack, [*above, *stack]
                record.environment, record.packages = spec.name, list(spec.extra_packages)
                record.environment_layer = env_layer.key if env_layer is not None else None
                record.labels.update(labels)
                if mounts is not None:
                    record.mounts = list(mounts)
                if env is not None:
                    record.env = dict(env)
                wdir.save(record)
                self._launch(wdir, record)
                self._start_spare(wdir, record)
                return record

    def status(self, ref: str) -> WorkspaceStatus:
        wdir = self.resolve(ref)
        return self._status(wdir, wdir.load(), probe=True)

    # -- snapshots ----------------------------------------------------------------------------

    def snapshot_create(self, ref: str, name: str) -> Snapshot:
        """Freeze the workspace's current files as a named, read-only layer: O(changed files)."""
        check_name(name, what="snapshot name")
        if name == BASELINE:
            raise InvalidInputError(f"{BASELINE!r} is reserved for the create-time state")
        wdir = self.resolve(ref)
        with file_lock(wdir.lock_path):
            record = wdir.load()
            if name in record.snapshots:
                raise ConflictError(f"workspace {record.id} has a snapshot {name!r} already")
            running = record.handle is not None and self.runtime.is_running(record.handle)
            # Overlayfs forbids changing an upper dir behind the mount's back, but reading it
            # while every process in the workspace is stopped gives a consistent copy.
            freeze = self._client(wdir).frozen() if running else contextlib.nullcontext()
            from pyro_loop.store.layercopy import copy_and_digest

            with freeze, self.store.staging() as staging:
                tree = staging / "tree"
                digest = copy_and_digest(wdir.upper(record.generation), tree)
                with self.store.in_use():  # until the record references the new layer
                    layer = self.store.publish(
                        tree,
                        kind="snapshot",
                        key=digest,
                        digest=digest,
                        inputs={"workspace": record.id, "snapshot": name},
                    )
                    snap = Snapshot(name, [layer.key, *record.layers], created=time.time())
                    record.snapshots[name] = snap
                    wdir.save(record)
            return snap

    def take_changes(self, ref: str, dest: Path) -> None:
        """Move what a stopped workspace changed (its upper dir) to `dest`, a new layer tree,
        leaving the workspace with none: for prepare, which deletes its sandbox next and
        would otherwise copy every installed file once more."""
        wdir = self.resolve(ref)
        with file_lock(wdir.lock_path):
            record = wdir.load()
            if record.handle is not None and self.runtime.is_running(record.handle):
                raise ConflictError(f"workspace {record.id} is running: stop it first")
            upper = wdir.upper(record.generation)
            from pyro_loop.store.layercopy import adopt_upper, copy_and_digest

            if not adopt_upper(upper, dest):
                copy_and_digest(upper, dest)

    def snapshot_list(self, ref: str) -> builtins.list[Snapshot]:
        record = self.resolve(ref).load()
        base = Snapshot(BASELINE, record.base_layers, record.created)
        return [base, *sorted(record.snapshots.values(), key=lambda s: s.created)]

    def snapshot_delete(self, ref: str, name: str) -> None:
        wdir = self.resolve(ref)
        with file_lock(wdir.lock_path):
            record = wdir.load()
            if name not in record.snapshots:
                raise NotFoundError(f"workspace {record.id} has no snapshot {name!r}")
            del record.snapshots[name]
            wdir.save(record)

    # -- running and files --------------------------------------------------------------------

    def client(self, ref: str) -> AgentClient:
        """A client for a running workspace's agent (fails with the fix if it is not running)."""
        return self._running_client(self.resolve(ref))

    def _running_client(self, wdir: WorkspaceDir) -> AgentClient:
        record = wdir.load()
        if record.handle is None or not self.runtime.is_running(record.handle):
            what = "stopped" if record.handle is None else "not running (its sandbox exited)"
            raise AgentUnavailableError(
                f"workspace {record.id} is {what}",
                hint=f"`pyro workspace start {record.name or record.id}` brings it back",
            )
        return self._client(wdir)

    def exec(
        self,
        ref: str,
        argv: builtins.list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        on_output: OutputSink | None = None,
        cancel: Cancellation | None = None,
        stdin: BinaryIO | None = None,
        secrets: dict[str, str] | None = None,
    ) -> ExecResult:
        """Run `argv` in the workspace; `cancel` lets another thread stop it (see Cancellation).
        `stdin` is passed to the command until its end (else the command's stdin is empty).
        `secrets` join the workspace's own (workspace/secrets.py)."""
        with self.open_exec(
            ref, argv, cwd=cwd, env=env, timeout=timeout, stdin=stdin is not None, cancel=cancel,
            secrets=secrets,
        ) as channel:  # fmt: skip
            return channel.run(stdin=stdin, on_output=on_output)

    @contextlib.contextmanager
    def open_exec(
        self,
        ref: str,
        argv: builtins.list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: bool = False,
        tty: tuple[int, int] | None = None,
        cancel: Cancellation | None = None,
        secrets: dict[str, str] | None = None,
    ) -> Iterator[ExecChannel]:
        """Start `argv` and hand back its channel (input, terminal size, signals; output and
        the result): for shells and piped input. The command is recorded in the history
        when it ends within the block (its argv, never its environment). The workspace's
        secrets and `secrets` reach its environment, and are masked in its output."""
        if not argv:
            raise InvalidInputError("no command given", hint="pyro workspace exec ID -- CMD...")
        wdir = self.resolve(ref)
        client = self._running_client(wdir)
        hidden = {**secretenv.load(wdir.root), **(secrets or {})}
        with client.open_exec(
            argv, cwd=cwd, env={**hidden, **(env or {})}, timeout=timeout, stdin=stdin, tty=tty,
            cancel=cancel,
        ) as channel:  # fmt: skip
            channel.redact(hidden.values())
            yield channel
        if channel.result is not None:
            entry: CommandHistoryJSON = {
                "time": time.time(),
                "argv": argv,
                "cwd": cwd,
                **channel.result.to_json(),
            }
            # The history is a convenience: a full disk (often the command's own doing) must
            # not turn a finished command into a failure.
            with unless_disk_full(), wdir.history.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    def services(self, ref: str, *, secrets: dict[str, str] | None = None) -> ServiceClient:
        """The workspace's services: started with its secrets (and `secrets`) in their
        environment, which their logs show masked."""
        from pyro_loop.workspace.services import ServiceClient

        wdir = self.resolve(ref)
        hidden = {**secretenv.load(wdir.root), **(secrets or {})}
        return ServiceClient(self._running_client(wdir), secrets=hidden)

    def publish(self, ref: str, mappings: builtins.list[Mapping]) -> builtins.list[Mapping]:
        """Make each port of the workspace reachable at 127.0.0.1 on the host (workspace/ports.py)
        until the workspace stops; returns every port it publishes now."""
        from pyro_loop.workspace import ports

        wdir = self.resolve(ref)
        with file_lock(wdir.lock_path):
            self._running_client(wdir)
            return ports.publish(wdir.root, wdir.socket, mappings)

    def published(self, ref: str) -> builtins.list[Mapping]:
        from pyro_loop.workspace import ports

        return ports.published(self.resolve(ref).root)

    def logs(self, ref: str, *, limit: int = 50) -> WorkspaceLogsJSON:
        wdir = self.resolve(ref)
        history: list[CommandHistoryJSON] = []
        if wdir.history.exists():
            for line in wdir.history.read_text().splitlines()[-limit:]:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if isinstance(entry, dict):  # pyro's own lines (open_exec); a cut one is not
                        history.append(cast("CommandHistoryJSON", entry))
        agent_log = wdir.log.read_text(errors="replace")[-8192:] if wdir.log.exists() else ""
        return {"id": wdir.root.name, "commands": history, "agent_log": agent_log}

    def changes(self, ref: str) -> builtins.list[Change]:
        """What the workspace changed relative to its create-time baseline."""
        wdir = self.resolve(ref)
        record = wdir.load()
        base = record.base_layers
        extra = record.layers[: len(record.layers) - len(base)]
        above = [wdir.upper(record.generation)] + [self.store.require(k).tree for k in extra]
        from pyro_loop.workspace.diff import compute_changes

        changes = compute_changes([self.store.require(k).tree for k in base], above)
        # The sandbox's home (shells' histories, tools' caches) is not the project's output.
        return [c for c in changes if c.path.split("/", 1)[0] != HOME_DIR]

    def export(
        self,
        ref: str,
        path: str,
        output: Path,
        *,
        force: bool = False,
        max_bytes: int | None = None,
    ) -> ExportedJSON:
        from pyro_loop.workspace.transfer import export_path

        return export_path(self.client(ref), path, output, force=force, max_bytes=max_bytes)

    def apply_patch(self, ref: str, patch: str) -> PatchFilesJSON:
        from pyro_loop.workspace.transfer import apply_patch

        return apply_patch(self.client(ref), patch)

    # -- internals ----------------------------------------------------------------------------

    def _client(self, wdir: WorkspaceDir) -> AgentClient:
        # Imported here: the commands that only read records (status, list) need no socket.
        from pyro_loop.workspace.client import AgentClient

        return AgentClient(wdir.socket)

    def _spec(
        self, wdir: WorkspaceDir, record: WorkspaceRecord, *, spare: bool = False
    ) -> SandboxSpec:
        generation = record.generation + 1 if spare else record.generation
        layers = record.base_layers if spare else record.layers
        return SandboxSpec(
            store_root=self.home,
            lowers=[f"layers/{key}/tree" for key in layers],
            upper=wdir.upper(generation),
            work=wdir.work(generation),
            socket_path=wdir.spare_socket if spare else wdir.socket,
            info_path=wdir.spare_info if spare else wdir.info,
            log_path=wdir.log,
            environment=record.environment,
            root_layer=(
                f"layers/{record.environment_layer}/tree" if record.environment_layer else None
            ),
            network=record.network,
            limits=record.limits,
            mounts=tuple(record.mounts),
            env=tuple(sorted(record.env.items())),
            uid=record.uid,
        )

    def _boot(
        self, wdir: WorkspaceDir, record: WorkspaceRecord, *, spare: bool, filling: bool = False
    ) -> SandboxSpec:
        """Start a sandbox over the record's layers (or the standby's, which `filling` marks
        as being written into); does not wait for it."""
        layers: list[Layer] = [
            self.store.require(key) for key in (record.base_layers if spare else record.layers)
        ]
        if record.environment_layer is not None:
            layers.append(self._environment_layer(record))
        for layer in layers:
            self.store.touch(layer)
        spec = self._spec(wdir, record, spare=spare)
        if spare and spec.upper.exists():  # a standby's upper must start empty
            move_to_trash(spec.upper, wdir.trash)
        spec.upper.mkdir(exist_ok=True)
        if spec.work.exists():  # left by a crash; overlayfs wants a clean work dir
            move_to_trash(spec.work, wdir.trash)
        spec.work.mkdir()
        hand_over(spec.upper, uid=record.uid)
        hand_over(spec.work, uid=record.uid)
        if sandbox_owner() is not None:
            # Under root, the workspace uid's own: no other local user, and no other
            # workspace, reaches anything the workspace wrote (a workspace made by an older
            # pyro is closed on its next start).
            spec.upper.chmod(0o700)
            spec.work.chmod(0o700)
        handle = self.runtime.start(spec)
        if spare:
            record.spare, record.spare_ready = handle, False
            record.spare_filled = FILLING if filling else None
        else:
            record.handle, record.filled = handle, None
        wdir.save(record)
        return spec

    def _environment_layer(self, record: WorkspaceRecord) -> Layer:
        assert record.environment_layer is not None
        layer = self.store.get(record.environment_layer)
        if layer is None:
            raise NotFoundError(
                f"the {record.environment} environment of workspace {record.id} is no longer"
                " in the store",
                hint="create a new workspace with the same --env: it rebuilds the environment",
            )
        return layer

    def _adopt(self, wdir: WorkspaceDir, record: WorkspaceRecord, *, ready: bool) -> None:
        """Take over a pooled sandbox (see workspace/pool.py); boot one if it does not answer.
        `ready`: its agent answered before (and its keeper still runs: Pool.take)."""
        if ready:
            return
        try:
            self._wait_ready(wdir, record)
        except (AgentUnavailableError, HostUnsupportedError):
            self._launch(wdir, record)

    def _launch(self, wdir: WorkspaceDir, record: WorkspaceRecord) -> None:
        """Start the workspace's sandbox and wait for its agent to answer."""
        self._boot(wdir, record, spare=False)
        self._wait_ready(wdir, record)

    def _start_spare(self, wdir: WorkspaceDir, record: WorkspaceRecord) -> None:
        """Boot the next generation's sandbox ahead of time, so a reset only switches to it."""
        if record.standby and record.spare is None:
            self._boot(wdir, record, spare=True)

    def _standby_in_background(
        self,
        lock: int,
        wdir: WorkspaceDir,
        fill: Fill,
        *,
        trash: Sequence[Path] = (),
        dying: Sequence[int] = (),
        halt: Callable[[], builtins.list[int]] | None = None,
    ) -> None:
        """Hand the workspace's lock (a descriptor) to a thread that stops the replaced
        sandbox (`halt`, which returns the pids still dying), boots the next standby, lets
        `fill` write into it, removes `trash` (once the dying are gone) and then lets go of
        the lock: the caller returns meanwhile. The lock is the thread's from now on.

        The replaced sandbox is stopped there rather than on the caller's path (SIGKILL to its
        keeper's group and its init took 0.3 to 1 ms on a busy machine): it can no longer be
        reached (its socket was replaced) and was stopped without waiting anyway."""
        job = functools.partial(self._fill_standby, lock, wdir, fill, trash=list(trash),
                                dying=list(dying), halt=halt)  # fmt: skip
        held = self._held.get(get_ident())
        if held is None:
            self._hand_over([(job, lock, halt)])
        else:
            held[1].append((job, lock, halt))

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """The standby work the calls in the block (in this thread) hand to the background
        starts when the block ends: the caller's own next steps (writing files into the new
        sandbox) do not share the interpreter with it meanwhile."""
        depth, jobs = self._held.setdefault(get_ident(), ([0], []))
        depth[0] += 1
        try:
            yield
        finally:
            depth[0] -= 1
            if not depth[0]:
                del self._held[get_ident()]
                self._hand_over(jobs)

    def _hand_over(self, jobs: builtins.list[_Job]) -> None:
        for job, lock, halt in jobs:
            try:
                run_in_background(job)
            except BaseException:
                try:
                    if halt is not None:
                        halt()
                finally:
                    os.close(lock)  # nothing prepared: the next reset boots its sandbox itself
                raise

    def _fill_standby(
        self,
        lock: int,
        wdir: WorkspaceDir,
        fill: Fill,
        *,
        trash: builtins.list[Path],
        dying: builtins.list[int],
        halt: Callable[[], builtins.list[int]] | None,
    ) -> None:
        from pyro_loop.workspace.client import AgentClient

        # The interpreter goes back to the caller first: a new thread keeps it until it blocks
        # (or for the switch interval), which the caller's `start` would wait out.
        time.sleep(0)
        try:
            if halt is not None:
                dying = dying + halt()
            record = wdir.load()
            if record.standby and record.spare is None and record.handle is not None:
                self._boot(wdir, record, spare=True, filling=True)
                try:
                    client = AgentClient(wdir.spare_socket)
                    client.wait_ready(READY_TIMEOUT)
                    record.spare_filled, record.spare_ready = fill(client), True
                    wdir.save(record)
                except BaseException:
                    self._stop_spare(wdir, record)  # never half written: booted anew later
                    raise
            self.standby_error = None
        except Exception as exc:  # the next reset boots its sandbox itself
            self.standby_error = exc
        finally:
            os.close(lock)
            remove_in_background(trash, after=dying)

    def settle(self) -> None:
        """Wait for the standby sandboxes being prepared in the background (not for those a
        `deferring` block around this call holds back)."""
        settle_background()

    def _stop_spare(self, wdir: WorkspaceDir, record: WorkspaceRecord) -> None:
        if record.spare is not None:
            spec = self._spec(wdir, record, spare=True)
            self.runtime.stop(record.spare, spec)
            record.spare, record.spare_filled, record.spare_ready = None, None, False
            _save_if_room(wdir, record)
            for path in (spec.upper, spec.work):
                if path.exists():
                    move_to_trash(path, wdir.trash)

    def _wait_ready(self, wdir: WorkspaceDir, record: WorkspaceRecord) -> None:
        handle = record.handle
        if handle is None:
            raise AgentUnavailableError(f"workspace {record.id} has no sandbox to wait for")
        client = self._client(wdir)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                client.ping(timeout=max(0.05, deadline - time.monotonic()))
                return
            except AgentUnavailableError:
                if not self.runtime.is_running(handle) or time.monotonic() > deadline:
                    break
                time.sleep(0.001)
        self.runtime.stop(handle, self._spec(wdir, record))
        record.handle = None
        wdir.save(record)
        raise sandbox_failure(wdir.log)

    def _halt(self, wdir: WorkspaceDir, record: WorkspaceRecord) -> None:
        from pyro_loop.workspace import ports, shellkeeper

        ports.close_all(wdir.root)  # published ports live as long as the sandbox
        shellkeeper.close_all(wdir.root)  # and so do the command line's shell sessions
        # Every process dies before anything is written: stopping must work on a full disk
        # (often full of this workspace's own files), where the record cannot be rewritten.
        if record.handle is not None:
            self.runtime.stop(record.handle, self._spec(wdir, record))
        self._stop_spare(wdir, record)
        if record.handle is not None:
            record.handle = None
            _save_if_room(wdir, record)

    def _remove(self, wdir: WorkspaceDir, record: WorkspaceRecord, *, pool: bool = False) -> None:
        if pool:  # its standby serves the next create from the same layers
            with contextlib.suppress(OSError):
                self.pool.keep(wdir, record)
        self._halt(wdir, record)
        try:
            gone = move_to_trash(wdir.root, self.store.trash_dir)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            remove_tree(wdir.root)  # no room for the trash directory: free the space now
            return
        remove_in_background([gone])

    def _status(
        self, wdir: WorkspaceDir, record: WorkspaceRecord, *, probe: bool
    ) -> WorkspaceStatus:
        changed = _tree_bytes(wdir.upper(record.generation)) if probe else None
        if not record.standby:
            standby = "off"
        elif record.spare is not None and self.runtime.is_running(record.spare):
            standby = "ready"
        else:
            standby = "down"
        if record.handle is None:
            state, detail = "stopped", "stopped; `start` resumes it"
        elif not self.runtime.is_running(record.handle):
            state, detail = "dead", "its sandbox exited; `start` restarts it with its files"
        else:
            state, detail = "running", ""
            if probe:
                try:
                    self._client(wdir).ping(timeout=2.0)
                    detail = "agent answering"
                except AgentUnavailableError:
                    state, detail = "unresponsive", "sandbox running, agent not answering"
        from pyro_loop.workspace import ports

        published = tuple(ports.published(wdir.root)) if state != "stopped" else ()
        return WorkspaceStatus(record, state, detail, changed, standby, published)


# What unshare, mount and bwrap print when the kernel refuses unprivileged namespaces.
_NAMESPACE_FAILURES = (
    "unshare failed",
    "uid map",
    "uid_map",
    "No permissions to create",
    "Creating new namespace failed",
    "setting up uid map",
    "mount: ",
)


def _reset_layers(record: WorkspaceRecord, snapshot: str) -> builtins.list[str]:
    """The lower layers a reset to `snapshot` (or the baseline) puts the workspace on."""
    if snapshot == BASELINE:
        return record.base_layers
    if snapshot in record.snapshots:
        return record.snapshots[snapshot].layers
    raise NotFoundError(
        f"workspace {record.id} has no snapshot {snapshot!r}",
        hint="`pyro workspace snapshot list` shows them",
    )


def sandbox_failure(log: Path) -> HostUnsupportedError:
    """The error for a sandbox that did not come up, naming the cause when it is a known one."""
    tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
    text = " ".join(tail)
    if any(marker in text for marker in _NAMESPACE_FAILURES):
        return HostUnsupportedError(
            f"cannot create the workspace's namespaces: {tail[-1] if tail else 'denied'}",
            hint="unprivileged user namespaces are disabled or restricted (AppArmor on "
            "Ubuntu 24.04): run `pyro doctor` for the fix",
        )
    last = tail[-1] if tail else "no output"
    return HostUnsupportedError(
        f"the workspace's sandbox did not start: {last}", hint=f"see {log}; `pyro doctor`"
    )


def _save_if_room(wdir: WorkspaceDir, record: WorkspaceRecord) -> None:
    """Record a stop, unless the disk is full: a record still naming a stopped sandbox is
    harmless (a handle is checked against the process's start time before any use)."""
    with unless_disk_full():
        wdir.save(record)


def _sweep_partial_writes(upper: Path) -> None:
    """Remove the agent's temp files from a stopped workspace's changes: a sandbox killed
    in the middle of a write or a sync leaves them, and they are no one's work."""
    from pyro_loop.agent.protocol import TEMP_PREFIX
    from pyro_loop.fs.treewalk import walk

    with contextlib.suppress(OSError):
        for here in walk(upper):  # never follows symlinks, at any depth
            # A link to a directory is among `others`; unlink takes files and links only.
            for name in here.others:
                if name.startswith(TEMP_PREFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=here.fd)


def _tree_bytes(path: Path) -> int:
    from pyro_loop.fs.treewalk import tree_bytes

    return tree_bytes(path)

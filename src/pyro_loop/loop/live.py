"""The project's live workspace: `pyro up`, `exec`, `retry`, `reset`, `diff`, `apply`, `down`.

One workspace per project (labelled with the project's id), created from the project's
prepared layers (HEAD baseline + dependency snapshot) and kept in line with the host's
working tree by the sync engine. It outlives every command, so the next one reconnects.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pyro_loop.digest import link_digest, sha256_hex
from pyro_loop.errors import (
    CommandNotFoundError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PyroError,
)
from pyro_loop.fs.beneath import Beneath, link_stays_inside
from pyro_loop.locking import file_lock
from pyro_loop.loop.projecthome import ProjectHome
from pyro_loop.loop.warmth import DEPS_LABEL, INPUTS_LABEL, Warmth, judge
from pyro_loop.progress import OnProgress, Progress
from pyro_loop.project.config import ProjectConfig
from pyro_loop.project.discovery import Project
from pyro_loop.project.trust import TrustState, allow, require_trust, trust_state
from pyro_loop.records import dataclass
from pyro_loop.units import duration
from pyro_loop.workspace import secrets as secretenv
from pyro_loop.workspace.shellcmd import SHELL_ARGV

if TYPE_CHECKING:
    from pyro_loop.loop.activation import Activation
    from pyro_loop.loop.standby import StandbyFill
    from pyro_loop.shapes import ServiceJSON, UpJSON
    from pyro_loop.store.layerview import LayerStack
    from pyro_loop.sync import Syncer, SyncResult
    from pyro_loop.sync.hostscan import HostScan
    from pyro_loop.sync.journal import JournalClient
    from pyro_loop.sync.watcher import Stoppable
    from pyro_loop.workspace.client import Cancellation, ExecChannel, ExecResult, OutputSink
    from pyro_loop.workspace.diff import Change
    from pyro_loop.workspace.manager import Workspaces
    from pyro_loop.workspace.ports import Mapping
    from pyro_loop.workspace.record import WorkspaceRecord
    from pyro_loop.workspace.services import ServiceClient
    from pyro_loop.workspace.shellkeeper import KeptShells

PROJECT_LABEL = "project"
# More changed paths than this since the last sync: a full sync (git's view of the tree) costs
# less than syncing them one by one. Measured on a 2,000-file repository, a branch switch
# changing 1,000 files: 3.8 s path by path, 2.8 s in full (a loaded 2-core VM); one edit:
# a few ms path by path, against a git status and a walk of the tree in full.
INCREMENTAL_LIMIT = 200


class NotWarmError(PyroError):
    """`up --no-prepare` on a project whose layers are not built."""


@dataclass(frozen=True)
class UpResult:
    record: WorkspaceRecord
    action: str  # "reused" | "started" | "created" | "recreated"
    seconds: float
    synced: SyncResult | None

    def describe(self) -> str:
        """One line: "created app-1a2b3c4d in 31 ms (2 host changes synced)"."""
        count = self.synced.copied + self.synced.removed if self.synced else 0
        changes = "1 host change" if count == 1 else f"{count} host changes"
        took = duration(self.seconds)
        return f"{self.action} {self.record.name or self.record.id} in {took} ({changes} synced)"

    def to_json(self) -> UpJSON:
        return {
            "id": self.record.id,
            "name": self.record.name,
            "action": self.action,
            "duration_ms": round(self.seconds * 1000, 1),
            "synced": self.synced.to_json() if self.synced else None,
        }


class ProjectLoop:
    """The daily loop of one project: its workspace, its sync state, its last command."""

    def __init__(self, project: Project, config: ProjectConfig, ws: Workspaces) -> None:
        self.project = project
        self.config = config
        self.ws = ws
        self.files = ProjectHome.of(ws.home, project)
        self.files.dir.mkdir(parents=True, exist_ok=True)
        # One syncer per workspace and baseline, kept: its git repository object caches the
        # index and the baseline's listings, which makes the next reconcile several times
        # cheaper (a long-lived caller such as the MCP server or the watcher runs many).
        self._syncers: dict[tuple[str, str | None], Syncer] = {}
        self._standbys: dict[str | None, StandbyFill] = {}
        self._journal_client: JournalClient | None = None

    # -- finding and creating ---------------------------------------------------------------

    def find(self) -> WorkspaceRecord | None:
        for record in self.ws.records():  # labels only: no sandbox is looked at
            labels = record.labels
            if labels.get("pyro") == PROJECT_LABEL and labels.get("project") == self.project.id:
                return record
        return None

    def require(self) -> WorkspaceRecord:
        record = self.find()
        if record is None:
            raise NotFoundError(
                f"no workspace for {self.project.root}", hint="`pyro up` creates it"
            )
        return record

    def up(self, *, prepare: bool = True, on_progress: OnProgress | None = None) -> UpResult:
        """Reuse the project's workspace if it is current, else create it from warm layers.

        A workspace made for other dependencies or another environment (the lockfiles or
        `[environment]` changed) over the same baseline is moved onto the current ones,
        keeping its changes; one over another HEAD is replaced.

        Raises UntrustedConfigError when the project's `.pyro.toml` sets commands or wider
        access that the user has not approved: see `trust()`.
        """
        require_trust(self.ws.home, self.config)
        started = time.perf_counter()
        with file_lock(self.files.lock):
            warmth = self._warmth(prepare=prepare, on_progress=on_progress, baseline=True)
            record = self.find()
            action = "created"
            if record is not None:
                layers, tree = self._layers(warmth)
                same_tree = record.labels.get("tree", "") == (tree or "")
                if same_tree and not warmth.made_for(record):
                    record = self._move(record, warmth, on_progress)
                    synced = self._sync_full(record)
                    self._publish_configured(record)
                    return UpResult(record, "moved", time.perf_counter() - started, synced)
                if record.labels.get("key") == ",".join(layers) and warmth.made_for(record):
                    running = record.handle is not None and self.ws.runtime.is_running(
                        record.handle
                    )
                    if not running:
                        record = self.ws.start(record.id)
                    synced = self._sync_current(record)
                    self._publish_configured(record)
                    action = "reused" if running else "started"
                    return UpResult(record, action, time.perf_counter() - started, synced)
                self.ws.delete(record.id)  # made from an older HEAD: a fresh one replaces it
                action = "recreated"
            with self.ws.deferring():  # its standby boots once the host's files are in
                record = self._create(warmth, forget=False, standby=True)
                synced = self._sync_new(record)
            self._publish_configured(record)
            return UpResult(record, action, time.perf_counter() - started, synced)

    def trust_state(self) -> TrustState:
        """Whether this project's `.pyro.toml` may take effect (see project/trust.py)."""
        return trust_state(self.ws.home, self.config)

    def trust(self) -> TrustState:
        """Approve the `.pyro.toml` this loop was loaded from, as `pyro trust` does: call it
        only after reviewing the file. A later change to the file needs approval again."""
        return allow(self.ws.home, self.config)

    def _layers(self, warmth: Warmth) -> tuple[list[str], str | None]:
        """A new workspace's layers, topmost first (the last prepared baseline, the
        dependencies), and the git tree of that baseline."""
        state = warmth.state
        base = state.baseline_layer if state is not None else None
        if base is not None and self.ws.store.get(base) is None:
            base = None
        tree = state.baseline_tree if state is not None and base else None
        # Topmost first: the repo's files over the project's own install over the installed
        # dependencies (the repo's files win over anything the project install left there).
        return [k for k in (base, *warmth.dependency_layers) if k], tree

    def _create(
        self, warmth: Warmth, *, forget: bool = True, standby: bool = False
    ) -> WorkspaceRecord:
        """A new workspace on the warm layers; `forget`: start its sync manifest afresh (else
        the caller does, see _sync_new); `standby`: its standby sandboxes get the host's
        synced files ahead (loop/standby.py), and a pooled one that has them may serve."""
        layers, tree = self._layers(warmth)
        labels = {"pyro": PROJECT_LABEL, "project": self.project.id, "key": ",".join(layers),
                  "tree": tree or "", **_labels(warmth)}  # fmt: skip
        active = self._activation()
        ahead = self._standby_fill(tree or None) if standby else None
        # What the project's last workspace had synced: a standby it left may hold it.
        accept = ahead.acceptor(ahead.synced_paths()) if ahead is not None else None
        record = self.ws.create(
            environment=self.config.environment,
            packages=list(self.config.packages),
            layers=layers,
            name=self._workspace_name(),
            labels=labels,
            network=self.config.network == "egress",
            limits=self.config.limits(),
            mounts=list(active.mounts),
            env=active.env,
            accept=accept,
            fill=ahead.fill if ahead is not None else None,
        )
        if forget:
            self._syncer(record).forget()
        return record

    def _activation(self) -> Activation:
        """The tools, host toolchains and PATH of the project's workspace. What it depends on
        is in the inputs' key (the declared tools, `[workspace] path`, the keying files that
        name the ecosystems), so a workspace made for other inputs is also moved onto these."""
        from pyro_loop.loop.activation import activation

        return activation(self.project.root, self.config, self.ws.store)

    def _warmth(
        self, *, prepare: bool, on_progress: OnProgress | None, baseline: bool = False
    ) -> Warmth:
        """The project's warmth once its layers are built: prepared now when the current
        configuration needs what the store lacks (instant when it holds it), or NotWarmError
        naming what changed when `prepare` is off. `baseline`: HEAD's files too (`up`)."""
        from pyro_loop.loop.prepare import prepare as run_prepare

        warmth = judge(self.project, self.config, self.ws.home)
        # Without git and without commands there is nothing to build, yet the state that
        # says which layers to use is written only by a prepare.
        ready = warmth.warm if baseline else warmth.runnable
        if ready and warmth.state is not None:
            return warmth
        if not prepare:
            reasons = warmth.reasons() or [
                f"HEAD's files ({warmth.baseline.commit}) are not prepared"
            ]
            raise NotWarmError(
                f"{self.project.root} is not warm: {'; '.join(reasons)}",
                hint="run `pyro prepare` (or this command without --no-prepare)",
            )
        run_prepare(self.project, self.config, workspaces=self.ws, on_progress=on_progress)
        return judge(self.project, self.config, self.ws.home)

    def _move(
        self, record: WorkspaceRecord, warmth: Warmth, on_progress: OnProgress | None
    ) -> WorkspaceRecord:
        """Put the workspace on the dependencies and environment `warmth` asks for."""
        from pyro_loop.loop.relocate import dependency_roots, drop_paths

        labels = record.labels
        if DEPS_LABEL not in labels:  # made before workspaces said which layer holds what
            self.ws.delete(record.id)
            return self._create(warmth)
        old = [k for k in labels[DEPS_LABEL].split(",") if k]
        base = [k for k in record.base_layers if k not in old]
        layers = base + warmth.dependency_layers
        roots: set[str] = set()
        baseline = self.ws.store.get(base[0]) if base and labels.get("tree") else None
        for key in old:
            old_layer = self.ws.store.get(key)
            if old_layer is not None:
                roots.update(dependency_roots(old_layer.tree, baseline.tree if baseline else None))
        if on_progress is not None:
            on_progress(Progress("workspace", f"moving {record.name or record.id} onto the "
                                 "current dependencies (its own changes are kept)"))  # fmt: skip
        active = self._activation()
        moved = self.ws.relayer(
            record.id,
            layers=layers,
            environment=self.config.environment,
            packages=list(self.config.packages),
            labels={**_labels(warmth), "key": ",".join(layers)},
            keep=lambda upper: drop_paths(upper, sorted(roots)),
            mounts=list(active.mounts),
            env=active.env,
        )
        syncer = self._syncer(moved)
        syncer.forget()  # what the dropped paths held is pushed again where the host has it
        self._scan(moved).forget()
        return moved

    def _workspace_name(self) -> str:
        base = re.sub(r"[^A-Za-z0-9._-]", "-", self.project.name).strip(".-_")[:40] or "project"
        return f"{base}-{self.project.id[:8]}"

    def _syncer(self, record: WorkspaceRecord) -> Syncer:
        # Differences are taken against the tree the workspace was made from, which
        # stays right after a commit moves HEAD (until `pyro up` makes a new one).
        tree = record.labels.get("tree") or None
        syncer = self._syncers.get((record.id, tree))
        if syncer is None:
            # A deleted workspace's syncer over the same tree serves the one made in its place
            # (`down --delete`, then `up`): its repository, index and baseline stay valid.
            for old in [k for k in self._syncers if k[1] == tree]:
                if not self.ws.exists(old[0]):
                    syncer = self._syncers[(record.id, tree)] = self._syncers.pop(old)
                    syncer.client = self.ws.client(record.id)
                    return syncer
            from pyro_loop.sync import Syncer

            syncer = self._syncers[(record.id, tree)] = Syncer(
                self.project.root,
                self.ws.client(record.id),
                self.files.sync_manifest,
                list(self.config.sync_exclude),
                baseline_tree=tree,
            )
        return syncer

    def _standby_fill(self, tree: str | None) -> StandbyFill:
        """What the project's workspace (over the baseline `tree`) writes into its standby
        sandboxes ahead of a reset (loop/standby.py)."""
        ahead = self._standbys.get(tree)
        if ahead is None:
            from pyro_loop.loop.standby import StandbyFill

            ahead = self._standbys[tree] = StandbyFill(
                self.project.root, self.files.sync_manifest, self.files.standby_manifest,
                self.config.sync_exclude, tree,
            )  # fmt: skip
        return ahead

    def _scan(self, record: WorkspaceRecord) -> HostScan:
        from pyro_loop.sync.hostscan import HostScan

        root = (self.project.repo_root or self.project.root).resolve()
        rules = (record.labels.get("tree") or None, tuple(self.config.sync_exclude))
        return HostScan(self.files.host_scan, root, self.project.git_dir,
                        workspace=(record.id, record.generation), rules=rules,
                        journal=self._journal(str(root)))  # fmt: skip

    def _journal(self, root: str) -> JournalClient | None:
        """The change journal's client for the host tree (kept: its connection is reused)."""
        from pyro_loop.sync import journal

        if journal.switched_off():
            return None
        if self._journal_client is None or self._journal_client.root != root:
            self._journal_client = journal.JournalClient(root)
        return self._journal_client

    def _sync_current(self, record: WorkspaceRecord) -> SyncResult:
        """Sync what changed on the host, after a look at the host scan record (one pass of
        lstat calls): when nothing changed, nothing more; when a few paths did, just those
        (no git, no walk of the tree); else (no record, git's own files or a .gitignore
        changed) a full sync."""
        from pyro_loop.sync.result import SyncResult

        scan = self._scan(record)
        changed = scan.changes(_read_bytes(self.files.sync_manifest))
        if changed == []:
            return SyncResult()
        if (changed is None or len(changed) > INCREMENTAL_LIMIT
                or any(p.rpartition("/")[2] == ".gitignore" for p in changed)):  # fmt: skip
            return self._sync_full(record)
        syncer = self._syncer(record)
        syncer.filter.refresh()
        delta = scan.delta(changed, *syncer.filter.scan_rules())
        if delta is None:
            return self._sync_full(record)
        result = syncer.sync_paths([f"{syncer.root}/{rel}" for rel in delta["paths"]])
        if result.skipped:
            scan.forget()  # what could not be synced is tried again next time
        else:
            manifest = _read_bytes(syncer.manifest_path)
            scan.apply(delta, manifest, syncer.held_digests(manifest), syncer.filter.wants)
        return result

    def _sync_new(self, record: WorkspaceRecord) -> SyncResult:
        """A new workspace gets the host's files: when the host has not changed since pyro
        last synced this project (to a workspace from the same baseline), what that sync
        pushed is put back, without a look at the rest of the tree; else a full sync."""
        syncer = self._syncer(record)
        before = _read_bytes(syncer.manifest_path)
        ahead = self._standby_fill(record.labels.get("tree") or None)
        if self._scan(record).current(before, any_workspace=True):
            paths = syncer.synced_paths()
            if ahead.take(record, syncer, paths, before):  # a pooled standby may have them
                return self._replay(record, paths, before)
        else:
            ahead.take(record, syncer, [], before)
        return self._sync_full(record)

    def _sync_full(self, record: WorkspaceRecord) -> SyncResult:
        """A full reconcile, with the host's stat data recorded just before it reads."""
        syncer = self._syncer(record)
        scan = self._scan(record)
        syncer.filter.refresh()
        taken = scan.take(*syncer.filter.scan_rules())
        result = syncer.reconcile()
        if result.skipped:
            scan.forget()  # what could not be synced is tried again next time
        else:
            manifest = _read_bytes(syncer.manifest_path)
            scan.save(taken, manifest, syncer.held_digests(manifest), syncer.filter.wants)
        return result

    def live(
        self, *, prepare: bool = True, on_progress: OnProgress | None = None
    ) -> WorkspaceRecord:
        """The project's workspace, running on the layers its configuration needs now:
        started again if stopped, moved if its dependencies changed, created if missing."""
        record = self.find()
        if record is None:
            return self.up(prepare=prepare, on_progress=on_progress).record
        record = self._current(record, prepare=prepare, on_progress=on_progress)
        if record.handle is None or not self.ws.runtime.is_running(record.handle):
            record = self.ws.start(record.id)
        self._publish_configured(record)  # after a start or a move, which closed them
        return record

    def _current(
        self, record: WorkspaceRecord, *, prepare: bool, on_progress: OnProgress | None
    ) -> WorkspaceRecord:
        warmth = self._warmth(prepare=prepare, on_progress=on_progress)
        if warmth.made_for(record):
            return record
        with file_lock(self.files.lock):
            record = self.find() or record
            if warmth.made_for(record):  # another command moved it meanwhile
                return record
            return self._move(record, warmth, on_progress)

    def _publish_configured(self, record: WorkspaceRecord) -> None:
        """`[workspace] ports`: published whenever the workspace runs."""
        if self.config.ports:
            from pyro_loop.workspace.ports import parse_publish

            self.ws.publish(record.id, [parse_publish(p) for p in self.config.ports])

    def publish(self, mappings: Sequence[Mapping]) -> list[Mapping]:
        """Publish ports of the project's workspace at 127.0.0.1 until it stops."""
        return self.ws.publish(self.live().id, list(mappings))

    # -- the loop ---------------------------------------------------------------------------

    def sync(self) -> SyncResult:
        return self._sync_current(self.live())

    def exec(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        on_output: OutputSink | None = None,
        cancel: Cancellation | None = None,
        stdin: BinaryIO | None = None,
        prepare: bool = True,
        on_progress: OnProgress | None = None,
        secret_env: Sequence[str] = (),
    ) -> ExecResult:
        """Run a command in the project's workspace, after syncing what changed on the host.
        `stdin` is passed to the command until its end (else its stdin is empty).
        `secret_env` names host variables passed as secrets (workspace/secrets.py).

        A workspace on outdated dependencies is moved onto the current ones first (prepared
        now if need be), or with `prepare` off NotWarmError says what changed."""
        with self.open_exec(
            argv, timeout=timeout, cwd=cwd, env=env, stdin=stdin is not None, cancel=cancel,
            prepare=prepare, on_progress=on_progress, secret_env=secret_env,
        ) as channel:  # fmt: skip
            return channel.run(stdin=stdin, on_output=on_output)

    @contextlib.contextmanager
    def open_exec(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        stdin: bool = False,
        tty: tuple[int, int] | None = None,
        cancel: Cancellation | None = None,
        remember: bool = True,
        prepare: bool = True,
        on_progress: OnProgress | None = None,
        secret_env: Sequence[str] = (),
    ) -> Iterator[ExecChannel]:
        """Start a command as `exec` does (host edits synced first) and hand back its channel,
        for input, a terminal and signals. `remember=False` keeps it out of `retry` (a shell)."""
        if not argv:
            raise InvalidInputError("no command given", hint="pyro exec -- CMD...")
        hidden = secretenv.from_host(secret_env)  # before anything runs: a missing one stops
        record = self.live(prepare=prepare, on_progress=on_progress)
        self._sync_current(record)
        if remember:  # the secrets' names, never their values
            last = {"argv": list(argv), "timeout": timeout, "cwd": cwd, "env": env or {}}
            self._save_last({**last, "secret_env": list(secret_env)} if secret_env else last)
        try:
            opened = self.ws.open_exec(
                record.id, list(argv), timeout=timeout, cwd=cwd, env=env, stdin=stdin, tty=tty,
                cancel=cancel, secrets=hidden,
            )  # fmt: skip
            with opened as channel:
                yield channel
        except CommandNotFoundError as exc:
            exc.hint = self.not_found_hint(list(argv), b"", record)
            raise

    def shell(
        self, *, tty: tuple[int, int] | None, env: dict[str, str] | None = None
    ) -> contextlib.AbstractContextManager[ExecChannel]:
        """An interactive shell in the project's workspace, with the environment of `exec`."""
        return self.open_exec(SHELL_ARGV, env=env, stdin=True, tty=tty, remember=False)

    def shell_sessions(self, *, start: bool = False) -> KeptShells:
        """The project workspace's shell sessions (workspace/shellkeeper.py); `start`: for a
        new one, so the workspace runs on the current layers with host edits synced first."""
        from pyro_loop.workspace.shellkeeper import KeptShells

        if start:
            record = self.live()
            self._sync_current(record)
        else:
            record = self.require()
        return KeptShells(self.ws, record.id)

    def services(self) -> ServiceClient:
        """The services of the project's workspace (started again if stopped)."""
        return self.ws.services(self.live().id)

    def start_service(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        secret_env: Sequence[str] = (),
    ) -> ServiceJSON:
        """Start a command detached, as a service (host edits synced first, as for exec);
        named after its program unless `name` is given."""
        if not argv:
            raise InvalidInputError("no command given", hint="pyro exec --detach -- CMD...")
        hidden = secretenv.from_host(secret_env)
        services = self.ws.services(self.live().id, secrets=hidden)
        self._sync_current(self.require())
        if name is None:
            name = services.free_name(argv[0])
        return services.service_start(name, list(argv), cwd=cwd, env=env)

    def not_found_hint(
        self, argv: list[str], stderr: bytes, record: WorkspaceRecord | None = None
    ) -> str:
        """For an exit 127: the PATH the workspace searched and the likely fix."""
        from pyro_loop.loop.notfound import missing_command, not_found_hint

        env = (record or self.require()).env
        return not_found_hint(missing_command(argv, stderr), env, self.config)

    def retry(
        self,
        *,
        reset: bool = False,
        on_output: OutputSink | None = None,
        default_timeout: float | None = None,
        cancel: Cancellation | None = None,
        prepare: bool = True,
        on_progress: OnProgress | None = None,
    ) -> ExecResult:
        """The last command again, with its timeout (`default_timeout` if it had none)."""
        last = self.last_command()
        if last is None:
            raise NotFoundError(
                "nothing to retry yet", hint="run a command with `pyro exec -- CMD`"
            )
        if reset:
            self.reset(prepare=prepare, on_progress=on_progress)
        timeout = last.get("timeout")
        if timeout is None:
            timeout = default_timeout
        return self.exec(last["argv"], timeout=timeout, cwd=last.get("cwd"),
                         env=last.get("env") or None, on_output=on_output,
                         cancel=cancel, prepare=prepare, on_progress=on_progress,
                         secret_env=last.get("secret_env") or ())  # fmt: skip

    def reset(
        self,
        *,
        snapshot: str = "baseline",
        prepare: bool = True,
        on_progress: OnProgress | None = None,
    ) -> SyncResult:
        """Back to the warm baseline (or a named snapshot) plus the host's files, on the
        dependencies the configuration needs now.

        To the baseline, what pyro had synced from the host is put back (the manifest's
        paths, O(changed files) whatever the repository's size) when the host scan record
        vouched for that manifest; host edits made since the last sync arrive with the next
        command, as they would have without the reset. Otherwise (and to a snapshot) the
        host's files are synced in full.
        """
        record = self._current(self.require(), prepare=prepare, on_progress=on_progress)
        syncer = self._syncer(record)
        before = _read_bytes(syncer.manifest_path)
        replay = snapshot == "baseline" and self._scan(record).bound_to(before)
        synced = syncer.synced_paths()
        # The standby got these paths while it waited (loop/standby.py); so does the next.
        ahead = self._standby_fill(record.labels.get("tree") or None)
        with self.ws.deferring():  # the next standby boots once the host's files are in
            record = self.ws.reset(
                record.id, snapshot=snapshot, accept=ahead.acceptor(synced), fill=ahead.fill
            )
            if not ahead.take(record, syncer, synced, before) or not replay:
                return self._sync_full(record)
            return self._replay(record, synced, before)

    def _replay(
        self, record: WorkspaceRecord, paths: list[str], before: bytes | None
    ) -> SyncResult:
        """Put back what the last sync had pushed (`paths`, under the manifest `before`) into
        a workspace at its baseline; the host scan record follows."""
        syncer = self._syncer(record)
        result = syncer.replay(paths)
        scan = self._scan(record)
        if result.skipped:
            scan.forget()
        else:
            scan.rebind(before, _read_bytes(syncer.manifest_path))
        return result

    def watch(
        self,
        *,
        stop_event: Stoppable | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        """Keep the project's workspace in sync with host edits until `stop_event` is set.

        Its state goes to the project's `watch.json`, which `pyro status` reads.
        """
        from pyro_loop.sync.watcher import run_watcher

        record = self.require()
        run_watcher(
            self._syncer(record),
            self.project.root,
            stop_event=stop_event,
            status_path=self.files.watch_status,
            on_event=on_event,
            # Folds what it synced into the host scan record (through the journal when it
            # vouches, else one look at every path; a full sync only when neither can tell).
            on_quiet=lambda: self._sync_current(record),
        )

    def down(self, *, delete: bool = False) -> WorkspaceRecord:
        record = self.require()
        if delete:  # its standby serves the next `up`, which then boots nothing
            return self.ws.delete(record.id, keep_standby=True)
        return self.ws.stop(record.id)

    # -- reviewing and bringing changes back --------------------------------------------------

    def changes(self) -> list[Change]:
        """What the workspace changed relative to the host's files (synced paths drop out)."""
        from pyro_loop.project.diffignore import ignored_changes
        from pyro_loop.store.layerview import LayerStack
        from pyro_loop.workspace.diff import compare

        record = self.require()
        host = LayerStack([self.project.root])
        changed = self.ws.changes(record.id)
        ignored = ignored_changes(self.project, changed)
        result = []
        for change in changed:
            if change.path in ignored or change.path.split("/", 1)[0] == ".git":
                continue
            found = compare(change.path, host.lookup(change.path), change.new)
            if found is not None:
                result.append(found)
        return result

    def apply(self, paths: Sequence[str] = (), *, force: bool = False) -> list[str]:
        """Write the workspace's changes (or the chosen paths) to the host.

        Refuses, unless `force`, where the host file changed since the workspace last saw it:
        nothing is lost silently on either side. Each file is replaced atomically.
        """
        changes = self.changes()
        if paths:
            wanted = set(paths)
            unknown = wanted - {c.path for c in changes}
            if unknown:
                raise InvalidInputError(
                    f"not changed in the workspace: {', '.join(sorted(unknown))}"
                )
            changes = [c for c in changes if c.path in wanted]
        record = self.require()
        base = self._base_stack(record)
        syncer = self._syncer(record)
        if not force:
            conflicts = [c.path for c in changes if not _host_matches(syncer, base, c.path)]
            if conflicts:
                raise ConflictError(
                    f"the host changed since the workspace saw it: {', '.join(conflicts[:5])}",
                    hint="review with `pyro diff`; pass --force to overwrite the host's version",
                )
        _write_host(self.project.root, changes)
        if changes:
            syncer.reconcile()
        return [c.path for c in changes]

    def _base_stack(self, record: WorkspaceRecord) -> LayerStack:
        """What the workspace started from: its lower layers (the synced files are upper)."""
        from pyro_loop.store.layerview import LayerStack

        return LayerStack([self.ws.store.require(k).tree for k in record.layers])

    # -- the last command, for retry ------------------------------------------------------------

    def _save_last(self, command: dict[str, Any]) -> None:
        if command != self.last_command():  # a read costs less than a rename
            self.files.save_last_command(command)

    def last_command(self) -> dict[str, Any] | None:
        """What `retry` runs: the last command's argv, timeout, cwd and env; None before one."""
        return self.files.last_command()


def _labels(warmth: Warmth) -> dict[str, str]:
    """What a workspace records of the inputs it runs on (see `Warmth.made_for`)."""
    return {INPUTS_LABEL: warmth.key, DEPS_LABEL: ",".join(warmth.dependency_layers)}


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _host_matches(syncer: Syncer, base: LayerStack, rel: str) -> bool:
    """Is the host's file still what the workspace last saw: what pyro synced, or else what
    its lower layers hold?"""
    from pyro_loop.store.layerview import read_file
    from pyro_loop.sync import host_digest

    current = host_digest(syncer.root, rel)
    synced = syncer.synced_digest(rel)
    if synced is not None:
        return current == synced
    entry = base.lookup(rel)
    if entry is None:
        return current is None
    if entry.kind == "symlink":
        return current == link_digest(entry.target or "")
    content = read_file(entry.layer, rel)
    return current == (sha256_hex(content) if content is not None else None)


def _write_host(root: Path, changes: list[Change]) -> None:
    """Write `changes` into the host's repository, each file replaced atomically.

    Nothing is written through a symlink (the repository's own or one the workspace made):
    every path is created relative to its parent's descriptor, and a change below a link
    that stays a link is refused before anything is written. A symlink whose target leaves
    the repository is not brought back. Removals go first (deepest first), so a link the
    workspace replaced by a directory is gone before the directory's files are written.
    """
    from pyro_loop.store.layerview import read_file

    removed = {c.path for c in changes if c.new is None}
    with Beneath(root) as tree:
        for change in changes:
            new = change.new
            if new is not None and new.kind == "symlink":
                target = new.target or ""
                if not link_stays_inside(change.path, target):
                    raise InvalidInputError(
                        f"{change.path} is a symbolic link to {target}, outside the "
                        "repository: pyro apply does not bring it back",
                        hint="apply the other paths by name, or make the link relative",
                    )
            link = tree.link_above(change.path)
            if new is not None and link is not None and link not in removed:
                raise InvalidInputError(
                    f"{change.path}: {link} is a symbolic link on the host: "
                    "pyro apply never writes through one",
                    hint=f"apply {link} too (the workspace replaced it), or remove it first",
                )
        for change in sorted(changes, key=lambda c: c.path.count("/"), reverse=True):
            if change.new is None:
                tree.remove(change.path)
        for change in changes:
            new = change.new
            if new is None:
                continue
            parent = change.path.rpartition("/")[0]
            if parent:
                tree.makedirs(parent)
            if new.kind == "symlink":
                tree.symlink(change.path, new.target or "")
            else:
                tree.write(change.path, read_file(new.layer, change.path) or b"", new.mode)

"""`pyro prepare`: build the layers a project's workspaces start from, once per input.

Three layers, each cached in the store under a key of its inputs:
  environment   the root filesystem (none for `host`; Debian images are built locally)
  dependencies  what the prepare commands install, run in a sandbox with the network on
                over the keying files only; keyed by the environment, the keying files'
                contents, the commands and the names of passed-through variables, so
                editing source code never invalidates it
  project       what `[prepare] project` installs of the project itself (an editable
                install), run over HEAD's files and the dependencies; keyed by the
                dependencies, the project's metadata files and the commands
  baseline      the files of HEAD's git tree, keyed by the tree id: a workspace for an
                unchanged HEAD needs no copy at all

The builds themselves (a sandbox, the commands, the frozen result) are loop/snapshotbuild.py's.

A build killed at any point leaves nothing a later run trusts (the store publishes
atomically), and the next prepare recovers by itself.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_loop.digest import file_sha256, sha256_hex
from pyro_loop.errors import InvalidInputError
from pyro_loop.fs.beneath import Beneath, LinkEscapeError
from pyro_loop.home import pyro_home
from pyro_loop.loop.projecthome import ProjectHome, ProjectState, SnapshotInputsJSON
from pyro_loop.progress import OnProgress, Progress, ignore
from pyro_loop.project.config import ProjectConfig
from pyro_loop.project.detect import keying_files, project_files
from pyro_loop.project.discovery import Project, head_commit, head_tree, write_tree
from pyro_loop.project.trust import require_trust
from pyro_loop.records import dataclass, field
from pyro_loop.store.layers import Layer, LayerStore

if TYPE_CHECKING:  # imported when a build needs it: `--if-changed` stays light
    from pyro_loop.loop.keydigests import KeyDigests
    from pyro_loop.shapes import PrepareJSON, TransferJSON
    from pyro_loop.workspace.manager import Workspaces

# 2: the sandbox's home is part of the snapshot (runtime.HOME_DIR).
SNAPSHOT_FORMAT = 2
PROJECT_FORMAT = 1
BASELINE_FORMAT = 1


@dataclass(frozen=True)
class PrepareInputs:
    """Everything the dependency snapshot depends on (and nothing else)."""

    environment: str
    packages: list[str]
    keys: dict[str, str]  # keying file (relative to the project root) -> sha256 of contents
    run: list[str]
    env: list[str]  # names of passed-through variables (their values are not part of the key)
    # The project's own install (not part of the dependency key): its commands and the
    # metadata files that key it, hashed like `keys`.
    project: list[str] = field(default_factory=list)
    project_keys: dict[str, str] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)  # declared tools: name -> version
    host_tools: list[str] = field(default_factory=list)  # exposed host toolchain directories
    path: list[str] | None = None  # `[workspace] path`, when set (else detected)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": SNAPSHOT_FORMAT,
            "environment": self.environment,
            "packages": self.packages,
            "keys": self.keys,
            "run": self.run,
            "env": self.env,
        }
        # Only when declared: the keys of projects without tools stay what they were.
        if self.tools:
            data["tools"] = self.tools
        if self.host_tools:
            data["host_tools"] = self.host_tools
        if self.path is not None:
            data["path"] = self.path
        return data

    @property
    def key(self) -> str:
        return _digest(self.to_json())

    @property
    def project_key(self) -> str | None:
        """The project layer's key: the dependencies it was installed over, the metadata
        files and the commands (None without project commands)."""
        if not self.project:
            return None
        return _digest(
            {
                "format": PROJECT_FORMAT,
                "dependencies": self.key,
                "keys": self.project_keys,
                "project": self.project,
            }
        )

    def layers(self, *, with_project: bool = True) -> list[str]:
        """The keys of the layers these inputs install, topmost first."""
        keys = [self.key] if self.run else []
        if with_project and self.project_key is not None:
            keys.insert(0, self.project_key)
        return keys


def _digest(data: dict[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return sha256_hex(canonical.encode())


def compute_inputs(
    project: Project, config: ProjectConfig, *, digests: KeyDigests | None = None
) -> PrepareInputs:
    """The inputs of the project's dependency snapshot; `digests` remembers the keying
    files' hashes while they are unchanged (the daily commands' check stays cheap)."""
    keys: dict[str, str] = {}
    with Beneath(project.root) as tree:
        for rel in keying_files(project.root, config):
            with os.fdopen(open_key_file(tree, project, rel), "rb") as f:
                if digests is not None:
                    keys[rel] = digests.digest(rel, f)
                else:
                    keys[rel] = file_sha256(f)
    if digests is not None:
        digests.save()
    project_keys = (
        _hash_files(project, project_files(project.root)) if config.prepare_project else {}
    )
    return PrepareInputs(
        environment=config.environment,
        packages=sorted(set(config.packages)),
        keys=keys,
        run=list(config.prepare_run),
        env=sorted(set(config.prepare_env)),
        project=list(config.prepare_project),
        project_keys=project_keys,
        tools=dict(config.tools),
        host_tools=list(config.host_tools),
        path=None if config.workspace_path is None else list(config.workspace_path),
    )


def _hash_files(project: Project, files: list[str]) -> dict[str, str]:
    keys: dict[str, str] = {}
    with Beneath(project.root) as tree:
        for rel in files:
            with os.fdopen(open_key_file(tree, project, rel), "rb") as f:
                keys[rel] = file_sha256(f)
    return keys


def open_key_file(tree: Beneath, project: Project, rel: str) -> int:
    """A read descriptor of keying file `rel`: never through a link that leaves the
    repository or enters `.git` (those would hand a host file to the prepare sandbox)."""
    name = project.config_path.name
    try:
        return tree.open_following(rel)
    except LinkEscapeError as exc:
        raise InvalidInputError(
            f"{exc.strerror}: pyro never reads through it",
            hint=f"commit {rel} itself, or a link to a file inside the repository",
        ) from None
    except FileNotFoundError:
        raise InvalidInputError(
            f"{name}: [prepare] keys: {rel} does not exist",
            hint="fix the path, or remove `keys` to detect the lockfiles automatically",
        ) from None
    except IsADirectoryError:
        raise InvalidInputError(
            f"{name}: [prepare] keys: {rel} is a directory, not a file"
        ) from None
    except OSError as exc:
        raise InvalidInputError(
            f"{name}: [prepare] keys: cannot read {rel}: {exc.strerror or exc}"
        ) from None


def describe_changes(old: SnapshotInputsJSON, new: PrepareInputs) -> list[str]:
    """Why a snapshot is stale, in words: "uv.lock changed: a1b2c3 -> d4e5f6"."""
    reasons = []
    if old.get("format") != SNAPSHOT_FORMAT:
        reasons.append("pyro's snapshot format changed")
    if old.get("environment") != new.environment or old.get("packages") != new.packages:
        reasons.append(f"environment changed: {old.get('environment')} -> {new.environment}")
    old_keys: dict[str, str] = old.get("keys") or {}
    for rel in sorted(set(old_keys) | set(new.keys)):
        before, after = old_keys.get(rel), new.keys.get(rel)
        if before is None:
            reasons.append(f"{rel} added")
        elif after is None:
            reasons.append(f"{rel} removed")
        elif before != after:
            reasons.append(f"{rel} changed: {before[:6]} -> {after[:6]}")
    old_tools: dict[str, str] = old.get("tools") or {}
    for name in sorted(set(old_tools) | set(new.tools)):
        before, after = old_tools.get(name), new.tools.get(name)
        if before != after:
            reasons.append(f"[tools] {name}: {before or 'none'} -> {after or 'none'}")
    if (old.get("host_tools") or []) != new.host_tools:
        reasons.append("[tools] host changed")
    if old.get("path") != new.path:
        reasons.append("[workspace] path changed")
    if old.get("run") != new.run:
        reasons.append("prepare commands changed")
    if old.get("env") != new.env:
        reasons.append("passed-through variables changed")
    return reasons


# -- project state ---------------------------------------------------------------------------


def _update_state(files: ProjectHome, state: ProjectState, recorded: str,
                  **fields: Any) -> None:  # fmt: skip
    """Set `fields` and save the state, unless nothing changed since it was read as
    `recorded`: a warm no-op writes (and fsyncs) nothing."""
    for name, value in fields.items():
        setattr(state, name, value)
    if _state_text(state) != recorded:
        state.prepared_at = time.time()
        files.save_state(state)


def _state_text(state: ProjectState) -> str:
    """What the state says, but when: two equal ones mean nothing changed."""
    return json.dumps({**state.__dict__, "prepared_at": None}, sort_keys=True)


# -- preparing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareResult:
    key: str
    dependencies_layer: str | None  # None when there is nothing to install
    baseline_layer: str | None  # None outside git or before the first commit
    built: list[str]  # which layers this run built ("dependencies", "project", "baseline")
    seconds: float
    log: Path | None
    pulled: list[str] = field(default_factory=list)  # taken from the cache remote instead
    pushed: TransferJSON | None = None  # what `push=True` sent to the cache remote
    project_layer: str | None = None  # None without project commands (or a commit)

    def to_json(self) -> PrepareJSON:
        return {
            "key": self.key,
            "dependencies_layer": self.dependencies_layer,
            "baseline_layer": self.baseline_layer,
            "project_layer": self.project_layer,
            "built": self.built,
            "pulled": self.pulled,
            "pushed": self.pushed,
            "warm": not self.built and not self.pulled,
            "duration_ms": round(self.seconds * 1000, 1),
            "log": str(self.log) if self.log else None,
        }


def prepare(
    project: Project,
    config: ProjectConfig,
    *,
    workspaces: Workspaces | None = None,
    on_progress: OnProgress | None = None,
    push: bool = False,
) -> PrepareResult:
    """Make the project warm: build whatever of its layers is missing, reuse the rest.

    With a cache remote (docs/cache.md), a missing dependency snapshot is pulled from it
    when it has one; `push` then uploads the snapshot's layers to it.

    Raises UntrustedConfigError, before anything runs, when the project's `.pyro.toml` sets
    commands or wider access the user has not approved (`pyro trust`).
    """
    started = time.perf_counter()
    ws = _Workspaces(workspaces)
    require_trust(ws.home, config)
    store = ws.store
    progress = on_progress or ignore
    if push:  # before minutes of building, not after
        from pyro_loop.loop.teamcache import require_remote

        require_remote(config)
    from pyro_loop.loop.keydigests import KeyDigests

    files = ProjectHome.of(ws.home, project)
    # The digests the warm judgment remembers for unchanged keying files (loop/keydigests.py):
    # a warm prepare then reads no lockfile, as `--if-changed` and the daily commands do not.
    inputs = compute_inputs(project, config, digests=KeyDigests(files.key_digests))
    key = inputs.key
    state = files.load_state() or ProjectState(root=str(project.root))
    recorded = _state_text(state)
    built: list[str] = []
    pulled: list[str] = []
    log: Path | None = None
    # Held (shared) from the first lookup until the state references the layers: a
    # `pyro cache gc` (exclusive) waits, rather than remove a layer this prepare is building
    # on or has just built and not yet recorded.
    with store.in_use():
        # A remote that has the snapshot has its environment too: asked before building it.
        missing = inputs.run and store.get(key) is None
        fetched = _fetch_from_remote(store, config, inputs, progress, pulled) if missing else None
        _ensure_environment(config, store, progress)
        baseline = _ensure_baseline(project, store, state, progress, built)
        tools = _ensure_tools(ws, config, progress, built)
        deps: Layer | None = None
        if inputs.run:
            deps = fetched or store.get(key)
            if deps is None:
                log = ws.home / "logs" / f"prepare-{key[:12]}.log"
                from pyro_loop.loop.snapshotbuild import SnapshotBuild

                build = SnapshotBuild(project, config, inputs, ws.made(), log, progress)
                deps = build.run()
                if build.ran:
                    built.append("dependencies")
            else:
                progress(Progress("dependencies", f"warm ({key[:12]})"))
        else:
            progress(Progress("dependencies", "nothing to install ([prepare] run is empty)"))
        own = _ensure_project(project, config, inputs, ws=ws, baseline=baseline, deps=deps,
                              progress=progress, built=built)  # fmt: skip
        if own is not None and own.log is not None:
            log = own.log
        _update_state(files, state, recorded, key=key, inputs=inputs.to_json(),
                      dependencies_layer=deps.key if deps else None,
                      project_layer=own.layer.key if own else None,
                      project_keys=dict(inputs.project_keys), tool_layers=tools)  # fmt: skip
        pushed = _push_to_remote(store, config, inputs, progress) if push else None
    return PrepareResult(
        key=key,
        dependencies_layer=deps.key if deps else None,
        baseline_layer=baseline.key if baseline else None,
        built=built,
        seconds=time.perf_counter() - started,
        log=log,
        pulled=pulled,
        pushed=pushed,
        project_layer=state.project_layer,
    )


class _Workspaces:
    """The pyro home's workspaces as prepare uses them: its home and layer store at once, the
    sandbox manager (and its runtime's modules) made only when something must be built, so
    that a warm `pyro prepare` loads neither."""

    def __init__(self, workspaces: Workspaces | None) -> None:
        self._workspaces = workspaces
        self.home = workspaces.home if workspaces is not None else pyro_home()
        self.store = workspaces.store if workspaces is not None else LayerStore(self.home)

    def made(self) -> Workspaces:
        if self._workspaces is None:
            from pyro_loop.workspace.manager import Workspaces

            self._workspaces = Workspaces(self.home)
        return self._workspaces


def _fetch_from_remote(
    store: LayerStore,
    config: ProjectConfig,
    inputs: PrepareInputs,
    progress: OnProgress,
    pulled: list[str],
) -> Layer | None:
    """The dependency snapshot from the cache remote, if one is set and has it."""
    if not config.cache_remote and not os.environ.get("PYRO_CACHE_REMOTE"):
        return None  # the common case costs no import
    from pyro_loop.loop.teamcache import fetch_on_miss

    layer = fetch_on_miss(store, config, inputs, progress)
    if layer is not None:
        pulled.append("dependencies")
    return layer


def _push_to_remote(
    store: LayerStore, config: ProjectConfig, inputs: PrepareInputs, progress: OnProgress
) -> TransferJSON:
    from pyro_loop.loop.teamcache import project_snapshot, require_remote
    from pyro_loop.remote import share

    remote = require_remote(config)
    snapshot = project_snapshot(config, inputs)
    transfer = share.push(store, remote, snapshot, on_progress=progress)
    return transfer.to_json()


@dataclass(frozen=True)
class _ProjectInstall:
    layer: Layer
    log: Path | None


def _ensure_project(
    project: Project,
    config: ProjectConfig,
    inputs: PrepareInputs,
    *,
    ws: _Workspaces,
    baseline: Layer | None,
    deps: Layer | None,
    progress: OnProgress,
    built: list[str],
) -> _ProjectInstall | None:
    """The layer of the project's own install (`[prepare] project`), built if missing: its
    commands run over HEAD's files (the build backend wants the sources and README), the
    working tree's keying and metadata files, and the dependencies just installed."""
    key = inputs.project_key
    if key is None:
        return None
    if baseline is None:
        progress(
            Progress("project", "no git commit yet: the project is installed once there is one")
        )
        return None
    layer = ws.store.get(key)
    if layer is not None:
        progress(Progress("project", f"warm ({key[:12]})"))
        return _ProjectInstall(layer, None)
    log = ws.home / "logs" / f"prepare-{key[:12]}.log"
    below = [baseline.key, *([deps.key] if deps else [])]
    from pyro_loop.loop.snapshotbuild import SnapshotBuild

    build = SnapshotBuild(project, config, inputs, ws.made(), log, progress, phase="project",
                             below=below)  # fmt: skip
    layer = build.run()
    if build.ran:
        built.append("project")
    return _ProjectInstall(layer, log)


def _ensure_environment(config: ProjectConfig, store: LayerStore, progress: OnProgress) -> None:
    """The environment's root filesystem, built first (with its phases reported) rather than
    inside the first sandbox's creation."""
    if config.environment == "host":
        return
    from pyro_loop.store import environments

    spec = environments.parse_environment(config.environment, config.packages)
    if store.get(environments.environment_key(spec)) is not None:
        progress(Progress("environment", f"{spec.name}: cached"))
        return
    environments.ensure_environment(store, spec, on_progress=progress)


def _ensure_tools(
    ws: _Workspaces, config: ProjectConfig, progress: OnProgress, built: list[str]
) -> dict[str, str]:
    """The declared tools' layers, built if missing: tool name -> layer key."""
    from pyro_loop.loop.activation import tool_requests
    from pyro_loop.loop.tools import ensure_tools, missing

    requests = tool_requests(config)
    if not requests:
        return {}
    if missing(ws.store, requests):
        built.append("tools")
    layers = ensure_tools(ws.made(), requests, on_progress=progress)
    return {name: layer.key for name, layer in layers.items()}


def baseline_key(tree: str) -> str:
    return sha256_hex(f"pyro-baseline-v{BASELINE_FORMAT}\0{tree}".encode())


def _ensure_baseline(
    project: Project, store: LayerStore, state: ProjectState, progress: OnProgress, built: list[str]
) -> Layer | None:
    commit = head_commit(project)
    if commit is None:
        progress(Progress("baseline", "no git commit: workspaces get the project's files by sync"))
        return None
    # The commit -> layer mapping is remembered, so a warm prepare never loads pygit2.
    if state.baseline_commit == commit and state.baseline_layer:
        cached = store.get(state.baseline_layer)
        if cached is not None:
            progress(Progress("baseline", f"warm (HEAD {commit[:8]})"))
            return cached
    tree = head_tree(project)
    if tree is None:
        return None
    if store.get(baseline_key(tree)) is None:
        progress(Progress("baseline", f"writing HEAD's files ({commit[:8]}, tree {tree[:8]})"))
    else:
        progress(Progress("baseline", f"warm (tree {tree[:8]})"))
    layer, wrote = tree_layer(
        project, store, tree, commit=commit,
        on_wait=lambda: progress(Progress("baseline", "waiting for another prepare of this tree")),
    )  # fmt: skip
    if wrote:
        built.append("baseline")
    state.baseline_commit, state.baseline_tree, state.baseline_layer = commit, tree, layer.key
    return layer


def tree_layer(
    project: Project,
    store: LayerStore,
    tree: str,
    *,
    commit: str | None = None,
    on_wait: Callable[[], None] | None = None,
) -> tuple[Layer, bool]:
    """The baseline layer of git tree `tree` (its files, from the object database), built if
    missing; True when this call wrote it."""
    wrote: list[int] = []

    def write(dest: Path) -> None:
        wrote.append(write_tree(project, tree, dest))

    layer = store.build(
        baseline_key(tree),
        write,
        kind="baseline",
        inputs={"tree": tree, "commit": commit, "project": str(project.root)},
        on_wait=on_wait,
    )
    return layer, bool(wrote)

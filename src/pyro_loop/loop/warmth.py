"""Is this project warm, and which layers does its current configuration need?

The one judgment behind `pyro prepare --if-changed`, `pyro status`, the git hooks' keep-warm,
the daily loop (`up`, `exec`, `retry`, `reset` never run on layers the configuration no
longer asks for) and `pyro cache gc` (what a known project's current configuration needs is
never removed). It reads files only: the configuration (already loaded by the caller), the
keying files (their digests remembered while unchanged, see keydigests), the project's
prepare state and the store's completion markers, so the daily commands can afford it on
every call.

Three parts, as `pyro prepare` builds them:
  environment   the root filesystem (none for `host`)
  dependencies  the snapshot keyed by the environment, the keying files and the commands,
                with the project's own install over it (`[prepare] project`, keyed by the
                project's metadata files; only once HEAD has a commit to install it from)
  baseline      HEAD's files: a matter of speed only, never of truth (a workspace over an
                older baseline gets the working tree's files by sync)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from pyro_loop.loop.activation import tool_requests
from pyro_loop.loop.keydigests import KeyDigests
from pyro_loop.loop.prepare import (
    PrepareInputs,
    compute_inputs,
    describe_changes,
)
from pyro_loop.loop.projecthome import ProjectHome, ProjectState
from pyro_loop.loop.tools import ToolRequest, missing
from pyro_loop.project.config import ProjectConfig
from pyro_loop.project.discovery import Project, head_commit
from pyro_loop.records import dataclass
from pyro_loop.store.layers import LayerStore

if TYPE_CHECKING:
    from pyro_loop.shapes import BaselineStateJSON
    from pyro_loop.workspace.record import WorkspaceRecord

# The labels a project's workspace carries: which inputs (environment, packages, keying
# files, commands, project metadata) it was made or moved for, and its dependency layers
# (comma-separated, topmost first; "" for none).
INPUTS_LABEL = "inputs"
DEPS_LABEL = "deps"


@dataclass(frozen=True)
class Baseline:
    state: str  # "warm" | "missing" | "no commits" | "not a git repository"
    commit: str | None = None
    layer: str | None = None  # the layer of HEAD's files, when warm
    tree: str | None = None

    @property
    def ok(self) -> bool:
        return self.state != "missing"

    def to_json(self) -> BaselineStateJSON:
        if self.commit:
            return {"state": self.state, "commit": self.commit}
        return {"state": self.state}


@dataclass(frozen=True)
class Warmth:
    project: Project
    config: ProjectConfig
    inputs: PrepareInputs
    state: ProjectState | None  # what the last prepare recorded
    environment_layer: str | None  # the environment's layer key; None for `host`
    environment_cached: bool
    dependencies_cached: bool  # the snapshot of `inputs` (and the project's install) is stored
    store: LayerStore
    committed: bool = True  # HEAD has a commit: the project's own install can be built
    tools: tuple[ToolRequest, ...] = ()  # the declared tools (see loop/tools.py)

    @functools.cached_property
    def tools_missing(self) -> list[ToolRequest]:
        return missing(self.store, list(self.tools))

    @property
    def key(self) -> str:
        """The identity of the environment plus dependencies the configuration asks for."""
        project = self.project_layer
        return self.inputs.key if project is None else f"{self.inputs.key}+{project[:16]}"

    @property
    def dependencies_layer(self) -> str | None:
        return self.inputs.key if self.inputs.run else None

    @property
    def project_layer(self) -> str | None:
        """The layer of the project's own install, over the dependencies."""
        return self.inputs.project_key if self.committed else None

    @property
    def dependency_layers(self) -> list[str]:
        """The dependency snapshot and the project's install over it, topmost first."""
        return self.inputs.layers(with_project=self.committed)

    @property
    def environment_state(self) -> str:
        if self.environment_layer is None:
            return "host"
        return "cached" if self.environment_cached else "missing"

    @property
    def dependencies_state(self) -> str:
        if not self.dependency_layers:
            return "nothing to install"
        if self.dependencies_cached:
            return "warm"
        return "stale" if self.state is not None and self.state.inputs else "missing"

    def reasons(self) -> list[str]:
        """Why the environment or dependencies are not warm: "uv.lock changed: a1b2 -> c3d4"."""
        missing = self.environment_state == "missing"
        built = [f"the {self.inputs.environment} environment is not built"] if missing else []
        built += [f"tool {t.describe()} is not built" for t in self.tools_missing]
        return built + self.dependency_reasons()

    def dependency_reasons(self) -> list[str]:
        if self.dependencies_state == "stale":
            assert self.state is not None
            changes = describe_changes(self.state.inputs, self.inputs)
            if not changes and self.inputs.project_keys != self.state.project_keys:
                files = ", ".join(sorted(self.inputs.project_keys)) or "its metadata files"
                changes = [f"the project's metadata changed ({files})"]
            return changes or ["the dependency snapshot was removed from the cache"]
        if self.dependencies_state == "missing":
            return ["never prepared"]
        return []

    @property
    def runnable(self) -> bool:
        """A workspace can run on what the configuration asks for: environment and
        dependencies are in the store (the baseline only saves copying)."""
        return (
            self.environment_state != "missing"
            and not self.tools_missing
            and self.dependencies_state in ("warm", "nothing to install")
        )

    @functools.cached_property
    def baseline(self) -> Baseline:
        commit = head_commit(self.project)
        if self.project.git_dir is None:
            return Baseline("not a git repository")
        if commit is None:
            return Baseline("no commits")
        state = self.state
        if (
            state is not None
            and state.baseline_commit == commit
            and state.baseline_layer
            and self.store.get(state.baseline_layer) is not None
        ):
            return Baseline("warm", commit, state.baseline_layer, state.baseline_tree)
        return Baseline("missing", commit)

    @property
    def warm(self) -> bool:
        """`pyro prepare` would build nothing."""
        return self.runnable and self.baseline.ok

    def needed_layers(self) -> set[str]:
        """The layers of the current configuration that the store holds: what gc keeps."""
        keys = {self.environment_layer, *self.dependency_layers, self.baseline.layer}
        keys |= {t.key for t in self.tools}
        return {k for k in keys if k is not None and self.store.get(k) is not None}

    def made_for(self, record: WorkspaceRecord) -> bool:
        """Was the workspace made (or moved) for these inputs?"""
        return record.labels.get(INPUTS_LABEL) == self.key


def judge(project: Project, config: ProjectConfig, home: Path) -> Warmth:
    """The project's warmth under its current configuration. Raises PyroError for a broken
    configuration (a keying file that is missing, an unknown environment)."""
    store = LayerStore(home)
    files = ProjectHome.of(home, project)
    digests = KeyDigests(files.key_digests)
    inputs = compute_inputs(project, config, digests=digests)
    env_layer = environment_layer(config)
    committed = head_commit(project) is not None
    return Warmth(
        project=project,
        config=config,
        inputs=inputs,
        state=files.load_state(),
        environment_layer=env_layer,
        environment_cached=env_layer is None or store.get(env_layer) is not None,
        dependencies_cached=all(
            store.get(k) is not None for k in inputs.layers(with_project=committed)
        ),
        store=store,
        committed=committed,
        tools=tuple(tool_requests(config)),
    )


def environment_layer(config: ProjectConfig) -> str | None:
    """The key of the project's environment layer (None for `host`)."""
    if config.environment == "host":
        return None
    from pyro_loop.store import environments

    spec = environments.parse_environment(config.environment, config.packages)
    return environments.environment_key(spec)

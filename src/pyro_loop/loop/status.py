"""`pyro status`: is this machine warm for this project? One look, no side effects."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from pyro_loop.errors import DamagedFileError
from pyro_loop.loop.activation import tool_requests
from pyro_loop.loop.projecthome import ProjectHome
from pyro_loop.loop.tools import tool_states
from pyro_loop.loop.warmth import judge
from pyro_loop.project.config import ProjectConfig
from pyro_loop.project.discovery import Project
from pyro_loop.project.trust import TrustState, trust_state
from pyro_loop.records import dataclass, field
from pyro_loop.store.layers import LayerStore
from pyro_loop.workspace.manager import Workspaces

if TYPE_CHECKING:
    from pyro_loop.shapes import (
        BackgroundPrepareJSON,
        BaselineStateJSON,
        DependenciesStateJSON,
        EnvironmentStateJSON,
        HooksStateJSON,
        ProjectWorkspaceJSON,
        StatusJSON,
        ToolStateJSON,
    )


@dataclass(frozen=True)
class Readiness:
    project: Project
    config_found: bool
    environment: EnvironmentStateJSON
    dependencies: DependenciesStateJSON
    baseline: BaselineStateJSON
    workspaces: list[ProjectWorkspaceJSON]
    sync: str  # "watching, last sync 2 s ago" | "not watching"
    cache_bytes: int
    hooks: HooksStateJSON  # pyro's git hooks: installed, broken
    tools: list[ToolStateJSON] = field(default_factory=list)  # declared: cached or missing
    trust: TrustState | None = None  # may the .pyro.toml's commands and wider access apply?

    @property
    def warm(self) -> bool:
        return (
            self.environment["state"] in ("host", "cached")
            and all(t["state"] == "cached" for t in self.tools)
            and self.dependencies["state"] in ("warm", "nothing to install")
            and self.baseline["state"] in ("warm", "no commits", "not a git repository")
        )

    def summary(self) -> str:
        """One line for the help screen: warm or not here, and what to run next."""
        running = [w for w in self.workspaces if w["state"] == "running"]
        if self.trust is not None and not self.trust.ok:
            return f"{self.project.root}: {self.trust.message()}"
        if not self.warm:
            missing = [
                f"{name} {part['state']}"
                for name, part in (("dependencies", self.dependencies), ("baseline", self.baseline))
                if part["state"] in ("stale", "missing")
            ]
            missing += [f"tool {t['name']} missing" for t in self.tools if t["state"] != "cached"]
            if self.environment["state"] not in ("host", "cached"):
                missing.insert(0, f"environment {self.environment['state']}")
            return f"{self.project.root}: not warm ({', '.join(missing)}): `pyro up` prepares it"
        live = "workspace running" if running else "no workspace running (`pyro up`: ms)"
        return f"{self.project.root}: warm, {live}, sync {self.sync}"

    def to_json(self) -> StatusJSON:
        return {
            "project": str(self.project.root),
            "project_id": self.project.id,
            "config": str(self.project.config_path) if self.config_found else None,
            "warm": self.warm,
            "environment": self.environment,
            "dependencies": self.dependencies,
            "baseline": self.baseline,
            "workspaces": self.workspaces,
            "sync": self.sync,
            "cache_bytes": self.cache_bytes,
            "hooks": self.hooks,
            "tools": self.tools,
            "trust": self.trust.to_json() if self.trust is not None else None,
        }


def readiness(project: Project, config: ProjectConfig, ws: Workspaces) -> Readiness:
    store = ws.store
    warmth = judge(project, config, ws.home)
    key = warmth.key
    deps: DependenciesStateJSON = {"state": warmth.dependencies_state, "key": key}
    if deps["state"] in ("stale", "missing"):
        deps["reasons"] = warmth.dependency_reasons()
        background = _background_prepare(ws, project, key)
        if background:
            deps["background"] = background
    baseline = warmth.baseline.to_json()
    environment: EnvironmentStateJSON = {
        "name": config.environment,
        "state": warmth.environment_state,
    }

    mine: list[ProjectWorkspaceJSON] = [
        {
            "id": s.record.id,
            "name": s.record.name,
            "state": s.state,
            "current": warmth.made_for(s.record),
            "ports": [m.to_json() for m in s.ports],
        }
        for s in ws.list()
        if s.record.labels.get("project") == project.id
        and s.record.labels.get("pyro") not in ("prepare", "check")
    ]
    return Readiness(
        project=project,
        config_found=project.config_path.is_file(),
        environment=environment,
        dependencies=deps,
        baseline=baseline,
        workspaces=mine,
        sync=_sync_state(ws, project),
        cache_bytes=cache_size(store),
        hooks=_hooks_state(project),
        tools=tool_states(store, tool_requests(config)),
        trust=trust_state(ws.home, config),
    )


def _hooks_state(project: Project) -> HooksStateJSON:
    from pyro_loop.errors import PyroError
    from pyro_loop.project.hooks import status

    if project.repo_root is None:
        return {"installed": [], "broken": [], "problem": None}
    try:
        report = status(project)
    except PyroError as exc:
        return {"installed": [], "broken": [], "problem": exc.message}
    return {"installed": report.installed, "broken": report.broken, "problem": report.problem}


def _background_prepare(ws: Workspaces, project: Project, key: str) -> BackgroundPrepareJSON | None:
    """The prepare a git hook started for exactly these inputs, while it runs."""
    from pyro_loop.procutil import pid_alive

    try:
        record = json.loads(ProjectHome.of(ws.home, project).background_prepare.read_text())
        pid = int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if record.get("key") != key or not pid_alive(pid):
        return None
    log = record.get("log")
    return {"pid": pid, "log": log if isinstance(log, str) else None}


def _sync_state(ws: Workspaces, project: Project) -> str:
    from pyro_loop.sync.watcher import read_status

    status = read_status(ProjectHome.of(ws.home, project).watch_status)
    return status.describe() if status is not None else "not watching"


def cache_size(store: LayerStore) -> int:
    total = 0
    for layer in store.list():
        try:
            total += layer.meta()["size"]
        except DamagedFileError:
            continue
    return total

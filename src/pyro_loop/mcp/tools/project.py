"""The project itself: is it warm and its workspace ready, and syncing host edits on demand."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyro_loop.loop.warmup import load_project
from pyro_loop.mcp.calls import Ctx, ToolGroup, in_worker
from pyro_loop.shapes import ProjectStatusJSON, SyncJSON

REUSE_WAIT = 5.0  # seconds: a reuse takes milliseconds; this only bounds a stuck one

if TYPE_CHECKING:
    from pyro_loop.loop.live import ProjectLoop


class ProjectTools(ToolGroup):
    async def project_status(self, ctx: Ctx) -> ProjectStatusJSON:
        """Is this project warm, and is its workspace ready? The state of `pyro status`
        (environment, dependency snapshot, baseline, workspace, sync, cache) plus this
        server's background warm-up: phase, seconds so far, last events. Waits only for a
        warm-up that is reusing a warm workspace (milliseconds), never for a prepare."""

        def status() -> ProjectStatusJSON:
            from pyro_loop.loop.status import readiness

            project, loaded = load_project(self.calls.project_dir)
            data = readiness(project, loaded.config, self.calls.ws).to_json()
            if data["warm"] and any(
                w["state"] == "running" and w["current"] for w in data["workspaces"]
            ):
                # The warm-up has only the running workspace to reuse: report its outcome
                # rather than the moment before it ("finding the project").
                self.calls.warmup.settle(REUSE_WAIT)
            warmup = self.calls.warmup.to_json()
            return {"ready": warmup["state"] == "ready", "warmup": warmup, **data}

        return await in_worker(status)

    async def workspace_sync(self, ctx: Ctx) -> SyncJSON:
        """Push the host's changed files into the project's workspace now. Rarely needed: a
        watcher syncs each save, and workspace_exec syncs first."""

        def sync(loop: ProjectLoop) -> SyncJSON:
            return loop.sync().to_json()

        return await self.calls.on_project(ctx, sync)

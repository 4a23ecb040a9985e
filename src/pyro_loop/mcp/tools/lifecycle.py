"""Workspaces as a whole: their state, reset, extra ones made and deleted, named snapshots,
and one-shot runs in a workspace made for the purpose (vm_run)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Annotated

from pydantic import Field

from pyro_loop.errors import PyroError
from pyro_loop.mcp.calls import Calls, Ctx, Target, ToolGroup, in_worker, run_command
from pyro_loop.mcp.params import (
    DEFAULT_TIMEOUT,
    Command,
    Environment,
    Network,
    Secrets,
    Timeout,
    WorkspaceId,
)
from pyro_loop.shapes import (
    ResetJSON,
    SnapshotCreatedJSON,
    SnapshotDeletedJSON,
    SnapshotJSON,
    SnapshotListJSON,
    VmRunJSON,
    WorkspaceCreatedJSON,
    WorkspaceDeletedJSON,
    WorkspaceJSON,
    WorkspaceListJSON,
)
from pyro_loop.workspace import secrets as secretenv
from pyro_loop.workspace.client import Cancellation

logger = logging.getLogger("pyro.mcp")


class LifecycleTools(ToolGroup):
    def __init__(self, calls: Calls) -> None:
        super().__init__(calls)
        self._one_shots: set[str] = set()  # vm_run's workspaces, until they are deleted
        # Held while one is deleted: the server's exit waits for a delete under way (its
        # call's own, after a disconnect cancelled the command) instead of cutting it short.
        self._one_shots_lock = threading.Lock()

    def close(self) -> None:
        """The server is ending: delete the workspaces of vm_run calls still running (their
        calls were abandoned), which would otherwise be left behind."""
        for workspace_id in list(self._one_shots):
            if self._delete_one_shot(workspace_id):
                logger.info("deleted vm_run workspace %s: the server is ending", workspace_id)

    def _delete_one_shot(self, workspace_id: str) -> bool:
        """Delete a vm_run workspace once, whether its call or the server's exit comes
        first; False if the other one did."""
        with self._one_shots_lock:
            if workspace_id not in self._one_shots:
                return False
            with contextlib.suppress(PyroError):  # already gone
                self.calls.ws.delete(workspace_id)
            self._one_shots.discard(workspace_id)
            return True

    async def workspace_reset(
        self,
        ctx: Ctx,
        *,
        workspace_id: WorkspaceId = None,
        snapshot: Annotated[
            str, Field(description="Snapshot to return to; default the create-time baseline.")
        ] = "baseline",
    ) -> ResetJSON:
        """Discard every change made in the workspace and return to its baseline (or a
        snapshot) in milliseconds. For the project's workspace, your current host files
        are synced back in; the host is never touched."""

        def reset(target: Target) -> ResetJSON:
            started = time.perf_counter()
            synced = None
            if target.loop is not None:
                synced = target.loop.reset(snapshot=snapshot).to_json()
            else:
                self.calls.ws.reset(target.id, snapshot=snapshot)
            took = round((time.perf_counter() - started) * 1000, 1)
            if synced is None:
                return {"workspace_id": target.id, "snapshot": snapshot, "duration_ms": took}
            return {"workspace_id": target.id, "snapshot": snapshot, "synced": synced,
                    "duration_ms": took}  # fmt: skip

        return await self.calls.on(ctx, workspace_id, reset)

    async def workspace_status(
        self, ctx: Ctx, *, workspace_id: WorkspaceId = None
    ) -> WorkspaceJSON:
        """A workspace's state (running / stopped / dead), layers, snapshots, limits and
        bytes changed."""

        def status(target: Target) -> WorkspaceJSON:
            return self.calls.ws.status(target.id).to_json()

        return await self.calls.on(ctx, workspace_id, status)

    async def workspace_list(self, ctx: Ctx) -> WorkspaceListJSON:
        """All workspaces on this machine: id, name, state, environment, labels."""

        def list_all() -> WorkspaceListJSON:
            return {"workspaces": [s.to_json() for s in self.calls.ws.list()]}

        return await in_worker(list_all)

    async def workspace_create(
        self,
        ctx: Ctx,
        *,
        environment: Environment = "host",
        seed_path: Annotated[
            str | None,
            Field(
                description="Host directory or tar archive to copy into /workspace "
                "(relative: to the project); default none, an empty /workspace."
            ),
        ] = None,
        name: Annotated[
            str | None, Field(description="A name to use instead of the id; default none.")
        ] = None,
        network: Network = False,
        secrets: Secrets = None,
    ) -> WorkspaceCreatedJSON:
        """Create and start an extra workspace (the project's own needs no create). A
        debian:* environment is built on first use (about 30 s), then cached. Delete it
        with workspace_delete when done."""
        values = secretenv.from_mapping(secrets)

        def create() -> WorkspaceCreatedJSON:
            record = self.calls.ws.create(
                environment=environment,
                seed=self.calls.host_path(seed_path) if seed_path else None,
                name=name,
                network=network,
                labels={"created-by": "mcp"},
                secrets=values,
            )
            return {**record.to_json(), "state": "running"}

        return await in_worker(create)

    async def workspace_delete(
        self,
        ctx: Ctx,
        *,
        workspace_id: Annotated[str, Field(description="Workspace id or name (required).")],
    ) -> WorkspaceDeletedJSON:
        """Delete a workspace: its processes end and its changes are discarded. Deleting
        the project's workspace is allowed: the next project tool call makes a fresh one."""

        def delete() -> WorkspaceDeletedJSON:
            record = self.calls.ws.delete(workspace_id)
            return {"workspace_id": record.id, "deleted": True}

        return await in_worker(delete)

    async def vm_run(
        self,
        ctx: Ctx,
        *,
        command: Command,
        environment: Environment = "host",
        timeout_seconds: Timeout = DEFAULT_TIMEOUT,
        network: Network = False,
    ) -> VmRunJSON:
        """One-shot: create a fresh, empty workspace, run a shell command line in it, delete
        it. Returns exit_code, stdout, stderr (32 KiB each, head and tail), duration_ms.
        Default timeout 30 s; network off."""

        cancel = Cancellation()

        def run() -> VmRunJSON:
            ws = self.calls.ws
            record = ws.create(
                environment=environment, network=network, standby=False,
                labels={"pyro": "vm-run"},
            )  # fmt: skip
            with self._one_shots_lock:
                self._one_shots.add(record.id)
            argv = ["sh", "-c", command]
            try:
                # The workspace goes: nowhere to keep long output (None), it is only cut.
                data = run_command(
                    record.id,
                    None,
                    lambda capture: ws.exec(
                        record.id, argv, timeout=timeout_seconds, on_output=capture, cancel=cancel
                    ),
                    timeout=timeout_seconds,
                )
            finally:
                self._delete_one_shot(record.id)
            return {**data, "environment": environment, "deleted": True}

        return await in_worker(run, cancel)

    async def snapshot_create(
        self,
        ctx: Ctx,
        *,
        snapshot_name: Annotated[str, Field(description="1-64 letters, digits, . _ -")],
        workspace_id: WorkspaceId = None,
    ) -> SnapshotCreatedJSON:
        """Freeze the workspace's current files as a named snapshot, to return to later with
        workspace_reset(snapshot=...)."""

        def create(target: Target) -> SnapshotCreatedJSON:
            snap = self.calls.ws.snapshot_create(target.id, snapshot_name)
            return {"workspace_id": target.id, "snapshot": snap.name, "created": snap.created}

        return await self.calls.on(ctx, workspace_id, create)

    async def snapshot_list(
        self, ctx: Ctx, *, workspace_id: WorkspaceId = None
    ) -> SnapshotListJSON:
        """The workspace's snapshots, `baseline` (its create-time state) first."""

        def list_snapshots(target: Target) -> SnapshotListJSON:
            snaps = self.calls.ws.snapshot_list(target.id)
            rows: list[SnapshotJSON] = [{"name": s.name, "created": s.created} for s in snaps]
            return {"workspace_id": target.id, "snapshots": rows}

        return await self.calls.on(ctx, workspace_id, list_snapshots)

    async def snapshot_delete(
        self,
        ctx: Ctx,
        *,
        snapshot_name: Annotated[str, Field(description="The snapshot to forget.")],
        workspace_id: WorkspaceId = None,
    ) -> SnapshotDeletedJSON:
        """Forget a named snapshot (the baseline cannot be deleted)."""

        def delete(target: Target) -> SnapshotDeletedJSON:
            self.calls.ws.snapshot_delete(target.id, snapshot_name)
            return {"workspace_id": target.id, "deleted": snapshot_name}

        return await self.calls.on(ctx, workspace_id, delete)

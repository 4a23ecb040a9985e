"""The MCP tools: each a thin call into `ProjectLoop` or `Workspaces`, described for a model.

Without a `workspace_id`, a tool acts on the project's workspace (waiting a bounded time for
the background warm-up); with one, on that workspace. Results are JSON objects. Failures are
tool errors (`isError`) whose text says what to do; nothing a call does stops the server.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from pyro_loop import __version__
from pyro_loop.errors import InvalidInputError, PyroError
from pyro_loop.mcp.output import OutputCapture, read_saved
from pyro_loop.mcp.profiles import tools_for
from pyro_loop.mcp.warmup import not_a_project

if TYPE_CHECKING:
    from pyro_loop.client import ExecResult
    from pyro_loop.loop import ProjectLoop
    from pyro_loop.mcp.warmup import ProjectWarmup
    from pyro_loop.workspace import Workspaces

logger = logging.getLogger("pyro.mcp")

T = TypeVar("T")
Ctx = Context[Any, Any]

MAX_PATCH_CHARS = 64 * 1024  # of a diff's patch returned inline
MAX_LIST_ENTRIES = 2000
PROGRESS_EVERY = 1.0  # seconds between progress notifications while waiting for warm-up

INSTRUCTIONS = """\
pyro runs this project's commands in an isolated, disposable workspace: /workspace holds the
repository (HEAD plus your uncommitted edits, kept in sync as you save), over the dependency
snapshot `pyro prepare` built; network is off. Edit files on the host with your usual tools,
then build and test with workspace_exec; workspace_retry re-runs the last command and
workspace_reset returns to the clean baseline in milliseconds. Nothing writes to the host
except workspace_export. In a cold project the workspace is prepared in the background on
first start: project_status shows how far it got."""

VM_RUN_INSTRUCTIONS = """\
pyro runs one-shot commands with vm_run: each in a fresh, isolated workspace that is deleted
afterwards (network off unless asked for)."""

WorkspaceId = Annotated[
    str | None,
    Field(description="Workspace id or name; default: the project's workspace."),
]
Command = Annotated[str, Field(description="A shell command line, run with `sh -c`.")]
Timeout = Annotated[
    float, Field(description="Kill the command's process tree after this many seconds.", gt=0)
]
Cwd = Annotated[str | None, Field(description="Working directory; default /workspace.")]
WorkspacePath = Annotated[str, Field(description="A path in the workspace (under /workspace).")]


@dataclass(frozen=True)
class _Target:
    id: str
    loop: ProjectLoop | None  # set when the workspace is the project's own


class PyroTools:
    """The tools of one server: the project's warm-up plus the workspaces under pyro's home."""

    def __init__(
        self,
        warmup: ProjectWarmup,
        workspaces: Callable[[], Workspaces],
        *,
        project_dir: Path,
        wait_seconds: float,
    ) -> None:
        self.warmup = warmup
        self._workspaces = workspaces
        self.project_dir = project_dir
        self.wait_seconds = wait_seconds

    @property
    def ws(self) -> Workspaces:
        return self._workspaces()

    # -- finding the workspace a call is about ------------------------------------------------

    async def _project(self, ctx: Ctx) -> ProjectLoop:
        """The project's loop, once warm: waits up to `wait_seconds`, reporting progress."""
        self.warmup.start(retry=True)
        started = time.monotonic()
        reported = -PROGRESS_EVERY
        while True:
            loop = self.warmup.poll()
            if loop is not None:
                return loop
            waited = time.monotonic() - started
            if waited >= self.wait_seconds:
                raise self.warmup.pending()
            if waited - reported >= PROGRESS_EVERY:
                await ctx.report_progress(waited, None, self.warmup.phase())
                reported = waited
            await anyio.sleep(0.02)

    def _target(self, workspace_id: str | None, loop: ProjectLoop | None) -> _Target:
        if workspace_id is None:
            assert loop is not None
            record = loop.live()
            self.warmup.follow(record.id)
            return _Target(record.id, loop)
        found = self.ws.resolve(workspace_id).root.name
        try:
            ready = self.warmup.poll()
        except PyroError:
            ready = None
        mine = ready.find() if ready is not None else None
        return _Target(found, ready if mine is not None and mine.id == found else None)

    async def _on(self, ctx: Ctx, workspace_id: str | None, work: Callable[[_Target], T]) -> T:
        loop = await self._project(ctx) if workspace_id is None else None
        return await anyio.to_thread.run_sync(lambda: work(self._target(workspace_id, loop)))

    async def _on_project(self, ctx: Ctx, work: Callable[[ProjectLoop], T]) -> T:
        loop = await self._project(ctx)
        return await anyio.to_thread.run_sync(lambda: work(loop))

    def _outputs(self, workspace_id: str) -> Path:
        return self.ws.resolve(workspace_id).root / "outputs"

    def _host_path(self, path: str) -> Path:
        return (self.project_dir / Path(path).expanduser()).absolute()

    # -- the project ----------------------------------------------------------------------------

    async def project_status(self, ctx: Ctx) -> dict[str, Any]:
        """Is this project warm, and is its workspace ready? The state of `pyro status`
        (environment, dependency snapshot, baseline, workspace, sync, cache) plus this
        server's background warm-up: phase, seconds so far, last events. Never waits."""

        def status() -> dict[str, Any]:
            from pyro_loop.config import load_project_config
            from pyro_loop.project import find_project
            from pyro_loop.readiness import readiness

            warmup = self.warmup.to_json()
            project = find_project(self.project_dir)
            if not project.config_path.is_file():
                raise not_a_project(project.root)
            config = load_project_config(project.root).config
            data = readiness(project, config, self.ws).to_json()
            return {"ready": warmup["state"] == "ready", "warmup": warmup, **data}

        return await anyio.to_thread.run_sync(status)

    async def workspace_exec(
        self,
        ctx: Ctx,
        *,
        command: Command,
        workspace_id: WorkspaceId = None,
        timeout_seconds: Timeout = 30.0,
        cwd: Cwd = None,
    ) -> dict[str, Any]:
        """Run a shell command line in the workspace (default: the project's, with your
        host edits synced first). Returns exit_code, stdout, stderr, duration_ms, timed_out.
        Each stream is returned up to 32 KiB (head and tail); past that, *_truncated is true
        and workspace_logs(exec_id=...) reads the full text. Default timeout 30 s."""

        def run(target: _Target) -> dict[str, Any]:
            capture = OutputCapture(self._outputs(target.id))
            argv = ["sh", "-c", command]
            try:
                if target.loop is not None:
                    result = target.loop.exec(
                        argv, timeout=timeout_seconds, cwd=cwd, on_output=capture
                    )
                else:
                    result = self.ws.exec(
                        target.id, argv, timeout=timeout_seconds, cwd=cwd, on_output=capture
                    )
            finally:
                capture.close()
            return _exec_result(target.id, result, capture, timeout_seconds)

        return await self._on(ctx, workspace_id, run)

    async def workspace_retry(
        self,
        ctx: Ctx,
        *,
        reset: Annotated[
            bool, Field(description="Reset the workspace to its baseline first.")
        ] = False,
    ) -> dict[str, Any]:
        """Run the project's last command again (from workspace_exec or `pyro exec`), after
        syncing host edits: the fix-and-rerun loop in one call. Same result as
        workspace_exec."""

        def run(loop: ProjectLoop) -> dict[str, Any]:
            record = loop.live()
            self.warmup.follow(record.id)
            capture = OutputCapture(self._outputs(record.id))
            try:
                result = loop.retry(reset=reset, on_output=capture)
            finally:
                capture.close()
            return _exec_result(record.id, result, capture, None)

        return await self._on_project(ctx, run)

    async def workspace_sync(self, ctx: Ctx) -> dict[str, Any]:
        """Push the host's changed files into the project's workspace now. Rarely needed: a
        watcher syncs each save, and workspace_exec syncs first."""
        return await self._on_project(ctx, lambda loop: loop.sync().to_json())

    async def workspace_reset(
        self,
        ctx: Ctx,
        *,
        workspace_id: WorkspaceId = None,
        snapshot: Annotated[
            str, Field(description="Snapshot to return to; default the create-time baseline.")
        ] = "baseline",
    ) -> dict[str, Any]:
        """Discard every change made in the workspace and return to its baseline (or a
        snapshot) in milliseconds. For the project's workspace, your current host files
        are synced back in; the host is never touched."""

        def reset(target: _Target) -> dict[str, Any]:
            started = time.perf_counter()
            data: dict[str, Any] = {"workspace_id": target.id, "snapshot": snapshot}
            if target.loop is not None:
                data["synced"] = target.loop.reset(snapshot=snapshot).to_json()
            else:
                self.ws.reset(target.id, snapshot=snapshot)
            data["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
            return data

        return await self._on(ctx, workspace_id, reset)

    # -- files ----------------------------------------------------------------------------------

    async def workspace_file_list(
        self,
        ctx: Ctx,
        *,
        workspace_id: WorkspaceId = None,
        path: WorkspacePath = "/workspace",
        recursive: Annotated[bool, Field(description="Descend into subdirectories.")] = False,
    ) -> dict[str, Any]:
        """List a directory in the workspace: path, type, mode and size of each entry
        (up to 2000; `truncated` says when there were more)."""

        def list_files(target: _Target) -> dict[str, Any]:
            reply = self.ws.client(target.id).list(
                path, recursive=recursive, max_entries=MAX_LIST_ENTRIES
            )
            return {"workspace_id": target.id, **reply}

        return await self._on(ctx, workspace_id, list_files)

    async def workspace_file_read(
        self,
        ctx: Ctx,
        *,
        path: WorkspacePath,
        workspace_id: WorkspaceId = None,
        max_bytes: Annotated[int, Field(description="Bytes to read at most.", gt=0)] = 65536,
        offset: Annotated[int, Field(description="Byte offset to start at.", ge=0)] = 0,
    ) -> dict[str, Any]:
        """Read a file from the workspace as UTF-8 text (64 KiB by default). When
        `truncated` is true, read on from `next_offset`."""

        def read(target: _Target) -> dict[str, Any]:
            content, reply = self.ws.client(target.id).read(
                path, max_bytes=max_bytes, offset=offset
            )
            end = offset + len(content)
            return {
                "workspace_id": target.id,
                "path": reply.get("path", path),
                "size": reply.get("size"),
                "offset": offset,
                "content": content.decode("utf-8", "replace"),
                "binary": b"\0" in content,
                "truncated": bool(reply.get("truncated")),
                "next_offset": end if reply.get("truncated") else None,
            }

        return await self._on(ctx, workspace_id, read)

    async def workspace_file_write(
        self,
        ctx: Ctx,
        *,
        path: WorkspacePath,
        text: Annotated[str, Field(description="The file's whole new content.")],
        workspace_id: WorkspaceId = None,
    ) -> dict[str, Any]:
        """Write a text file in the workspace (created or replaced, parents made). Only the
        workspace changes, not the host: workspace_diff shows it, workspace_reset drops it.
        A host edit of the same path later wins."""

        def write(target: _Target) -> dict[str, Any]:
            reply = self.ws.client(target.id).write(path, text.encode())
            return {"workspace_id": target.id, **reply}

        return await self._on(ctx, workspace_id, write)

    async def workspace_patch_apply(
        self,
        ctx: Ctx,
        *,
        patch: Annotated[str, Field(description="A unified diff, paths relative to /workspace.")],
        workspace_id: WorkspaceId = None,
    ) -> dict[str, Any]:
        """Apply a unified diff (git or `diff -u` style, a/ b/ prefixes) in the workspace:
        every hunk or nothing. Returns the files it changed."""

        def apply(target: _Target) -> dict[str, Any]:
            return {"workspace_id": target.id, **self.ws.apply_patch(target.id, patch)}

        return await self._on(ctx, workspace_id, apply)

    async def workspace_diff(self, ctx: Ctx, *, workspace_id: WorkspaceId = None) -> dict[str, Any]:
        """What the workspace changed, as a git-style patch plus a list of changed paths. For
        the project's workspace the comparison is with your current host files, so what you
        edited on the host drops out and what commands changed remains."""

        def diff(target: _Target) -> dict[str, Any]:
            from pyro_loop.diff import render_patch

            changes = (
                target.loop.changes() if target.loop is not None else self.ws.changes(target.id)
            )
            patch = render_patch(changes)
            truncated = len(patch) > MAX_PATCH_CHARS
            if truncated:
                patch = patch[:MAX_PATCH_CHARS] + (
                    f"\n[... patch cut at {MAX_PATCH_CHARS} of {len(patch)} characters: "
                    "read the changed files with workspace_file_read ...]\n"
                )
            return {
                "workspace_id": target.id,
                "changes": [c.to_json() for c in changes],
                "patch": patch,
                "patch_truncated": truncated,
            }

        return await self._on(ctx, workspace_id, diff)

    async def workspace_export(
        self,
        ctx: Ctx,
        *,
        path: WorkspacePath,
        output_path: Annotated[
            str, Field(description="Where to write it on the host (relative: to the project).")
        ],
        workspace_id: WorkspaceId = None,
        force: Annotated[bool, Field(description="Replace output_path if it exists.")] = False,
    ) -> dict[str, Any]:
        """Copy a file or directory out of the workspace to the host: the only tool that
        writes to the host. Refuses to replace an existing output_path unless force."""

        def export(target: _Target) -> dict[str, Any]:
            data = self.ws.export(target.id, path, self._host_path(output_path), force=force)
            return {"workspace_id": target.id, **data}

        return await self._on(ctx, workspace_id, export)

    # -- inspecting workspaces ----------------------------------------------------------------

    async def workspace_status(
        self, ctx: Ctx, *, workspace_id: WorkspaceId = None
    ) -> dict[str, Any]:
        """A workspace's state (running / stopped / dead), layers, snapshots, limits and
        bytes changed."""
        return await self._on(ctx, workspace_id, lambda t: self.ws.status(t.id).to_json())

    async def workspace_logs(
        self,
        ctx: Ctx,
        *,
        workspace_id: WorkspaceId = None,
        exec_id: Annotated[
            str | None,
            Field(description="Read this command's saved full output instead of the history."),
        ] = None,
        stream: Annotated[str, Field(description="stdout or stderr (with exec_id).")] = "stdout",
        offset: Annotated[int, Field(description="Byte offset (with exec_id).", ge=0)] = 0,
        max_bytes: Annotated[
            int, Field(description="Bytes to return (with exec_id).", gt=0)
        ] = 65536,
    ) -> dict[str, Any]:
        """The workspace's last commands (exit codes, durations) and its agent log; or,
        with exec_id, a slice of one command's full output (follow `next_offset`)."""

        def logs(target: _Target) -> dict[str, Any]:
            if exec_id is not None:
                data = read_saved(
                    self._outputs(target.id), exec_id, stream, offset=offset, max_bytes=max_bytes
                )
                return {"workspace_id": target.id, **data}
            return self.ws.logs(target.id, limit=20)

        return await self._on(ctx, workspace_id, logs)

    async def workspace_list(self, ctx: Ctx) -> dict[str, Any]:
        """All workspaces on this machine: id, name, state, environment, labels."""

        def list_all() -> dict[str, Any]:
            rows = [s.to_json() for s in self.ws.list()]
            return {"workspaces": rows}

        return await anyio.to_thread.run_sync(list_all)

    # -- more workspaces ------------------------------------------------------------------------

    async def workspace_create(
        self,
        ctx: Ctx,
        *,
        environment: Annotated[
            str, Field(description="host (the host's tools, read-only) or debian:12.")
        ] = "host",
        seed_path: Annotated[
            str | None,
            Field(description="Host directory or tar archive to copy into /workspace."),
        ] = None,
        name: Annotated[str | None, Field(description="A name to use instead of the id.")] = None,
        network: Annotated[bool, Field(description="Allow outbound network.")] = False,
    ) -> dict[str, Any]:
        """Create and start an extra workspace (the project's own needs no create). A
        debian:* environment is built on first use (about 30 s), then cached. Delete it
        with workspace_delete when done."""

        def create() -> dict[str, Any]:
            record = self.ws.create(
                environment=environment,
                seed=self._host_path(seed_path) if seed_path else None,
                name=name,
                network=network,
                labels={"created-by": "mcp"},
            )
            return {**record.to_json(), "state": "running"}

        return await anyio.to_thread.run_sync(create)

    async def workspace_delete(
        self,
        ctx: Ctx,
        *,
        workspace_id: Annotated[str, Field(description="Workspace id or name (required).")],
    ) -> dict[str, Any]:
        """Delete a workspace: its processes end and its changes are discarded. Deleting
        the project's workspace is allowed: the next project tool call makes a fresh one."""

        def delete() -> dict[str, Any]:
            record = self.ws.delete(workspace_id)
            return {"workspace_id": record.id, "deleted": True}

        return await anyio.to_thread.run_sync(delete)

    async def vm_run(
        self,
        ctx: Ctx,
        *,
        command: Command,
        environment: Annotated[
            str, Field(description="host (the host's tools, read-only) or debian:12.")
        ] = "host",
        timeout_seconds: Timeout = 30.0,
        network: Annotated[bool, Field(description="Allow outbound network.")] = False,
    ) -> dict[str, Any]:
        """One-shot: create a fresh, empty workspace, run a shell command line in it, delete
        it. Returns exit_code, stdout, stderr (32 KiB each, head and tail), duration_ms.
        Default timeout 30 s; network off."""

        def run() -> dict[str, Any]:
            ws = self.ws
            record = ws.create(
                environment=environment, network=network, standby=False,
                labels={"pyro": "vm-run"},
            )  # fmt: skip
            capture = OutputCapture(None)  # the workspace goes: nowhere to keep long output
            try:
                result = ws.exec(
                    record.id, ["sh", "-c", command], timeout=timeout_seconds, on_output=capture
                )
                data = _exec_result(record.id, result, capture, timeout_seconds)
            finally:
                ws.delete(record.id)
            return {**data, "environment": environment, "deleted": True}

        return await anyio.to_thread.run_sync(run)

    # -- snapshots ------------------------------------------------------------------------------

    async def snapshot_create(
        self,
        ctx: Ctx,
        *,
        snapshot_name: Annotated[str, Field(description="1-64 letters, digits, . _ -")],
        workspace_id: WorkspaceId = None,
    ) -> dict[str, Any]:
        """Freeze the workspace's current files as a named snapshot, to return to later with
        workspace_reset(snapshot=...)."""

        def create(target: _Target) -> dict[str, Any]:
            snap = self.ws.snapshot_create(target.id, snapshot_name)
            return {"workspace_id": target.id, "snapshot": snap.name, "created": snap.created}

        return await self._on(ctx, workspace_id, create)

    async def snapshot_list(self, ctx: Ctx, *, workspace_id: WorkspaceId = None) -> dict[str, Any]:
        """The workspace's snapshots, `baseline` (its create-time state) first."""

        def list_snapshots(target: _Target) -> dict[str, Any]:
            snaps = self.ws.snapshot_list(target.id)
            rows = [{"name": s.name, "created": s.created} for s in snaps]
            return {"workspace_id": target.id, "snapshots": rows}

        return await self._on(ctx, workspace_id, list_snapshots)

    async def snapshot_delete(
        self,
        ctx: Ctx,
        *,
        snapshot_name: Annotated[str, Field(description="The snapshot to forget.")],
        workspace_id: WorkspaceId = None,
    ) -> dict[str, Any]:
        """Forget a named snapshot (the baseline cannot be deleted)."""

        def delete(target: _Target) -> dict[str, Any]:
            self.ws.snapshot_delete(target.id, snapshot_name)
            return {"workspace_id": target.id, "deleted": snapshot_name}

        return await self._on(ctx, workspace_id, delete)


def _exec_result(
    workspace_id: str, result: ExecResult, capture: OutputCapture, timeout: float | None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "workspace_id": workspace_id,
        "exit_code": result.exit_code,
        **capture.to_json(),
        "duration_ms": round(result.duration * 1000, 1),
        "timed_out": result.timed_out,
        "signal": result.signal,
    }
    if result.timed_out:
        data["note"] = (
            f"timed out after {timeout} s: the command's process tree was killed; "
            "pass a larger timeout_seconds if it needs longer"
        )
    return data


def _guarded(name: str, tool: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """The tool, with pyro's errors turned into tool errors that say what to do."""

    @functools.wraps(tool)
    async def call(*args: Any, **kwargs: Any) -> T:
        try:
            return await tool(*args, **kwargs)
        except PyroError as exc:
            text = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
            raise ToolError(text) from exc
        except Exception as exc:
            # A bug: the model is told plainly, the traceback goes to the server's log, and
            # the server goes on serving.
            logger.exception("tool %s failed", name)
            raise ToolError(
                f"internal error in pyro ({type(exc).__name__}: {exc}); the server is still "
                "running and its log (stderr) has the details"
            ) from exc

    return call


def build_server(tools: PyroTools, profile: str) -> MCPServer[Any]:
    """An MCP server offering `profile`'s tools."""
    names = tools_for(profile)
    instructions = INSTRUCTIONS if "workspace_exec" in names else VM_RUN_INSTRUCTIONS
    server: MCPServer[Any] = MCPServer(
        "pyro", version=__version__, instructions=instructions, log_level="WARNING"
    )
    for name in names:
        method = getattr(tools, name, None)
        if method is None:  # a profile naming a tool that does not exist is a bug here
            raise InvalidInputError(f"profile {profile!r} names an unknown tool {name!r}")
        server.add_tool(_guarded(name, method), name=name)
    return server

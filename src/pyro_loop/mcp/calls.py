"""What every tool call goes through: finding the workspace it acts on, waiting for the warm-up,
running the work on a worker thread, and turning failures into tool errors that say what to do.

Without a `workspace_id`, a tool acts on the project's workspace (waiting up to `--wait`
seconds for the background warm-up, and preparing when its configuration or lockfiles
changed, with progress notifications); with one, on that workspace. Blocking work (git,
the store, the workspace's agent) never runs on the event loop's thread, so one slow call
does not hold up the others.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from pyro_loop.errors import PyroError
from pyro_loop.mcp.output import OutputCapture
from pyro_loop.records import dataclass
from pyro_loop.shapes import ExecJSON

if TYPE_CHECKING:
    from pyro_loop.loop.live import ProjectLoop
    from pyro_loop.loop.warmup import ProjectWarmup
    from pyro_loop.progress import OnProgress, Progress
    from pyro_loop.workspace.client import Cancellation, ExecResult
    from pyro_loop.workspace.manager import Workspaces
    from pyro_loop.workspace.record import WorkspaceRecord

logger = logging.getLogger("pyro.mcp")

T = TypeVar("T")
Ctx = Context[Any, Any]

LONGER = "pass a larger timeout_seconds if it needs longer"  # what a timed-out call can do


@dataclass(frozen=True)
class Target:
    """The workspace a call acts on."""

    id: str
    loop: ProjectLoop | None  # set when the workspace is the project's own


class Calls:
    """One server's way to the workspaces: the project's warm-up and the workspaces under
    pyro's home. Each tool group holds one and runs its work through it."""

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
        """The workspaces (created on first use: only ever from a worker thread)."""
        return self._workspaces()

    # -- running a call's work ----------------------------------------------------------------

    async def on(
        self,
        ctx: Ctx,
        workspace_id: str | None,
        work: Callable[[Target], T],
        cancel: Cancellation | None = None,
    ) -> T:
        """`work` on the workspace the call names (default: the project's), in a worker."""
        progress = CallProgress(ctx)
        loop = await self.project_loop(ctx, progress) if workspace_id is None else None
        return await in_worker(lambda: work(self.target(workspace_id, loop, progress)), cancel)

    async def on_project(
        self, ctx: Ctx, work: Callable[[ProjectLoop], T], cancel: Cancellation | None = None
    ) -> T:
        """`work` on the project's loop, once warm and its workspace live, in a worker."""
        progress = CallProgress(ctx)
        loop = await self.project_loop(ctx, progress)

        def run() -> T:
            self.live(loop, progress)  # a prepare it needs first is this call's progress
            return work(loop)

        return await in_worker(run, cancel)

    async def project_loop(self, ctx: Ctx, progress: CallProgress | None = None) -> ProjectLoop:
        """The project's loop, once warm: waits up to `wait_seconds`, reporting progress
        each time the warm-up's phase line changes (a new step, or each second of one)."""
        progress = progress or CallProgress(ctx)
        self.warmup.start(retry=True)
        started = time.monotonic()
        reported = None
        while True:
            loop = self.warmup.poll()
            if loop is not None:
                return loop
            if time.monotonic() - started >= self.wait_seconds:
                raise self.warmup.pending()
            phase = self.warmup.phase()
            if phase != reported:
                await progress.send(phase)
                reported = phase
            await anyio.sleep(0.02)

    # -- finding the workspace (in the worker) ------------------------------------------------

    def target(
        self, workspace_id: str | None, loop: ProjectLoop | None, progress: OnProgress | None = None
    ) -> Target:
        """The workspace `workspace_id` names, or the project's (running, and watched)."""
        if workspace_id is None:
            assert loop is not None
            return Target(self.live(loop, progress).id, loop)
        found = self.ws.resolve(workspace_id).root.name
        try:
            ready = self.warmup.poll()
        except PyroError:
            ready = None
        mine = ready.find() if ready is not None else None
        return Target(found, ready if mine is not None and mine.id == found else None)

    def live(self, loop: ProjectLoop, progress: OnProgress | None = None) -> WorkspaceRecord:
        """The project's workspace, running (made again if deleted, moved onto dependencies
        prepared now if they changed), with the watcher on it."""
        record = loop.live(on_progress=progress)
        self.warmup.follow(record.id)
        return record

    def outputs(self, workspace_id: str) -> Path:
        """Where a workspace's long command output is kept."""
        return self.ws.resolve(workspace_id).root / "outputs"

    def host_path(self, path: str) -> Path:
        """A host path a tool was given: relative ones are to the project."""
        return (self.project_dir / Path(path).expanduser()).absolute()


class CallProgress:
    """One tool call's progress notifications (MCP `notifications/progress`, sent when the
    client asked for them with a progress token): a count that only grows, as the protocol
    wants, and a message. Sent from the event loop (`send`) or, as an `OnProgress` for the
    library, from the call's worker thread."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.sent = 0  # only ever changed on the event loop's thread

    async def send(self, message: str) -> None:
        self.sent += 1
        await self.ctx.report_progress(self.sent, None, message)

    def __call__(self, event: Progress) -> None:
        try:
            anyio.from_thread.run(self.send, f"prepare: {event.describe()}")
        except Exception:  # a client gone or a call abandoned: the work goes on regardless
            logger.debug("could not send a progress notification", exc_info=True)


class ToolGroup:
    """Some tools, as async methods: each method's name is the tool's, its docstring and
    parameter annotations are what a model reads, and its work goes through `calls`."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls


async def in_worker(work: Callable[[], T], cancel: Cancellation | None = None) -> T:
    """`work()` on a worker thread.

    A call cancelled meanwhile (the client gave up on it, or disconnected) is answered at
    once and its work abandoned; a command it runs with `cancel` is stopped (its process
    tree killed), other work runs its course.
    """
    try:
        return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        if cancel is not None:
            cancel.cancel()
        raise


def run_command(
    workspace_id: str,
    outputs: Path | None,
    run: Callable[[OutputCapture], ExecResult],
    *,
    timeout: float | None,
    longer: str = LONGER,
) -> ExecJSON:
    """`run` a command, its output captured for a model (long output kept in `outputs`, or
    only cut when None): the result workspace_exec, workspace_retry and vm_run give.
    `longer` tells a model what to do when the command timed out."""
    capture = OutputCapture(outputs)
    try:
        result = run(capture)
    finally:
        capture.close()
    captured = capture.to_json()
    data: ExecJSON = {
        "workspace_id": workspace_id,
        "exit_code": result.exit_code,
        "stdout": captured["stdout"],
        "stdout_bytes": captured["stdout_bytes"],
        "stdout_truncated": captured["stdout_truncated"],
        "stderr": captured["stderr"],
        "stderr_bytes": captured["stderr_bytes"],
        "stderr_truncated": captured["stderr_truncated"],
        "exec_id": captured["exec_id"],
        "duration_ms": round(result.duration * 1000, 1),
        "timed_out": result.timed_out,
        "signal": result.signal,
    }
    if result.timed_out:
        data["note"] = (
            f"timed out after {timeout} s: the command's process tree was killed; {longer}"
        )
    return data


def guarded(name: str, tool: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
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

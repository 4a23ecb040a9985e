"""Commands in a workspace: run one, run the last one again, read their history and output."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from pyro_loop.errors import NotFoundError
from pyro_loop.mcp.calls import Ctx, Target, ToolGroup, run_command
from pyro_loop.mcp.output import read_saved
from pyro_loop.mcp.params import DEFAULT_TIMEOUT, Command, Cwd, Timeout, WorkspaceId
from pyro_loop.shapes import ExecJSON, LogsToolJSON
from pyro_loop.workspace.client import Cancellation

if TYPE_CHECKING:
    from pyro_loop.loop.live import ProjectLoop
    from pyro_loop.mcp.output import OutputCapture
    from pyro_loop.workspace.client import ExecResult

HISTORY = 20  # commands workspace_logs lists

# A retried command keeps its own timeout, which only workspace_exec can change.
RETRY_LONGER = "to give it longer, run it with workspace_exec and a larger timeout_seconds"


class CommandTools(ToolGroup):
    async def workspace_exec(
        self,
        ctx: Ctx,
        *,
        command: Command,
        workspace_id: WorkspaceId = None,
        timeout_seconds: Timeout = DEFAULT_TIMEOUT,
        cwd: Cwd = None,
    ) -> ExecJSON:
        """Run a shell command line in the workspace (default: the project's, with your
        host edits synced first). Returns exit_code, stdout, stderr, duration_ms, timed_out
        (and a note with the PATH searched when a command is not found, exit 127).
        Each stream is returned up to 32 KiB (head and tail); past that, *_truncated is true
        and workspace_logs(exec_id=...) reads the full text. Default timeout 30 s."""
        argv = ["sh", "-c", command]
        cancel = Cancellation()  # a cancelled call's command is killed, not left running

        def run(target: Target) -> ExecJSON:
            def start(capture: OutputCapture) -> ExecResult:
                if target.loop is not None:  # the project's: host edits synced first
                    return target.loop.exec(
                        argv, timeout=timeout_seconds, cwd=cwd, on_output=capture, cancel=cancel
                    )
                return self.calls.ws.exec(
                    target.id, argv, timeout=timeout_seconds, cwd=cwd, on_output=capture,
                    cancel=cancel,
                )  # fmt: skip

            outputs = self.calls.outputs(target.id)
            data = run_command(target.id, outputs, start, timeout=timeout_seconds)
            if data["exit_code"] == 127 and target.loop is not None:
                # The PATH searched and the likely fix, as `pyro exec` prints them.
                stderr = str(data.get("stderr") or "").encode()
                hint = target.loop.not_found_hint(argv, stderr)
                data.setdefault("note", f"command not found: {hint}")
            return data

        return await self.calls.on(ctx, workspace_id, run, cancel)

    async def workspace_retry(
        self,
        ctx: Ctx,
        *,
        reset: Annotated[
            bool, Field(description="Reset the workspace to its baseline first; default false.")
        ] = False,
    ) -> ExecJSON:
        """Run the project's last command again (from workspace_exec or `pyro exec`) with
        its timeout (30 s if it had none), after syncing host edits: the fix-and-rerun loop
        in one call. Same result as workspace_exec."""

        cancel = Cancellation()

        def run(loop: ProjectLoop) -> ExecJSON:
            last = loop.last_command()
            if last is None:
                raise NotFoundError(
                    "nothing to retry yet", hint="run the command with workspace_exec first"
                )
            record = self.calls.live(loop)
            timeout = last.get("timeout")
            return run_command(
                record.id,
                self.calls.outputs(record.id),
                lambda capture: loop.retry(
                    reset=reset, on_output=capture, default_timeout=DEFAULT_TIMEOUT, cancel=cancel
                ),
                timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
                longer=RETRY_LONGER,
            )

        return await self.calls.on_project(ctx, run, cancel)

    async def workspace_logs(
        self,
        ctx: Ctx,
        *,
        workspace_id: WorkspaceId = None,
        exec_id: Annotated[
            str | None,
            Field(
                description="Read this command's saved full output; default: the history instead."
            ),
        ] = None,
        stream: Annotated[
            str, Field(description="stdout or stderr (with exec_id); default stdout.")
        ] = "stdout",
        offset: Annotated[
            int, Field(description="Byte offset (with exec_id); default 0.", ge=0)
        ] = 0,
        max_bytes: Annotated[
            int, Field(description="Bytes to return (with exec_id); default 65536.", gt=0)
        ] = 65536,
    ) -> LogsToolJSON:
        """The workspace's last commands (exit codes, durations) and its agent log; or,
        with exec_id, a slice of one command's full output (follow `next_offset`)."""

        def logs(target: Target) -> LogsToolJSON:
            if exec_id is None:
                history = self.calls.ws.logs(target.id, limit=HISTORY)
                return {"id": history["id"], "commands": history["commands"],
                        "agent_log": history["agent_log"]}  # fmt: skip
            outputs = self.calls.outputs(target.id)
            data = read_saved(outputs, exec_id, stream, offset=offset, max_bytes=max_bytes)
            return {"workspace_id": target.id, "exec_id": data["exec_id"],
                    "stream": data["stream"], "offset": data["offset"], "content": data["content"],
                    "bytes": data["bytes"], "total_bytes": data["total_bytes"],
                    "next_offset": data["next_offset"]}  # fmt: skip

        return await self.calls.on(ctx, workspace_id, logs)

"""Shells, services and published ports for a chat host (the `workspace-full` profile):
`workspace_shell_open/read/write/signal/close`, `workspace_service_start/list/status/logs/
stop` (the predecessor's names), and `workspace_port_request` to call a server in the
workspace from the host side, its answer bounded."""

from __future__ import annotations

import http.client
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from pyro_loop.errors import InvalidInputError
from pyro_loop.mcp.calls import Calls, Ctx, Target, ToolGroup, in_worker
from pyro_loop.mcp.params import Command, Cwd, WorkspaceId
from pyro_loop.shapes import (
    HttpAnswerJSON,
    PortRequestJSON,
    ShellClosedJSON,
    ShellOpenedJSON,
    ShellReadJSON,
    ShellSignalledJSON,
    ShellWrittenJSON,
    WorkspaceServiceJSON,
    WorkspaceServiceListJSON,
    WorkspaceServiceLogsJSON,
    WorkspaceServiceStoppedJSON,
)
from pyro_loop.workspace.shellcmd import SHELL_ARGV
from pyro_loop.workspace.shells import ENV as SHELL_ENV
from pyro_loop.workspace.shells import Shells, Signal

if TYPE_CHECKING:
    from pyro_loop.workspace.services import ServiceClient

ShellId = Annotated[str, Field(description="The shell_id workspace_shell_open returned.")]
ServiceName = Annotated[str, Field(description="The service's name: 1-64 letters, digits, . _ -.")]
MaxBytes = Annotated[
    int, Field(description="Return at most this many bytes of output; default 65536.", gt=0,
               le=1024 * 1024)
]  # fmt: skip
MAX_BYTES = 65536


class InteractiveTools(ToolGroup):
    def __init__(self, calls: Calls) -> None:
        super().__init__(calls)
        self.shells = Shells()

    def close(self) -> None:
        self.shells.close_all()

    # -- shells ---------------------------------------------------------------------------

    async def workspace_shell_open(
        self, ctx: Ctx, *, workspace_id: WorkspaceId = None, cwd: Cwd = None
    ) -> ShellOpenedJSON:
        """Open an interactive shell (bash, else sh) on a terminal in the workspace, with
        exec's environment; it stays open between calls. Send keys with
        workspace_shell_write, read its output with workspace_shell_read, end it with
        workspace_shell_close."""

        def open_shell(target: Target) -> ShellOpenedJSON:
            env = dict(SHELL_ENV)

            def opener(size: tuple[int, int]) -> Any:
                if target.loop is not None:
                    return target.loop.open_exec(SHELL_ARGV, cwd=cwd, env=env, stdin=True,
                                                 tty=size, remember=False)  # fmt: skip
                return self.calls.ws.open_exec(target.id, SHELL_ARGV, cwd=cwd, env=env,
                                               stdin=True, tty=size)  # fmt: skip

            session = self.shells.open(target.id, opener)
            return {"shell_id": session.id, "workspace_id": target.id, **session.state()}

        return await self.calls.on(ctx, workspace_id, open_shell)

    async def workspace_shell_read(
        self,
        ctx: Ctx,
        *,
        shell_id: ShellId,
        cursor: Annotated[
            int,
            Field(description="Read from here (next_cursor of the last read); default 0.", ge=0),
        ] = 0,
        max_bytes: MaxBytes = MAX_BYTES,
        wait_seconds: Annotated[
            float,
            Field(description="Wait up to this long for new output; default 0.5.", ge=0, le=30),
        ] = 0.5,
        wait_for_idle_ms: Annotated[
            int | None,
            Field(
                description="Once output comes, go on until none has come for this many ms "
                "(30 s at most), so a command's whole answer comes in one read; default off.",
                ge=0,
                le=30000,
            ),
        ] = None,
        plain: Annotated[
            bool,
            Field(
                description="The output as a screen shows it, escape sequences removed "
                "and line ends LF; default false (raw terminal output)."
            ),
        ] = False,
    ) -> ShellReadJSON:
        """The shell's output from `cursor` on (its latest 1 MiB is kept), with next_cursor
        to continue from, and whether it still runs (state, exit_code)."""
        session = self.shells.get(shell_id)
        idle = None if wait_for_idle_ms is None else wait_for_idle_ms / 1000
        return await in_worker(
            lambda: session.read(cursor, max_bytes, wait_seconds, idle=idle, plain=plain)
        )

    async def workspace_shell_write(
        self,
        ctx: Ctx,
        *,
        shell_id: ShellId,
        input: Annotated[str, Field(description="Text to type into the shell.")],
        append_newline: Annotated[
            bool, Field(description="Press Enter after it; default true.")
        ] = True,
    ) -> ShellWrittenJSON:
        """Type into the shell (a command line, answers to a prompt, control characters
        such as \\u0003 for Ctrl-C)."""
        session = self.shells.get(shell_id)
        data = (input + ("\n" if append_newline else "")).encode()
        session.channel.write(data)
        return {"shell_id": shell_id, "written": len(data), **session.state()}

    async def workspace_shell_signal(
        self,
        ctx: Ctx,
        *,
        shell_id: ShellId,
        signal: Annotated[
            Signal, Field(description="Sent to the terminal's foreground process; default INT.")
        ] = "INT",
    ) -> ShellSignalledJSON:
        """Signal the shell's foreground process (INT: as Ctrl-C would)."""
        session = self.shells.get(shell_id)
        session.channel.signal(signal)
        return {"shell_id": shell_id, "signal": signal, **session.state()}

    async def workspace_shell_close(self, ctx: Ctx, *, shell_id: ShellId) -> ShellClosedJSON:
        """End the shell and everything it started."""
        session = await in_worker(lambda: self.shells.close(shell_id))
        return {"shell_id": shell_id, "closed": True, "workspace_id": session.workspace_id}

    # -- services -------------------------------------------------------------------------

    def _services(self, target: Target) -> ServiceClient:
        if target.loop is not None:
            return target.loop.services()
        return self.calls.ws.services(target.id)

    async def workspace_service_start(
        self,
        ctx: Ctx,
        *,
        service_name: ServiceName,
        command: Command,
        workspace_id: WorkspaceId = None,
        cwd: Cwd = None,
    ) -> WorkspaceServiceJSON:
        """Start a long-running command (a dev server, a watcher) in the background; returns
        once it runs. Its output goes to a log that keeps the latest 8 MiB
        (workspace_service_logs)."""

        def start(target: Target) -> WorkspaceServiceJSON:
            argv = ["sh", "-c", command]
            if target.loop is not None:
                info = target.loop.start_service(argv, name=service_name, cwd=cwd)
            else:
                info = self._services(target).service_start(service_name, argv, cwd=cwd)
            return {"workspace_id": target.id, "service": info}

        return await self.calls.on(ctx, workspace_id, start)

    async def workspace_service_list(
        self, ctx: Ctx, *, workspace_id: WorkspaceId = None
    ) -> WorkspaceServiceListJSON:
        """The workspace's services, running and exited, with their exit codes."""

        def list_services(target: Target) -> WorkspaceServiceListJSON:
            return {"workspace_id": target.id, "services": self._services(target).service_list()}

        return await self.calls.on(ctx, workspace_id, list_services)

    async def workspace_service_status(
        self, ctx: Ctx, *, service_name: ServiceName, workspace_id: WorkspaceId = None
    ) -> WorkspaceServiceJSON:
        """One service: running or exited (with its exit code), its pid and command."""

        def status(target: Target) -> WorkspaceServiceJSON:
            info = self._services(target).service_status(service_name)
            return {"workspace_id": target.id, "service": info}

        return await self.calls.on(ctx, workspace_id, status)

    async def workspace_service_logs(
        self,
        ctx: Ctx,
        *,
        service_name: ServiceName,
        workspace_id: WorkspaceId = None,
        tail_lines: Annotated[
            int | None, Field(description="Only the last N lines; default 200.", ge=0)
        ] = 200,
        max_bytes: MaxBytes = MAX_BYTES,
    ) -> WorkspaceServiceLogsJSON:
        """A service's output (stdout and stderr interleaved): its last lines, bounded."""

        def logs(target: Target) -> WorkspaceServiceLogsJSON:
            output, info = self._services(target).service_logs(
                service_name, tail=tail_lines, max_bytes=max_bytes
            )
            return {"workspace_id": target.id, **info,
                    "output": output.decode("utf-8", "replace")}  # fmt: skip

        return await self.calls.on(ctx, workspace_id, logs)

    async def workspace_service_stop(
        self,
        ctx: Ctx,
        *,
        service_name: ServiceName,
        workspace_id: WorkspaceId = None,
        timeout_seconds: Annotated[
            float, Field(description="SIGKILL after this long of SIGTERM; default 5.", ge=0, le=600)
        ] = 5.0,
    ) -> WorkspaceServiceStoppedJSON:
        """Stop a service: SIGTERM to its whole process tree, SIGKILL after the timeout."""

        def stop(target: Target) -> WorkspaceServiceStoppedJSON:
            info = self._services(target).service_stop(service_name, timeout=timeout_seconds)
            return {"workspace_id": target.id, "service": info}

        return await self.calls.on(ctx, workspace_id, stop)

    # -- published ports ------------------------------------------------------------------

    async def workspace_port_request(
        self,
        ctx: Ctx,
        *,
        port: Annotated[
            int, Field(description="The port the server listens on inside.", ge=1, le=65535)
        ],
        path: Annotated[str, Field(description="The request's path; default /.")] = "/",
        method: Annotated[
            Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            Field(description="The HTTP method; default GET."),
        ] = "GET",
        body: Annotated[str | None, Field(description="The request's body; default none.")] = None,
        workspace_id: WorkspaceId = None,
        max_bytes: MaxBytes = MAX_BYTES,
        timeout_seconds: Annotated[
            float, Field(description="Give up after this long; default 10.", gt=0, le=120)
        ] = 10.0,
    ) -> PortRequestJSON:
        """Call a web server in the workspace from the host, as a browser would: through its
        published port (published at 127.0.0.1 on the same port now if it is not yet).
        Returns the status, headers and the body up to max_bytes."""
        if not path.startswith("/"):
            raise InvalidInputError(f"path must start with /, not {path!r}")

        def request(target: Target) -> PortRequestJSON:
            from pyro_loop.workspace.ports import Mapping

            published = {m.port: m for m in self.calls.ws.published(target.id)}
            mapping = published.get(port)
            if mapping is None:
                mapping = Mapping(port, port)
                self.calls.ws.publish(target.id, [mapping])
            answer = _http(mapping.host_port, method=method, path=path, body=body,
                           max_bytes=max_bytes, timeout=timeout_seconds)  # fmt: skip
            return {**answer, "workspace_id": target.id,
                    "url": f"{mapping.url.rstrip('/')}{path}"}  # fmt: skip

        return await self.calls.on(ctx, workspace_id, request)


def _http(
    host_port: int, *, method: str, path: str, body: str | None, max_bytes: int, timeout: float
) -> HttpAnswerJSON:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", host_port, timeout=timeout)
    try:
        conn.request(method, path, body=body.encode() if body is not None else None)
        response = conn.getresponse()
        data = response.read(max_bytes + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise InvalidInputError(
            f"no answer from port {host_port}: {exc or type(exc).__name__}",
            hint="is the server running and listening? workspace_service_logs shows its output",
        ) from None
    finally:
        conn.close()
    return {
        "status": response.status,
        "reason": response.reason,
        "headers": dict(response.getheaders()),
        "body": data[:max_bytes].decode("utf-8", "replace"),
        "body_truncated": len(data) > max_bytes,
        "duration_ms": round((time.perf_counter() - started) * 1000, 1),
    }

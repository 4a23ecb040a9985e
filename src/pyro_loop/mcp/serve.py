"""`pyro mcp serve`: one stdio session for a chat host, from `initialize` to disconnect.

The order matters for start-up time: the MCP SDK and the tool definitions load first and
`initialize` is answered; the workspace machinery (git, the runtime, the watcher) is loaded by
the warm-up thread, started when the client says it is initialized.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
from anyio.from_thread import BlockingPortal

from pyro_loop.mcp.profiles import tools_for

if TYPE_CHECKING:
    from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
    from mcp.server.session import ServerSession
    from mcp_types import LoggingLevel

    from pyro_loop.loop.warmup import ProjectWarmup
    from pyro_loop.workspace.manager import Workspaces

DEFAULT_WAIT_SECONDS = 20.0

# MCP's log levels, lowest first (RFC 5424 names).
_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")

logger = logging.getLogger("pyro.mcp")


def serve(
    *,
    project_dir: Path,
    profile: str,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
    down_on_exit: bool = False,
) -> None:
    """Serve the MCP tools over stdin/stdout until the client disconnects (or SIGTERM), then
    end the process."""
    tools_for(profile)  # an unknown profile fails here, before any protocol traffic
    _configure_logging()
    session = _Session(project_dir.absolute(), profile, wait_seconds, down_on_exit)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, session.terminate)
    anyio.run(session.run)
    # The client is gone and the session closed. A call it left running (a long command,
    # its call abandoned when the disconnect cancelled it) must not keep the process alive
    # until the command ends: exiting now closes pyro's connection to the workspace's agent,
    # which kills the command's process tree.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _configure_logging() -> None:
    # Set up before the SDK does: it would load `rich` for its handler (tens of ms) and log
    # every tool error at INFO. stderr is where chat hosts collect a server's log.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pyro mcp: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logger.setLevel(logging.INFO)


class _Session:
    """The server's parts and lifetime: tools, warm-up, and the client's log channel."""

    def __init__(
        self, project_dir: Path, profile: str, wait_seconds: float, down_on_exit: bool
    ) -> None:
        from pyro_loop.loop.warmup import ProjectWarmup
        from pyro_loop.mcp.calls import Calls
        from pyro_loop.mcp.server import PyroTools, build_server

        self.down_on_exit = down_on_exit
        self._ws: Workspaces | None = None
        self._ws_lock = threading.Lock()
        self.warmup: ProjectWarmup = ProjectWarmup(
            project_dir, self.workspaces, on_event=self.forward
        )
        calls = Calls(
            self.warmup, self.workspaces, project_dir=project_dir, wait_seconds=wait_seconds
        )
        self.tools = PyroTools(calls)
        self.server = build_server(self.tools, profile)
        self.server.middleware.append(self._observe)
        self._client_log = _ClientLog(self.server)
        self._closed = threading.Event()

    def workspaces(self) -> Workspaces:
        """One `Workspaces` for the whole server, created on first use (not before
        `initialize`: it loads the runtime)."""
        with self._ws_lock:
            if self._ws is None:
                from pyro_loop.workspace.manager import Workspaces

                self._ws = Workspaces()
            return self._ws

    async def run(self) -> None:
        async with BlockingPortal() as portal:
            self._client_log.portal = portal
            try:
                await self.server.run_stdio_async()
            finally:
                self._client_log.portal = None
                await anyio.to_thread.run_sync(self.close)

    async def _observe(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> Any:
        """Middleware: starts the warm-up once the client is connected (after `initialize`
        is answered, so it never delays that answer) and keeps its session for logs."""
        if ctx.method != "initialize":
            if self._client_log.session is None:
                self._client_log.session = ctx.session
            self.warmup.start()  # idempotent; a failed warm-up waits for a tool to retry it
        result: HandlerResult = await call_next(ctx)
        return result

    def forward(self, level: str, message: str) -> None:
        """From any thread: a warm-up event for the client's log."""
        self._client_log.send(level, message)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.tools.close()
        self.warmup.close(down=self.down_on_exit)

    def terminate(self, signum: int, _frame: Any) -> None:
        """SIGTERM / SIGHUP: stop the watcher (and the workspace, with --down-on-exit), exit.

        Done here rather than by unwinding the event loop, which waits for the thread
        blocked reading stdin.
        """
        logger.info("stopping on signal %d", signum)
        self.close()
        os._exit(0)


class _ClientLog:
    """MCP log notifications (`notifications/message`) to the connected client, sent from
    the warm-up and watcher threads through a portal into the event loop."""

    def __init__(self, server: Any) -> None:
        from mcp_types import EmptyResult, SetLevelRequestParams

        self.session: ServerSession | None = None
        self.portal: Any = None
        self.level = "info"

        async def set_level(_ctx: Any, params: SetLevelRequestParams) -> EmptyResult:
            self.level = params.level
            return EmptyResult()

        # Registering `logging/setLevel` is what makes the server declare the logging
        # capability. MCPServer has no public hook for it; the low-level server does.
        server._lowlevel_server.add_request_handler(
            "logging/setLevel", SetLevelRequestParams, set_level
        )

    def send(self, level: str, message: str) -> None:
        from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

        session, portal = self.session, self.portal
        if session is None or portal is None or _LEVELS.index(level) < _LEVELS.index(self.level):
            return
        # On the per-request protocol (2026-07-28) logs may only ride a request's own stream.
        if session.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS:
            return
        with contextlib.suppress(RuntimeError):  # the portal closed: the server is ending
            portal.start_task_soon(self._send, session, level, message)

    @staticmethod
    async def _send(session: ServerSession, level: str, message: str) -> None:
        from mcp_types import LoggingMessageNotification, LoggingMessageNotificationParams

        params = LoggingMessageNotificationParams(
            level=cast("LoggingLevel", level), logger="pyro", data=message
        )
        await session.send_notification(LoggingMessageNotification(params=params))

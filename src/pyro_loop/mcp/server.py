"""The MCP server of one `--profile`: its instructions, and its tools, registered by name.

The tools live in `pyro_loop.mcp.tools`, grouped by what they act on; `pyro_loop.mcp.profiles`
says which each profile offers. Failures are tool errors (`isError`) whose text says what to
do; nothing a call does stops the server.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from mcp.server.mcpserver import MCPServer

from pyro_loop import __version__
from pyro_loop.errors import InvalidInputError
from pyro_loop.mcp.calls import Calls, guarded
from pyro_loop.mcp.profiles import tools_for
from pyro_loop.mcp.schemas import with_output_schema
from pyro_loop.mcp.tools.commands import CommandTools
from pyro_loop.mcp.tools.files import FileTools
from pyro_loop.mcp.tools.interactive import InteractiveTools
from pyro_loop.mcp.tools.lifecycle import LifecycleTools
from pyro_loop.mcp.tools.project import ProjectTools

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


class PyroTools:
    """All the tools of one server, by group: a tool is an async method of its group."""

    def __init__(self, calls: Calls) -> None:
        self.lifecycle = LifecycleTools(calls)
        self.interactive = InteractiveTools(calls)
        self.groups = (ProjectTools(calls), CommandTools(calls), FileTools(calls), self.lifecycle,
                       self.interactive)  # fmt: skip

    def tool(self, name: str) -> Callable[..., Awaitable[Mapping[str, Any]]]:
        for group in self.groups:
            method = getattr(group, name, None)
            if inspect.iscoroutinefunction(method):
                return cast("Callable[..., Awaitable[Mapping[str, Any]]]", method)
        raise InvalidInputError(f"no tool named {name!r}")

    def close(self) -> None:
        """The server is ending: remove what only a running call would have removed."""
        self.interactive.close()
        self.lifecycle.close()


def build_server(tools: PyroTools, profile: str) -> MCPServer[Any]:
    """An MCP server offering `profile`'s tools."""
    names = tools_for(profile)
    instructions = INSTRUCTIONS if "workspace_exec" in names else VM_RUN_INSTRUCTIONS
    server: MCPServer[Any] = MCPServer(
        "pyro", version=__version__, instructions=instructions, log_level="WARNING"
    )
    for name in names:  # a profile naming an unknown tool is a bug here: `tool` says so
        server.add_tool(with_output_schema(guarded(name, tools.tool(name))), name=name)
    return server

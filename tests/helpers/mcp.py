"""A real MCP client session with `pyro mcp serve` over stdio."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client


class Client:
    """One MCP session with a `pyro mcp serve` subprocess, plus what it was sent."""

    def __init__(self, session: ClientSession, output_schemas: dict[str, Any]) -> None:
        self.session = session
        self.output_schemas = output_schemas  # each tool's, as the server lists it
        self.called: set[str] = set()  # the tools that answered a call
        self.logs: list[str] = []
        self.progress: list[str] = []  # progress notifications' messages, in order
        self.progress_values: list[float] = []

    async def _on_progress(self, done: float, _total: float | None, message: str | None) -> None:
        self.progress.append(message or "")
        self.progress_values.append(done)

    async def call(self, name: str, /, **arguments: Any) -> dict[str, Any]:
        """A tool's structured result; fails the test if the tool answered an error."""
        result = await self.session.call_tool(name, arguments, progress_callback=self._on_progress)
        assert not result.is_error, f"{name}: {_text(result)}"
        assert result.structured_content is not None
        # The structured result is the whole of what the tool returned: an output schema
        # that left a key out would have dropped it from here, not from the text.
        assert result.structured_content == json.loads(_text(result)), name
        # ... and it is what the tool said it would be.
        schema = self.output_schemas[name]
        assert schema is not None and schema.get("properties"), f"{name}: no output schema"
        jsonschema.Draft202012Validator(schema).validate(result.structured_content)
        self.called.add(name)
        return dict(result.structured_content)

    async def error(self, name: str, /, **arguments: Any) -> str:
        """The text of a tool error; fails the test if the tool succeeded."""
        result = await self.session.call_tool(name, arguments, progress_callback=self._on_progress)
        assert result.is_error, f"{name} should have failed: {_text(result)}"
        return _text(result)


def _text(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


PASSED = ("PYRO_HOME", "PYRO_JOURNAL")  # the test's home; whether servers start (conftest.py)


@contextlib.asynccontextmanager
async def connect(cwd: Path, *options: str) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "pyro_loop", "mcp", "serve", *options],
        cwd=cwd,
        env={
            name: os.environ[name] for name in ("PYRO_HOME", "PYRO_JOURNAL") if name in os.environ
        },
    )
    client: Client | None = None

    async def on_log(params: Any) -> None:
        assert client is not None
        client.logs.append(str(params.data))

    server_log = Path(os.environ["PYRO_HOME"]).parent / "server.log"  # the test's tmp_path
    with server_log.open("a") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, logging_callback=on_log) as session,
        ):
            await session.initialize()
            listed = (await session.list_tools()).tools
            client = Client(session, {tool.name: tool.output_schema for tool in listed})
            yield client

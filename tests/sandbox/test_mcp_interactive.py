"""The workspace-full profile's shells, services and port requests, through the MCP SDK's
own client over stdio (as tests/sandbox/test_mcp.py drives the server)."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import pytest

from pyro_loop.mcp.profiles import PROFILES
from tests.helpers.mcp import Client, connect
from tests.helpers.project import commit_project


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return commit_project(tmp_path / "repo", "", {"index.html": "served from the workspace\n"})


async def read_until(client: Client, shell_id: str, text: str, cursor: int) -> tuple[str, int]:
    """The shell's output from `cursor` until `text` appears; returns it and the new cursor."""
    seen = ""
    for _ in range(120):
        out = await client.call("workspace_shell_read", shell_id=shell_id, cursor=cursor,
                                wait_seconds=0.5)  # fmt: skip
        seen += out["output"]
        cursor = out["next_cursor"]
        if text in seen:
            return seen, cursor
    raise AssertionError(f"{text!r} not seen in the shell; it showed:\n{seen}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_shell_service_and_port_tools(repo: Path) -> None:
    port = free_port()

    async def scenario() -> None:
        async with connect(repo, "--profile", "workspace-full") as client:
            shell = await client.call("workspace_shell_open")
            sid = shell["shell_id"]
            assert shell["state"] == "running"
            await client.call("workspace_shell_write", shell_id=sid,
                              input="echo MARK-$((6*7)) $PWD")  # fmt: skip
            _seen, cursor = await read_until(client, sid, "MARK-42 /workspace", 0)
            # A foreground command interrupted (signal INT), the shell goes on.
            await client.call("workspace_shell_write", shell_id=sid,
                              input="sh -c 'echo UP-$((1+1)); exec sleep 60'")  # fmt: skip
            _seen, cursor = await read_until(client, sid, "UP-2", cursor)
            await client.call("workspace_shell_signal", shell_id=sid, signal="INT")
            await client.call("workspace_shell_write", shell_id=sid, input="echo RC-$?")
            _seen, cursor = await read_until(client, sid, "RC-130", cursor)
            plain = await client.call("workspace_shell_read", shell_id=sid, plain=True,
                                      wait_for_idle_ms=100)  # fmt: skip
            assert "MARK-42 /workspace\n" in plain["output"] and "\r" not in plain["output"]
            await client.call("workspace_shell_write", shell_id=sid, input="exit 3")
            for _ in range(60):
                out = await client.call("workspace_shell_read", shell_id=sid, cursor=cursor)
                if out["state"] == "exited":
                    break
            assert out["state"] == "exited" and out["exit_code"] == 3
            closed = await client.call("workspace_shell_close", shell_id=sid)
            assert closed["closed"] is True
            assert "no open shell" in await client.error("workspace_shell_read", shell_id=sid)

            # A service: started, listed, its logs, called through its published port.
            server = f"python3 -m http.server {port} --bind 127.0.0.1"
            started = await client.call("workspace_service_start", service_name="web",
                                        command=server)  # fmt: skip
            assert started["service"]["state"] == "running"
            listed = await client.call("workspace_service_list")
            assert [s["name"] for s in listed["services"]] == ["web"]
            for _ in range(100):
                try:
                    answer = await client.call("workspace_port_request", port=port,
                                               path="/index.html")  # fmt: skip
                    break
                except AssertionError:  # not listening yet
                    await anyio.sleep(0.1)
            assert answer["status"] == 200
            assert answer["body"] == "served from the workspace\n"
            assert answer["url"] == f"http://127.0.0.1:{port}/index.html"
            small = await client.call("workspace_port_request", port=port, path="/index.html",
                                      max_bytes=6)  # fmt: skip
            assert small["body"] == "served" and small["body_truncated"] is True
            logs = await client.call("workspace_service_logs", service_name="web", tail_lines=5)
            assert "GET /index.html" in logs["output"]
            status = await client.call("workspace_service_status", service_name="web")
            assert status["service"]["state"] == "running"
            stopped = await client.call("workspace_service_stop", service_name="web")
            assert stopped["service"]["state"] == "exited"
            refused = await client.error("workspace_port_request", port=port)
            assert f"no answer from port {port}" in refused

    anyio.run(scenario)


def test_every_tool_answers_in_the_shape_it_publishes(repo: Path, tmp_path: Path) -> None:
    """Each tool of the largest profile called once, for real: its structured result
    validates against the output schema it lists (Client.call checks), which names its
    fields rather than leaving an open object."""
    port = free_port()
    out = tmp_path / "exported"
    out.mkdir()
    patch = "--- a/notes.txt\n+++ b/notes.txt\n@@ -1 +1 @@\n-one\n+two\n"

    async def scenario() -> None:
        async with connect(repo, "--profile", "workspace-full") as client:
            await client.call("project_status")
            await client.call("workspace_sync")
            long = "head -c 100000 /dev/zero | tr '\\0' x"
            ran = await client.call("workspace_exec", command=long)
            await client.call("workspace_retry")
            await client.call("workspace_logs")
            await client.call("workspace_logs", exec_id=ran["exec_id"], max_bytes=10)
            await client.call("workspace_file_write", path="notes.txt", text="one\n")
            await client.call("workspace_file_list", recursive=True)
            await client.call("workspace_file_read", path="notes.txt")
            await client.call("workspace_patch_apply", patch=patch)
            await client.call("workspace_diff")
            await client.call("workspace_export", path="notes.txt",
                              output_path=str(out / "notes.txt"))  # fmt: skip
            await client.call("snapshot_create", snapshot_name="s1")
            await client.call("snapshot_list")
            await client.call("snapshot_delete", snapshot_name="s1")
            await client.call("workspace_reset")
            await client.call("workspace_status")
            extra = await client.call("workspace_create", name="extra")
            await client.call("workspace_list")
            await client.call("workspace_delete", workspace_id=extra["id"])
            await client.call("vm_run", command="echo once")

            shell = (await client.call("workspace_shell_open"))["shell_id"]
            await client.call("workspace_shell_write", shell_id=shell, input="echo SHAPED")
            await read_until(client, shell, "SHAPED", 0)
            await client.call("workspace_shell_signal", shell_id=shell)
            await client.call("workspace_shell_close", shell_id=shell)

            server = f"python3 -m http.server {port} --bind 127.0.0.1"
            await client.call("workspace_service_start", service_name="web", command=server)
            await client.call("workspace_service_list")
            await client.call("workspace_service_status", service_name="web")
            for _ in range(100):
                try:
                    await client.call("workspace_port_request", port=port, path="/index.html")
                    break
                except AssertionError:  # not listening yet
                    await anyio.sleep(0.1)
            await client.call("workspace_service_logs", service_name="web")
            await client.call("workspace_service_stop", service_name="web")

            assert client.called == set(PROFILES["workspace-full"])

    anyio.run(scenario)


def test_the_core_profile_has_none_of_them(repo: Path) -> None:
    async def scenario() -> None:
        async with connect(repo) as client:
            names = {tool.name for tool in (await client.session.list_tools()).tools}
            assert "workspace_exec" in names
            full_only = {n for n in names if n.startswith(("workspace_shell", "workspace_service"))}
            assert not full_only and "workspace_port_request" not in names

    anyio.run(scenario)

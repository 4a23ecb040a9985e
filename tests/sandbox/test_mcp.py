"""`pyro mcp serve`, driven by the MCP SDK's own client over stdio, as a chat host does."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError

from pyro_loop.mcp.output import INLINE_LIMIT
from pyro_loop.mcp.profiles import PROFILES
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.mcp import connect
from tests.helpers.project import DEPS_CONFIG, commit_project, git, write_config


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    files = {"requirements.txt": "requests==2.32.0\n", "src/app.py": "print('v1')\n"}
    return commit_project(tmp_path / "repo", DEPS_CONFIG, files)


class RawServer:
    """`pyro mcp serve` spoken to line by line, for what the SDK's client hides: a signal,
    stdin closed under a call still running."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process, self.stdin, self.stdout = process, process.stdin, process.stdout

    def send(self, message: dict[str, Any]) -> None:
        self.stdin.write(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")
        self.stdin.flush()

    def call(self, request_id: int, name: str, **arguments: Any) -> None:
        self.send({"id": request_id, "method": "tools/call",
                   "params": {"name": name, "arguments": arguments}})  # fmt: skip

    def reply(self, request_id: int) -> dict[str, Any]:
        """The result of request `request_id`, skipping notifications and other replies."""
        while (message := json.loads(self.stdout.readline())).get("id") != request_id:
            pass
        result: dict[str, Any] = message["result"]
        return result


@contextlib.contextmanager
def raw_server(repo: Path) -> Iterator[RawServer]:
    """A server, initialized; killed (if still running) and its pipes closed afterwards."""
    server_log = Path(os.environ["PYRO_HOME"]).parent / "server.log"  # the test's tmp_path
    with server_log.open("a") as errlog, subprocess.Popen(
        [sys.executable, "-m", "pyro_loop", "mcp", "serve"], cwd=repo,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog,
    ) as process:  # fmt: skip
        raw = RawServer(process)
        try:
            raw.send({"id": 1, "method": "initialize",
                      "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "test", "version": "1"}}})  # fmt: skip
            raw.send({"method": "notifications/initialized"})
            yield raw
        finally:
            process.kill()


def run(test: Callable[[], Awaitable[None]]) -> None:
    anyio.run(test)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out waiting"
        await anyio.sleep(0.05)


def test_each_profile_lists_its_tools_with_descriptions(tmp_path: Path) -> None:
    async def main() -> None:
        for profile, expected in PROFILES.items():
            async with connect(tmp_path, "--profile", profile) as client:
                tools = (await client.session.list_tools()).tools
                assert sorted(t.name for t in tools) == sorted(expected)
                assert all(t.description and len(t.description) < 600 for t in tools)
                for tool in tools:  # a model reads descriptions: each optional one says its default
                    for name, prop in tool.input_schema["properties"].items():
                        if name not in tool.input_schema.get("required", []):
                            assert "default" in prop["description"], f"{tool.name}.{name}"
                if profile == "workspace-core":
                    exec_tool = next(t for t in tools if t.name == "workspace_exec")
                    props = exec_tool.input_schema["properties"]
                    assert exec_tool.input_schema["required"] == ["command"]
                    assert props["timeout_seconds"]["default"] == 30
                    assert "30 s" in (exec_tool.description or "")

    run(main)


def test_the_tools_publish_the_shapes_of_their_results(tmp_path: Path) -> None:
    async def main() -> None:
        async with connect(tmp_path, "--profile", "workspace-full") as client:
            tools = {t.name: t for t in (await client.session.list_tools()).tools}

            def schema(name: str) -> dict[str, Any]:
                published = tools[name].output_schema
                assert published is not None, f"{name} publishes no output schema"
                return published

            def fields(name: str) -> set[str]:
                return set(schema(name)["properties"])

            ran = {"workspace_id", "exit_code", "stdout", "stderr", "duration_ms", "timed_out"}
            assert ran <= fields("workspace_exec") and ran <= fields("workspace_retry")
            assert "note" not in schema("workspace_exec")["required"]  # only when it has one
            assert ran | {"environment", "deleted"} <= fields("vm_run")
            status = schema("project_status")
            assert {"ready", "warm", "warmup", "dependencies", "workspaces"} <= set(
                status["properties"]
            )
            # A nested shape is published too, not left open.
            warmup = status["$defs"]["WarmupJSON"]
            assert warmup["properties"]["state"]["enum"] == ["idle", "running", "ready", "failed"]
            assert {"id", "state", "environment", "mounts", "ports"} <= fields("workspace_status")
            row = schema("workspace_list")["properties"]["workspaces"]["items"]["$ref"]
            assert row.endswith("/WorkspaceJSON")
            # Every tool names the fields of its result: none is an open object.
            typed = {name for name, tool in tools.items() if (tool.output_schema or {}).get(
                "properties")}  # fmt: skip
            assert typed == set(tools)
            service = schema("workspace_service_status")["properties"]["service"]["$ref"]
            assert service.endswith("/ServiceJSON")

    run(main)


def test_an_unknown_profile_fails_before_serving(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pyro_loop", "mcp", "serve", "--profile", "everything"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "unknown profile 'everything'" in result.stderr and "workspace-core" in result.stderr


def test_the_editing_loop(repo: Path) -> None:
    async def main() -> None:
        async with connect(repo) as client:
            ran = await client.call("workspace_exec", command="cat src/app.py; pwd")
            assert ran["exit_code"] == 0 and ran["stdout"] == "print('v1')\n/workspace\n"
            assert ran["stderr"] == "" and not ran["stdout_truncated"] and not ran["timed_out"]
            assert ran["duration_ms"] >= 0 and ran["exec_id"] is None
            # A command not found says where it was looked for and what to do.
            missing = await client.call("workspace_exec", command="uv --version")
            assert missing["exit_code"] == 127
            assert "the workspace's PATH is" in missing["note"]
            assert '[tools] uv = "latest"' in missing["note"]

            # A host edit reaches the workspace through the watcher, with no exec to sync.
            (repo / "src" / "app.py").write_text("print('v2')\n")

            async def synced() -> bool:
                read = await client.call("workspace_file_read", path="src/app.py")
                return bool(read["content"] == "print('v2')\n")

            await eventually(synced)

            failed = await client.call("workspace_exec", command="echo junk > junk.txt; exit 3")
            assert failed["exit_code"] == 3
            (repo / "src" / "app.py").write_text("print('v3')\n")
            again = await client.call("workspace_retry")
            assert again["exit_code"] == 3
            shown = await client.call("workspace_exec", command="cat src/app.py .deps/*")
            assert shown["stdout"] == "print('v3')\nrequests==2.32.0\n"

            diff = await client.call("workspace_diff")
            assert [c["path"] for c in diff["changes"]] == ["junk.txt"]
            assert "+junk" in diff["patch"]

            # Export: the one way back to the host, only where asked, bounded in size.
            out = repo.parent / "exported"
            out.mkdir()
            exported = await client.call(
                "workspace_export", path="junk.txt", output_path=str(out / "junk.txt")
            )
            assert exported["output"] == str(out / "junk.txt")
            assert (out / "junk.txt").read_text() == "junk\n"
            refused = await client.error(
                "workspace_export", path="/workspace", output_path=str(out / "all"),
                max_bytes=1000,
            )  # fmt: skip
            assert "larger than 1.0 KB; nothing was written" in refused and "max_bytes" in refused
            assert os.listdir(out) == ["junk.txt"]

            reset = await client.call("workspace_reset")
            assert reset["snapshot"] == "baseline"
            after = await client.call("workspace_exec", command="ls; cat src/app.py")
            assert "junk.txt" not in after["stdout"] and "print('v3')" in after["stdout"]
            assert (await client.call("workspace_diff"))["changes"] == []
            assert (repo / "src" / "app.py").read_text() == "print('v3')\n"  # host untouched
            assert not (repo / "junk.txt").exists()

    run(main)


def test_status_before_and_after_warm_up(repo: Path) -> None:
    write_config(repo, DEPS_CONFIG.replace('run = ["', 'run = ["sleep 2 && '))
    git(repo, "commit", "-qam", "slow prepare")

    async def main() -> None:
        async with connect(repo, "--wait", "0.5") as client:
            before = await client.call("project_status")
            assert before["ready"] is False and before["warm"] is False
            assert before["warmup"]["state"] == "running"
            assert before["dependencies"]["state"] == "missing"

            pending = await client.error("workspace_exec", command="true")
            assert "not ready yet" in pending and "s so far" in pending
            assert client.progress, "no progress notification while waiting"

            async def ready() -> bool:
                status = await client.call("project_status")
                return bool(status["ready"] and status["sync"].startswith("watching"))

            await eventually(ready, timeout=60)
            after = await client.call("project_status")
            assert after["warm"] and after["dependencies"]["state"] == "warm"
            assert after["warmup"]["watching"] and after["warmup"]["error"] is None
            assert [w["state"] for w in after["workspaces"]] == ["running"]
            assert any("prepare: dependencies" in line for line in client.logs)
            assert any("watching host edits" in line for line in client.logs)
            ran = await client.call("workspace_exec", command="cat .deps/installed.txt")
            assert ran["stdout"] == "requests==2.32.0\n"

    run(main)


def test_a_call_that_prepares_reports_the_prepare_as_progress_notifications(repo: Path) -> None:
    async def main() -> None:
        async with connect(repo) as client:
            first = await client.call("workspace_exec", command="cat .deps/installed.txt")
            assert first["stdout"] == "requests==2.32.0\n"
            client.progress.clear()
            client.progress_values.clear()
            # A changed lockfile: the next call prepares its dependencies first.
            (repo / "requirements.txt").write_text("requests==2.32.3\n")
            ran = await client.call("workspace_exec", command="cat .deps/installed.txt")
            assert ran["stdout"] == "requests==2.32.3\n"
            install = "mkdir -p .deps && cp requirements.txt .deps/installed.txt"
            assert f"prepare: dependencies: running: {install} (0 of 1 done)" in client.progress
            assert any(m.startswith("prepare: workspace: moving") for m in client.progress)
            values = client.progress_values
            assert values == sorted(set(values)), values  # MCP: progress only ever grows

    run(main)


def test_status_right_after_initialize_on_a_warm_project_is_the_reused_workspace(
    repo: Path,
) -> None:
    up = subprocess.run([sys.executable, "-m", "pyro_loop", "up", "-C", str(repo)],
                        capture_output=True, text=True, check=False)  # fmt: skip
    assert up.returncode == 0, up.stderr

    async def main() -> None:
        async with connect(repo) as client:
            status = await client.call("project_status")  # the first call, at once
            assert status["ready"] is True, status["warmup"]
            assert status["warmup"]["state"] == "ready"
            assert status["warmup"]["phase"] == "ready"
            assert [w["state"] for w in status["workspaces"]] == ["running"]
            assert any("reused" in e["message"] for e in status["warmup"]["events"])

    run(main)


def test_bad_calls_are_tool_errors_and_the_server_goes_on(repo: Path) -> None:
    async def main() -> None:
        async with connect(repo) as client:
            outside = await client.error("workspace_file_read", path="/etc/passwd")
            assert "outside /workspace" in outside
            missing = await client.error("workspace_file_read", path="no/such/file")
            assert "no such file" in missing
            unknown = await client.error("workspace_exec", command="true", workspace_id="nope")
            assert "no workspace with id or name 'nope'" in unknown and "workspace list" in unknown
            invalid = await client.error("workspace_exec", command="true", timeout_seconds=-1)
            assert "timeout_seconds" in invalid
            bad_patch = await client.error("workspace_patch_apply", patch="not a patch")
            assert "patch" in bad_patch
            slow = await client.call("workspace_exec", command="sleep 5", timeout_seconds=0.3)
            assert slow["timed_out"] and "timeout_seconds" in slow["note"]
            ok = await client.call("workspace_exec", command="echo still here")
            assert ok["stdout"] == "still here\n"

    run(main)


def test_huge_output_is_cut_and_the_rest_can_be_read(repo: Path) -> None:
    async def main() -> None:
        async with connect(repo) as client:
            script = "head -c 1000000 /dev/zero | tr '\\0' x; echo; echo END; echo oops >&2"
            ran = await client.call("workspace_exec", command=script)
            assert ran["stdout_truncated"] and not ran["stderr_truncated"]
            assert ran["stdout_bytes"] == 1000005 and ran["stderr"] == "oops\n"
            assert len(ran["stdout"]) < INLINE_LIMIT + 500
            assert ran["stdout"].startswith("xxx"), ran["stdout"][:100]
            assert ran["stdout"].endswith("x\nEND\n"), ran["stdout"][-300:]
            marker = next(line for line in ran["stdout"].splitlines() if "omitted" in line)
            assert f'exec_id="{ran["exec_id"]}"' in marker and "workspace_logs" in marker

            pieces, offset = [], 0
            while offset is not None:
                part = await client.call(
                    "workspace_logs", exec_id=ran["exec_id"], offset=offset, max_bytes=400000
                )
                pieces.append(part["content"])
                offset = part["next_offset"]
            assert "".join(pieces) == "x" * 1000000 + "\nEND\n"

            history = await client.call("workspace_logs")
            assert history["commands"][-1]["exit_code"] == 0

    run(main)


def test_outside_a_project_the_project_tools_say_how_to_fix_it(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()

    async def main() -> None:
        async with connect(plain, "--profile", "workspace-full") as client:
            for tool in ("project_status", "workspace_exec"):
                text = await client.error(tool, command="true") if tool != "project_status" \
                    else await client.error(tool)  # fmt: skip
                assert "not a pyro project" in text and "pyro init" in text
            once = await client.call("vm_run", command="echo one-shot; pwd")
            assert once["stdout"] == "one-shot\n/workspace\n" and once["deleted"]
            created = await client.call("workspace_create", name="scratch")
            ran = await client.call("workspace_exec", command="echo hi > f; cat f",
                                    workspace_id="scratch")  # fmt: skip
            assert ran["stdout"] == "hi\n"
            snap = await client.call("snapshot_create", snapshot_name="s1", workspace_id="scratch")
            assert snap["snapshot"] == "s1"
            listed = await client.call("workspace_list")
            assert [w["id"] for w in listed["workspaces"]] == [created["id"]]
            await client.call("workspace_delete", workspace_id=created["id"])
            assert (await client.call("workspace_list"))["workspaces"] == []

            # Once the directory is made a project, the next project call picks it up.
            write_config(plain, "")
            (plain / "notes.txt").write_text("plain dir\n")
            ran = await client.call("workspace_exec", command="cat notes.txt")
            assert ran["stdout"] == "plain dir\n"
            assert (await client.call("project_status"))["baseline"]["state"] == (
                "not a git repository"
            )

    run(main)


def test_the_workspace_outlives_the_session_unless_down_on_exit(
    repo: Path, pyro_home: Path
) -> None:
    ws = Workspaces(home=pyro_home)

    async def session(*options: str) -> str:
        async with connect(repo, *options) as client:
            ran = await client.call("workspace_exec", command="true")
            return str(ran["workspace_id"])

    first = anyio.run(session)
    assert ws.status(first).state == "running"
    watch = json.loads(next((pyro_home / "projects").glob("*/watch.json")).read_text())
    assert watch["state"] == "stopped"  # the watcher ended with the session
    second = anyio.run(session, "--down-on-exit")
    assert second == first  # reconnected, not recreated
    assert ws.status(first).state == "stopped"


def test_a_deleted_project_workspace_is_recreated_and_watched(repo: Path) -> None:
    async def main() -> None:
        async with connect(repo, "--profile", "workspace-full") as client:
            first = (await client.call("workspace_exec", command="true"))["workspace_id"]
            await client.call("workspace_delete", workspace_id=first)
            second = (await client.call("workspace_exec", command="true"))["workspace_id"]
            assert second != first
            (repo / "src" / "app.py").write_text("print('after')\n")

            async def synced() -> bool:
                read = await client.call("workspace_file_read", path="src/app.py")
                return bool(read["content"] == "print('after')\n")

            await eventually(synced)

    run(main)


def test_initialize_loads_no_workspace_machinery() -> None:
    """The SDK and the tool definitions only: git, the runtime and the store load later."""
    script = (
        "import sys; from pathlib import Path; import pyro_loop.cli.app; "
        "from pyro_loop.mcp.serve import _Session; "
        "_Session(Path('.'), 'workspace-full', 20.0, False); "
        "print(sorted(m for m in sys.modules if m.startswith(('pygit2', 'pyro_loop'))))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=True)  # fmt: skip
    loaded = result.stdout
    for heavy in ("pygit2", "pyro_loop.workspace.manager", "pyro_loop.loop.live", "pyro_loop.sync",
                  "pyro_loop.runtime.bwrap", "pyro_loop.loop.prepare"):  # fmt: skip
        assert f"'{heavy}'" not in loaded, heavy


@pytest.mark.parametrize("chunk", [1, 1000, 40000, 10**6])
def test_output_capture_keeps_head_and_tail_whatever_the_chunking(
    tmp_path: Path, chunk: int
) -> None:
    from pyro_loop.mcp.output import KEEP_SAVED, OutputCapture, read_saved

    data = b"".join(b"%06d\n" % i for i in range(20000))  # 140,000 bytes
    capture = OutputCapture(tmp_path, limit=1000)
    for start in range(0, len(data), chunk):
        capture("stdout", data[start : start + chunk])
    capture("stderr", b"short\n")
    capture.close()
    out = capture.to_json()
    head, rest = out["stdout"].split("\n[... ", 1)
    assert data.decode().startswith(head) and len(head) == 250  # a quarter: the start
    assert data.decode().endswith(rest[-750:]) and "offset=250)" in rest  # the rest: the end
    assert out["stdout_truncated"] and out["stdout_bytes"] == len(data)
    assert out["stderr"] == "short\n" and not out["stderr_truncated"]
    saved = read_saved(tmp_path, out["exec_id"], "stdout", max_bytes=10**6)
    assert saved["content"] == data.decode() and saved["next_offset"] is None
    # Only the last few commands' output is kept.
    for _ in range(KEEP_SAVED + 3):
        more = OutputCapture(tmp_path, limit=10)
        more("stdout", b"x" * 100)
        more.close()
    assert len(list(tmp_path.glob("*.stdout"))) == KEEP_SAVED


def test_a_failed_prepare_is_reported_and_retried_once_fixed(repo: Path) -> None:
    write_config(
        repo, '[prepare]\nkeys = ["requirements.txt"]\nrun = ["echo no such package >&2; exit 7"]\n'
    )
    git(repo, "commit", "-qam", "broken prepare")

    async def main() -> None:
        async with connect(repo) as client:
            failed = await client.error("workspace_exec", command="true")
            assert "prepare command failed (exit code 7)" in failed
            assert "no such package" in failed  # the hint carries the output's last lines
            status = await client.call("project_status")
            assert status["warmup"]["state"] == "failed" and not status["ready"]
            assert any(e["level"] == "error" for e in status["warmup"]["events"])

            write_config(repo, DEPS_CONFIG)  # fixed: the next call warms up again
            ran = await client.call("workspace_exec", command="cat .deps/installed.txt")
            assert ran["stdout"] == "requests==2.32.0\n"

    run(main)


def test_sigterm_stops_the_watcher_and_keeps_the_workspace(repo: Path, pyro_home: Path) -> None:
    with raw_server(repo) as server:
        server.call(2, "workspace_exec", command="true")
        workspace_id = server.reply(2)["structuredContent"]["workspace_id"]
        status_file = next((pyro_home / "projects").glob("*/watch.json"))
        deadline = time.monotonic() + 30
        while json.loads(status_file.read_text())["state"] != "watching":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.process.terminate()
        assert server.process.wait(timeout=10) == 0
    assert json.loads(status_file.read_text())["state"] == "stopped"
    assert Workspaces(home=pyro_home).status(workspace_id).state == "running"


def test_an_unexpected_exception_becomes_a_tool_error() -> None:
    from mcp.server.mcpserver.exceptions import ToolError

    from pyro_loop.errors import NotFoundError
    from pyro_loop.mcp.calls import guarded

    async def broken() -> None:
        raise KeyError("state")

    async def refused() -> None:
        raise NotFoundError("no snapshot 'x'", hint="snapshot_list shows them")

    async def main() -> None:
        with pytest.raises(ToolError, match=r"internal error in pyro \(KeyError: 'state'\)"):
            await guarded("broken", broken)()
        with pytest.raises(ToolError, match=r"no snapshot 'x' \(hint: snapshot_list shows them\)"):
            await guarded("refused", refused)()

    run(main)


def test_retry_is_bounded_and_says_how_to_give_a_command_longer(
    repo: Path, pyro_home: Path
) -> None:
    from pyro_loop.loop.live import ProjectLoop
    from pyro_loop.project.config import load_project_config
    from pyro_loop.project.discovery import find_project

    slow_once_marked = "if [ -e again ]; then sleep 30; fi; echo done"

    async def main() -> None:
        async with connect(repo) as client:
            first = await client.error("workspace_retry")
            assert "nothing to retry yet" in first and "workspace_exec" in first
            ran = await client.call("workspace_exec", command=slow_once_marked, timeout_seconds=1)
            assert ran["stdout"] == "done\n"
            (repo / "again").write_text("")
            again = await client.call("workspace_retry")
            assert again["timed_out"] and "timed out after 1" in again["note"]
            assert "workspace_exec" in again["note"] and "timeout_seconds" in again["note"]

    run(main)
    # A last command given no timeout (`pyro exec -- CMD`) is retried with the default bound
    # (30 s over MCP), not left to run for ever.
    project = find_project(repo)
    loop = ProjectLoop(project, load_project_config(repo).config, Workspaces(home=pyro_home))
    loop.exec(["sh", "-c", "echo quick"])
    (repo / "again").unlink()
    assert loop.last_command() == {"argv": ["sh", "-c", "echo quick"], "timeout": None,
                                   "cwd": None, "env": {}}  # fmt: skip
    loop.exec(["sh", "-c", slow_once_marked])
    (repo / "again").write_text("")
    result = loop.retry(default_timeout=0.5)
    assert result.timed_out and result.duration < 10


def test_a_disconnect_ends_the_server_and_the_commands_it_left_running(
    repo: Path, pyro_home: Path
) -> None:
    ws = Workspaces(home=pyro_home)

    def running(workspace: str) -> str:
        listing = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done"
        return ws.exec(workspace, ["sh", "-c", listing]).stdout.decode()

    with raw_server(repo) as server:
        server.call(2, "workspace_exec", command="true")
        workspace_id = server.reply(2)["structuredContent"]["workspace_id"]
        server.call(3, "workspace_exec", command="sleep 41", timeout_seconds=120)
        server.call(4, "vm_run", command="sleep 42", timeout_seconds=120)

        def started() -> bool:
            others = [s.record.id for s in ws.list() if s.record.id != workspace_id]
            return "sleep 41" in running(workspace_id) and any(
                "sleep 42" in running(other) for other in others
            )

        deadline = time.monotonic() + 30
        while not started():
            assert time.monotonic() < deadline, "the commands did not start"
            time.sleep(0.1)
        disconnected = time.monotonic()
        server.stdin.close()  # the chat host went away, both calls still running
        assert server.process.wait(timeout=20) == 0
        assert time.monotonic() - disconnected < 10, "the server waited for the commands"
    assert "sleep 41" not in running(workspace_id)  # killed, not left to run to its timeout
    assert [s.record.id for s in ws.list()] == [workspace_id]  # vm_run's workspace is gone


def test_a_cancelled_call_kills_its_command_and_the_server_goes_on(
    repo: Path, pyro_home: Path
) -> None:
    ws = Workspaces(home=pyro_home)

    def sleeping(workspace: str) -> bool:
        listing = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done"
        return "sleep 43" in ws.exec(workspace, ["sh", "-c", listing]).stdout.decode()

    async def main() -> None:
        async with connect(repo) as client:
            workspace_id = (await client.call("workspace_exec", command="true"))["workspace_id"]
            # The client gives up after 2 s: it sends notifications/cancelled.
            with pytest.raises(MCPError, match="timed out"):
                await client.session.call_tool(
                    "workspace_exec", {"command": "sleep 43", "timeout_seconds": 120},
                    read_timeout_seconds=2,
                )  # fmt: skip
            deadline = time.monotonic() + 10
            while await anyio.to_thread.run_sync(sleeping, workspace_id):
                assert time.monotonic() < deadline, "the cancelled command is still running"
                await anyio.sleep(0.1)
            again = await client.call("workspace_exec", command="echo still here")
            assert again["stdout"] == "still here\n"

    run(main)

#!/usr/bin/env python3
"""The MCP server benchmark: how soon a chat host can talk to `pyro mcp serve`, and work.

(a) Process start to `initialize` answered, for `pyro mcp serve` and, in the same run and
    interleaved with it, for a bare `python -c "import mcp.server.mcpserver"` that prints a
    line once the SDK is imported: the difference is what pyro adds on top of the SDK
    (target <= 300 ms).
(b) Process start to the first `workspace_exec` result on a warm project (its workspace
    running, and its workspace deleted but its layers warm), beside the whole
    `pyro exec -- true` process on the same project.

Both talk JSON-RPC over the server's stdin and stdout, as a chat host does. Medians and p95,
PASS/FAIL against the target; `--check` exits 1 when it fails, `--json` writes the samples.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchrepo import compile_pyro, loop_arguments, make_repo, scratch_home, summarize

INSTALL = "mkdir -p .deps && cp requirements.txt .deps/"
SDK_BASELINE = "import mcp.server.mcpserver; print('{}', flush=True)"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "bench_mcp", "version": "1"},
    },
}
TARGET_ADDED_MS = 300


class Process:
    """A child speaking newline-delimited JSON on stdin/stdout, read with a deadline."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.buffer = b""

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def line(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise SystemExit("no answer from the server in time")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise SystemExit("the server exited without answering")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        data: dict[str, Any] = json.loads(line)
        return data

    def reply(self, request_id: int) -> dict[str, Any]:
        while True:  # skip notifications (log messages, progress)
            message = self.line()
            if message.get("id") == request_id:
                return message

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve_argv() -> list[str]:
    return [sys.executable, "-m", "pyro_loop", "mcp", "serve"]


def time_initialize(repo: Path) -> float:
    started = time.perf_counter()
    server = Process(serve_argv(), repo)
    server.send(INITIALIZE)
    reply = server.reply(1)
    elapsed = (time.perf_counter() - started) * 1000
    server.close()
    if "result" not in reply:
        raise SystemExit(f"initialize failed: {reply}")
    return elapsed


def time_sdk_import(repo: Path) -> float:
    started = time.perf_counter()
    child = Process([sys.executable, "-c", SDK_BASELINE], repo)
    child.line()
    elapsed = (time.perf_counter() - started) * 1000
    child.close()
    return elapsed


def time_first_exec(repo: Path) -> float:
    """Start, initialize, initialized, `workspace_exec("true")`: until its result."""
    started = time.perf_counter()
    server = Process(serve_argv(), repo)
    server.send(INITIALIZE)
    server.reply(1)
    server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    call = {"name": "workspace_exec", "arguments": {"command": "true"}}
    server.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
    reply = server.reply(2)
    elapsed = (time.perf_counter() - started) * 1000
    server.close()
    result = reply.get("result") or {}
    if result.get("isError") or result.get("structuredContent", {}).get("exit_code") != 0:
        raise SystemExit(f"workspace_exec failed: {reply}")
    return elapsed


def time_cli_exec(repo: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pyro_loop", "exec", "-C", str(repo), "--", "true"],
                   check=True, capture_output=True)  # fmt: skip
    return (time.perf_counter() - started) * 1000


def main() -> int:
    args, files, runs = loop_arguments(__doc__)

    with scratch_home("pyro-bench-mcp-") as tmp:
        repo = tmp / "repo"
        from pyro_loop.loop.live import ProjectLoop
        from pyro_loop.project.config import load_project_config
        from pyro_loop.project.discovery import find_project
        from pyro_loop.workspace.manager import Workspaces

        compile_pyro()
        make_repo(repo, files, INSTALL)
        project = find_project(repo)
        loop = ProjectLoop(project, load_project_config(project.root).config, Workspaces())
        loop.up()  # prepare, and the project's workspace

        time_initialize(repo), time_sdk_import(repo)  # warm the page cache, unmeasured
        sdk: list[float] = []
        initialize: list[float] = []
        for _ in range(runs):  # interleaved, so machine load affects both alike
            sdk.append(time_sdk_import(repo))
            initialize.append(time_initialize(repo))
        running = [time_first_exec(repo) for _ in range(runs)]
        deleted = []
        for _ in range(runs):
            record = loop.find()
            if record is not None:
                loop.ws.delete(record.id)
            deleted.append(time_first_exec(repo))
        cli = [time_cli_exec(repo) for _ in range(runs)]

        rows = [
            ("baseline: python -c 'import mcp.server.mcpserver'", sdk),
            ("pyro mcp serve: start -> initialize answered", initialize),
            ("start -> first workspace_exec, workspace running", running),
            ("start -> first workspace_exec, workspace deleted", deleted),
            ("baseline: pyro exec -- true (whole process)", cli),
        ]
        print(f"pyro MCP benchmark: {files:,} files, {runs} runs; "
              f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
        print(f"{'operation':52} {'median ms':>10} {'p95 ms':>8}")
        for name, samples in rows:
            median, p95 = summarize(samples)
            print(f"{name:52} {median:10.1f} {p95:8.1f}")
        added = summarize(initialize)[0] - summarize(sdk)[0]
        ok = added <= TARGET_ADDED_MS
        text = f"pyro's share of initialize (over the bare SDK import): {added:.0f} ms"
        print(f"{text:64} <= {TARGET_ADDED_MS} ms {'PASS' if ok else 'FAIL'}")
        if args.json_path:
            data = {name: samples for name, samples in rows}
            data["added_ms"] = [added]
            args.json_path.write_text(json.dumps(data, indent=2))
        return 1 if not ok and args.check else 0


if __name__ == "__main__":
    sys.exit(main())

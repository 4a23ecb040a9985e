"""Probes for what a process inside a workspace can see and do, and host-side tree snapshots."""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyro_loop.workspace.client import ExecResult
from pyro_loop.workspace.manager import Workspaces

DEADLINE = 5.0  # seconds to wait for something that should take milliseconds


def run_py(
    workspaces: Workspaces, ws_id: str, code: str, *args: str, timeout: float = 30.0
) -> ExecResult:
    """Run a Python snippet inside the workspace with the sandbox's system python."""
    return workspaces.exec(ws_id, ["python3", "-c", code, *args], timeout=timeout)


def py_json(workspaces: Workspaces, ws_id: str, code: str, *args: str) -> Any:
    """Run a snippet that prints one JSON document, and return it (the snippet must succeed)."""
    result = run_py(workspaces, ws_id, code, *args)
    assert result.exit_code == 0, result.stderr.decode(errors="replace")
    return json.loads(result.stdout)


def sh(workspaces: Workspaces, ws_id: str, script: str, timeout: float = 30.0) -> ExecResult:
    return workspaces.exec(ws_id, ["sh", "-c", script], timeout=timeout)


def marker() -> str:
    return f"pyro-isolation-{secrets.token_hex(8)}"


def host_pids_with(text: str) -> list[int]:
    """Host processes (any namespace) whose command line contains `text`."""
    needle = text.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return found


def wait_for(predicate: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


TreeState = dict[str, tuple[int, int, int, bytes | None, str | None]]


def tree_state(root: Path) -> TreeState:
    """path -> (mode, uid, mtime_ns, bytes, symlink target) for a tree, links not followed."""
    state: TreeState = {}
    st = root.lstat()
    state["."] = (st.st_mode, st.st_uid, st.st_mtime_ns, None, None)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                state[rel] = (st.st_mode, st.st_uid, st.st_mtime_ns, None, str(path.readlink()))
            elif stat.S_ISREG(st.st_mode):
                state[rel] = (st.st_mode, st.st_uid, st.st_mtime_ns, path.read_bytes(), None)
            else:
                state[rel] = (st.st_mode, st.st_uid, st.st_mtime_ns, None, None)
    return state


# Nests directories `depth` levels deep below /workspace/<top>, with a file at the bottom.
NEST = r"""
import os, sys
top, depth = sys.argv[1], int(sys.argv[2])
os.chdir("/workspace")
os.mkdir(top)
os.chdir(top)
for _ in range(depth):
    os.mkdir("d")
    os.chdir("d")
with open("leaf", "w") as f:
    f.write("bottom\n")
"""

FORK_MANY = r"""
import errno, json, os, sys, time
want = int(sys.argv[1])
children, failures = [], []
for _ in range(want):
    try:
        pid = os.fork()
    except OSError as exc:
        failures.append(exc.errno)
        continue
    if pid == 0:
        time.sleep(20)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, 9)
for pid in children:
    os.waitpid(pid, 0)
print(json.dumps({"forked": len(children), "failed": failures}))
"""


def assert_forks_capped_at_64(outcome: dict[str, Any]) -> None:
    """FORK_MANY's outcome under Limits(processes=64): forks past the limit fail, EAGAIN."""
    assert outcome["failed"], f"all {outcome['forked']} forks succeeded under processes=64"
    assert set(outcome["failed"]) == {errno.EAGAIN}
    assert outcome["forked"] < 64

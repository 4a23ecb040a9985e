"""Real workspaces: user + mount namespaces, an overlay over store layers, bubblewrap, the agent.

Nothing here is mocked. Every workspace is created from the `seed_dir` fixture (README.md,
src/app.py, an executable run.sh and a relative symlink src/link -> ../README.md) and deleted
by the `workspaces` fixture after the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from pyro_loop.errors import (
    AgentError,
    AgentUnavailableError,
    CancelledError,
    CommandNotExecutableError,
    CommandNotFoundError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PyroError,
)
from pyro_loop.store.treehash import tree_digest
from pyro_loop.workspace.client import Cancellation, ExecResult
from pyro_loop.workspace.diff import render_patch
from pyro_loop.workspace.manager import Workspaces

SLEEPER = "import time; time.sleep(600)"


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def ws(workspaces: Workspaces, seed_dir: Path) -> str:
    """A running workspace made from `seed_dir`; its id."""
    return workspaces.create(seed=seed_dir).id


def _sh(
    workspaces: Workspaces,
    ref: str,
    script: str,
    *,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> ExecResult:
    """Run a shell script in the workspace, which must succeed."""
    result = workspaces.exec(ref, ["sh", "-c", script], cwd=cwd, env=env, timeout=60)
    assert result.exit_code == 0, result.stderr.decode()
    return result


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def _procs_with(marker: str) -> dict[int, bytes]:
    """Host processes (any namespace) whose command line contains `marker`."""
    found: dict[int, bytes] = {}
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found[int(entry)] = cmdline
    return found


def _marker() -> str:
    return f"pyro-test-marker-{uuid.uuid4().hex}"


def _start_background(workspaces: Workspaces, ref: str, marker: str) -> None:
    """Leave a detached sleeper running in the workspace, and wait until the host sees it."""
    _sh(
        workspaces,
        ref,
        f"setsid python3 -c '{SLEEPER}' {marker} </dev/null >/dev/null 2>&1 &",
    )
    _wait_for(lambda: bool(_procs_with(marker)), what="the background process")


def _host_tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path below `root` with its type, mode, mtime and content (or link target)."""
    listing: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                listing[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                listing[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                listing[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, path.read_bytes())
    return listing


def _ws_tree(workspaces: Workspaces, ref: str) -> dict[str, tuple[object, ...]]:
    """Every path in /workspace with its type, mode and content (or link target), via the agent."""
    client = workspaces.client(ref)
    listing: dict[str, tuple[object, ...]] = {}
    for entry in client.list("/workspace", recursive=True)["entries"]:
        rel = entry["path"].removeprefix("/workspace/")
        if entry["type"] == "file":
            content, _ = client.read(rel, max_bytes=1 << 20)
            listing[rel] = ("file", entry["mode"], content)
        elif entry["type"] == "symlink":
            listing[rel] = ("link", entry["target"])
        else:
            listing[rel] = (entry["type"], entry["mode"])
    return listing


SEED_TREE = {
    "README.md": ("file", 0o644, b"hello\n"),
    "run.sh": ("file", 0o755, b"#!/bin/sh\necho run\n"),
    "src": ("dir", 0o755),
    "src/app.py": ("file", 0o644, b"print('app')\n"),
    "src/link": ("link", "../README.md"),
}


# -- create ----------------------------------------------------------------------------------


def test_create_from_seed_reuses_its_layer(workspaces: Workspaces, seed_dir: Path) -> None:
    first = workspaces.create(seed=seed_dir)
    second = workspaces.create(seed=seed_dir)
    assert first.id != second.id
    assert first.base_layers == second.base_layers == [tree_digest(seed_dir)]
    assert first.layers == first.base_layers
    assert [layer.key for layer in workspaces.store.list()] == first.base_layers
    assert workspaces.status(first.id).state == "running"
    assert workspaces.status(second.id).state == "running"


def test_create_from_an_existing_layer_key(workspaces: Workspaces, seed_dir: Path) -> None:
    key = workspaces.create(seed=seed_dir).base_layers[0]
    record = workspaces.create(layers=[key])
    assert record.base_layers == [key]
    assert _ws_tree(workspaces, record.id) == SEED_TREE


def test_create_refuses_bad_sources(workspaces: Workspaces, seed_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        workspaces.create(layers=["0" * 64])
    with pytest.raises(InvalidInputError):
        workspaces.create(layers=["not-a-key"])
    with pytest.raises(InvalidInputError):
        workspaces.create(seed=seed_dir, layers=[tree_digest(seed_dir)])
    with pytest.raises(InvalidInputError):
        workspaces.create(seed=tmp_path / "missing")
    with pytest.raises(InvalidInputError):
        workspaces.create(seed=seed_dir, environment="nonexistent")
    assert workspaces.list() == []


def test_create_without_a_seed_is_empty(workspaces: Workspaces) -> None:
    record = workspaces.create()
    assert workspaces.client(record.id).list("/workspace")["entries"] == []


def test_seed_files_modes_and_symlink_are_visible(workspaces: Workspaces, ws: str) -> None:
    assert _ws_tree(workspaces, ws) == SEED_TREE
    out = _sh(
        workspaces,
        ws,
        "stat -c '%n %a %F' README.md run.sh src src/app.py; readlink src/link; cat src/link;"
        " ./run.sh",
    ).stdout.decode()
    assert out.splitlines() == [
        "README.md 644 regular file",
        "run.sh 755 regular file",
        "src 755 directory",
        "src/app.py 644 regular file",
        "../README.md",
        "hello",
        "run",
    ]


# -- exec ------------------------------------------------------------------------------------


def test_exec_exit_codes_and_separate_streams(workspaces: Workspaces, ws: str) -> None:
    result = workspaces.exec(ws, ["sh", "-c", "echo out; echo err >&2; echo more; exit 3"])
    assert result.exit_code == 3
    assert result.stdout == b"out\nmore\n"
    assert result.stderr == b"err\n"
    assert not result.timed_out
    assert result.signal is None

    assert workspaces.exec(ws, ["true"]).exit_code == 0
    assert workspaces.exec(ws, ["false"]).exit_code == 1
    killed = workspaces.exec(ws, ["sh", "-c", "kill -TERM $$"])
    assert killed.signal == signal.SIGTERM
    assert killed.exit_code == 128 + signal.SIGTERM

    history = [json.loads(line) for line in workspaces.resolve(ws).history.read_text().splitlines()]
    assert [entry["exit_code"] for entry in history] == [3, 0, 1, 143]


def test_exec_output_volume_stdin_and_background_children(workspaces: Workspaces, ws: str) -> None:
    big = workspaces.exec(ws, ["head", "-c", "3000000", "/dev/zero"])
    assert big.stdout == b"\0" * 3_000_000
    # stdin is empty, not the agent's socket: `cat` ends at once.
    assert workspaces.exec(ws, ["cat"], timeout=10).stdout == b""
    # A background child holding stdout open does not keep exec waiting for it.
    marker = _marker()
    started = time.monotonic()
    result = workspaces.exec(
        ws, ["sh", "-c", f"python3 -c '{SLEEPER}' {marker} & echo done"], timeout=10
    )
    assert result.stdout == b"done\n"
    assert not result.timed_out
    assert time.monotonic() - started < 3


def test_exec_streams_output_while_the_command_runs(workspaces: Workspaces, ws: str) -> None:
    # The command waits for a file the test writes only after it has seen the first output:
    # if output were held back until the command exits, this would time out.
    client = workspaces.client(ws)
    events: list[tuple[str, bytes]] = []

    def on_output(stream: str, data: bytes) -> None:
        events.append((stream, data))
        if data == b"first\n":
            client.write("go", b"")

    result = workspaces.exec(
        ws,
        ["sh", "-c", "echo first; while [ ! -e go ]; do sleep 0.01; done; echo second >&2"],
        timeout=10,
        on_output=on_output,
    )
    assert not result.timed_out
    assert result.exit_code == 0
    assert events == [("stdout", b"first\n"), ("stderr", b"second\n")]
    assert result.stdout == result.stderr == b"", "streamed output is not collected as well"


def test_exec_honours_cwd_and_env(workspaces: Workspaces, ws: str) -> None:
    assert _sh(workspaces, ws, "pwd", cwd="src").stdout == b"/workspace/src\n"
    assert _sh(workspaces, ws, "pwd", cwd="/workspace/src").stdout == b"/workspace/src\n"
    assert _sh(workspaces, ws, "pwd").stdout == b"/workspace\n"
    out = _sh(
        workspaces, ws, 'echo "$GREETING|$PYRO_WORKSPACE|$HOME"', env={"GREETING": "hi there"}
    ).stdout
    assert out == b"hi there|1|/home/pyro\n"
    leaked = _sh(workspaces, ws, "env").stdout.decode()
    assert "PYRO_HOME" not in leaked, "the host's environment does not leak in"
    with pytest.raises(InvalidInputError):
        workspaces.exec(ws, ["pwd"], cwd="../")
    with pytest.raises(AgentError, match="does not exist"):
        workspaces.exec(ws, ["pwd"], cwd="no/such/dir")


def test_exec_of_a_missing_binary(workspaces: Workspaces, ws: str) -> None:
    with pytest.raises(CommandNotFoundError, match="not found") as info:
        workspaces.exec(ws, ["no-such-binary-here", "--flag"])
    assert info.value.exit_code == 127
    with pytest.raises(CommandNotFoundError):
        workspaces.exec(ws, ["/workspace/missing.sh"])
    # A directory, or a file without execute permission, exists but cannot run: 126.
    for path in ["/workspace/src", "/workspace/README.md", "./src"]:
        with pytest.raises(CommandNotExecutableError, match="cannot run command") as refused:
            workspaces.exec(ws, [path])
        assert refused.value.exit_code == 126
    with pytest.raises(InvalidInputError):
        workspaces.exec(ws, [])
    assert workspaces.exec(ws, ["true"]).exit_code == 0, "the agent is still serving"


def test_a_command_silent_longer_than_the_connect_timeout_runs_to_its_end(
    workspaces: Workspaces, ws: str
) -> None:
    # The connect timeout bounds how long the agent may take to answer a request, not how
    # long a command may run quietly: without --timeout a command runs until it finishes.
    client = workspaces.client(ws)
    client.connect_timeout = 0.3
    result = client.exec(["sh", "-c", "sleep 1; echo done"])
    assert (result.exit_code, result.stdout) == (0, b"done\n")
    streamed: list[bytes] = []
    result = client.exec(
        ["sh", "-c", "sleep 1; echo streamed"], on_output=lambda _, d: streamed.append(d)
    )
    assert result.exit_code == 0 and b"".join(streamed) == b"streamed\n"


def test_timeout_kills_the_whole_process_tree(workspaces: Workspaces, ws: str) -> None:
    marker = _marker()
    script = (
        f"setsid python3 -c '{SLEEPER}' {marker}-daemon </dev/null >/dev/null 2>&1 &\n"
        f"( python3 -c '{SLEEPER}' {marker}-orphan </dev/null >/dev/null 2>&1 & )\n"
        f"exec python3 -c '{SLEEPER}' {marker}-main\n"
    )
    seen: set[str] = set()

    def watch() -> None:
        deadline = time.monotonic() + 10
        while len(seen) < 3 and time.monotonic() < deadline:
            for cmdline in _procs_with(marker).values():
                seen.update(a.decode() for a in cmdline.split(b"\0") if a.startswith(b"pyro-"))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    result = workspaces.exec(ws, ["sh", "-c", script], timeout=1.0)
    elapsed = time.monotonic() - started
    leftovers = _procs_with(marker)  # checked at once: the tree is dead when exec returns
    watcher.join()
    assert seen == {f"{marker}-daemon", f"{marker}-orphan", f"{marker}-main"}
    assert result.timed_out
    assert result.exit_code == 124
    assert 1.0 <= elapsed < 5
    assert leftovers == {}, f"processes survived the timeout: {leftovers}"
    assert workspaces.exec(ws, ["true"]).exit_code == 0


# -- files -----------------------------------------------------------------------------------


def test_file_list_read_write_remove(workspaces: Workspaces, ws: str) -> None:
    client = workspaces.client(ws)
    top = client.list("/workspace")
    assert [e["path"] for e in top["entries"]] == [
        "/workspace/README.md",
        "/workspace/run.sh",
        "/workspace/src",
    ]
    assert not top["truncated"]
    assert client.list("/workspace", recursive=True, max_entries=2)["truncated"]

    reply = client.write("notes/todo.txt", b"one\ntwo\n")
    assert reply["written"] == 8
    assert client.read("notes/todo.txt") == (
        b"one\ntwo\n",
        {
            "ok": True,
            "path": "/workspace/notes/todo.txt",
            "size": 8,
            "offset": 0,
            "truncated": False,
        },
    )
    content, reply = client.read("notes/todo.txt", offset=4, max_bytes=2)
    assert (content, reply["truncated"]) == (b"tw", True)
    content, reply = client.read("notes/todo.txt", offset=6, max_bytes=100)
    assert (content, reply["truncated"]) == (b"o\n", False)
    content, reply = client.read("notes/todo.txt", max_bytes=0)
    assert (content, reply["truncated"]) == (b"", True)
    content, reply = client.read("notes/todo.txt", offset=100)
    assert (content, reply["truncated"]) == (b"", False)
    assert _sh(workspaces, ws, "cat notes/todo.txt").stdout == b"one\ntwo\n"

    binary = bytes(range(256)) * 4
    client.write("/workspace/blob.bin", binary, mode=0o600)
    assert client.read("blob.bin", max_bytes=10_000)[0] == binary
    assert client.stat("blob.bin")["entry"]["mode"] == 0o600
    client.write("run.sh", b"#!/bin/sh\necho changed\n")
    assert client.stat("run.sh")["entry"]["mode"] == 0o755, "rewriting keeps the mode"
    assert _sh(workspaces, ws, "./run.sh").stdout == b"changed\n"

    with pytest.raises(NotFoundError):
        client.read("missing.txt")
    with pytest.raises(AgentError):
        client.read("src")
    with pytest.raises(AgentError):
        client.write("src", b"x")

    assert client.remove("notes/todo.txt")["removed"]
    with pytest.raises(NotFoundError):
        client.stat("notes/todo.txt")
    with pytest.raises(NotFoundError):
        client.remove("notes/todo.txt")
    assert client.remove("notes/todo.txt", missing_ok=True)["removed"] is False
    with pytest.raises(AgentError, match="directory"):
        client.remove("src")
    client.remove("src", recursive=True)
    # The home's place (runtime.HOME_DIR) is an empty directory; the agent's listing omits it.
    assert (
        _sh(workspaces, ws, "ls -A").stdout == b".pyro-home\nREADME.md\nblob.bin\nnotes\nrun.sh\n"
    )
    with pytest.raises(InvalidInputError):
        client.remove("/workspace", recursive=True)


@pytest.mark.parametrize("mode", [None, "755", 1.5, True])
def test_a_chmod_without_a_numeric_mode_is_an_invalid_request(
    workspaces: Workspaces, ws: str, mode: object
) -> None:
    client = workspaces.client(ws)
    before = client.stat("run.sh")["entry"]["mode"]
    request = {"op": "chmod", "path": "run.sh"} | ({} if mode is None else {"mode": mode})
    with pytest.raises(AgentError) as refused:
        client._request(request)
    assert refused.value.kind == "invalid_request"
    assert "mode must be a number" in str(refused.value)
    assert client.stat("run.sh")["entry"]["mode"] == before


ESCAPE_LINKS = "ln -s /etc etclink; ln -s .. up; ln -s /etc/passwd pw; ln -s ../../etc src/rel"


def test_path_traversal_is_refused_in_every_file_operation(workspaces: Workspaces, ws: str) -> None:
    _sh(workspaces, ws, ESCAPE_LINKS)
    client = workspaces.client(ws)
    upper = workspaces.resolve(ws).upper(workspaces.resolve(ws).load().generation)
    upper_before = _host_tree(upper)
    passwd_before = Path("/etc/passwd").stat()
    escape = f"pyro-escape-{uuid.uuid4().hex}"
    outside = [
        "../x",
        "/etc/passwd",
        "/workspace/../etc/passwd",
        "src/../../etc/passwd",
        "etclink/passwd",
        "up/etc/passwd",
        "pw",
        "src/rel/passwd",
    ]

    received: list[bytes] = []  # whatever the agent streams back before refusing

    def on_frame(_kind: bytes, data: bytes) -> None:
        received.append(data)

    for path in outside:
        with pytest.raises(InvalidInputError):
            client._request({"op": "read", "path": path, "max_bytes": 65536}, on_frame=on_frame)
        if path != "pw":  # stat and remove act on a final symlink itself, not its target
            with pytest.raises(InvalidInputError):
                client.stat(path)
            with pytest.raises(InvalidInputError):
                client.remove(path, missing_ok=True)
        with pytest.raises(InvalidInputError):
            client.tar(path, received.append)
        with pytest.raises(InvalidInputError):
            client.chmod(path, 0o777)
    assert received == [], "no data was read before the refusal"

    for path in ["etclink", "up", "src/rel", "/", "/etc", "../"]:
        with pytest.raises(InvalidInputError):
            client.list(path)
        with pytest.raises(InvalidInputError):
            client.list(path, recursive=True)

    for path in [f"../{escape}", f"/tmp/{escape}", f"etclink/{escape}", f"up/{escape}",
                 f"up/tmp/{escape}", f"src/rel/{escape}", "pw"]:  # fmt: skip
        with pytest.raises(InvalidInputError):
            client.write(path, b"escaped")
        if path == "pw":  # a new directory or link named pw-dir or pw would be inside
            continue
        with pytest.raises(InvalidInputError):
            client.mkdir(f"{path}-dir")
        with pytest.raises(InvalidInputError):
            client.symlink(path, "target")

    # Nothing was written anywhere: not in the sandbox, not in the upper dir, not on the host.
    _sh(workspaces, ws, f"! ls -d /{escape}* /tmp/{escape}* 2>/dev/null")
    assert _host_tree(upper) == upper_before
    passwd_after = Path("/etc/passwd").stat()
    assert (passwd_after.st_mode, passwd_after.st_mtime_ns) == (
        passwd_before.st_mode,
        passwd_before.st_mtime_ns,
    )
    assert not any(p.name.startswith(escape) for p in Path("/etc").iterdir())
    assert not any(p.name.startswith(escape) for p in Path("/").iterdir())
    assert client.stat("pw")["entry"]["target"] == "/etc/passwd", "the link itself is intact"
    # A path that leaves /workspace through `..` and comes back in is fine.
    assert client.read("up/workspace/README.md")[0] == b"hello\n"


def test_writes_never_reach_the_seed_or_the_store(
    workspaces: Workspaces, ws: str, seed_dir: Path
) -> None:
    before = _host_tree(seed_dir)
    layer = workspaces.store.require(workspaces.resolve(ws).load().base_layers[0])
    client = workspaces.client(ws)
    client.write("README.md", b"overwritten\n")
    client.write("src/link", b"through the link\n")  # resolves to README.md, in the workspace
    client.write("src/new.py", b"new\n")
    client.chmod("run.sh", 0o600)
    _sh(
        workspaces,
        ws,
        "echo appended >> src/app.py; touch -d 2001-01-01 run.sh; mv src/app.py src/moved.py;"
        " rm -f src/link; ln -s elsewhere src/link; chmod 700 src; mkdir -p deep/er",
    )
    assert client.read("README.md")[0] == b"through the link\n"
    assert _host_tree(seed_dir) == before
    assert tree_digest(layer.tree) == layer.key, "the shared layer is unchanged"


# -- reset and snapshots ---------------------------------------------------------------------


def test_reset_discards_changes_and_processes(workspaces: Workspaces, ws: str) -> None:
    client = workspaces.client(ws)
    client.write("README.md", b"changed\n")
    _sh(workspaces, ws, "rm src/app.py; mv run.sh moved.sh; echo new > new.txt; rm src/link")
    marker = _marker()
    _start_background(workspaces, ws, marker)
    generation = workspaces.resolve(ws).load().generation
    assert {c.path for c in workspaces.changes(ws)} >= {"README.md", "src/app.py", "new.txt"}

    record = workspaces.reset(ws)
    assert record.generation == generation + 1
    assert _procs_with(marker) == {}, "reset ends every process of the workspace"
    assert _ws_tree(workspaces, ws) == SEED_TREE
    assert workspaces.changes(ws) == []
    assert workspaces.status(ws).state == "running"

    # And again, to make sure the workspace is still fully usable after a reset.
    client = workspaces.client(ws)
    client.write("README.md", b"second round\n")
    workspaces.reset(ws)
    assert workspaces.client(ws).read("README.md")[0] == b"hello\n"


def test_snapshot_keeps_deletions_and_replaced_directories(workspaces: Workspaces, ws: str) -> None:
    _sh(
        workspaces,
        ws,
        "rm README.md; rm -rf src; mkdir src; echo fresh > src/new.txt; echo kept > kept.txt",
    )
    marker = _marker()
    _start_background(workspaces, ws, marker)
    snap = workspaces.snapshot_create(ws, "s1")
    assert snap.name == "s1"
    assert len(snap.layers) == 2
    # The snapshot froze the workspace's processes and thawed them again.
    (pid,) = _procs_with(marker)
    state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    assert state != b"T", "a process was left stopped after the snapshot"

    expected = {
        "kept.txt": ("file", 0o644, b"kept\n"),
        "run.sh": ("file", 0o755, b"#!/bin/sh\necho run\n"),
        "src": ("dir", 0o755),
        "src/new.txt": ("file", 0o644, b"fresh\n"),
    }
    assert _ws_tree(workspaces, ws) == expected
    _sh(workspaces, ws, "echo back > README.md; echo again > src/app.py; rm kept.txt")

    workspaces.reset(ws, snapshot="s1")
    assert _ws_tree(workspaces, ws) == expected, "whiteouts and the opaque dir were kept"
    assert workspaces.resolve(ws).load().layers == snap.layers
    changes = {c.path: c.status for c in workspaces.changes(ws)}
    assert changes["README.md"] == "deleted", "diff still compares with the create-time baseline"
    assert changes["kept.txt"] == "added"

    workspaces.reset(ws)
    assert _ws_tree(workspaces, ws) == SEED_TREE
    workspaces.reset(ws, snapshot="s1")
    assert _ws_tree(workspaces, ws) == expected

    assert [s.name for s in workspaces.snapshot_list(ws)] == ["baseline", "s1"]
    with pytest.raises(ConflictError):
        workspaces.snapshot_create(ws, "s1")
    with pytest.raises(InvalidInputError):
        workspaces.snapshot_create(ws, "baseline")
    with pytest.raises(InvalidInputError):
        workspaces.snapshot_create(ws, "../s2")
    workspaces.snapshot_delete(ws, "s1")
    assert [s.name for s in workspaces.snapshot_list(ws)] == ["baseline"]
    with pytest.raises(NotFoundError):
        workspaces.reset(ws, snapshot="s1")
    with pytest.raises(NotFoundError):
        workspaces.snapshot_delete(ws, "s1")


def test_snapshot_of_a_stopped_workspace(workspaces: Workspaces, ws: str) -> None:
    workspaces.client(ws).write("state.txt", b"saved\n")
    workspaces.stop(ws)
    workspaces.snapshot_create(ws, "offline")
    workspaces.start(ws)
    workspaces.client(ws).write("state.txt", b"later\n")
    workspaces.reset(ws, snapshot="offline")
    assert workspaces.client(ws).read("state.txt")[0] == b"saved\n"


# -- diff and patches ------------------------------------------------------------------------


def _git_apply(patch: str, tree: Path, *, check: bool) -> subprocess.CompletedProcess[str]:
    patch_file = tree.parent / "change.patch"
    patch_file.write_text(patch)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_CEILING_DIRECTORIES"] = str(tree.parent)
    args = ["git", "apply", *(["--check"] if check else []), str(patch_file)]
    return subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True, check=False)


def _seed_copy(seed_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "patched" / "tree"
    shutil.copytree(seed_dir, copy, symlinks=True)
    return copy


def test_diff_lists_changes_and_the_patch_applies_to_the_seed(
    workspaces: Workspaces, ws: str, seed_dir: Path, tmp_path: Path
) -> None:
    _sh(
        workspaces,
        ws,
        "printf 'hello\\nworld\\n' > README.md; mkdir -p new; echo added > new/file.txt;"
        " rm src/app.py; chmod 644 run.sh; ln -s README.md newlink; printf 'no newline' > raw",
    )
    changes = {c.path: c.status for c in workspaces.changes(ws)}
    assert changes == {
        "README.md": "modified",
        "new/file.txt": "added",
        "src/app.py": "deleted",
        "run.sh": "mode",
        "newlink": "added",
        "raw": "added",
    }
    as_json = {c.path: c.to_json() for c in workspaces.changes(ws)}
    assert as_json["run.sh"]["old_mode"] == "100755"
    assert as_json["run.sh"]["new_mode"] == "100644"
    assert as_json["newlink"]["new_mode"] == "120000"

    patch = render_patch(workspaces.changes(ws))
    assert "diff --git a/README.md b/README.md" in patch
    copy = _seed_copy(seed_dir, tmp_path)
    checked = _git_apply(patch, copy, check=True)
    assert checked.returncode == 0, checked.stderr
    applied = _git_apply(patch, copy, check=False)
    assert applied.returncode == 0, applied.stderr
    assert (copy / "README.md").read_text() == "hello\nworld\n"
    assert (copy / "new" / "file.txt").read_text() == "added\n"
    assert not (copy / "src" / "app.py").exists()
    assert stat.S_IMODE((copy / "run.sh").stat().st_mode) & 0o111 == 0
    assert os.readlink(copy / "newlink") == "README.md"
    assert (copy / "raw").read_bytes() == b"no newline"


def test_diff_lists_the_files_of_a_removed_directory(
    workspaces: Workspaces, ws: str, seed_dir: Path, tmp_path: Path
) -> None:
    _sh(workspaces, ws, "rm -rf src")
    changes = {c.path: c.status for c in workspaces.changes(ws)}
    assert changes == {"src/app.py": "deleted", "src/link": "deleted"}
    copy = _seed_copy(seed_dir, tmp_path)
    applied = _git_apply(render_patch(workspaces.changes(ws)), copy, check=False)
    assert applied.returncode == 0, applied.stderr
    assert not (copy / "src" / "app.py").exists()


def test_diff_of_a_directory_replaced_entirely(
    workspaces: Workspaces, ws: str, seed_dir: Path, tmp_path: Path
) -> None:
    _sh(workspaces, ws, "rm -rf src; mkdir src; echo fresh > src/new.txt")
    changes = {c.path: c.status for c in workspaces.changes(ws)}
    assert changes == {"src/app.py": "deleted", "src/link": "deleted", "src/new.txt": "added"}
    copy = _seed_copy(seed_dir, tmp_path)
    applied = _git_apply(render_patch(workspaces.changes(ws)), copy, check=False)
    assert applied.returncode == 0, applied.stderr
    assert sorted(p.name for p in (copy / "src").iterdir()) == ["new.txt"]


GOOD_PATCH = """\
diff --git a/README.md b/README.md
--- a/README.md
+++ b/README.md
@@ -1 +1,2 @@
 hello
+world
diff --git a/added.txt b/added.txt
new file mode 100644
--- /dev/null
+++ b/added.txt
@@ -0,0 +1 @@
+added
diff --git a/src/app.py b/src/app.py
deleted file mode 100644
--- a/src/app.py
+++ /dev/null
@@ -1 +0,0 @@
-print('app')
diff --git a/run.sh b/run.sh
--- a/run.sh
+++ b/run.sh
@@ -1,2 +1,2 @@
 #!/bin/sh
-echo run
+echo patched
"""

# The first two files would apply; the hunk for src/app.py does not match its content.
BAD_PATCH = """\
diff --git a/README.md b/README.md
--- a/README.md
+++ b/README.md
@@ -1 +1 @@
-hello
+goodbye
diff --git a/fresh.txt b/fresh.txt
new file mode 100644
--- /dev/null
+++ b/fresh.txt
@@ -0,0 +1 @@
+fresh
diff --git a/src/app.py b/src/app.py
--- a/src/app.py
+++ b/src/app.py
@@ -1 +1 @@
-print('something else')
+print('patched')
"""


def test_apply_patch(workspaces: Workspaces, ws: str) -> None:
    result = workspaces.apply_patch(ws, GOOD_PATCH)
    assert sorted(result["files"]) == ["README.md", "added.txt", "run.sh", "src/app.py"]
    tree = _ws_tree(workspaces, ws)
    assert tree["README.md"] == ("file", 0o644, b"hello\nworld\n")
    assert tree["added.txt"] == ("file", 0o644, b"added\n")
    assert tree["run.sh"] == ("file", 0o755, b"#!/bin/sh\necho patched\n")
    assert "src/app.py" not in tree
    assert _sh(workspaces, ws, "./run.sh").stdout == b"patched\n"


def test_a_patch_with_a_bad_hunk_changes_nothing(workspaces: Workspaces, ws: str) -> None:
    workspaces.client(ws).write("extra.txt", b"untouched\n")
    before = _ws_tree(workspaces, ws)
    with pytest.raises(InvalidInputError, match="does not apply"):
        workspaces.apply_patch(ws, BAD_PATCH)
    assert _ws_tree(workspaces, ws) == before
    with pytest.raises(InvalidInputError):
        workspaces.apply_patch(ws, "this is not a patch\n")
    escaping = GOOD_PATCH.replace("added.txt", "../added.txt")
    with pytest.raises(InvalidInputError):
        workspaces.apply_patch(ws, escaping)
    assert _ws_tree(workspaces, ws) == before


# -- export ----------------------------------------------------------------------------------


def test_export_file_and_directory(workspaces: Workspaces, ws: str, tmp_path: Path) -> None:
    out_file = tmp_path / "out" / "README.md"
    out_file.parent.mkdir()
    result = workspaces.export(ws, "README.md", out_file)
    assert result == {"path": "/workspace/README.md", "output": str(out_file)}
    assert out_file.read_text() == "hello\n"

    workspaces.client(ws).write("README.md", b"newer\n")
    with pytest.raises(ConflictError):
        workspaces.export(ws, "README.md", out_file)
    assert out_file.read_text() == "hello\n", "an existing output is left alone"
    workspaces.export(ws, "README.md", out_file, force=True)
    assert out_file.read_text() == "newer\n"

    # src/link points at ../README.md: outside an export of src, where it would name
    # whatever sits beside the output on the host. Inside an export of the whole tree.
    out_dir = tmp_path / "out" / "src-copy"
    outward = r"link 'src/link' points outside the tree \('\.\./README\.md'\)"
    with pytest.raises(InvalidInputError, match=outward):
        workspaces.export(ws, "src", out_dir)
    assert not out_dir.exists()
    workspaces.client(ws).remove("src/link")
    workspaces.export(ws, "src", out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == ["app.py"]
    assert (out_dir / "app.py").read_text() == "print('app')\n"
    workspaces.client(ws).symlink("src/link", "../README.md")

    whole = tmp_path / "out" / "whole"
    whole.write_text("a file in the way")
    with pytest.raises(ConflictError):
        workspaces.export(ws, "/workspace", whole)
    workspaces.export(ws, "/workspace", whole, force=True)
    assert whole.is_dir()
    assert (whole / "README.md").read_text() == "newer\n"
    assert os.access(whole / "run.sh", os.X_OK)
    assert os.readlink(whole / "src" / "link") == "../README.md"

    with pytest.raises(NotFoundError):
        workspaces.export(ws, "missing.txt", tmp_path / "out" / "missing")
    with pytest.raises(InvalidInputError):
        workspaces.export(ws, "README.md", tmp_path / "no-such-dir" / "x")
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".pyro")]
    assert leftovers == []


def test_export_archives_hard_links_modes_and_empty_dirs_and_leaves_out_specials(
    workspaces: Workspaces, ws: str, tmp_path: Path
) -> None:
    script = (
        "set -e; mkdir -p tree/empty tree/sub; chmod 750 tree/empty; echo one > tree/a;"
        " ln tree/a tree/sub/hard; chmod 640 tree/a; mkfifo tree/fifo; ln -s a tree/link"
    )
    _sh(workspaces, ws, script)
    workspaces.export(ws, "tree", tmp_path / "tree")
    out = tmp_path / "tree"
    assert sorted(p.name for p in out.iterdir()) == ["a", "empty", "link", "sub"]  # no FIFO
    assert (out / "sub" / "hard").read_text() == (out / "a").read_text() == "one\n"
    assert stat.S_IMODE((out / "a").stat().st_mode) == 0o640
    assert stat.S_IMODE((out / "empty").stat().st_mode) == 0o750
    assert list((out / "empty").iterdir()) == []
    assert os.readlink(out / "link") == "a"
    # The whole workspace: without the empty directory that covers the home's place.
    workspaces.export(ws, "/workspace", tmp_path / "whole")
    assert (tmp_path / "whole" / "tree" / "sub" / "hard").read_text() == "one\n"
    assert not (tmp_path / "whole" / ".pyro-home").exists()


def test_export_refuses_links_out_of_the_workspace(
    workspaces: Workspaces, ws: str, tmp_path: Path
) -> None:
    _sh(workspaces, ws, ESCAPE_LINKS + "; mkdir d; echo in > d/in.txt; ln -s /etc/passwd d/abs")
    for path in ["etclink", "pw", "src/rel", "up", "../etc"]:
        out = tmp_path / f"export-{path.replace('/', '_').replace('.', '_')}"
        with pytest.raises(InvalidInputError):
            workspaces.export(ws, path, out)
        assert not out.exists() and not out.is_symlink()
    # A directory holding an absolute link is refused as a whole, not half exported.
    out = tmp_path / "export-d"
    with pytest.raises(PyroError):
        workspaces.export(ws, "d", out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pyro")] == []


# -- lifecycle -------------------------------------------------------------------------------


def test_stop_and_start_keep_files(workspaces: Workspaces, ws: str) -> None:
    workspaces.client(ws).write("kept.txt", b"kept\n")
    marker = _marker()
    _start_background(workspaces, ws, marker)
    workspaces.stop(ws)
    assert _procs_with(marker) == {}
    assert workspaces.status(ws).state == "stopped"
    with pytest.raises(AgentUnavailableError):
        workspaces.exec(ws, ["true"])
    workspaces.start(ws)
    assert workspaces.status(ws).state == "running"
    assert workspaces.client(ws).read("kept.txt")[0] == b"kept\n"
    assert workspaces.exec(ws, ["cat", "kept.txt"]).stdout == b"kept\n"


def test_killed_keeper_shows_dead_and_start_brings_it_back(workspaces: Workspaces, ws: str) -> None:
    workspaces.client(ws).write("kept.txt", b"survives\n")
    handle = workspaces.resolve(ws).load().handle
    assert handle is not None
    os.kill(handle.keeper_pid, signal.SIGKILL)
    _wait_for(lambda: workspaces.status(ws).state == "dead", what="state dead")
    assert [s.state for s in workspaces.list()] == ["dead"]
    with pytest.raises(AgentUnavailableError):
        workspaces.client(ws)
    workspaces.start(ws)
    assert workspaces.status(ws).state == "running"
    assert workspaces.exec(ws, ["cat", "kept.txt"]).stdout == b"survives\n"


def _agent_pid(workspaces: Workspaces, ref: str) -> int:
    """The host pid of the workspace's agent: the child of its pid namespace's init."""
    init = json.loads(workspaces.resolve(ref).info.read_text())["child-pid"]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = Path(f"/proc/{entry}/stat").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(st.rsplit(b")", 1)[1].split()[1])
        if ppid == init and b"boot.py" in cmdline:
            return int(entry)
    raise AssertionError(f"no agent below init {init}")


def test_killed_agent_shows_dead_and_start_brings_it_back(workspaces: Workspaces, ws: str) -> None:
    workspaces.client(ws).write("kept.txt", b"survives\n")
    pid = _agent_pid(workspaces, ws)
    assert workspaces.client(ws).ping()["ok"]
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: workspaces.status(ws).state == "dead", what="state dead")
    workspaces.start(ws)
    assert workspaces.status(ws).state == "running"
    assert _agent_pid(workspaces, ws) != pid
    assert workspaces.exec(ws, ["cat", "kept.txt"]).stdout == b"survives\n"


def test_delete_while_a_command_runs(workspaces: Workspaces, ws: str, pyro_home: Path) -> None:
    marker = _marker()
    outcome: list[BaseException | ExecResult] = []

    def run() -> None:
        try:
            outcome.append(workspaces.exec(ws, ["python3", "-c", SLEEPER, marker]))
        except BaseException as exc:
            outcome.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    _wait_for(lambda: bool(_procs_with(marker)), what="the command to start")
    root = workspaces.resolve(ws).root

    workspaces.delete(ws)
    runner.join(5)
    assert not runner.is_alive(), "the exec call returned once the workspace was deleted"
    assert len(outcome) == 1
    assert isinstance(outcome[0], AgentUnavailableError)
    assert _procs_with(marker) == {}
    assert not root.exists()
    assert not (pyro_home / "workspaces" / ws).exists()
    assert workspaces.list() == []
    with pytest.raises(NotFoundError):
        workspaces.resolve(ws)


def test_another_process_finds_the_workspace(
    workspaces: Workspaces, seed_dir: Path, pyro_home: Path
) -> None:
    record = workspaces.create(seed=seed_dir, name="finder", labels={"team": "a"})
    other = Workspaces(home=pyro_home)
    assert other.resolve("finder").root.name == record.id
    assert other.resolve(record.id[:6]).root.name == record.id
    assert other.status(record.id[:4]).state == "running"
    assert other.exec("finder", ["cat", "README.md"]).stdout == b"hello\n"
    listed = [s.to_json() for s in other.list()]
    assert [(row["id"], row["name"], row["labels"]) for row in listed] == [
        (record.id, "finder", {"team": "a"})
    ]
    with pytest.raises(NotFoundError):
        other.resolve(record.id[:3])  # too short to be a prefix
    with pytest.raises(NotFoundError):
        other.resolve("nobody")
    for bad in ["../finder", "", ".hidden", "a/b"]:
        with pytest.raises(InvalidInputError):
            other.resolve(bad)


def test_two_workspaces_from_one_seed_are_independent(
    workspaces: Workspaces, seed_dir: Path
) -> None:
    a = workspaces.create(seed=seed_dir).id
    b = workspaces.create(seed=seed_dir).id
    workspaces.client(a).write("README.md", b"only in a\n")
    _sh(workspaces, b, "rm src/app.py; echo b > b.txt")
    assert workspaces.client(a).read("README.md")[0] == b"only in a\n"
    assert workspaces.client(b).read("README.md")[0] == b"hello\n"
    assert workspaces.client(a).read("src/app.py")[0] == b"print('app')\n"
    with pytest.raises(NotFoundError):
        workspaces.client(a).read("b.txt")
    assert {c.path for c in workspaces.changes(a)} == {"README.md"}
    assert {c.path for c in workspaces.changes(b)} == {"src/app.py", "b.txt"}
    workspaces.reset(a)
    assert workspaces.client(b).read("b.txt")[0] == b"b\n", "a's reset left b alone"
    workspaces.delete(a)
    assert workspaces.exec(b, ["cat", "b.txt"]).stdout == b"b\n"


def test_workspace_names(workspaces: Workspaces, seed_dir: Path) -> None:
    record = workspaces.create(seed=seed_dir, name="dev-1.x_y")
    assert record.name == "dev-1.x_y"
    with pytest.raises(ConflictError):
        workspaces.create(seed=seed_dir, name="dev-1.x_y")
    for bad in ["", "-dash", ".dot", "has space", "a/b", "ü", "x" * 65, "semi;colon"]:
        with pytest.raises(InvalidInputError):
            workspaces.create(seed=seed_dir, name=bad)
    assert [s.record.name for s in workspaces.list()] == ["dev-1.x_y"]
    assert workspaces.create(seed=seed_dir, name="x" * 64).name == "x" * 64


def test_a_cancelled_exec_kills_its_process_tree(workspaces: Workspaces, ws: str) -> None:
    cancel = Cancellation()
    failures: list[BaseException] = []

    def run() -> None:
        try:  # a child that outlives its shell, too
            workspaces.exec(ws, ["sh", "-c", "sleep 44 & sleep 45"], cancel=cancel)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    listing = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done"
    _wait_for(
        lambda: "sleep 45" in workspaces.exec(ws, ["sh", "-c", listing]).stdout.decode(),
        what="the command to start",
    )
    cancel.cancel()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(failures) == 1 and isinstance(failures[0], CancelledError), failures
    _wait_for(
        lambda: "sleep 4" not in workspaces.exec(ws, ["sh", "-c", listing]).stdout.decode(),
        what="the process tree gone",
    )
    with pytest.raises(CancelledError):  # cancelled before it starts: it never does
        workspaces.exec(ws, ["touch", "never"], cancel=cancel)
    assert workspaces.exec(ws, ["test", "-e", "never"]).exit_code == 1

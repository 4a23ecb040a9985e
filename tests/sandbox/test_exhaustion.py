"""Resource exhaustion from inside a workspace: each attack is contained, and the host is fine.

Fork bombs, memory hogs, disk fill, endless output, directories nested without end and
symlink loops. Each test checks that the attack hit its limit (or a clean error), that the
workspace recovers (by itself or with a reset), and that the host and the user's files are
unchanged. tests/sandbox/test_isolation.py holds the fork-storm and output-timeout cases.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyro_loop.errors import AgentError, InvalidInputError, PyroError
from pyro_loop.fs.util import MAX_TREE_DEPTH, remove_tree
from pyro_loop.runtime import Limits
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.project import commit_project, run_pyro
from tests.helpers.sandbox import (
    NEST,
    host_pids_with,
    marker,
    py_json,
    sh,
    tree_state,
    wait_for,
)


@pytest.fixture
def host_unchanged(seed_dir: Path, pyro_home: Path) -> Iterator[None]:
    """After the test: the seed is unchanged and the store holds no half-built layer."""
    before = tree_state(seed_dir)
    yield
    assert tree_state(seed_dir) == before
    staging = pyro_home / "tmp"
    leftovers = [p.name for p in staging.iterdir()] if staging.is_dir() else []
    assert leftovers == [], leftovers


@pytest.fixture
def ws(workspaces: Workspaces, seed_dir: Path) -> str:
    return workspaces.create(seed=seed_dir).id


def test_shell_fork_bomb_is_contained_and_reset_recovers(
    workspaces: Workspaces, seed_dir: Path, host_unchanged: None
) -> None:
    name = marker()
    ws = workspaces.create(seed=seed_dir, limits=Limits(processes=64)).id
    bomb = f"bomb() {{ bomb | bomb & }}; bomb; sleep 2 # {name}"
    started = time.monotonic()
    result = workspaces.exec(ws, ["bash", "-c", bomb], timeout=3)
    assert time.monotonic() - started < 15
    assert b"fork: retry: Resource temporarily unavailable" in result.stderr  # hit the limit
    # The bomb stayed within its limit: at most 64 processes of it anywhere on the host.
    assert len(host_pids_with(name)) <= 64
    assert subprocess.run(["true"], check=False).returncode == 0  # the host still forks
    workspaces.reset(ws)
    assert sh(workspaces, ws, "echo recovered").stdout == b"recovered\n"
    assert wait_for(lambda: host_pids_with(name) == [])


def test_memory_hog_stops_at_the_address_space_limit(
    workspaces: Workspaces, seed_dir: Path, host_unchanged: None
) -> None:
    ws = workspaces.create(seed=seed_dir, limits=Limits(address_space_mib=512)).id
    probe = py_json(
        workspaces,
        ws,
        r"""
import json, resource
hog, outcome = [], "allocated 4 GiB"
try:
    for _ in range(64):
        hog.append(bytearray(64 << 20))  # touched: zero-filled pages
except MemoryError:
    outcome = "MemoryError"
held = len(hog) * 64
del hog
print(json.dumps({"outcome": outcome, "held_mib": held,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
""",
    )
    assert probe["outcome"] == "MemoryError", probe
    assert probe["held_mib"] < 512 and probe["peak_mib"] < 512, probe
    assert sh(workspaces, ws, "echo usable").stdout == b"usable\n"


def test_disk_fill_stops_at_the_file_size_limit(
    workspaces: Workspaces, seed_dir: Path, host_unchanged: None
) -> None:
    ws = workspaces.create(seed=seed_dir, limits=Limits(file_size_mib=8)).id
    # head dies of SIGXFSZ, as it would outside; python (which ignores that signal) gets EFBIG.
    killed = sh(workspaces, ws, "head -c 100M /dev/zero > /workspace/big; echo $?")
    assert killed.stdout == b"153\n", killed.stdout + killed.stderr  # 128 + SIGXFSZ
    probe = py_json(
        workspaces,
        ws,
        r"""
import json
try:
    with open("/workspace/big2", "wb") as f:
        for _ in range(100):
            f.write(b"\0" * (1 << 20))
            f.flush()
    print(json.dumps("wrote 100 MiB"))
except OSError as exc:
    print(json.dumps(exc.errno))
""",
    )
    assert probe == errno.EFBIG
    upper = workspaces.resolve(ws).upper(0)
    for name in ("big", "big2"):
        assert (upper / name).stat().st_size <= 8 << 20
    assert sh(workspaces, ws, "rm /workspace/big /workspace/big2 && echo ok").stdout == b"ok\n"


RLIMITS = (
    "import resource as r; "
    "print(r.getrlimit(r.RLIMIT_FSIZE)[0], r.getrlimit(r.RLIMIT_AS)[0], "
    "r.getrlimit(r.RLIMIT_NPROC)[0])"
)


def test_limits_reach_workspaces_from_the_config_and_the_cli(
    tmp_path: Path, seed_dir: Path, workspaces: Workspaces
) -> None:
    """Memory and file size: the defaults, `.pyro.toml`'s [workspace] keys, `create`'s
    options, all enforced in the sandbox (a write past the file size limit fails)."""
    mib = 1024 * 1024
    created = run_pyro("workspace", "create", "--seed-path", str(seed_dir), "--name", "dflt")
    assert created.returncode == 0, created.stderr
    shown = run_pyro("workspace", "exec", "dflt", "--", "python3", "-c", RLIMITS)
    assert shown.stdout.split() == [str(16384 * mib), "-1", "4096"]

    created = run_pyro("workspace", "create", "--seed-path", str(seed_dir), "--name", "cli",
                       "--file-size-mib", "1", "--address-space-mib", "512",
                       "--processes", "99")  # fmt: skip
    assert created.returncode == 0, created.stderr
    shown = run_pyro("workspace", "exec", "cli", "--", "python3", "-c", RLIMITS)
    assert shown.stdout.split() == [str(mib), str(512 * mib), "99"]
    big = run_pyro("workspace", "exec", "cli", "--", "sh", "-c",
                   "dd if=/dev/zero of=big bs=1M count=2 2>&1; ls -l big")  # fmt: skip
    assert "File size limit exceeded" in big.stdout, big  # SIGXFSZ killed dd
    assert f" {mib} " in big.stdout  # stopped at the limit

    config = "[workspace]\nfile_size_mib = 2\naddress_space_mib = 1024\n"
    repo = commit_project(tmp_path / "repo", config, {"a.txt": "a\n"}, trusted=False)
    shown = run_pyro("exec", "-C", str(repo), "--", "python3", "-c", RLIMITS, timeout=120)
    assert shown.returncode == 0, shown.stderr  # lower limits need no trust
    assert shown.stdout.split() == [str(2 * mib), str(1024 * mib), "4096"]


def test_endless_output_is_capped_in_host_memory(workspaces: Workspaces, ws: str) -> None:
    client = workspaces.client(ws)
    result = client.exec(["sh", "-c", "yes endless"], timeout=2, max_output=1 << 20)
    assert result.timed_out is True
    assert len(result.stdout) == 1 << 20 and result.stdout_truncated is True
    assert result.stdout.startswith(b"endless\nendless\n")
    assert result.stderr == b"" and result.stderr_truncated is False
    # A line with no newline at all, on stderr: the same cap.
    flood = client.exec(["sh", "-c", "tr '\\0' x < /dev/zero >&2"], timeout=2, max_output=4096)
    assert len(flood.stderr) == 4096 and flood.stderr_truncated is True
    assert sh(workspaces, ws, "echo after").stdout == b"after\n"


def test_open_file_limit_is_enforced(workspaces: Workspaces, seed_dir: Path) -> None:
    ws = workspaces.create(seed=seed_dir, limits=Limits(open_files=256)).id
    probe = py_json(
        workspaces,
        ws,
        r"""
import json, os
fds, err = [], None
try:
    for _ in range(5000):
        fds.append(os.open("/dev/null", os.O_RDONLY))
except OSError as exc:
    err = exc.errno
print(json.dumps({"opened": len(fds), "errno": err}))
""",
    )
    assert probe["errno"] == errno.EMFILE and probe["opened"] < 256, probe


def test_directories_nested_without_end_are_refused_cleanly_by_host_walks(
    workspaces: Workspaces, ws: str, tmp_path: Path, pyro_home: Path, host_unchanged: None
) -> None:
    """3000 levels: more than Python's recursion limit and the usual 1024 descriptors."""
    store_before = tree_state(pyro_home / "layers")
    made = workspaces.exec(ws, ["python3", "-c", NEST, "deep", "3000"])
    assert made.exit_code == 0, made.stderr
    attempts = {
        "diff": lambda: workspaces.changes(ws),
        "snapshot": lambda: workspaces.snapshot_create(ws, "deep"),
        "export": lambda: workspaces.export(ws, "/workspace", tmp_path / "out"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(PyroError, match=f"more than {MAX_TREE_DEPTH} directories deep"):
            attempt()
        assert not (tmp_path / "out").exists(), what
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pyro-export")] == []
    assert tree_state(pyro_home / "layers") == store_before  # no snapshot layer appeared
    assert workspaces.snapshot_list(ws)[-1].name == "baseline"
    # The workspace itself is fine (not left frozen by the failed snapshot), and once the
    # tree is gone everything works again.
    assert sh(workspaces, ws, "rm -rf /workspace/deep && echo gone").stdout == b"gone\n"
    assert workspaces.changes(ws) == []


def test_a_tree_10000_levels_deep_leaves_status_start_stop_and_delete_working(
    workspaces: Workspaces, seed_dir: Path, pyro_home: Path,
    host_unchanged: None, request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    """Deeper than the recursion limit and PATH_MAX: the walks that must finish (measuring
    the changes, sweeping temp files, removing the tree) go iteratively, by descriptor."""
    # Whatever happens, no such tree is left for pytest's own clean-up (which recurses).
    request.addfinalizer(lambda: subprocess.run(["rm", "-rf", str(pyro_home)], check=False))
    assert run_pyro("workspace", "create", "--seed-path", str(seed_dir), "--name", "deep",
                    timeout=120).returncode == 0  # fmt: skip
    made = run_pyro("workspace", "exec", "deep", "--", "python3", "-c", NEST, "deep", "10000",
                    timeout=300)  # fmt: skip
    assert made.returncode == 0, made.stderr
    # (`status` of a stopped workspace exits 1 by design; a crash exits 3.)
    steps = [(["status"], 0), (["stop"], 0), (["status"], 1), (["start"], 0),
             (["status", "--json"], 0)]  # fmt: skip
    for args, code in steps:
        result = run_pyro("workspace", *args[:1], "deep", *args[1:], timeout=120)
        assert result.returncode == code, (args, result.stderr)
    assert json.loads(result.stdout)["changed_bytes"] >= len("bottom\n")
    assert run_pyro("workspace", "delete", "deep", timeout=120).returncode == 0
    assert run_pyro("workspace", "list", "--json").stdout.count('"id"') == 0
    trash = pyro_home / "trash"  # removed in the background: by rm, which goes by fts
    assert wait_for(lambda: not any(trash.iterdir()), timeout=240)
    # The store's own removal (trash, staging) finishes at that depth too.
    deep = pyro_home / "trash" / "by-hand"
    deep.mkdir(parents=True, exist_ok=True)
    here = os.getcwd()
    os.chdir(deep)
    try:
        for _ in range(10000):
            os.mkdir("d")
            os.chdir("d")
    finally:
        os.chdir(here)
    remove_tree(pyro_home / "trash" / "by-hand")
    assert not (pyro_home / "trash" / "by-hand").exists()


# A chain of `n` symlinks, l0 -> l1 -> ... -> l<n>, the last one a file.
LINK_CHAIN = r"""
import os, sys
n = int(sys.argv[1])
os.chdir("/workspace")
for i in range(n):
    os.symlink("l%d" % (i + 1), "l%d" % i)
with open("l%d" % n, "w") as f:
    f.write("end\n")
"""


def test_the_agent_removes_lists_and_makes_trees_deeper_than_recursion_and_path_max(
    workspaces: Workspaces, ws: str, host_unchanged: None
) -> None:
    """The agent's own walks inside the sandbox: 1200 levels is beyond Python's recursion
    limit, and the deepest paths of 3000 levels (6,000 bytes) beyond the kernel's PATH_MAX.
    (Each level costs an rmdir of about a millisecond: the depths are no larger than that.)"""
    for top, depth in (("one", "3000"), ("two", "1200"), ("three", "1200")):
        made = workspaces.exec(ws, ["python3", "-c", NEST, top, depth])
        assert made.exit_code == 0, made.stderr
    client = workspaces.client(ws)
    # A listing ends, cut short where its reply would outgrow one frame.
    listing = client.list("one", recursive=True)
    assert listing["truncated"] is True
    paths = [entry["path"] for entry in listing["entries"]]
    assert len(paths) > 500 and all(path.startswith("/workspace/one/d") for path in paths)
    assert client.list("one")["entries"][0]["path"] == "/workspace/one/d"
    # `remove` (the file tools) and `remove_many` (sync) take the whole tree.
    assert client.remove("one", recursive=True)["removed"] is True
    assert client.remove_many(["two", "missing"]) == {"removed": 1, "missing": 1, "errors": []}
    # A read-only directory in the way is emptied all the same.
    assert sh(workspaces, ws, "chmod 500 three/d/d/d && echo ok").stdout == b"ok\n"
    assert client.remove_many(["three"])["removed"] == 1
    assert sh(workspaces, ws, "ls /workspace").stdout.split() == [b"README.md", b"run.sh", b"src"]
    # Directories made for a write, a mkdir, a symlink: 1200 missing levels at once.
    deep = "made/" + "d/" * 1200
    assert client.write(deep + "file", b"bottom\n")["written"] == 7
    client.mkdir(deep + "dir")
    client.symlink("other/" + "d/" * 1200 + "link", "file")
    assert client.read(deep + "file")[0] == b"bottom\n"
    assert client.stat("other/" + "d/" * 1200 + "link")["entry"]["type"] == "symlink"
    assert client.remove_many(["made", "other"])["removed"] == 2


def test_a_symlink_chain_longer_than_the_recursion_limit_is_a_clean_error(
    workspaces: Workspaces, ws: str, tmp_path: Path, host_unchanged: None
) -> None:
    """Python before 3.13 follows each link of a chain by recursion; the kernel stops at 40."""
    made = workspaces.exec(ws, ["python3", "-c", LINK_CHAIN, "1500"])
    assert made.exit_code == 0, made.stderr
    client = workspaces.client(ws)
    attempts = {
        "read": lambda: client.read("l0"),
        "write": lambda: client.write("l0", b"x"),
        "list": lambda: client.list("l0"),
        "tar": lambda: client.tar("l0", lambda _data: None),
    }
    for what, attempt in attempts.items():
        with pytest.raises(AgentError, match="Too many levels of symbolic links"):
            attempt()
        assert sh(workspaces, ws, "cat l1500").stdout == b"end\n", what
    assert client.stat("l0")["entry"]["target"] == "l1"  # the link itself needs no resolving
    assert client.remove_many(["l0"])["removed"] == 1


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A pyro home on its own 32 MB file system (a size-limited tmpfs: needs root, as CI is),
    unmounted after the test with whatever it holds."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited file system needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "pyro-test", str(mount)],
                   check=True)  # fmt: skip
    monkeypatch.setenv("PYRO_HOME", str(mount / "home"))
    try:
        yield mount / "home"
    finally:
        ws = Workspaces(home=mount / "home")
        for status in ws.list():
            with contextlib.suppress(PyroError, OSError):
                ws.delete(status.record.id)
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_stop_and_delete_work_with_the_store_disk_full(small_disk: Path, seed_dir: Path) -> None:
    name = marker()
    assert run_pyro("workspace", "create", "--seed-path", str(seed_dir), "--name", "full",
                    timeout=120).returncode == 0  # fmt: skip
    # Fill the disk, and leave a process running in the workspace.
    script = (f"dd if=/dev/zero of=big bs=1M count=64; "
              f"sh -c 'sleep 600 # {name}' >/dev/null 2>&1 &")  # fmt: skip
    filled = run_pyro("workspace", "exec", "full", "--", "sh", "-c", script, timeout=120)
    assert "No space left on device" in filled.stderr, filled
    assert "Traceback" not in filled.stderr and filled.returncode != 3, filled
    assert os.statvfs(small_disk).f_bavail == 0  # the disk is full
    assert wait_for(lambda: host_pids_with(name) != [])

    stopped = run_pyro("workspace", "stop", "full", timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_for(lambda: host_pids_with(name) == [])  # the sandbox is gone
    deleted = run_pyro("workspace", "delete", "full", timeout=60)
    assert deleted.returncode == 0, deleted.stderr
    assert run_pyro("workspace", "list", "--json").stdout.count('"id"') == 0
    assert wait_for(lambda: os.statvfs(small_disk).f_bavail > 0, timeout=60)  # space is back


def test_a_deep_but_reasonable_tree_is_diffed_snapshotted_and_exported(
    workspaces: Workspaces, ws: str, tmp_path: Path, host_unchanged: None
) -> None:
    """The positive control for the bound: 200 levels work end to end."""
    made = workspaces.exec(ws, ["python3", "-c", NEST, "deep", "200"])
    assert made.exit_code == 0, made.stderr
    leaf = "deep/" + "d/" * 200 + "leaf"
    assert leaf in {c.path for c in workspaces.changes(ws)}
    workspaces.snapshot_create(ws, "deep")
    workspaces.export(ws, "/workspace/deep", tmp_path / "out")
    assert (tmp_path / "out" / ("d/" * 200) / "leaf").read_text() == "bottom\n"
    workspaces.reset(ws, snapshot="deep")
    assert sh(workspaces, ws, f"cat /workspace/{leaf}").stdout == b"bottom\n"


def test_an_export_larger_than_its_bound_is_refused_and_writes_nothing(
    workspaces: Workspaces, ws: str, tmp_path: Path, host_unchanged: None
) -> None:
    """The workspace decides how much export sends: the host stops at the bound."""
    made = sh(
        workspaces, ws, "mkdir big && for i in 1 2 3 4; do head -c 1000000 /dev/zero > big/$i; done"
    )
    assert made.exit_code == 0, made.stderr
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InvalidInputError, match=r"larger than 2\.0 MB; nothing was written"):
        workspaces.export(ws, "big", out / "big", max_bytes=2_000_000)
    assert list(out.iterdir()) == []  # no partial export, no spool left behind
    workspaces.export(ws, "big", out / "big", max_bytes=5_000_000)  # the control
    assert sorted(p.stat().st_size for p in (out / "big").iterdir()) == [1_000_000] * 4


def test_an_export_stops_before_it_would_fill_the_host_disk(
    workspaces: Workspaces, ws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The free-space guard (the disk's free space faked at 3 MB over what is kept free)."""
    import shutil

    from pyro_loop.workspace import transfer

    sh(workspaces, ws, "head -c 2000000 /dev/zero > big")
    usage = shutil.disk_usage(tmp_path)
    fake = usage._replace(free=transfer.FREE_SPACE_KEPT + 3_000_000)
    monkeypatch.setattr(transfer.shutil, "disk_usage", lambda _path: fake)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InvalidInputError, match="does not fit in the free space"):
        workspaces.export(ws, "big", out / "big")
    assert list(out.iterdir()) == []


def test_symlink_loops_give_clean_errors_everywhere(
    workspaces: Workspaces, ws: str, tmp_path: Path, host_unchanged: None
) -> None:
    made = sh(
        workspaces,
        ws,
        "set -e; cd /workspace; ln -s self self; ln -s b a; ln -s a b; mkdir dir;"
        " ln -s .. dir/up; ln -s ../dir dir/again; ln -s /proc/self/root rootlink",
    )
    assert made.exit_code == 0, made.stderr
    client = workspaces.client(ws)
    for path in ("self", "a", "dir/again/again/again/up/self"):
        with pytest.raises(PyroError):
            client.read(path)
        with pytest.raises(PyroError):
            client.write(path, b"through the loop")
    with pytest.raises(PyroError, match="outside"):
        client.read("rootlink/etc/passwd")
    # A recursive listing does not follow the loops: it ends, with each link listed once.
    listing = client.list("/workspace", recursive=True)
    assert 6 < len(listing["entries"]) < 50, listing
    changes = {c.path: c for c in workspaces.changes(ws)}
    assert {"self", "a", "b", "dir/up", "dir/again", "rootlink"} <= set(changes)
    snap = workspaces.snapshot_create(ws, "loops")
    assert snap.name == "loops"
    with pytest.raises(PyroError):  # the data filter refuses links out of the export
        workspaces.export(ws, "/workspace", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # dir/up -> .. names the exported directory's parent: beside the output on the host.
    with pytest.raises(PyroError, match="'dir/up' points outside"):
        workspaces.export(ws, "/workspace/dir", tmp_path / "dir-out")
    assert sh(workspaces, ws, "rm /workspace/dir/up").exit_code == 0
    workspaces.export(ws, "/workspace/dir", tmp_path / "dir-out")
    assert os.readlink(tmp_path / "dir-out" / "again") == "../dir"
    assert sh(workspaces, ws, "echo fine").stdout == b"fine\n"

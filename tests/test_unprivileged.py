"""The sandbox works for an ordinary user, not only for root.

CI runs as root, where a bug could hide behind privileges the sandbox quietly relies on. So,
as root, these tests copy the core library (standard library only) somewhere world-readable and
drive a whole workspace lifecycle as `nobody` (uid 65534) with the system python: create, exec,
escape attempts, snapshot, reset, delete. When the suite itself runs unprivileged, that is
proved by every other test already, and a simple check of the current user stands in.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyro_loop.workspace.manager import Workspaces
from tests.conftest import owners_below
from tests.test_isolation import FORK_MANY, assert_forks_capped_at_64

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
PACKAGE = Path(__file__).resolve().parent.parent / "src" / "pyro_loop"

# Runs as `nobody`. argv: seed dir, marker, the fork probe's source. Prints one JSON document
# with what it saw.
LIFECYCLE = r"""
import json, os, stat, sys, time
from pathlib import Path

from pyro_loop.runtime import Limits
from pyro_loop.workspace.manager import Workspaces

seed, mark, fork_probe = Path(sys.argv[1]), sys.argv[2], sys.argv[3]


def tree(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            body = p.read_bytes().hex() if stat.S_ISREG(st.st_mode) else None
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            out[str(p.relative_to(root))] = [st.st_mode, st.st_uid, st.st_mtime_ns, body, link]
    return out


def marked():
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():  # argv has the mark too
            try:
                if mark.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


with open("/proc/self/status") as f:
    status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
out = {
    "uid": os.getuid(),
    "euid": os.geteuid(),
    "gid": os.getgid(),
    "groups": os.getgroups(),
    "cap_eff": status["CapEff"].strip(),
}
seed_before = tree(seed)
ws = Workspaces()
rec = ws.create(seed=seed, limits=Limits(processes=64))


def run(*argv):
    r = ws.exec(rec.id, list(argv), timeout=30)
    return {"exit": r.exit_code, "out": r.stdout.decode(), "err": r.stderr.decode()}


try:
    out["id"] = run("id", "-u")
    out["edit"] = run("sh", "-c", "touch /workspace/x && echo edited > /workspace/README.md"
                      " && mkdir /workspace/d && echo f > /workspace/d/f && echo via > src/link")
    wdir = ws.resolve(rec.id)
    upper = wdir.upper(wdir.load().generation)
    out["upper_owners"] = {
        str(p.relative_to(upper)): [p.lstat().st_uid, p.lstat().st_gid]
        for p in sorted(upper.rglob("*"))
    }
    out["escape"] = run("python3", "-c", sys.stdin.read())
    out["fork"] = run("python3", "-c", fork_probe, "200", mark)
    out["seed_unchanged_after_edit"] = tree(seed) == seed_before
    ws.snapshot_create(rec.id, "edited")
    ws.reset(rec.id)
    out["after_reset"] = run("sh", "-c", "ls /workspace; cat /workspace/README.md")
    ws.reset(rec.id, snapshot="edited")
    out["after_snapshot_reset"] = run("sh", "-c", "ls /workspace; cat /workspace/README.md")
    started = run("sh", "-c", "setsid -f python3 -c 'import time; time.sleep(300)' %s"
                  " >/dev/null 2>&1 </dev/null" % mark)
    deadline = time.monotonic() + 5
    while not marked() and time.monotonic() < deadline:
        time.sleep(0.02)
    out["daemon_seen"] = bool(marked()) and started["exit"] == 0
finally:
    ws.delete(rec.id)

# Files the workspace made unreadable to their owner (chmod 000): root reads them anyway, an
# ordinary user must too, or the snapshot cannot be taken.
other = ws.create(seed=seed)
try:
    made = ws.exec(other.id, ["sh", "-c", "echo key > key && chmod 000 key && mkdir locked"
                              " && echo precious > locked/f && chmod 000 locked"])
    out["unreadable_made"] = made.exit_code
    try:
        ws.snapshot_create(other.id, "unreadable")
        ws.reset(other.id)
        ws.reset(other.id, snapshot="unreadable")
        back = ws.exec(other.id, ["sh", "-c", "chmod 700 locked key; cat key locked/f"])
        out["unreadable_snapshot"] = back.stdout.decode()
    except Exception as exc:
        out["unreadable_snapshot"] = "%s: %s" % (type(exc).__name__, exc)
    # A tree deeper than Python's recursion limit, with a directory its owner cannot write:
    # the agent removes it without privileges to override that.
    nest = ("import os\nos.mkdir('deep')\nos.chdir('deep')\nfor _ in range(1200):\n"
            "    os.mkdir('d')\n    os.chdir('d')\nos.chmod('/workspace/deep/d/d', 0o500)")
    made = ws.exec(other.id, ["python3", "-c", nest])
    try:
        removed = ws.client(other.id).remove_many(["deep"])
    except Exception as exc:
        removed = "%s: %s" % (type(exc).__name__, exc)
    left = ws.exec(other.id, ["test", "-e", "deep"]).exit_code
    out["deep_tree_removed"] = [made.exit_code, removed, left]
finally:
    ws.delete(other.id)
deadline = time.monotonic() + 5
while marked() and time.monotonic() < deadline:
    time.sleep(0.02)
out["left_after_delete"] = marked()
out["listed_after_delete"] = [s.record.id for s in ws.list()]
out["seed_unchanged"] = tree(seed) == seed_before
print(json.dumps(out))
"""

# Runs inside the workspace (as `nobody`): the escape attempts of test_isolation.py, condensed.
ESCAPES = r"""
import ctypes, errno, json, os

def attempt(fn):
    try:
        fn()
        return "succeeded"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))

def create(path):
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))

def open_write(path):
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND))

def read(path):
    with open(path, "rb") as f:
        f.read(1)

def unshare_user():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) != 0:
        raise OSError(ctypes.get_errno(), "unshare")

def ptrace_traceme():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(0, 0, None, None) != 0:  # PTRACE_TRACEME
        raise OSError(ctypes.get_errno(), "ptrace")

with open("/proc/self/status") as f:
    status = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
out = {
    "create_etc": attempt(lambda: create("/etc/MARK")),
    "create_usr": attempt(lambda: create("/usr/MARK")),
    "write_passwd": attempt(lambda: open_write("/etc/passwd")),
    "write_core_pattern": attempt(lambda: open_write("/proc/sys/kernel/core_pattern")),
    "read_shadow": attempt(lambda: read("/etc/shadow")) if os.path.exists("/etc/shadow") else None,
    "unshare_user": attempt(unshare_user),
    "cap_eff": status["CapEff"].strip(),
    "cap_prm": status["CapPrm"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "seccomp": status["Seccomp"].strip(),
    "ptrace_traceme": attempt(ptrace_traceme),
    "home_visible": os.path.exists("/nonexistent") or os.path.isdir("/root"),
}
print(json.dumps(out))
"""


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(Path(dirpath, name), uid, gid, follow_symlinks=False)


@pytest.fixture(scope="module")
def nobody_env() -> Iterator[dict[str, Path]]:
    """A world-readable copy of the library, plus a home and a seed owned by `nobody`."""
    base = Path(tempfile.mkdtemp(prefix="pyro-unprivileged-", dir="/tmp"))
    try:
        base.chmod(0o755)
        lib = base / "lib"
        shutil.copytree(PACKAGE, lib / "pyro_loop", ignore=shutil.ignore_patterns("__pycache__"))
        for dirpath, dirnames, filenames in os.walk(lib):
            for name in dirnames:
                Path(dirpath, name).chmod(0o755)
            for name in filenames:
                Path(dirpath, name).chmod(0o644)
        lib.chmod(0o755)
        home = base / "pyro-home"
        home.mkdir(mode=0o700)
        os.chown(home, NOBODY, NOBODY)
        seed = base / "seed"
        (seed / "src").mkdir(parents=True)
        (seed / "README.md").write_text("hello\n")
        (seed / "src" / "app.py").write_text("print('app')\n")
        (seed / "src" / "link").symlink_to("../README.md")
        _chown_tree(seed, NOBODY, NOBODY)
        script = base / "lifecycle.py"
        script.write_text(LIFECYCLE)
        script.chmod(0o644)
        yield {"base": base, "lib": lib, "home": home, "seed": seed, "script": script}
    finally:
        # Whatever a failed run left running is deleted through the API, as its owner.
        _as_nobody(
            ["-c", "from pyro_loop.workspace.manager import Workspaces as W\n"
             "w = W()\n[w.delete(s.record.id) for s in w.list()]"],
            lib=base / "lib", home=base / "pyro-home", timeout=60,
        )  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def _as_nobody(
    args: list[str], *, lib: Path, home: Path, stdin: str = "", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the system python as uid/gid 65534, no supplementary groups, a minimal environment."""
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
         SYSTEM_PYTHON, *args],
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(lib),
            "PYRO_HOME": str(home),
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
        },
        cwd="/",
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def lifecycle(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The whole lifecycle, run once as `nobody`; what it saw, plus the host's view after."""
    if os.getuid() != 0:
        pytest.skip("not root: this run is unprivileged already, so every test proves it")
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to drop to an unprivileged user")
    nobody_env: dict[str, Path] = request.getfixturevalue("nobody_env")  # only as root: chown
    mark = f"pyro-unpriv-{secrets.token_hex(8)}"
    result = _as_nobody(
        [str(nobody_env["script"]), str(nobody_env["seed"]), mark, FORK_MANY],
        lib=nobody_env["lib"],
        home=nobody_env["home"],
        stdin=ESCAPES.replace("MARK", mark),
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    report["host_owners"] = sorted(owners_below(nobody_env["home"]))
    report["mark"] = mark
    return report


def test_runs_as_an_ordinary_user_without_capabilities(lifecycle: dict[str, Any]) -> None:
    assert lifecycle["uid"] == lifecycle["euid"] == NOBODY
    assert lifecycle["gid"] == NOBODY
    assert lifecycle["groups"] == []
    assert int(lifecycle["cap_eff"], 16) == 0


def test_commands_run_as_that_user_and_edit_the_workspace(lifecycle: dict[str, Any]) -> None:
    assert lifecycle["id"] == {"exit": 0, "out": f"{NOBODY}\n", "err": ""}
    assert lifecycle["edit"]["exit"] == 0, lifecycle["edit"]["err"]


def test_upper_dir_files_belong_to_the_user_on_the_host(lifecycle: dict[str, Any]) -> None:
    owners = lifecycle["upper_owners"]
    assert {"x", "README.md", "d", "d/f"} <= set(owners), owners
    assert all(owner == [NOBODY, NOBODY] for owner in owners.values()), owners
    # Nothing the unprivileged run created on the host belongs to anyone else.
    assert lifecycle["host_owners"] == [NOBODY]


def test_seed_is_unchanged(lifecycle: dict[str, Any], nobody_env: dict[str, Path]) -> None:
    assert lifecycle["seed_unchanged_after_edit"] is True
    assert lifecycle["seed_unchanged"] is True
    seed = nobody_env["seed"]
    assert (seed / "README.md").read_text() == "hello\n"
    assert sorted(p.name for p in seed.rglob("*")) == ["README.md", "app.py", "link", "src"]


def test_snapshot_and_reset_work(lifecycle: dict[str, Any]) -> None:
    baseline = lifecycle["after_reset"]
    assert baseline["exit"] == 0
    assert baseline["out"].split() == ["README.md", "src", "hello"]
    edited = lifecycle["after_snapshot_reset"]
    assert edited["exit"] == 0
    assert edited["out"].split() == ["README.md", "d", "src", "x", "via"]


def test_no_process_outlives_delete(lifecycle: dict[str, Any]) -> None:
    assert lifecycle["daemon_seen"] is True  # a setsid daemon was running before delete
    assert lifecycle["left_after_delete"] == []
    assert lifecycle["listed_after_delete"] == []
    leftovers = [
        p.name
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _cmdline_has(p, lifecycle["mark"])
    ]
    assert leftovers == []


def _cmdline_has(proc: Path, text: str) -> bool:
    try:
        return text.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


def test_snapshot_of_files_unreadable_to_their_owner(lifecycle: dict[str, Any]) -> None:
    """A workspace may chmod 000 its own files; snapshotting them must still work."""
    assert lifecycle["unreadable_made"] == 0
    assert lifecycle["unreadable_snapshot"] == "key\nprecious\n"


def test_the_agent_removes_a_deep_tree_without_privileges(lifecycle: dict[str, Any]) -> None:
    made, removed, left = lifecycle["deep_tree_removed"]
    assert made == 0
    assert removed == {"removed": 1, "missing": 0, "errors": []}
    assert left == 1  # `test -e deep` fails: it is gone


def test_escape_attempts_still_fail(lifecycle: dict[str, Any]) -> None:
    run = lifecycle["escape"]
    assert run["exit"] == 0, run["err"]
    seen = json.loads(run["out"])
    assert seen["create_etc"] in ("EROFS", "EACCES")
    assert seen["create_usr"] in ("EROFS", "EACCES")
    assert seen["write_passwd"] in ("EROFS", "EACCES")
    assert seen["write_core_pattern"] in ("EACCES", "EROFS", "EPERM")
    assert seen["read_shadow"] in (None, "EACCES")
    assert seen["unshare_user"] in ("ENOSPC", "EPERM")
    assert int(seen["cap_eff"], 16) == 0 and int(seen["cap_prm"], 16) == 0
    assert seen["no_new_privs"] == "1"
    assert seen["seccomp"] == "2"  # the filter, built by an ordinary user's system python
    assert seen["ptrace_traceme"] == "EPERM"
    assert seen["home_visible"] is False
    mark = lifecycle["mark"]
    assert not Path(f"/etc/{mark}").exists() and not Path(f"/usr/{mark}").exists()


def test_process_limit_holds_for_an_ordinary_user(lifecycle: dict[str, Any]) -> None:
    assert lifecycle["fork"]["exit"] == 0, lifecycle["fork"]["err"]
    assert_forks_capped_at_64(json.loads(lifecycle["fork"]["out"]))


def test_workspace_works_for_the_current_unprivileged_user(
    workspaces: Workspaces, seed_dir: Path
) -> None:
    if os.getuid() == 0:
        pytest.skip("running as root: the tests above drop to uid 65534 instead")
    assert os.getuid() != 0
    record = workspaces.create(seed=seed_dir)
    result = workspaces.exec(record.id, ["sh", "-c", "id -u && touch /workspace/x"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{os.getuid()}\n".encode()
    upper = workspaces.resolve(record.id).upper(0)
    assert (upper / "x").lstat().st_uid == os.getuid()
    assert not (seed_dir / "x").exists()
    denied = workspaces.exec(record.id, ["sh", "-c", "touch /etc/pyro-probe"])
    assert denied.exit_code != 0
    assert not Path("/etc/pyro-probe").exists()


def test_snapshot_of_unreadable_files_as_the_current_user(
    workspaces: Workspaces, seed_dir: Path
) -> None:
    """The same as above for whoever runs the suite (trivial for root, the real test otherwise)."""
    record = workspaces.create(seed=seed_dir)
    made = workspaces.exec(
        record.id,
        ["sh", "-c", "echo key > key && chmod 000 key && mkdir locked"
         " && echo precious > locked/f && chmod 000 locked"],
    )  # fmt: skip
    assert made.exit_code == 0, made.stderr
    workspaces.snapshot_create(record.id, "unreadable")
    workspaces.reset(record.id)
    assert workspaces.exec(record.id, ["ls"]).stdout.split() == [b"README.md", b"run.sh", b"src"]
    workspaces.reset(record.id, snapshot="unreadable")
    back = workspaces.exec(record.id, ["sh", "-c", "chmod 700 locked key; cat key locked/f"])
    assert back.stdout == b"key\nprecious\n"

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
from pathlib import Path
from typing import Any

import pytest

from pyro_loop.workspace.manager import Workspaces
from tests.helpers.nobody import _as_nobody
from tests.helpers.project import owners_below
from tests.helpers.sandbox import FORK_MANY, assert_forks_capped_at_64

NOBODY = 65534

# Runs as `nobody`. argv: seed dir, marker, the fork probe's source. Prints one JSON document
# with what it saw.

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


def test_a_quiet_stream_writes_in_place_without_privileges(lifecycle: dict[str, Any]) -> None:
    assert lifecycle["put_in_place"] == [1, True]


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

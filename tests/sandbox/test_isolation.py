"""Escape attempts from inside a workspace: each must fail, and the host must be unchanged.

Every test runs a real attack inside a real sandbox (bubblewrap over an overlay), then checks
two things: that the attack failed from the inside, and that nothing on the host changed. Where
a probe could be wrong for a silly reason (a typo'd path, a server that is not listening), a
positive control shows that the same probe succeeds when the door is meant to be open.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyro_loop.errors import AgentUnavailableError, NotFoundError
from pyro_loop.runtime import Limits
from pyro_loop.runtime.bwrap import AGENT_FILES, AGENT_MOUNT
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.sandbox import (
    DEADLINE,
    FORK_MANY,
    assert_forks_capped_at_64,
    host_pids_with,
    marker,
    py_json,
    run_py,
    sh,
    tree_state,
    wait_for,
)

# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def ws(workspaces: Workspaces, seed_dir: Path) -> str:
    """A running workspace over the seed, with the default (network off) settings."""
    return workspaces.create(seed=seed_dir).id


@pytest.fixture
def tcp_server() -> Iterator[socket.socket]:
    """A listening TCP socket on the host's loopback (connections wait in its backlog)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield server
    finally:
        server.close()


# Connects to a TCP port or a Unix socket address and sends a line; prints what happened.
CONNECT = r"""
import json, socket, sys
kind, where, payload = sys.argv[1], sys.argv[2], sys.argv[3].encode()
try:
    if kind == "tcp":
        s = socket.create_connection(("127.0.0.1", int(where)), timeout=3)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect("\0" + where if kind == "abstract" else where)
    s.sendall(payload)
    s.close()
    print(json.dumps({"connected": True}))
except OSError as exc:
    print(json.dumps({"connected": False, "errno": exc.errno, "error": str(exc)}))
"""


def host_received(server: socket.socket, timeout: float) -> bytes | None:
    """What one connection to `server` sent, or None if nobody connected within `timeout`."""
    server.settimeout(timeout)
    try:
        conn, _addr = server.accept()
    except TimeoutError:
        return None
    with conn:
        conn.settimeout(DEADLINE)
        return conn.recv(1024)


# -- the filesystem ------------------------------------------------------------------------

# Tries to create each path (O_EXCL, so nothing existing is ever touched); prints the outcome.
CREATE_EACH = r"""
import errno, json, os, sys
out = {}
for path in sys.argv[1:]:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        out[path] = errno.errorcode.get(exc.errno, str(exc.errno))
    else:
        os.write(fd, b"escaped\n")
        os.close(fd)
        out[path] = "created"
print(json.dumps(out))
"""

# Opens each existing path for writing without writing anything (a non-destructive probe).
OPEN_FOR_WRITE = r"""
import errno, json, os, sys
out = {}
for path in sys.argv[1:]:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        out[path] = errno.errorcode.get(exc.errno, str(exc.errno))
    else:
        os.close(fd)
        out[path] = "writable"
print(json.dumps(out))
"""

REFUSED = {"EROFS", "EACCES", "EPERM", "ENOENT"}


def test_new_files_outside_workspace_are_refused_and_never_reach_the_host(
    workspaces: Workspaces, ws: str
) -> None:
    name = marker()
    system_dirs = [d for d in ("/usr", "/usr/bin", "/etc", "/opt") if Path(d).is_dir()]
    targets = [f"{d}/{name}" for d in system_dirs] + [f"/run/pyro/agent/{name}"]
    try:
        outcome = py_json(workspaces, ws, CREATE_EACH, *targets)
        for target in targets:
            assert outcome[target] in {"EROFS", "EACCES", "EPERM"}, (target, outcome[target])
            assert not Path(target).exists(), f"{target} appeared on the host"
    finally:
        for target in targets:
            Path(target).unlink(missing_ok=True)


def test_private_root_and_tmp_are_writable_inside_but_are_not_the_hosts(
    workspaces: Workspaces, ws: str
) -> None:
    name = marker()
    targets = [f"/{name}", f"/tmp/{name}", f"/var/tmp/{name}"]
    host_tmp_file = Path("/tmp") / f"{name}-host"
    host_tmp_file.write_bytes(b"host original\n")
    try:
        outcome = py_json(workspaces, ws, CREATE_EACH, *targets, str(host_tmp_file))
        # The sandbox's root, /tmp and /var/tmp are its own tmpfs: writing there is allowed...
        assert outcome == {t: "created" for t in [*targets, str(host_tmp_file)]}
        # ...and lands nowhere on the host (the host's existing /tmp file was not even seen:
        # O_EXCL creation succeeded inside).
        for target in targets:
            assert not Path(target).exists(), f"{target} appeared on the host"
        assert host_tmp_file.read_bytes() == b"host original\n"
        seen = sh(workspaces, ws, f"cat /tmp/{name} && cat /{name}")
        assert seen.stdout == b"escaped\nescaped\n"
    finally:
        for target in [*targets, str(host_tmp_file)]:
            Path(target).unlink(missing_ok=True)


def test_existing_host_files_cannot_be_opened_for_writing(workspaces: Workspaces, ws: str) -> None:
    candidates = [
        "/etc/passwd",
        "/etc/hostname",
        "/usr/lib/os-release",
        "/usr/bin/env",  # an executable no process runs (a running one gives ETXTBSY first)
        *(f"{AGENT_MOUNT}/{name}" for name in AGENT_FILES),
    ]
    targets = [c for c in candidates if c.startswith("/run/") or Path(c).exists()]
    host_files = [Path(c).resolve() for c in targets if not c.startswith("/run/")]
    agent_dir = next((workspaces.home / "agent").iterdir())
    before = {p: p.read_bytes() for p in host_files} | {
        p: p.read_bytes() for p in agent_dir.iterdir() if p.is_file()
    }
    outcome = py_json(workspaces, ws, OPEN_FOR_WRITE, *targets)
    for target in targets:
        assert outcome[target] in {"EROFS", "EACCES", "EPERM"}, (target, outcome[target])
    # Renaming or deleting them fails too.
    tamper = sh(
        workspaces,
        ws,
        "mv /etc/passwd /etc/passwd.x || rm -f /run/pyro/agent/server.py || chmod 777 /usr/bin"
        " || exit 0; exit 1",
    )
    assert tamper.exit_code == 0, tamper.stderr
    assert {p: p.read_bytes() for p in before} == before


def test_host_home_directories_are_not_visible(workspaces: Workspaces, seed_dir: Path) -> None:
    name = marker()
    # The real host homes where this user may write (CI runs as root: /root and /home)...
    planted = [d / f".{name}" for d in (Path("/root"), Path("/home")) if os.access(d, os.W_OK)]
    user_home = Path(os.environ["HOME"])  # the fixture's stand-in for the user's home
    user_home.mkdir(parents=True, exist_ok=True)
    planted.append(user_home / name)
    try:
        for path in planted:
            path.write_text("host secret\n")
        ws = workspaces.create(seed=seed_dir).id
        probe = py_json(
            workspaces,
            ws,
            r"""
import json, os, sys
print(json.dumps({
    "exists": {p: os.path.lexists(p) for p in sys.argv[1:]},
    "home": sorted(os.listdir("/home")) if os.path.isdir("/home") else None,
    "root": sorted(os.listdir("/root")) if os.path.isdir("/root") else None,
    "HOME": os.environ.get("HOME"),
}))
""",
            *map(str, planted),
        )
        assert probe["exists"] == {str(p): False for p in planted}
        # ...and the sandbox's /home holds only its own private home, /root nothing of the host's.
        assert set(probe["home"] or []) <= {"pyro"}, probe["home"]
        assert f".{name}" not in (probe["root"] or [])
        assert probe["HOME"] != str(user_home)
    finally:
        for path in planted:
            path.unlink(missing_ok=True)


def test_command_home_is_the_private_sandbox_home(workspaces: Workspaces, ws: str) -> None:
    """docs/security.md: "HOME is /home/pyro on the private root" -- and it must exist."""
    result = sh(workspaces, ws, 'echo "$HOME"; test -d "$HOME" && touch "$HOME/.probe"')
    home = result.stdout.decode().strip()
    assert home == "/home/pyro", f"commands get HOME={home!r}"
    assert result.exit_code == 0, f"HOME={home!r} is not a writable directory in the workspace"


def test_no_host_devices_and_no_mknod(workspaces: Workspaces, ws: str) -> None:
    host_block = sorted(
        p.name for p in Path("/dev").iterdir() if p.is_block_device() or p.is_char_device()
    )
    probe = py_json(
        workspaces,
        ws,
        r"""
import json, os, stat
devs = {}
for name in os.listdir("/dev"):
    st = os.lstat("/dev/" + name)
    if stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
        devs[name] = "block" if stat.S_ISBLK(st.st_mode) else "char"
try:
    os.mknod("/tmp/disk", stat.S_IFBLK | 0o600, os.makedev(8, 0))
    mknod = "created"
except OSError as exc:
    mknod = exc.errno
print(json.dumps({"devs": devs, "mknod": mknod}))
""",
    )
    assert "block" not in probe["devs"].values(), probe["devs"]
    assert set(probe["devs"]) <= {"null", "zero", "full", "random", "urandom", "tty", "ptmx"}
    assert probe["mknod"] == errno.EPERM
    assert len(host_block) > len(probe["devs"])  # the host has more: the probe looked


def test_seed_and_store_layer_are_unchanged_after_every_file_is_modified(
    workspaces: Workspaces, seed_dir: Path
) -> None:
    # Extra shapes: a nested dir, an empty file, a read-only file, a dangling symlink.
    (seed_dir / "deep" / "er").mkdir(parents=True)
    (seed_dir / "deep" / "er" / "data.bin").write_bytes(bytes(range(256)) * 4)
    (seed_dir / "empty").write_bytes(b"")
    (seed_dir / "readonly.txt").write_text("do not touch\n")
    (seed_dir / "readonly.txt").chmod(0o444)
    (seed_dir / "dangling").symlink_to("nowhere")
    seed_before = tree_state(seed_dir)
    record = workspaces.create(seed=seed_dir)
    layer_tree = workspaces.store.require(record.base_layers[0]).tree
    layer_before = tree_state(layer_tree)

    mutate = r"""
set -e
cd /workspace
echo through-link > src/link          # writes through the symlink into README.md
echo appended >> README.md
printf x > src/app.py
: > run.sh && chmod 640 run.sh
chmod 666 readonly.txt && echo overwritten > readonly.txt
printf changed > empty
dd if=/dev/urandom of=deep/er/data.bin bs=1024 count=1 conv=notrunc 2>/dev/null
touch -d 2001-01-01 deep/er/data.bin README.md
ln -sfn /etc/passwd src/link
ln -sfn /etc dangling
mv src src.moved && mkdir src && echo new > src/new.py
rm -rf deep && mkdir deep && echo replaced > deep/er
chmod 700 /workspace
echo fresh > brand-new.txt
cat README.md src.moved/app.py readonly.txt
"""
    result = sh(workspaces, record.id, mutate)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == b"through-link\nappended\nxoverwritten\n"  # it did change inside

    assert tree_state(seed_dir) == seed_before
    assert tree_state(layer_tree) == layer_before
    # Another workspace over the same (shared) layer sees the original files.
    other = workspaces.create(seed=seed_dir)
    assert other.base_layers == record.base_layers
    original = sh(workspaces, other.id, "cat README.md src/app.py; readlink src/link")
    assert original.stdout == b"hello\nprint('app')\n../README.md\n"
    # So does the first one after a reset; and a snapshot of its changes changes nothing either.
    workspaces.snapshot_create(record.id, "mutated")
    workspaces.reset(record.id)
    restored = sh(workspaces, record.id, "cat README.md; ls")
    assert restored.stdout.startswith(b"hello\n") and b"brand-new.txt" not in restored.stdout
    assert tree_state(seed_dir) == seed_before
    assert tree_state(layer_tree) == layer_before


# -- processes -----------------------------------------------------------------------------

LIST_PROCESSES = r"""
import json, os
procs = {}
for name in os.listdir("/proc"):
    if not name.isdigit():
        continue
    try:
        with open("/proc/%s/cmdline" % name, "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        with open("/proc/%s/status" % name) as f:
            status = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
    except OSError:
        continue
    procs[name] = {"cmd": cmd, **{k: v.strip() for k, v in status.items()
                                 if k.startswith("Cap") or k in ("NoNewPrivs", "Uid")}}
print(json.dumps({"procs": procs, "me": os.getpid()}))
"""


def test_host_processes_are_not_visible(workspaces: Workspaces, ws: str) -> None:
    name = marker()
    host = subprocess.Popen(
        ["python3", "-c", "import time; time.sleep(60)", name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: host.pid in host_pids_with(name))  # the scan does see it
        probe = py_json(workspaces, ws, LIST_PROCESSES)
        procs = probe["procs"]
        assert len(procs) <= 10, sorted(p["cmd"] for p in procs.values())
        assert int(probe["me"]) < 20  # pids are the namespace's own, not the host's
        own_cmd = Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode()
        for info in procs.values():
            assert name not in info["cmd"]
            assert info["cmd"] != own_cmd  # this test process is not there either
        # Signalling the host process by its host pid reaches nothing.
        kill = run_py(
            workspaces,
            ws,
            "import os, sys\n"
            "try:\n    os.kill(int(sys.argv[1]), 9)\nexcept OSError as e:\n    print(e.errno)\n",
            str(host.pid),
        )
        if str(host.pid) not in procs:
            assert kill.stdout.strip() == str(errno.ESRCH).encode()
        assert host.poll() is None, "the host process was killed from inside the workspace"
    finally:
        host.kill()
        host.wait()


def test_no_capabilities_and_no_new_privileges_anywhere_inside(
    workspaces: Workspaces, ws: str
) -> None:
    procs = py_json(workspaces, ws, LIST_PROCESSES)["procs"]
    assert len(procs) >= 2  # bwrap's init, the agent, this command
    for pid, info in procs.items():
        for field in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            assert int(info[field], 16) == 0, (pid, info["cmd"], field, info[field])
        assert int(info["CapBnd"], 16) == 0, (pid, info["cmd"])
        assert info["NoNewPrivs"] == "1", (pid, info["cmd"])


def test_cannot_create_user_namespaces(workspaces: Workspaces, ws: str) -> None:
    result = sh(workspaces, ws, "unshare -U true; echo $?; unshare -Ur id -u; echo $?")
    codes = result.stdout.decode().split()
    assert codes == ["1", "1"], result.stdout + result.stderr
    probe = py_json(
        workspaces,
        ws,
        r"""
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
before = os.readlink("/proc/self/ns/user")
CLONE_NEWUSER = 0x10000000
outcome = "created" if libc.unshare(CLONE_NEWUSER) == 0 else ctypes.get_errno()
print(json.dumps({"outcome": outcome, "same": before == os.readlink("/proc/self/ns/user")}))
""",
    )
    assert probe["outcome"] in (errno.ENOSPC, errno.EPERM), probe
    assert probe["same"] is True
    # bwrap itself (which needs a new user namespace) cannot nest either.
    nested = workspaces.exec(ws, ["bwrap", "--ro-bind", "/", "/", "true"])
    assert nested.exit_code != 0


def test_mounting_is_refused_and_read_only_mounts_stay_read_only(
    workspaces: Workspaces, ws: str
) -> None:
    name = marker()
    script = f"""
before=$(cat /proc/self/mountinfo | wc -l)
mkdir -p /workspace/mnt
mount -t tmpfs none /workspace/mnt && echo MOUNTED-TMPFS
mount -o remount,rw /usr && echo REMOUNTED-USR
mount --bind /workspace /etc && echo BOUND-ETC
umount /usr && echo UNMOUNTED-USR
umount -l /workspace && echo UNMOUNTED-WORKSPACE
touch /usr/{name} && echo WROTE-USR
after=$(cat /proc/self/mountinfo | wc -l)
test "$before" = "$after" && echo SAME-MOUNTS
"""
    try:
        result = sh(workspaces, ws, script)
        assert result.stdout == b"SAME-MOUNTS\n", result.stdout + result.stderr
        assert not Path(f"/usr/{name}").exists()
        assert sh(workspaces, ws, "echo ok > /workspace/still-there").exit_code == 0
    finally:
        Path(f"/usr/{name}").unlink(missing_ok=True)


def test_host_wide_kernel_settings_cannot_be_opened_for_writing(
    workspaces: Workspaces, ws: str
) -> None:
    """/proc/sys is the host's kernel; a writable core_pattern alone is a full host escape.

    Only opened, never written: the probe cannot change the host even when it succeeds.
    """
    targets = [
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/kernel/modprobe",
        "/proc/sys/kernel/panic",
        "/proc/sys/vm/drop_caches",
        "/proc/sys/fs/protected_symlinks",
        "/proc/sysrq-trigger",
    ]
    readable = [t for t in targets if Path(t).exists() and os.access(t, os.R_OK)]
    before = {t: Path(t).read_bytes() for t in readable}
    outcome = py_json(workspaces, ws, OPEN_FOR_WRITE, *targets)
    writable = sorted(t for t, what in outcome.items() if what == "writable")
    assert writable == [], f"host-wide kernel settings writable from a workspace: {writable}"
    assert set(outcome.values()) <= REFUSED
    assert {t: Path(t).read_bytes() for t in readable} == before


def test_host_secrets_under_etc_are_not_readable(workspaces: Workspaces, ws: str) -> None:
    """docs/security.md: only *world-readable* files in the host's /etc are visible."""
    secret = [
        str(p)
        for p in (Path("/etc/shadow"), Path("/etc/gshadow"), *Path("/etc/ssh").glob("*_key"))
        if p.is_file() and not p.stat().st_mode & stat.S_IROTH
    ]
    if not secret:
        pytest.skip("this host has no non-world-readable files in /etc to probe")
    probe = py_json(
        workspaces,
        ws,
        r"""
import json, sys
out = {}
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as f:
            out[path] = len(f.read())
    except OSError as exc:
        out[path] = -exc.errno
print(json.dumps(out))
""",
        *secret,
    )
    leaked = sorted(p for p, n in probe.items() if n >= 0)
    assert leaked == [], f"host secrets readable inside the workspace: {leaked}"


def test_no_controlling_terminal(workspaces: Workspaces, ws: str) -> None:
    probe = py_json(
        workspaces,
        ws,
        r"""
import json, os
try:
    os.close(os.open("/dev/tty", os.O_RDWR))
    tty = "opened"
except OSError as exc:
    tty = exc.errno
print(json.dumps({"tty": tty, "isatty": [os.isatty(fd) for fd in (0, 1, 2)],
                  "sid_leader": os.getsid(0) == os.getpid()}))
""",
    )
    assert probe["tty"] == errno.ENXIO
    assert probe["isatty"] == [False, False, False]
    assert probe["sid_leader"] is True


# -- environment and descriptors -------------------------------------------------------------


def test_caller_environment_does_not_reach_the_workspace(
    workspaces: Workspaces, seed_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = secrets.token_hex(16)
    ran = tmp_path / "bash-env-ran"
    bash_env = tmp_path / "bash-env.sh"
    bash_env.write_text(f"touch {ran}\n")
    with monkeypatch.context() as m:  # undone before conftest's leak check runs
        m.setenv("LD_PRELOAD", "/nonexistent.so")
        m.setenv("BASH_ENV", str(bash_env))
        m.setenv("SECRET_TOKEN", token)
        m.setenv("PYTHONPATH", str(tmp_path))
        m.setenv("PYTHONSTARTUP", str(bash_env))
        ws = workspaces.create(seed=seed_dir).id
        env = py_json(workspaces, ws, "import json, os; print(json.dumps(dict(os.environ)))")
        bash = workspaces.exec(ws, ["bash", "-c", "env; echo BASH_ENV=${BASH_ENV-unset}"])
        every = py_json(
            workspaces,
            ws,
            r"""
import json, os
out = {}
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                out[pid] = f.read().decode(errors="replace")
        except OSError:
            pass
print(json.dumps(out))
""",
        )
    assert set(env) == {"PATH", "HOME", "LANG", "PYRO_WORKSPACE", "PWD"}, env
    assert bash.exit_code == 0
    assert token.encode() not in bash.stdout
    assert b"LD_PRELOAD" not in bash.stdout + bash.stderr
    assert b"BASH_ENV=unset" in bash.stdout
    assert len(every) >= 2  # bwrap's init and the agent, at least
    for pid, environ in every.items():
        for leaked in (token, "LD_PRELOAD", "BASH_ENV", "PYTHONSTARTUP", str(bash_env)):
            assert leaked not in environ, (pid, leaked)
    assert not ran.exists(), "a shell ran the caller's BASH_ENV"


def test_commands_inherit_only_standard_descriptors(workspaces: Workspaces, ws: str) -> None:
    probe = py_json(
        workspaces,
        ws,
        r"""
import json, os
fd_dir = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
out = {}
for name in os.listdir(fd_dir):
    try:
        out[name] = os.readlink(name, dir_fd=fd_dir)
    except OSError:
        out[name] = None
print(json.dumps({"fds": out, "listing": fd_dir}))
""",
    )
    # Descriptors of the listing itself: fd_dir, and listdir's transient copy of it (closed
    # again by the time it is read, so it has no target).
    fds = {fd: target for fd, target in probe["fds"].items() if target is not None}
    fds.pop(str(probe["listing"]))
    assert sorted(fds) == ["0", "1", "2"], fds
    assert fds["0"] == "/dev/null"
    assert fds["1"].startswith("pipe:") and fds["2"].startswith("pipe:")
    # The same for a background process started by a shell (nothing else leaks in).
    result = sh(workspaces, ws, "ls /proc/self/fd")
    assert sorted(result.stdout.split()) == [b"0", b"1", b"2", b"3"]


# -- network ---------------------------------------------------------------------------------


@pytest.mark.parametrize("network", [False, True], ids=["off", "egress"])
def test_host_loopback_tcp_is_reachable_only_with_egress(
    workspaces: Workspaces, seed_dir: Path, tcp_server: socket.socket, network: bool
) -> None:
    port = str(tcp_server.getsockname()[1])
    payload = marker()
    ws = workspaces.create(seed=seed_dir, network=network).id
    outcome = py_json(workspaces, ws, CONNECT, "tcp", port, payload)
    received = host_received(tcp_server, timeout=DEADLINE if network else 0.2)
    if network:  # the positive control: the probe works when the door is open
        assert outcome["connected"] is True, outcome
        assert received == payload.encode()
    else:
        assert outcome["connected"] is False
        assert outcome["errno"] in (errno.ECONNREFUSED, errno.ENETUNREACH), outcome
        assert received is None


@pytest.mark.parametrize("network", [False, True], ids=["off", "egress"])
def test_host_abstract_unix_socket_is_reachable_only_with_egress(
    workspaces: Workspaces, seed_dir: Path, network: bool
) -> None:
    name = marker()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind("\0" + name)
        server.listen(8)
        ws = workspaces.create(seed=seed_dir, network=network).id
        outcome = py_json(workspaces, ws, CONNECT, "abstract", name, name)
        received = host_received(server, timeout=DEADLINE if network else 0.2)
    finally:
        server.close()
    if network:
        assert outcome["connected"] is True, outcome
        assert received == name.encode()
    else:
        assert outcome == {
            "connected": False,
            "errno": errno.ECONNREFUSED,
            "error": "[Errno 111] Connection refused",
        }
        assert received is None


def test_host_unix_socket_files_are_not_reachable(workspaces: Workspaces, ws: str) -> None:
    path = Path("/tmp") / f"{marker()}.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        server.listen(8)
        outcome = py_json(workspaces, ws, CONNECT, "path", str(path), "x")
        assert outcome["connected"] is False
        assert outcome["errno"] == errno.ENOENT
        assert host_received(server, timeout=0.2) is None
    finally:
        server.close()
        path.unlink(missing_ok=True)


def test_only_loopback_interface_without_egress(workspaces: Workspaces, ws: str) -> None:
    probe = py_json(
        workspaces,
        ws,
        r"""
import json, os, socket
with open("/proc/net/dev") as f:
    devs = [l.split(":")[0].strip() for l in f.read().splitlines()[2:]]
sys_net = sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else None
print(json.dumps({"dev": devs, "sys": sys_net, "names": [n for _, n in socket.if_nameindex()]}))
""",
    )
    assert probe["dev"] == ["lo"]
    assert probe["names"] == ["lo"]
    assert probe["sys"] in (None, ["lo"])
    host_devs = [
        line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]
    ]
    assert len(host_devs) > 1  # the host has more than lo: the probe could have seen them


# -- process lifetime ------------------------------------------------------------------------

SLEEPER = "import time; time.sleep(300)"

LAUNCHERS = {
    # a plain background job of the command's shell
    "background": f"python3 -c '{SLEEPER}' {{m}} >/dev/null 2>&1 &",
    # a new session, detached from the command (util-linux setsid --fork)
    "setsid": f"setsid -f python3 -c '{SLEEPER}' {{m}} >/dev/null 2>&1 </dev/null",
    # the classic daemon: fork, setsid, fork again, parent exits, fds closed
    "double-fork": (
        "python3 -c 'import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.closerange(0, 1024)\n"
        "        time.sleep(300)\n"
        "    os._exit(0)\n"
        "os.wait()' {m}"
    ),
    # ignores every signal it can, and is reparented away from the agent
    "ignores-signals": (
        "python3 -c 'import signal, time, os\n"
        "for s in range(1, 65):\n"
        "    try:\n        signal.signal(s, signal.SIG_IGN)\n"
        "    except (OSError, ValueError):\n        pass\n"
        "os.setsid() if os.fork() == 0 else os._exit(0)\n"
        "time.sleep(300)' {m} >/dev/null 2>&1 &"
    ),
}


@pytest.mark.parametrize("action", ["delete", "reset", "stop"])
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_workspace_processes_do_not_outlive_the_workspace(
    workspaces: Workspaces, seed_dir: Path, launcher: str, action: str
) -> None:
    name = marker()
    ws = workspaces.create(seed=seed_dir).id
    try:
        started = sh(workspaces, ws, LAUNCHERS[launcher].format(m=name), timeout=10)
        assert started.exit_code == 0, started.stderr
        assert not started.timed_out
        # The process is really running (seen from the host), so the check below can fail.
        assert wait_for(lambda: len(host_pids_with(name)) >= 1), "the daemon never started"
        if action == "delete":
            workspaces.delete(ws)
            with pytest.raises(NotFoundError):
                workspaces.resolve(ws)
        elif action == "reset":
            workspaces.reset(ws)
            assert sh(workspaces, ws, "echo alive").stdout == b"alive\n"
        else:
            workspaces.stop(ws)
            with pytest.raises(AgentUnavailableError):
                workspaces.exec(ws, ["true"])
        assert wait_for(lambda: host_pids_with(name) == []), host_pids_with(name)
    finally:
        for pid in host_pids_with(name):  # never leave a stray on the host, pass or fail
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


# -- resource exhaustion ---------------------------------------------------------------------

# Forks up to N children that sleep (each carrying the marker in its command line), counts the
# failures, then kills and reaps the children it made: bounded, whatever the limit does.


def test_process_limit_is_enforced(workspaces: Workspaces, seed_dir: Path) -> None:
    ws = workspaces.create(seed=seed_dir, limits=Limits(processes=64)).id
    assert_forks_capped_at_64(py_json(workspaces, ws, FORK_MANY, "200", marker()))


def test_fork_storm_is_contained_and_the_workspace_recovers(
    workspaces: Workspaces, seed_dir: Path
) -> None:
    name = marker()
    ws = workspaces.create(seed=seed_dir, limits=Limits(processes=64)).id
    # A storm that keeps its children: a detached holder forks up to 300 sleepers.
    hold = (
        "import os, time\n"
        "for _ in range(300):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(300)\n"
        "            os._exit(0)\n"
        "    except OSError:\n"
        "        break\n"
        "time.sleep(300)\n"
    )
    started = sh(workspaces, ws, f"setsid -f python3 -c '{hold}' {name} >/dev/null 2>&1")
    assert started.exit_code == 0
    assert wait_for(lambda: len(host_pids_with(name)) >= 32)
    time.sleep(0.2)  # let the holder reach its limit (or its 300)
    storm = len(host_pids_with(name))
    assert storm <= 301
    # The host is fine: it still forks.
    assert subprocess.run(["true"], check=False).returncode == 0
    # The workspace may be saturated (its agent cannot fork a handler), but a reset recovers it.
    with contextlib.suppress(AgentUnavailableError):
        sh(workspaces, ws, "true", timeout=5)
    workspaces.reset(ws)
    assert sh(workspaces, ws, "echo recovered").stdout == b"recovered\n"
    assert wait_for(lambda: host_pids_with(name) == []), f"{storm} storm processes, some left"


def test_bounded_fork_loop_leaves_the_workspace_usable(
    workspaces: Workspaces, seed_dir: Path
) -> None:
    name = marker()
    ws = workspaces.create(seed=seed_dir, limits=Limits(processes=64)).id
    outcome = py_json(workspaces, ws, FORK_MANY, "500", name)
    assert outcome["forked"] + len(outcome["failed"]) == 500
    assert sh(workspaces, ws, "echo usable").stdout == b"usable\n"
    assert wait_for(lambda: host_pids_with(name) == [])


def test_endless_output_is_cut_off_by_the_timeout(workspaces: Workspaces, ws: str) -> None:
    received = [0]

    def sink(_stream: str, data: bytes) -> None:
        received[0] += len(data)

    started = time.monotonic()
    result = workspaces.exec(ws, ["sh", "-c", "yes spam"], timeout=1, on_output=sink)
    elapsed = time.monotonic() - started
    assert result.timed_out is True
    assert result.exit_code == 124
    assert 0.9 <= result.duration < 5
    assert elapsed < 8
    assert received[0] > 0  # it did print
    assert sh(workspaces, ws, "echo after").stdout == b"after\n"


def test_detached_endless_writers_are_killed_on_timeout(workspaces: Workspaces, ws: str) -> None:
    name = marker()
    received = [0]

    def sink(_stream: str, data: bytes) -> None:
        received[0] += len(data)

    # A setsid'd writer keeps the output pipe open after the command itself would be gone.
    script = f"setsid sh -c 'while :; do echo {name}; done' {name} & exec yes spam"
    started = time.monotonic()
    result = workspaces.exec(ws, ["sh", "-c", script], timeout=1, on_output=sink)
    assert result.timed_out is True
    assert time.monotonic() - started < 8
    assert received[0] > 0
    assert wait_for(lambda: host_pids_with(name) == []), "the detached writer survived"
    assert sh(workspaces, ws, "echo after").stdout == b"after\n"


def test_upper_dir_of_a_deleted_workspace_is_gone(workspaces: Workspaces, ws: str) -> None:
    """Files written inside live only in the workspace's private dir, and go with it."""
    wdir = workspaces.resolve(ws)
    assert sh(workspaces, ws, "echo data > /workspace/written").exit_code == 0
    assert (wdir.upper(0) / "written").read_bytes() == b"data\n"
    workspaces.delete(ws)
    assert not wdir.root.exists()


# -- root's workspaces and the other users of the machine -----------------------------------

SET_ID_ATTEMPTS = r"""
import ctypes, json, os, shutil, stat
libc = ctypes.CDLL(None, use_errno=True)
shutil.copy("/bin/sh", "rootsh")
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = 0
    except OSError as exc:
        out[name] = exc.errno
def raw(number, *args):
    if libc.syscall(number, *args) == -1:
        raise OSError(ctypes.get_errno(), name)
attempt("chmod", lambda: os.chmod("rootsh", 0o4755))
attempt("chmod_setgid", lambda: os.chmod("rootsh", 0o2755))
attempt("fchmod", lambda: os.fchmod(os.open("rootsh", os.O_RDONLY), 0o6755))
attempt("open_creat", lambda: os.close(os.open("made", os.O_CREAT | os.O_WRONLY, 0o4755)))
attempt("mknod", lambda: os.mknod("node", stat.S_IFREG | 0o4755))
name = "fchmodat2"
attempt("fchmodat2", lambda: raw(452, -100, b"rootsh", 0o4755, 0))
name = "openat2"
how = (ctypes.c_uint64 * 3)(os.O_CREAT | os.O_WRONLY, 0o4755, 0)
attempt("openat2", lambda: raw(437, -100, b"made2", how, 24))
attempt("plain_chmod", lambda: os.chmod("rootsh", 0o755))
out["set_id_files"] = sorted(
    e.name for e in os.scandir(".") if e.stat(follow_symlinks=False).st_mode & 0o6000
)
print(json.dumps(out))
"""


def _set_id_files(root: Path) -> list[str]:
    found = []
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(os.path.join(directory, name)).st_mode & 0o6000:
                    found.append(os.path.join(directory, name))
    return found


def test_root_workspaces_make_no_set_id_file_another_user_could_run(
    seed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root with a world-readable pyro home: a workspace copies sh and makes it set-uid,
    then an ordinary local user runs it to act with the workspace's uid on another root
    workspace's files. The set-id bits are refused, and the upper dirs are out of reach."""
    if os.geteuid() != 0:
        pytest.skip("the attack needs pyro running as root")
    # A home every user can traverse (pytest's own temp root is private to root).
    base = Path(tempfile.mkdtemp(prefix="pyro-world-", dir="/tmp"))
    base.chmod(0o755)
    home = base / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    monkeypatch.setenv("PYRO_HOME", str(home))
    ws = Workspaces(home=home)
    try:
        attacker = ws.create(seed=seed_dir)
        victim = ws.create(seed=seed_dir)
        tried = py_json(ws, attacker.id, SET_ID_ATTEMPTS)
        assert tried.pop("set_id_files") == []
        assert tried.pop("plain_chmod") == 0  # ordinary modes still work
        assert tried.pop("openat2") == errno.ENOSYS  # mode out of the filter's reach
        assert tried == dict.fromkeys(tried, errno.EPERM), tried
        assert _set_id_files(home / "workspaces") == []

        upper = home / "workspaces" / attacker.id / f"upper.{attacker.generation}"
        target = home / "workspaces" / victim.id / f"upper.{victim.generation}"
        assert (upper / "rootsh").is_file()
        # What the attacker ran, as uid 65534: the copy of sh (set-uid, had the chmod
        # worked) writing into the other workspace.
        script = f"{upper}/rootsh -p -c 'id -u; echo pwned > {target}/pwned'; ls {home}/workspaces"
        attack = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
             "/bin/sh", "-c", script],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        assert "Permission denied" in attack.stderr, attack
        assert attack.stdout == "", attack  # no id printed, no workspace listed
        assert not (target / "pwned").exists()
        for command in (["stat", str(upper / "rootsh")], ["stat", str(target / "x")],
                        ["ls", str(upper.parent)], ["ls", str(home / "workspaces")]):  # fmt: skip
            reach = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", *command],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert "Permission denied" in reach.stderr, reach
    finally:
        for status in ws.list():
            ws.delete(status.record.id)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _host_uid(pid: int) -> int:
    """The real uid of a host process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _as_uid(uid: int, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
         "/bin/sh", "-c", script],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip


def test_root_workspaces_each_run_as_a_uid_of_their_own(
    seed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under root, two workspaces from one layer run as two host uids, neither the layer
    owner's: a process of one cannot write the other's upper dir nor the shared layer, even
    where it can reach them (its own upper dir, on the same path, it writes). Each still
    reads the layer's private files and changes them (copied up as its own uid)."""
    from pyro_loop.identity import sandbox_owner
    from pyro_loop.runtime.idmap import supported

    owner = sandbox_owner()
    if owner is None:
        pytest.skip("workspaces run as the caller's uid unless pyro runs as root")
    # A home every user can traverse, so that only the upper dirs' own modes stand in the way.
    base = Path(tempfile.mkdtemp(prefix="pyro-world-", dir="/tmp"))
    base.chmod(0o755)
    home = base / "home"
    home.mkdir(mode=0o755)
    monkeypatch.setenv("PYRO_HOME", str(home))
    workspaces = Workspaces(home=home)
    if (why := supported(home, owner)) is not None:
        pytest.skip(f"no idmapped mounts here: {why}")
    (seed_dir / "private.txt").write_text("only the owner reads this\n")
    (seed_dir / "private.txt").chmod(0o600)
    try:
        first, second = workspaces.create(seed=seed_dir), workspaces.create(seed=seed_dir)
        assert first.base_layers == second.base_layers
        layer = workspaces.store.require(first.base_layers[0]).tree
        uids, uppers = [], []
        for record in (first, second):
            assert record.handle is not None
            uid = _host_uid(record.handle.keeper_pid)
            assert uid == record.uid and uid != owner, (uid, record.uid, owner)
            ran = sh(workspaces, record.id, "id -u; cat private.txt; echo mine >> private.txt")
            assert ran.stdout == b"0\nonly the owner reads this\n", ran
            upper = workspaces.resolve(record.id).upper(record.generation)
            assert {p.lstat().st_uid for p in [upper, *upper.iterdir()]} == {uid}
            uids.append(uid)
            uppers.append(upper)
        assert uids[0] != uids[1]
        assert (layer / "private.txt").read_text() == "only the owner reads this\n"
        assert (layer / "private.txt").lstat().st_uid == owner

        # The first workspace's uid on the host: its own upper dir, then the second's and
        # the layer they share.
        own, target = uppers
        assert _as_uid(uids[0], f"echo mine > {own}/reach").returncode == 0
        attack = _as_uid(uids[0], f"echo pwned > {target}/pwned; touch {layer}/planted; "
                                  f"echo pwned >> {layer}/README.md")  # fmt: skip
        assert attack.stderr.count("Permission denied") == 3, attack
        assert not (target / "pwned").exists() and not (layer / "planted").exists()
        assert sh(workspaces, second.id, "cat README.md").stdout == b"hello\n"
    finally:
        for status in workspaces.list():
            workspaces.delete(status.record.id)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_a_root_workspace_made_before_gets_a_uid_of_its_own_on_its_next_start(
    workspaces: Workspaces, seed_dir: Path
) -> None:
    """A workspace whose record has no uid (made when all of root's workspaces ran as the
    layer owner) runs as one of its own from its next start, with its files."""
    from pyro_loop.identity import hand_over, sandbox_owner
    from pyro_loop.runtime.idmap import supported

    owner = sandbox_owner()
    record = workspaces.create(seed=seed_dir)
    if owner is None or supported(workspaces.home, owner) is not None:
        pytest.skip("needs pyro running as root, with idmapped mounts")
    assert sh(workspaces, record.id, "mkdir -p a/b && echo old > a/b/f").exit_code == 0
    workspaces.stop(record.id)
    wdir = workspaces.resolve(record.id)
    upper = wdir.upper(record.generation)
    hand_over(upper, recursive=True)  # as an older pyro left it: the layer owner's
    old = wdir.load()
    old.uid = None
    wdir.save(old)

    started = workspaces.start(record.id)
    assert started.uid is not None and started.uid != owner
    assert started.handle is not None and _host_uid(started.handle.keeper_pid) == started.uid
    assert {p.lstat().st_uid for p in [upper, *upper.rglob("*")]} == {started.uid}
    ran = sh(workspaces, record.id, "cat a/b/f; echo new >> a/b/f; cat README.md")
    assert ran.stdout == b"old\nhello\n", ran

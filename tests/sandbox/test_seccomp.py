"""The seccomp filter: every denied class of system call is refused inside a real workspace.

Each probe calls the raw system call with ctypes (numbers resolved by libseccomp for this
architecture), checks the errno the filter promises and that the call had no effect inside,
and every test checks that the host and the user's files are unchanged. Where the same probe
would succeed without the filter, a control runs it on the host (outside any sandbox) to show
the probe itself is sound. Ordinary work (threads, processes, git, pip, node) still works.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyro_loop.runtime import seccomp
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.sandbox import marker, py_json, run_py, sh, tree_state

# -- helpers ---------------------------------------------------------------------------------


def nr(name: str) -> int:
    """This architecture's number for a system call, as the filter resolved it."""
    lib = seccomp._library()
    number = int(lib.seccomp_syscall_resolve_name(name.encode()))
    assert number >= 0, name
    return number


# Calls syscall(argv[1], *args) and prints {"ret": ..., "errno": ...}. Arguments are ints,
# or "buf:N" (a zeroed N-byte buffer), or "str:TEXT".
RAW_SYSCALL = r"""
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
keep = []
def arg(text):
    if text.startswith("buf:"):
        keep.append(ctypes.create_string_buffer(int(text[4:])))
        return ctypes.cast(keep[-1], ctypes.c_void_p)
    if text.startswith("str:"):
        keep.append(ctypes.c_char_p(text[4:].encode()))
        return keep[-1]
    return ctypes.c_ulong(int(text, 0) & 0xFFFFFFFFFFFFFFFF)
args = [arg(a) for a in sys.argv[2:]]
ctypes.set_errno(0)
ret = libc.syscall(ctypes.c_long(int(sys.argv[1])), *args)
print(json.dumps({"ret": ret, "errno": ctypes.get_errno() if ret == -1 else 0}))
"""


def raw(workspaces: Workspaces, ws: str, name: str, *args: int | str) -> dict[str, int]:
    result: dict[str, int] = py_json(workspaces, ws, RAW_SYSCALL, str(nr(name)), *map(str, args))
    return result


def py_json_on_host(code: str, *args: str) -> Any:
    """`py_json`'s probe run on the host, unsandboxed: the control."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, timeout=30
    )
    return json.loads(out.stdout)


def raw_on_host(name: str, *args: int | str) -> dict[str, int]:
    result: dict[str, int] = py_json_on_host(RAW_SYSCALL, str(nr(name)), *map(str, args))
    return result


@pytest.fixture
def ws(workspaces: Workspaces, seed_dir: Path, tmp_path: Path) -> Iterator[str]:
    """A workspace over the seed; after the test, the seed and a host file are unchanged."""
    canary = tmp_path / "host-canary"
    canary.write_bytes(b"host file\n")
    seed_before = tree_state(seed_dir)
    canary_before = tree_state(tmp_path / "host-canary")
    ws_id = workspaces.create(seed=seed_dir).id
    yield ws_id
    assert tree_state(seed_dir) == seed_before
    assert tree_state(canary) == canary_before


def host_keys() -> str:
    try:
        return Path("/proc/keys").read_text()
    except OSError:
        return ""


# -- the filter is everywhere ------------------------------------------------------------


def test_every_process_in_the_workspace_runs_under_the_filter(
    workspaces: Workspaces, ws: str
) -> None:
    """pid 1, the agent, commands, and a double-forked daemon a command left behind."""
    name = marker()
    started = sh(
        workspaces,
        ws,
        f"setsid -f sh -c 'exec python3 -c \"import time; time.sleep(30)\" {name}' "
        ">/dev/null 2>&1 </dev/null",
    )
    assert started.exit_code == 0
    probe = py_json(
        workspaces,
        ws,
        r"""
import json, os, time
time.sleep(0.2)
out = {}
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            with open("/proc/%s/status" % pid) as f:
                status = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        out[pid] = {"mode": status["Seccomp"].strip(), "nnp": status["NoNewPrivs"].strip(),
                    "cmd": cmd}
print(json.dumps(out))
""",
    )
    assert "1" in probe and any(name in p["cmd"] for p in probe.values()), probe
    assert any("boot.py" in p["cmd"] for p in probe.values())  # the agent
    for pid, info in probe.items():
        assert info["mode"] == "2", (pid, info)  # SECCOMP_MODE_FILTER
        assert info["nnp"] == "1", (pid, info)
    own = Path("/proc/self/status").read_text()
    assert "Seccomp:\t0" in own  # the host side (this test) is not filtered: it looked


# -- each denied class ------------------------------------------------------------------------

# PTRACE_ATTACH to its own child (which ptrace would allow: a descendant, same user).
PTRACE_CHILD = r"""
import ctypes, json, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
ret = libc.syscall(ctypes.c_long(int(sys.argv[1])), ctypes.c_long(16), ctypes.c_long(child),
                   None, None)  # PTRACE_ATTACH
err = ctypes.get_errno() if ret == -1 else 0
with open("/proc/%d/status" % child) as f:
    tracer = [l.split()[1] for l in f if l.startswith("TracerPid")][0]
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
print(json.dumps({"ret": ret, "errno": err, "tracer": int(tracer)}))
"""

# process_vm_readv of its own memory: the simplest valid call.
VM_READ_SELF = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
src = ctypes.create_string_buffer(b"secret", 6)
dst = ctypes.create_string_buffer(6)
local = iovec(ctypes.cast(dst, ctypes.c_void_p), 6)
remote = iovec(ctypes.cast(src, ctypes.c_void_p), 6)
ret = libc.syscall(ctypes.c_long(int(sys.argv[1])), ctypes.c_long(os.getpid()),
                   ctypes.byref(local), ctypes.c_ulong(1), ctypes.byref(remote),
                   ctypes.c_ulong(1), ctypes.c_ulong(0))
print(json.dumps({"ret": ret, "errno": ctypes.get_errno() if ret == -1 else 0,
                  "copied": dst.raw.decode(errors="replace")}))
"""


def test_ptrace_is_refused_even_on_its_own_child(workspaces: Workspaces, ws: str) -> None:
    inside = py_json(workspaces, ws, PTRACE_CHILD, str(nr("ptrace")))
    assert inside == {"ret": -1, "errno": errno.EPERM, "tracer": 0}
    control = py_json_on_host(PTRACE_CHILD, str(nr("ptrace")))
    assert control["ret"] == 0 and control["tracer"] != 0, control


def test_process_vm_readv_is_refused(workspaces: Workspaces, ws: str) -> None:
    inside = py_json(workspaces, ws, VM_READ_SELF, str(nr("process_vm_readv")))
    assert inside["ret"] == -1 and inside["errno"] == errno.EPERM
    assert "secret" not in inside["copied"]
    control = py_json_on_host(VM_READ_SELF, str(nr("process_vm_readv")))
    assert control == {"ret": 6, "errno": 0, "copied": "secret"}


KEY_SPEC_USER_KEYRING = -4
KEY_SPEC_SESSION_KEYRING = -3


def test_kernel_keyring_calls_are_refused_and_no_key_reaches_the_host(
    workspaces: Workspaces, ws: str
) -> None:
    name = marker()
    before = host_keys()
    added = raw(workspaces, ws, "add_key", "str:user", f"str:{name}", "str:secret", 6,
                KEY_SPEC_USER_KEYRING)  # fmt: skip
    assert added == {"ret": -1, "errno": errno.EPERM}
    looked = raw(workspaces, ws, "keyctl", 0, KEY_SPEC_SESSION_KEYRING, 0)  # GET_KEYRING_ID
    assert looked == {"ret": -1, "errno": errno.EPERM}
    requested = raw(workspaces, ws, "request_key", "str:user", f"str:{name}", 0, 0)
    assert requested == {"ret": -1, "errno": errno.EPERM}
    assert name not in host_keys()
    assert host_keys() == before


def test_io_uring_is_unavailable(workspaces: Workspaces, ws: str) -> None:
    inside = raw(workspaces, ws, "io_uring_setup", 4, "buf:120")
    assert inside == {"ret": -1, "errno": errno.ENOSYS}
    for name in ("io_uring_enter", "io_uring_register"):
        assert raw(workspaces, ws, name, 0, 0, 0, 0) == {"ret": -1, "errno": errno.ENOSYS}
    if Path("/proc/sys/kernel/io_uring_disabled").read_text().strip() == "0":
        control = raw_on_host("io_uring_setup", 4, "buf:120")
        assert control["ret"] >= 0, control  # a real io_uring (the probe's process exits)


CLONE_FILES = 0x00000400
SIGCHLD = 17


@pytest.mark.parametrize(
    "flag",
    [seccomp.CLONE_NEWUSER, seccomp.CLONE_NEWNS, seccomp.CLONE_NEWNET, seccomp.CLONE_NEWPID,
     seccomp.CLONE_NEWIPC, seccomp.CLONE_NEWUTS, seccomp.CLONE_NEWCGROUP, seccomp.CLONE_NEWTIME],
    ids=["user", "mount", "net", "pid", "ipc", "uts", "cgroup", "time"],
)  # fmt: skip
def test_new_namespaces_are_refused(workspaces: Workspaces, ws: str, flag: int) -> None:
    before = sh(workspaces, ws, "readlink /proc/self/ns/*").stdout
    assert raw(workspaces, ws, "unshare", flag) == {"ret": -1, "errno": errno.EPERM}
    if flag != seccomp.CLONE_NEWTIME:  # clone() reads that bit as part of the exit signal
        # Were it not refused, the child would run on as a copy of the probe: visible.
        assert raw(workspaces, ws, "clone", flag | SIGCHLD, 0, 0, 0, 0) == {
            "ret": -1, "errno": errno.EPERM
        }  # fmt: skip
    assert sh(workspaces, ws, "readlink /proc/self/ns/*").stdout == before


def test_clone3_falls_back_and_unshare_without_namespaces_works(
    workspaces: Workspaces, ws: str
) -> None:
    assert raw(workspaces, ws, "clone3", "buf:88", 88) == {"ret": -1, "errno": errno.ENOSYS}
    assert raw(workspaces, ws, "unshare", CLONE_FILES) == {"ret": 0, "errno": 0}
    assert raw(workspaces, ws, "setns", 0, 0) == {"ret": -1, "errno": errno.EPERM}


def test_mount_interfaces_are_refused(workspaces: Workspaces, ws: str) -> None:
    before = sh(workspaces, ws, "cat /proc/self/mountinfo").stdout
    calls: list[tuple[str, tuple[int | str, ...]]] = [
        ("mount", ("str:none", "str:/tmp", "str:tmpfs", 0, 0)),
        ("umount2", ("str:/workspace", 2)),  # MNT_DETACH
        ("pivot_root", ("str:/tmp", "str:/tmp")),
        ("chroot", ("str:/tmp",)),
        ("fsopen", ("str:tmpfs", 0)),
        ("fspick", (-100, "str:/workspace", 0)),
        ("open_tree", (-100, "str:/workspace", 1)),  # OPEN_TREE_CLONE
        ("move_mount", (-1, "str:", -100, "str:/tmp", 4)),
        ("mount_setattr", (-100, "str:/usr", 0, "buf:32", 32)),
    ]
    for name, args in calls:
        assert raw(workspaces, ws, name, *args) == {"ret": -1, "errno": errno.EPERM}, name
    assert sh(workspaces, ws, "cat /proc/self/mountinfo").stdout == before


def test_kernel_attack_surface_is_refused(workspaces: Workspaces, ws: str) -> None:
    # bpf(BPF_MAP_CREATE, attr, size), perf_event_open(attr, self, any cpu, no group, 0),
    # userfaultfd(UFFD_USER_MODE_ONLY): the last two work unprivileged on this kernel.
    assert raw(workspaces, ws, "bpf", 0, "buf:128", 128) == {"ret": -1, "errno": errno.EPERM}
    assert raw(workspaces, ws, "perf_event_open", "buf:128", 0, -1, -1, 0) == {
        "ret": -1, "errno": errno.EPERM
    }  # fmt: skip
    assert raw(workspaces, ws, "userfaultfd", 1) == {"ret": -1, "errno": errno.EPERM}
    control = raw_on_host("userfaultfd", 1)
    assert control["ret"] >= 0 or control["errno"] == errno.EPERM, control


@pytest.mark.parametrize(
    ("name", "args"),
    [("init_module", (0, 0, "str:")), ("finit_module", (0, "str:", 0)),
     ("delete_module", ("str:pyro_probe", 0)), ("kexec_load", (0, 0, 0, 0)),
     ("reboot", (0, 0, 0, 0)),  # bad magic: harmless even if it got through
     ("swapoff", ("str:/nonexistent",)), ("acct", (0,)), ("syslog", (3, "buf:64", 64)),
     ("open_by_handle_at", (-100, "buf:16", 0)), ("quotactl", (0, 0, 0, 0))],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
def test_host_wide_operations_are_refused(
    workspaces: Workspaces, ws: str, name: str, args: tuple[int | str, ...]
) -> None:
    assert raw(workspaces, ws, name, *args) == {"ret": -1, "errno": errno.EPERM}


ADDR_NO_RANDOMIZE = 0x0040000
READ_IMPLIES_EXEC = 0x0400000


def test_personality_cannot_weaken_memory_protections(workspaces: Workspaces, ws: str) -> None:
    probe = py_json(
        workspaces,
        ws,
        r"""
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
out = {}
for persona in map(int, sys.argv[1:]):
    ret = libc.personality(ctypes.c_ulong(persona))
    out[str(persona)] = ctypes.get_errno() if ret == -1 else "ok"
with open("/proc/self/personality") as f:
    out["now"] = f.read().strip()
print(json.dumps(out))
""",
        str(ADDR_NO_RANDOMIZE),
        str(READ_IMPLIES_EXEC),
        str(ADDR_NO_RANDOMIZE | (1 << 32)),  # junk above the 32 bits the kernel reads
        "0",  # PER_LINUX: allowed
    )
    assert probe == {
        str(ADDR_NO_RANDOMIZE): errno.EPERM,
        str(READ_IMPLIES_EXEC): errno.EPERM,
        str(ADDR_NO_RANDOMIZE | (1 << 32)): errno.EPERM,
        "0": "ok",
        "now": "00000000",
    }
    # setarch -R (the usual way to turn ASLR off) fails too.
    assert workspaces.exec(ws, ["setarch", "-R", "true"]).exit_code != 0


# Makes a fresh pty its controlling terminal, then tries to push a command into its input.
TIOCSTI_PROBE = r"""
import errno, fcntl, json, os, select, sys, termios
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
master, slave = os.openpty()
pid = os.fork()
if pid == 0:
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    out = {}
    for name, request in (("sti", TIOCSTI), ("sti_high", TIOCSTI | (1 << 32)),
                          ("linux", TIOCLINUX)):
        try:
            fcntl.ioctl(slave, request, b"x" if name != "linux" else b"\x06")
            out[name] = "ok"
        except OverflowError:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            r = libc.ioctl(slave, ctypes.c_ulong(request), ctypes.c_char_p(b"x"))
            out[name] = ctypes.get_errno() if r == -1 else "ok"
        except OSError as exc:
            out[name] = exc.errno
    os.write(1, json.dumps(out).encode())
    os._exit(0)
_, status = os.waitpid(pid, 0)
# Anything injected would now be waiting as input on the terminal.
attr = termios.tcgetattr(slave)
attr[3] &= ~termios.ICANON
termios.tcsetattr(slave, termios.TCSANOW, attr)
ready = select.select([slave], [], [], 0.2)[0]
sys.stdout.write("\n" + json.dumps({"pending": os.read(slave, 64).decode() if ready else ""}))
"""


def test_terminal_injection_ioctls_are_refused(workspaces: Workspaces, ws: str) -> None:
    result = run_py(workspaces, ws, TIOCSTI_PROBE)
    assert result.exit_code == 0, result.stderr
    child, parent = result.stdout.decode().splitlines()
    assert json.loads(child) == {"sti": errno.EPERM, "sti_high": errno.EPERM,
                                 "linux": errno.EPERM}  # fmt: skip
    assert json.loads(parent) == {"pending": ""}
    if Path("/proc/sys/dev/tty/legacy_tiocsti").read_text().strip() == "1":
        # The control: on the host the same probe does inject (into its own private pty).
        control = subprocess.run(
            [sys.executable, "-c", TIOCSTI_PROBE], capture_output=True, text=True, timeout=30,
            check=True, start_new_session=True,
        ).stdout.splitlines()  # fmt: skip
        # Both requests inject: the kernel ignores the upper half, so must the filter.
        sti = json.loads(control[0])
        assert (sti["sti"], sti["sti_high"]) == ("ok", "ok"), sti
        assert json.loads(control[1]) == {"pending": "xx"}


AF_PACKET, AF_ALG, AF_VSOCK, AF_BLUETOOTH = 17, 38, 40, 31


def test_socket_families_beyond_local_ip_and_netlink_are_refused(
    workspaces: Workspaces, ws: str
) -> None:
    probe = py_json(
        workspaces,
        ws,
        r"""
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
out = {}
for family in sys.argv[1:]:
    fd = libc.socket(ctypes.c_int(int(family) & 0xFFFFFFFF) if int(family) < 1 << 32
                     else ctypes.c_long(int(family)), 1 if family != "16" else 3, 0)
    out[family] = ctypes.get_errno() if fd == -1 else "ok"
print(json.dumps(out))
""",
        *map(str, (AF_VSOCK, AF_ALG, AF_PACKET, AF_BLUETOOTH, 3, 11, 99, 1, 2, 10, 16)),
    )
    for family in (AF_VSOCK, AF_ALG, AF_PACKET, AF_BLUETOOTH, 3, 11, 99):
        assert probe[str(family)] == errno.EAFNOSUPPORT, (family, probe)
    assert [probe[f] for f in ("1", "2", "10", "16")] == ["ok"] * 4  # unix, inet, inet6, netlink
    # The family is an int: junk in the upper half of the register must not slip through.
    high = raw(workspaces, ws, "socket", AF_VSOCK | (1 << 32), 1, 0)
    assert high == {"ret": -1, "errno": errno.EAFNOSUPPORT}


def test_a_system_call_of_a_foreign_abi_kills_the_process(workspaces: Workspaces, ws: str) -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("x32 is an x86_64 ABI")
    x32_getpid = 0x40000000 | 39
    result = sh(
        workspaces,
        ws,
        f"python3 -c 'import ctypes; ctypes.CDLL(None).syscall({x32_getpid}); print(1)'; echo $?",
    )
    assert result.stdout == b"159\n", result.stdout + result.stderr  # 128 + SIGSYS
    assert sh(workspaces, ws, "echo fine").stdout == b"fine\n"


# -- ordinary work is unaffected --------------------------------------------------------------


def test_ordinary_work_still_works(workspaces: Workspaces, ws: str) -> None:
    probe = py_json(
        workspaces,
        ws,
        r"""
import concurrent.futures, json, multiprocessing, os, socket, subprocess, threading
out = {}
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    out["threads"] = sum(pool.map(lambda n: n * n, range(100)))
with multiprocessing.get_context("fork").Pool(3) as pool:
    out["processes"] = sum(pool.map(abs, range(-50, 0)))
out["subprocess"] = subprocess.run(["sh", "-c", "echo $((6*7))"], capture_output=True,
                                   text=True).stdout.strip()
pid = os.posix_spawn("/bin/true", ["true"], {})
out["posix_spawn"] = os.waitpid(pid, 0)[1]
a, b = socket.socketpair()
a.sendall(b"ping")
out["socketpair"] = b.recv(4).decode()
out["getaddrinfo"] = sorted({ai[4][0] for ai in socket.getaddrinfo("localhost", 80)})
out["ifaces"] = [n for _, n in socket.if_nameindex()]
print(json.dumps(out))
""",
    )
    assert probe == {
        "threads": sum(n * n for n in range(100)),
        "processes": sum(range(1, 51)),
        "subprocess": "42",
        "posix_spawn": 0,
        "socketpair": "ping",
        "getaddrinfo": probe["getaddrinfo"],
        "ifaces": ["lo"],
    }
    assert "127.0.0.1" in probe["getaddrinfo"]


def test_git_pip_and_node_work_under_the_filter(workspaces: Workspaces, ws: str) -> None:
    git = sh(
        workspaces,
        ws,
        "set -e; cd /workspace; git init -q -b main .; git add -A;"
        " git -c user.name=t -c user.email=t@example.invalid commit -qm init;"
        " git log --oneline | wc -l; git status --porcelain | wc -l",
    )
    assert git.exit_code == 0, git.stderr
    assert git.stdout.split() == [b"1", b"0"]
    pkg = (
        "set -e; mkdir -p /tmp/pkg/probe_pkg; echo 'VALUE = 42' > /tmp/pkg/probe_pkg/__init__.py;"
        ' printf \'[project]\\nname = "probe-pkg"\\nversion = "1"\\n\' > /tmp/pkg/pyproject.toml;'
        " python3 -m pip install -q --no-index --no-build-isolation --no-deps"
        " --target /tmp/site /tmp/pkg 2>&1 | tail -3;"
        " PYTHONPATH=/tmp/site python3 -c 'import probe_pkg; print(probe_pkg.VALUE)'"
    )
    if sh(workspaces, ws, "python3 -m pip --version && python3 -c 'import setuptools'").exit_code:
        pytest.skip("no pip with setuptools for the sandbox's python3 on this host")
    pip = sh(workspaces, ws, pkg, timeout=120)
    assert pip.exit_code == 0 and pip.stdout.endswith(b"42\n"), pip.stdout + pip.stderr
    if workspaces.exec(ws, ["sh", "-c", "command -v node"]).exit_code == 0:
        node = workspaces.exec(
            ws,
            ["node", "-e", "const fs = require('fs'); fs.writeFileSync('/tmp/n', 'io');"
             "require('child_process').exec('cat /tmp/n', (e, out) => console.log(out + 'ok'))"],
        )  # fmt: skip
        assert node.stdout == b"iook\n", node.stdout + node.stderr


# -- the library behind it ---------------------------------------------------------------


def test_the_filter_table_names_real_system_calls_with_reasons() -> None:
    program = seccomp.compiled_filter()
    assert len(program) % 8 == 0 and 0 < len(program) // 8 < 4096  # BPF_MAXINSNS
    for rule in seccomp.RULES:
        assert rule.why, rule
        assert rule.errno in (errno.EPERM, errno.ENOSYS, errno.EAFNOSUPPORT), rule
    denied = seccomp.denied_syscalls()
    for name in (
        "ptrace",
        "process_vm_readv",
        "keyctl",
        "io_uring_setup",
        "clone3",
        "bpf",
        "mount",
        "fsopen",
        "setns",
        "unshare",
        "userfaultfd",
        "perf_event_open",
    ):
        assert name in denied, name
        assert nr(name) >= 0
    # An unknown libseccomp answer would have been skipped silently: check nothing is.
    lib = seccomp._library()
    unresolved = {r.syscall for r in seccomp.RULES
                  if lib.seccomp_syscall_resolve_name(r.syscall.encode()) < 0}  # fmt: skip
    assert unresolved <= {"_sysctl", "uselib", "nfsservctl"}, unresolved

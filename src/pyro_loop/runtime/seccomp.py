"""The workspace's seccomp filter: system calls a sandboxed process is refused, and why.

In the spirit of Flatpak's and Codex's filters: everything is allowed except a short list of
calls that reach kernel surface a coding agent never needs and that sandbox escapes and
kernel exploits keep using. A refused call fails with an errno (the program sees an ordinary
error and can carry on), never with a kill; only a system call of a foreign ABI (x32 or i386
on x86_64, arm32 on aarch64) kills the process, because no rule below was written for it.

The filter is compiled to classic BPF by libseccomp (`libseccomp.so.2`, which apt itself
depends on, so it is on every Debian and Ubuntu host) through ctypes: no Python package to
install, so the same code runs in a virtualenv and under the system python of an ordinary
user. bubblewrap loads the compiled program (`--seccomp FD`) into the sandbox's processes,
after setting no_new_privs, right before it executes the agent; every command inherits it.

Arguments are compared as the kernel reads them: `ioctl`'s request and `personality`'s
persona are 32-bit, so they are masked to 32 bits (a request with junk in the upper half
must not slip past, CVE-2019-10063 in Flatpak), and socket families outside the allowed
ranges are refused whatever their upper bits hold.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform

from pyro_loop.errors import HostUnsupportedError
from pyro_loop.records import dataclass

LIBSECCOMP = "libseccomp.so.2"
LIBSECCOMP_FIX = "apt-get install libseccomp2 (dnf install libseccomp), then `pyro doctor`"

# libseccomp's ABI (seccomp.h); stable since 2.0.
_ACT_ALLOW = 0x7FFF0000
_ACT_KILL_PROCESS = 0x80000000
_FLTATR_ACT_BADARCH = 2
_CMP_EQ, _CMP_GE, _CMP_MASKED_EQ = 4, 5, 7


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


@dataclass(frozen=True)
class Cmp:
    """One argument comparison; a rule applies when all its comparisons hold."""

    arg: int
    op: int
    a: int
    b: int = 0


def has_bits(arg: int, bits: int, *, width: int = 64) -> Cmp:
    """Argument `arg` has every bit of `bits` set (looking only at its low `width` bits)."""
    return Cmp(arg, _CMP_MASKED_EQ, bits & ((1 << width) - 1), bits)


def equals32(arg: int, value: int) -> Cmp:
    """The low 32 bits of argument `arg` (an `int` or `unsigned int` to the kernel) equal."""
    return Cmp(arg, _CMP_MASKED_EQ, 0xFFFFFFFF, value)


@dataclass(frozen=True)
class Rule:
    syscall: str
    errno: int
    why: str
    when: tuple[Cmp, ...] = ()


def _deny(names: str, code: int, why: str, *when: Cmp) -> list[Rule]:
    return [Rule(name, code, why, when) for name in names.split()]


# Namespace flags of clone() and unshare(); each refused separately (a rule is an AND).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
NAMESPACE_FLAGS = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER,
                   CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWTIME)  # fmt: skip

TIOCSTI = 0x5412
TIOCLINUX = 0x541C

# personality(2) flags that weaken memory protections (ASLR off, readable implies
# executable, a mapping at address 0...). PER_LINUX and PER_LINUX32 stay allowed. The query
# personality(0xffffffff) has every bit set and is refused too, as in Flatpak's filter
# (which allows PER_LINUX only): libseccomp cannot compare one argument twice in a rule.
RISKY_PERSONALITY = {
    "ADDR_NO_RANDOMIZE": 0x0040000,
    "MMAP_PAGE_ZERO": 0x0100000,
    "ADDR_COMPAT_LAYOUT": 0x0200000,
    "READ_IMPLIES_EXEC": 0x0400000,
    "ADDR_LIMIT_32BIT": 0x0800000,
    "ADDR_LIMIT_3GB": 0x8000000,
}

# Socket families a workspace may use: local sockets, IP (loopback only, unless the workspace
# has egress), and netlink (glibc's getaddrinfo and getifaddrs use it). Everything else is
# refused, above all AF_VSOCK, which no network namespace isolates (a VM host's services),
# and AF_ALG, AF_PACKET, AF_BLUETOOTH and friends: rarely needed, often the door of a kernel
# exploit.
AF_UNSPEC, AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 0, 1, 2, 10, 16
ALLOWED_SOCKET_FAMILIES = (AF_UNSPEC, AF_UNIX, AF_INET, AF_INET6, AF_NETLINK)


def _socket_family_rules() -> list[Rule]:
    """socket() with a family outside ALLOWED_SOCKET_FAMILIES: EAFNOSUPPORT, as if not built.

    libseccomp allows one comparison per argument in a rule, so each refused family below the
    highest allowed one gets a rule of its own, and one open-ended rule covers the rest,
    including any value with bits above the low 32 set (the kernel reads only the low half,
    which could name a refused family).
    """
    why = "socket families beyond local, IP and netlink (AF_VSOCK reaches a VM host)"
    top = max(ALLOWED_SOCKET_FAMILIES)
    rules = [
        Rule("socket", errno.EAFNOSUPPORT, why, (Cmp(0, _CMP_EQ, family),))
        for family in range(top)
        if family not in ALLOWED_SOCKET_FAMILIES
    ]
    rules.append(Rule("socket", errno.EAFNOSUPPORT, why, (Cmp(0, _CMP_GE, top + 1),)))
    return rules


EPERM, ENOSYS = errno.EPERM, errno.ENOSYS

# Set-user-ID and set-group-ID mode bits, and the calls that set a file's mode, with the index
# of their mode argument. A workspace's files stay on the host (its upper dir): a set-id copy
# of a shell made there would run with the workspace's uid for any local user who reaches it.
S_ISUID, S_ISGID = 0o4000, 0o2000
MODE_SETTERS = (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2), ("creat", 1),
                ("mknod", 1), ("mknodat", 2))  # fmt: skip
# open and openat read their mode only when they create: O_CREAT, or O_TMPFILE (whose bits
# include O_DIRECTORY's; all of them must be set).
O_CREAT, O_TMPFILE = 0o100, 0o20200000
OPENERS = (("open", 1, 2), ("openat", 2, 3))  # (name, flags argument, mode argument)
# Calls newer than some libseccomp releases: the generic numbers, the same on x86_64 and
# aarch64, so that an older library does not leave them out of the filter.
NEW_SYSCALLS = {"openat2": 437, "fchmodat2": 452}


def _set_id_rules() -> list[Rule]:
    why = "set-id bits on a workspace's files"
    rules = [
        Rule(name, EPERM, why, (has_bits(arg, bit, width=32),))
        for name, arg in MODE_SETTERS
        for bit in (S_ISUID, S_ISGID)
    ]
    rules += [
        Rule(name, EPERM, why, (has_bits(flags, how, width=32), has_bits(mode, bit, width=32)))
        for name, flags, mode in OPENERS
        for how in (O_CREAT, O_TMPFILE)
        for bit in (S_ISUID, S_ISGID)
    ]
    return rules


# The table. EPERM where a program should see "not allowed"; ENOSYS where programs probe for a
# newer interface and fall back to an older one when the kernel "does not have it".
RULES: tuple[Rule, ...] = (
    # Debugging and reading other processes' memory: a compromised tool could inspect or
    # steer the agent, and ptrace is the classic way around other filters.
    *_deny(
        "ptrace process_vm_readv process_vm_writev pidfd_getfd kcmp",
        EPERM,
        "inspecting or steering other processes",
    ),
    # The kernel keyring is not namespaced: keys are shared with the host user.
    *_deny("add_key request_key keyctl", EPERM, "the kernel keyring is not namespaced"),
    # io_uring: a large, fast-moving kernel surface that bypasses this filter's checks
    # (its operations are not system calls). Programs fall back to ordinary I/O.
    *_deny(
        "io_uring_setup io_uring_enter io_uring_register",
        ENOSYS,
        "io_uring bypasses syscall filtering; callers fall back",
    ),
    # clone3 passes its flags in memory, where a filter cannot read them: glibc falls back
    # to clone, whose flags are checked below.
    *_deny("clone3", ENOSYS, "flags unreadable by the filter; glibc falls back to clone"),
    *[Rule("unshare", EPERM, "new namespaces", (has_bits(0, flag),)) for flag in NAMESPACE_FLAGS],
    # clone() cannot ask for a time namespace (that bit is part of its exit signal field).
    *[
        Rule("clone", EPERM, "new namespaces", (has_bits(0, flag),))
        for flag in NAMESPACE_FLAGS
        if flag != CLONE_NEWTIME
    ],
    *_deny("setns", EPERM, "joining other namespaces"),
    # No set-id files: refused where a mode is set. openat2 passes its mode in memory, out
    # of the filter's reach; programs fall back to openat, whose mode is checked.
    *_set_id_rules(),
    *_deny("openat2", ENOSYS, "its mode is unreadable by the filter; callers fall back"),
    # Mounting: the sandbox's mounts are fixed when it starts.
    *_deny(
        "mount umount2 pivot_root chroot move_mount open_tree fsopen fsconfig fsmount "
        "fspick mount_setattr",
        EPERM,
        "the sandbox's mounts are fixed",
    ),
    # Kernel surface reachable without privileges and common in kernel exploits.
    *_deny("bpf perf_event_open userfaultfd", EPERM, "kernel attack surface"),
    # Host-wide operations (they need capabilities the sandbox lacks: defence in depth).
    *_deny(
        "kexec_load kexec_file_load init_module finit_module delete_module reboot "
        "swapon swapoff acct quotactl quotactl_fd syslog nfsservctl uselib "
        "lookup_dcookie vhangup ioperm iopl settimeofday clock_settime "
        "open_by_handle_at _sysctl",
        EPERM,
        "host-wide operations",
    ),
    # Typing into a terminal (TIOCSTI) or a virtual console (TIOCLINUX) injects commands
    # into whoever reads it next.
    Rule("ioctl", EPERM, "terminal input injection", (equals32(1, TIOCSTI),)),
    Rule("ioctl", EPERM, "virtual console injection", (equals32(1, TIOCLINUX),)),
    *[
        Rule(
            "personality",
            EPERM,
            f"weakening memory protections ({name})",
            (has_bits(0, bit, width=32),),
        )
        for name, bit in RISKY_PERSONALITY.items()
    ],
    *_socket_family_rules(),
)

# libseccomp's architecture tokens (AUDIT_ARCH_*) of the hosts we filter for.
SUPPORTED_MACHINES = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


def _library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBSECCOMP, use_errno=True)
    except OSError as exc:
        raise HostUnsupportedError(
            f"cannot load {LIBSECCOMP} to build the workspace's seccomp filter ({exc})",
            hint=LIBSECCOMP_FIX,
        ) from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp),
    )  # fmt: skip
    lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
    return lib


def _check(result: int, what: str) -> None:
    if result < 0:
        raise HostUnsupportedError(
            f"libseccomp failed to {what}: {os.strerror(-result)}", hint=LIBSECCOMP_FIX
        )


@functools.cache
def compiled_filter() -> bytes:
    """The filter as a classic BPF program (what `bwrap --seccomp` reads), built once."""
    machine = platform.machine()
    if machine not in SUPPORTED_MACHINES:
        raise HostUnsupportedError(
            f"no seccomp filter is defined for {machine}: pyro refuses to run workspaces "
            "without one",
            hint="run pyro on x86_64 or aarch64",
        )
    lib = _library()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise HostUnsupportedError("libseccomp could not create a filter", hint=LIBSECCOMP_FIX)
    try:
        # Only the native ABI is in the filter; a call through another one (x32, i386,
        # arm32) was never checked against the table, so it ends the process.
        _check(lib.seccomp_attr_set(ctx, _FLTATR_ACT_BADARCH, _ACT_KILL_PROCESS), "set BADARCH")
        for rule in RULES:
            number = lib.seccomp_syscall_resolve_name(rule.syscall.encode())
            if number < 0:
                number = NEW_SYSCALLS.get(rule.syscall, -1)
            if number < 0:  # not a system call on this architecture
                continue
            cmps = (_ArgCmp * max(1, len(rule.when)))(
                *[_ArgCmp(c.arg, c.op, c.a, c.b) for c in rule.when]
            )
            result = lib.seccomp_rule_add_array(
                ctx, _act_errno(rule.errno), number, len(rule.when), cmps
            )
            _check(result, f"add the rule for {rule.syscall}")
        # Exported into memory and read back: no pipe to fill, no file to clean up.
        fd = os.memfd_create("pyro-seccomp-export", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "export the filter")
            program = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    return program


def filter_fd() -> int:
    """A read-only descriptor holding the compiled filter, positioned at its start.

    Close-on-exec; the caller passes it on explicitly (pass_fds) to bubblewrap.
    """
    program = compiled_filter()
    fd = os.memfd_create("pyro-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def denied_syscalls() -> dict[str, str]:
    """syscall name -> errno name, for diagnostics (`pyro doctor`) and docs."""
    out: dict[str, str] = {}
    for rule in RULES:
        out.setdefault(rule.syscall, errno.errorcode[rule.errno])
    return out

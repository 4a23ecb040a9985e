"""Idmapped mounts: the store's shared files, shown to one workspace's uid as its own.

When pyro runs as root, the store's layers and download caches belong to one uid (the
layer owner, identity.sandbox_owner) and each workspace runs as a uid of its own
(new_workspace_uid, below). Right before the keeper starts, its process (still root)
makes a private mount namespace and covers each of those directories with an idmapped
mount of itself in which the owner's files are the workspace uid's, read-only for layers.
The keeper's namespaces are copies of that one: its overlay reads the shared layers as the
workspace's own files and copies them up as the workspace uid, and nothing outside the
workspace sees the mounts (they go with its last process).

Why here and not in the keeper: an idmapped mount needs the real root (CAP_SYS_ADMIN in the
initial user namespace), and overlayfs refuses a lower layer handed over from a mount
namespace the unprivileged keeper has no rights over (measured on 6.18: "failed to clone
lowerpath"). Needs Linux 5.19+ and a store filesystem that supports idmapped mounts (ext4,
xfs, btrfs; tmpfs from 6.3); `supported()` tells, and pyro falls back to the one shared uid
where it is not.
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from pyro_loop.identity import WORKSPACE_UIDS, sandbox_owner

# The same numbers on every architecture (the "new" mount calls, Linux 5.2+).
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_AT_FDCWD, _AT_EMPTY_PATH, _AT_SYMLINK_NOFOLLOW = -100, 0x1000, 0x100
_OPEN_TREE_CLONE = 1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
_MOUNT_ATTR_IDMAP = 0x100000
_CLONE_NEWNS = 0x20000
_MS_REC, _MS_PRIVATE = 0x4000, 0x40000


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _check(result: int, what: str) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mapping_namespace(owner: int, uid: int) -> int:
    """A descriptor of a new user namespace in which uid and gid `owner` are `uid` outside:
    what an idmapped mount is made from (the owner's files become `uid`'s). A short-lived
    `unshare` holds it while its maps are written (this process may have threads, and a
    namespace of its own would need a single-threaded one)."""
    import shutil

    unshare = shutil.which("unshare")
    if unshare is None:
        raise OSError("`unshare` (util-linux) is missing")
    proc = subprocess.Popen(
        [unshare, "--user", "--", "/bin/sh", "-c", "echo; read -r _"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if proc.stdout.readline() != b"\n":
            raise OSError("cannot make a user namespace for the workspace's uid")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{proc.pid}/{name}", "w") as f:
                f.write(f"{owner} {uid} 1\n")
        return os.open(f"/proc/{proc.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        proc.stdin.close()
        proc.stdout.close()
        proc.wait()


def enter(userns: int, dirs: Sequence[tuple[str, bool]]) -> None:
    """In a new private mount namespace, cover each (path, writable) of `dirs` (relative to
    the working directory) with an idmapped mount of itself made from `userns`.

    Runs in the keeper's process between fork and exec (subprocess's `preexec_fn`): system
    calls only, no imports, no locks; errors go to the keeper's log and fail the start.
    """
    libc = _libc()
    try:
        _check(libc.unshare(_CLONE_NEWNS), "unshare")
        _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "private mounts")
        for path, writable in dirs:
            _cover(libc, path.encode(), userns, writable=writable)
    except OSError as exc:
        os.write(2, f"pyro: cannot give the workspace's uid its layers: {exc}\n".encode())
        raise


def _cover(libc: ctypes.CDLL, path: bytes, userns: int, *, writable: bool) -> None:
    fd = libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, path,
                      _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_SYMLINK_NOFOLLOW)  # fmt: skip
    _check(fd, f"open_tree {path.decode()}")
    try:
        flags = _MOUNT_ATTR_IDMAP | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV
        attr = _MountAttr(flags | (0 if writable else _MOUNT_ATTR_RDONLY), 0, 0, userns)
        _check(libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH, ctypes.byref(attr),
                            ctypes.sizeof(attr)), f"idmapping {path.decode()}")  # fmt: skip
        _check(libc.syscall(_SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD, path, _MOVE_MOUNT_F_EMPTY_PATH),
               f"mounting {path.decode()}")  # fmt: skip
    finally:
        os.close(fd)


class Covering:
    """The `preexec_fn` that gives a keeper `dirs` as `uid`'s (`enter`, in the child).

    The namespace descriptor is made now, in this process: `close` it once the keeper is
    started (in the keeper it closes at exec)."""

    def __init__(self, owner: int, uid: int, dirs: Sequence[tuple[str, bool]]) -> None:
        _libc()  # loaded here: the child only calls it
        self.dirs = tuple(dirs)
        self.userns = mapping_namespace(owner, uid)

    def __call__(self) -> None:
        enter(self.userns, self.dirs)

    def close(self) -> None:
        os.close(self.userns)


@functools.cache
def supported(store: Path, owner: int) -> str | None:
    """None if idmapped mounts of the store work here, else why not (once per process)."""
    try:
        covering = Covering(owner, owner + 1, [(".", False)])
    except OSError as exc:
        return str(exc)
    try:
        done = subprocess.run(["/bin/sh", "-c", ":"], cwd=store, preexec_fn=covering,
                              check=False, stderr=subprocess.PIPE)  # fmt: skip
    except subprocess.SubprocessError:
        return "the kernel or the store's filesystem refuses idmapped mounts"
    except OSError as exc:
        return str(exc)
    finally:
        covering.close()
    return None if done.returncode == 0 else done.stderr.decode(errors="replace").strip()


def new_workspace_uid(store: Path, taken: set[int]) -> int | None:
    """The uid a new workspace of a root pyro runs as: one of its own, not in `taken` (the
    uids of the store's other workspaces), or the layer owner's where idmapped mounts do
    not work; None for an ordinary user (the workspace is that user)."""
    owner = sandbox_owner()
    if owner is None:
        return None
    if supported(store, owner) is not None:
        return owner
    import secrets

    while True:  # 16 million uids: a clash is rare, and never kept
        uid = owner + 1 + secrets.randbelow(min(WORKSPACE_UIDS, 0xFFFFFFFE - owner - 1))
        if uid not in taken:
            return uid

"""The host side of a path, as the sync engine compares it: kind, permission bits, size,
times, inode; and content digests.

Every path is looked at through `Beneath`: a path below a symlinked directory is no path of
the repository (the link is what the workspace gets), so it reads as absent, and nothing is
ever read through such a link."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pyro_loop.digest import file_git_blob_id, file_sha256, link_digest
from pyro_loop.fs.beneath import NOT_A_PATH, Beneath
from pyro_loop.records import dataclass


@dataclass(frozen=True)
class HostState:
    kind: str  # "file" | "dir" | "symlink" | "absent" | "other"
    mode: int = 0
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0

    @classmethod
    def of(cls, st: os.stat_result) -> HostState:
        fmt = stat.S_IFMT(st.st_mode)
        kind = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink"}.get(
            fmt, "other"
        )
        return cls(kind, host_mode(st.st_mode, kind), st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                   st.st_ino)  # fmt: skip


ABSENT = HostState("absent")


def host_mode(st_mode: int, kind: str) -> int:
    # Permission bits as the workspace gets them: never set-id; the sticky bit on directories.
    return stat.S_IMODE(st_mode) & (0o1777 if kind == "dir" else 0o777)


def lstat(tree: Beneath, rel: str) -> HostState:
    """`rel`'s own state; absent when it is missing or one of its parents is a symlink."""
    try:
        return HostState.of(tree.lstat(rel))
    except OSError as exc:
        if exc.errno in NOT_A_PATH:
            return ABSENT
        raise


def open_file(tree: Beneath, rel: str) -> int:
    """A read descriptor of `rel`, no link followed (ELOOP), a FIFO never waited on."""
    return tree.open(rel, os.O_RDONLY | os.O_NONBLOCK)


def sha256_file(tree: Beneath, rel: str) -> str:
    with os.fdopen(open_file(tree, rel), "rb") as f:
        return file_sha256(f)


def git_blob_id(tree: Beneath, rel: str) -> str:
    """The id git gives `rel`'s content as a blob (what `git hash-object` prints)."""
    fd = open_file(tree, rel)
    with os.fdopen(fd, "rb") as f:
        return file_git_blob_id(f, os.fstat(fd).st_size)


def host_digest(root: Path, rel: str) -> str | None:
    """The digest the manifest would record for the host's `rel`: the sha256 of a file's
    content or of a symlink's target; None when it is missing or something else."""
    with Beneath(root) as tree:
        state = lstat(tree, rel)
        if state.kind == "file":
            return sha256_file(tree, rel)
        if state.kind == "symlink":
            return link_digest(tree.readlink(rel))
    return None


def failure_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)

"""The host side of a path, as the sync engine compares it: kind, permission bits, size,
times, inode; and content digests."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path


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


def lstat(path: str) -> HostState:
    try:
        return HostState.of(os.lstat(path))
    except (FileNotFoundError, NotADirectoryError):
        return ABSENT


def sha256_file(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def host_digest(root: Path, rel: str) -> str | None:
    """The digest the manifest would record for the host's `rel`: the sha256 of a file's
    content or of a symlink's target; None when it is missing or something else."""
    path = os.path.join(root, rel)
    state = lstat(path)
    if state.kind == "file":
        return sha256_file(path)
    if state.kind == "symlink":
        return hashlib.sha256(os.fsencode(os.readlink(path))).hexdigest()
    return None


def failure_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)

"""Host paths as one uncompressed tar stream, read and hashed as the socket takes it."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tarfile
import time
from collections.abc import Container, Generator, Iterator
from typing import Any

from pyro_loop.digest import link_digest
from pyro_loop.fs.beneath import NOT_A_PATH, Beneath
from pyro_loop.fs.hoststate import failure_reason, host_mode, open_file
from pyro_loop.fs.ustar import IDS, POSIX_MAGIC, header_block
from pyro_loop.records import dataclass
from pyro_loop.sync.hostscan import stat_data

CHUNK = 1024 * 1024
COPY_ATTEMPTS = 3  # a file still changing after this many copies is left for the next sync


class TarStream:
    """An uncompressed tar stream of host paths, produced as the socket takes it.

    Each path is looked at again when its turn comes (it may have changed since it was
    planned): a path known to be a regular file just now is opened without following a
    link and its descriptor says what it is; anything else is looked at with lstat first.
    A file is read once, hashed as it is sent; its stat is checked again after, and a file
    that changed meanwhile is queued again at the end of the stream (the later member
    replaces the earlier one in the workspace), at most COPY_ATTEMPTS times.
    """

    def __init__(self, tree: Beneath, paths: list[str], files: Container[str] = ()) -> None:
        self.tree = tree
        # `files`: paths known to be regular files just now (the plan looked, or git
        # vouches), opened at once: one lstat a file less. One that is something else by
        # now is looked at again.
        self.queue = [Push(rel, file=rel in files) for rel in paths]
        self.sent: dict[str, dict[str, Any]] = {}  # manifest records of what was sent
        self.skipped: dict[str, str] = {}
        self.late_removals: set[str] = set()
        self.bytes = 0

    def chunks(self) -> Iterator[bytes]:
        index = 0
        while index < len(self.queue):
            item = self.queue[index]
            index += 1
            yield from self._member(item)
        yield tarfile.NUL * (2 * tarfile.BLOCKSIZE)  # end of archive

    def _member(self, item: Push) -> Iterator[bytes]:
        rel = item.rel
        if item.file:
            yield from self._file(item)
            return
        st = _lstat(self.tree, rel)
        self.skipped.pop(rel, None)
        if st is None:
            self.sent.pop(rel, None)
            self.late_removals.add(rel)
            return
        self.late_removals.discard(rel)
        fmt = stat.S_IFMT(st.st_mode)
        mtime = st.st_mtime_ns // 1_000_000_000
        if fmt == stat.S_IFREG:
            yield from self._file(item)
        elif fmt == stat.S_IFDIR:
            mode = host_mode(st.st_mode, "dir")
            yield member_header(rel, tarfile.DIRTYPE, mode, 0, mtime)
            self.sent[rel] = {"kind": "dir", "mode": mode}
        elif fmt == stat.S_IFLNK:
            try:
                target = self.tree.readlink(rel)
            except OSError as exc:
                self.skipped[rel] = failure_reason(exc)
                return
            mode = host_mode(st.st_mode, "symlink")
            yield member_header(rel, tarfile.SYMTYPE, mode, 0, mtime, linkname=target)
            self.sent[rel] = {"kind": "symlink", "target": target, "sha256": link_digest(target)}
        else:
            self.skipped[rel] = "not a regular file, directory or symlink"

    def _file(self, item: Push) -> Iterator[bytes]:
        # A branch switch sends hundreds of small files: each is the fewest calls that
        # still prove what was sent is one version of the file (stat results compared as
        # they are, no objects made of them).
        rel = item.rel
        now = time.time_ns()
        try:
            fd = open_file(self.tree, rel)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError | NotADirectoryError):
                self.late_removals.add(rel)
            elif exc.errno == errno.ELOOP:  # it, or a parent, is a symlink by now
                self.queue.append(Push(rel, item.attempts + 1))
            else:
                self.skipped[rel] = failure_reason(exc)
            return
        # Plain reads of the descriptor: a file object costs more than a small file's read.
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                if item.file:  # planned as a file: what is it now?
                    self.queue.append(Push(rel, item.attempts + 1))
                else:
                    self.skipped[rel] = "not a regular file, directory or symlink"
                return
            size = before.st_size
            mode = host_mode(before.st_mode, "file")
            mtime = before.st_mtime_ns // 1_000_000_000
            yield member_header(rel, tarfile.REGTYPE, mode, size, mtime)
            digest, grew = yield from _content(fd, size)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        self.bytes += size
        moved = _lstat(self.tree, rel)
        if (
            grew
            or stat_data(after) != stat_data(before)
            or moved is None
            or moved.st_ino != before.st_ino
            or not stat.S_ISREG(moved.st_mode)
        ):
            self.sent.pop(rel, None)
            if item.attempts + 1 < COPY_ATTEMPTS:
                self.queue.append(Push(rel, item.attempts + 1))
            else:
                self.skipped[rel] = "kept changing while being copied; the next sync sends it"
            return
        # The fields of manifest.stat_fields, in its order.
        self.sent[rel] = {"kind": "file", "mode": mode, "size": size,
                          "mtime_ns": before.st_mtime_ns, "ctime_ns": before.st_ctime_ns,
                          "ino": before.st_ino, "sha256": digest.hexdigest(),
                          "recorded_ns": now}  # fmt: skip


def _content(fd: int, size: int) -> Generator[bytes, None, tuple[Any, bool]]:
    """The file's `size` bytes and their padding, read from `fd`; returns their sha256 and
    whether the file held more than `size` bytes (its last read asks for one byte more). A
    file that shrank while being read is padded with NULs (the caller sends it again)."""
    digest = hashlib.sha256()
    left = size
    padding = tarfile.NUL * (-size % tarfile.BLOCKSIZE)
    grew = size == 0 and os.read(fd, 1) != b""
    while left > 0:
        want = min(CHUNK, left)
        chunk = os.read(fd, want + 1 if want == left else want) or tarfile.NUL * want
        if len(chunk) > left:
            grew = True
            chunk = chunk[:left]
        digest.update(chunk)
        left -= len(chunk)
        if left == 0 and len(chunk) < CHUNK:  # a small file's last piece: one with its padding
            chunk += padding
            padding = b""
        yield chunk
    if padding:
        yield padding
    return digest, grew


def _lstat(tree: Beneath, rel: str) -> os.stat_result | None:
    """`rel`'s own stat, or None where hoststate.lstat says absent."""
    try:
        return tree.lstat(rel)
    except OSError as exc:
        if exc.errno in NOT_A_PATH:
            return None
        raise


def tar_header(info: tarfile.TarInfo) -> bytes:
    """The member's header block(s), as `info.tobuf` writes them in pax format."""
    if info.uid == info.gid == 0 and not info.uname and not info.gname:
        return member_header(info.name, info.type, info.mode, info.size, int(info.mtime),
                             linkname=info.linkname)  # fmt: skip
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def member_header(
    name: str, kind: bytes, mode: int, size: int, mtime: int, *, linkname: str = ""
) -> bytes:
    """The header block(s) tarfile's pax format writes for a member owned by uid and gid 0
    with no user or group names (what the stream sends). The common case (a short ASCII
    name, no link or a short one, numbers that fit) is a lone ustar block, built here in a
    few microseconds rather than tarfile's few tens: a branch switch sends a header per
    file."""
    if kind == tarfile.DIRTYPE and not name.endswith("/"):
        name += "/"
    if (
        len(name) <= 100
        and len(linkname) <= 100
        and name.isascii()
        and linkname.isascii()
        and 0 <= size < _OCTAL_11
        and 0 <= mtime < _OCTAL_11
    ):
        numbers = b"%07o\0%s%011o\0%011o\0" % (mode & 0o7777, IDS, size, mtime)
        return header_block(name.encode("ascii"), numbers, kind, linkname.encode("ascii"),
                            POSIX_MAGIC)  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime, info.linkname = kind, mode, size, mtime, linkname
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


_OCTAL_11 = 8**11  # what an 11-digit octal field holds (size and mtime)


@dataclass
class Push:
    rel: str
    attempts: int = 0
    file: bool = False  # the plan found a regular file there

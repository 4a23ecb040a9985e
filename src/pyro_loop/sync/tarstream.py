"""Host paths as one uncompressed tar stream, read and hashed as the socket takes it."""

from __future__ import annotations

import errno
import hashlib
import os
import tarfile
import time
from collections.abc import Iterator
from typing import Any

from pyro_loop.fs.beneath import Beneath
from pyro_loop.fs.hoststate import HostState, failure_reason, lstat, open_file
from pyro_loop.records import dataclass
from pyro_loop.sync.manifest import stat_fields

CHUNK = 1024 * 1024
COPY_ATTEMPTS = 3  # a file still changing after this many copies is left for the next sync


class TarStream:
    """An uncompressed tar stream of host paths, produced as the socket takes it.

    Each path is looked at again when its turn comes (it may have changed since it was
    planned). A file is read once, hashed as it is sent; its stat is checked again after,
    and a file that changed meanwhile is queued again at the end of the stream (the later
    member replaces the earlier one in the workspace), at most COPY_ATTEMPTS times.
    """

    def __init__(self, tree: Beneath, paths: list[str]) -> None:
        self.tree = tree
        self.queue = [Push(rel) for rel in paths]
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
        state = lstat(self.tree, rel)
        self.skipped.pop(rel, None)
        if state.kind == "absent":
            self.sent.pop(rel, None)
            self.late_removals.add(rel)
            return
        self.late_removals.discard(rel)
        info = tarfile.TarInfo(rel)
        info.mtime = state.mtime_ns // 1_000_000_000
        info.mode = state.mode
        now = time.time_ns()
        if state.kind == "dir":
            info.type = tarfile.DIRTYPE
            yield tar_header(info)
            self.sent[rel] = {"kind": "dir", "mode": state.mode}
        elif state.kind == "symlink":
            try:
                target = self.tree.readlink(rel)
            except OSError as exc:
                self.skipped[rel] = failure_reason(exc)
                return
            info.type = tarfile.SYMTYPE
            info.linkname = target
            yield tar_header(info)
            digest = hashlib.sha256(os.fsencode(target)).hexdigest()
            self.sent[rel] = {"kind": "symlink", "target": target, "sha256": digest}
        elif state.kind == "file":
            yield from self._file(item, info, now)
        else:
            self.skipped[rel] = "not a regular file, directory or symlink"

    def _file(self, item: Push, info: tarfile.TarInfo, now: int) -> Iterator[bytes]:
        rel = item.rel
        try:
            fd = open_file(self.tree, rel)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError | NotADirectoryError):
                self.late_removals.add(rel)
            elif exc.errno == errno.ELOOP:  # it, or a parent, became a symlink since
                self.queue.append(Push(rel, item.attempts + 1))
            else:
                self.skipped[rel] = failure_reason(exc)
            return
        # Plain reads of the descriptor: a file object costs more than a small file's read.
        try:
            before = HostState.of(os.fstat(fd))
            if before.kind != "file":
                self.skipped[rel] = "not a regular file, directory or symlink"
                return
            info.size = before.size
            info.mode = before.mode
            yield tar_header(info)
            digest = hashlib.sha256()
            left = before.size
            while left > 0:
                chunk = os.read(fd, min(CHUNK, left))
                if not chunk:  # shrank while being read: pad, and send it again below
                    chunk = tarfile.NUL * min(CHUNK, left)
                digest.update(chunk)
                left -= len(chunk)
                yield chunk
            padding = -before.size % tarfile.BLOCKSIZE
            if padding:
                yield tarfile.NUL * padding
            after = HostState.of(os.fstat(fd))
            grew = os.read(fd, 1) != b""
        finally:
            os.close(fd)
        self.bytes += before.size
        moved = lstat(self.tree, rel)
        if after != before or grew or moved.ino != before.ino or moved.kind != "file":
            self.sent.pop(rel, None)
            if item.attempts + 1 < COPY_ATTEMPTS:
                self.queue.append(Push(rel, item.attempts + 1))
            else:
                self.skipped[rel] = "kept changing while being copied; the next sync sends it"
            return
        self.sent[rel] = {"kind": "file", **stat_fields(before), "sha256": digest.hexdigest(),
                          "recorded_ns": now}  # fmt: skip


def tar_header(info: tarfile.TarInfo) -> bytes:
    """The member's header block(s), as `info.tobuf` writes them in pax format. The common
    case (a short ASCII name, no link or a short one, numbers that fit) is a lone ustar
    block, built here in a few microseconds rather than tarfile's few tens: a branch switch
    sends a header per file."""
    name = (
        info.name + "/"
        if info.type == tarfile.DIRTYPE and not info.name.endswith("/")
        else info.name
    )
    if (
        len(name) <= 100
        and len(info.linkname) <= 100
        and name.isascii()
        and info.linkname.isascii()
        and 0 <= info.size < _OCTAL_11
        and 0 <= info.mtime < _OCTAL_11
        and info.uid == info.gid == 0
        and not info.uname
        and not info.gname
    ):
        return _ustar_block(name, info)
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


_OCTAL_11 = 8**11  # what an 11-digit octal field holds (size and mtime)


def _ustar_block(name: str, info: tarfile.TarInfo) -> bytes:
    block = bytearray(tarfile.BLOCKSIZE)
    block[0 : len(name)] = name.encode("ascii")
    block[100:108] = b"%07o\0" % (info.mode & 0o7777)
    block[108:116] = block[116:124] = b"0000000\0"  # uid, gid
    block[124:136] = b"%011o\0" % info.size
    block[136:148] = b"%011o\0" % int(info.mtime)
    block[148:156] = b"        "  # the checksum counts its own field as spaces
    block[156:157] = info.type
    block[157 : 157 + len(info.linkname)] = info.linkname.encode("ascii")
    block[257:265] = tarfile.POSIX_MAGIC  # uname, gname, devmajor, devminor: left empty
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block)


@dataclass
class Push:
    rel: str
    attempts: int = 0

"""Writing a pulled layer's vetted members to disk, on a few threads, in batches.

A layer is thousands of small entries, each a handful of system calls (create, write,
chmod, utime, chown, close), which release the GIL: a few threads write them while the
reading thread parses the next headers. Every entry goes to them, directories and links
too. A system call on the reading thread made it wait for the GIL each time it came back
from the kernel, while the writers held it: its 377 mkdirs of a virtualenv took 0.1-0.2 s
(0.3-0.5 ms each, on tmpfs), a third of its time, and the reading thread is the one every
other waits for. The entries are handed over 64 at a time (a task each cost the reading
thread as much as parsing the entry's header).

Order: an entry waits until its directory is made (an Event per directory, set once made;
the batches are taken in order, so an entry only ever waits for an earlier batch); a hard
link waits for everything before it; directories get their modes and times last, once
filled. A failure wakes every waiting thread, which then gives up.

Each entry's treehash record is kept as it is written, so the tree's digest comes from what
was written without reading the tree back.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pyro_loop.errors import PyroError
from pyro_loop.remote.archive import OPAQUE_MARKER, WHITEOUT_PREFIX, Unpacked
from pyro_loop.store import treehash
from pyro_loop.store.overlay import OPAQUE_XATTR

CHUNK = 1 << 20  # a body larger than this is handed over as pieces
_WRITERS = 4
_BATCH = 64  # entries handed to a writing thread at a time
_PENDING_BYTES = 64 << 20  # file contents read ahead of the writing threads, at most
# The free space is looked at after about this much is unpacked: a quarter of what is kept
# free (so a check always comes before the room kept is used up), 4 MB at least.
_CHECK_MIN = 4 << 20
_ENTRY_COST = 4096  # what an entry takes on disk at least, for that count (a block)
_INODES_KEPT = 1000  # files left free on the store's disk, at least
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

Op = tuple[Any, ...]  # (method, its arguments...)
Body = bytes | memoryview  # a file's contents, or a piece of them


class _GaveUp(Exception):
    """A writing thread stopped because another one failed."""


def refuse(why: str) -> PyroError:
    return PyroError(f"refusing the pulled layer: {why}")


def no_room(why: str) -> PyroError:
    return PyroError(
        f"the pulled layer does not fit: {why}",
        hint="free some space there, or move PYRO_HOME to a larger disk",
    )


class LayerWriter:
    """Writes vetted members below `dest` (an empty directory), given to `owner` when one is
    named; use as a context manager, which waits for the writing threads however it is left.
    Paths are strings, not Path objects: a layer is thousands of entries."""

    def __init__(self, dest: Path, *, keep_free: int, owner: int | None) -> None:
        self.dest = str(dest)
        self.keep_free = keep_free
        self.owner = owner
        self.records: dict[str, bytes] = {}
        self.dirs: dict[str, tuple[int, int]] = {}  # rel: (mode, mtime), set once filled
        self.opaque: set[str] = set()
        self.files: dict[str, tuple[int, str, int]] = {}  # rel: (mode, sha256, size)
        made = threading.Event()
        made.set()
        self.made: dict[str, threading.Event] = {"": made}  # directories, set once made
        self.failed = False
        self.pool = ThreadPoolExecutor(max_workers=_WRITERS, thread_name_prefix="pyro-unpack")
        self.batch: list[Op] = []  # not handed over yet
        self.batch_bytes = 0
        self.pending: deque[tuple[Future[None], int]] = deque()  # with their bytes
        self.pending_bytes = 0
        self.linked = 0  # bytes of hard links' files
        self.unchecked = 0  # bytes and entries since the free space was last looked at
        # Files whose mode survives this are created with it (the rest are chmodded): read
        # once, as os.umask can only be read by changing it, for every thread at once.
        self.masked = _masked_bits(self.dest)
        if owner is not None:
            os.chown(self.dest, owner, owner)

    def __enter__(self) -> LayerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        # On a refusal too: no thread may still write into a tree the caller is removing.
        self._fail()
        self.pool.shutdown(wait=True, cancel_futures=True)

    # -- the reading thread's side -----------------------------------------------------------

    def directory(self, rel: str, mode: int, mtime: int) -> None:
        self._check_space(0)
        self.made[rel] = threading.Event()
        self.dirs[rel] = (mode, mtime)
        self._add((self._mkdir, rel))

    def symlink(self, rel: str, target: str) -> None:
        self._check_space(0)
        self._add((self._symlink, rel, target))

    def file(self, rel: str, mode: int, mtime: int, size: int, body: Body | Iterable[Body]) -> None:
        """A regular file of `size` bytes, whole or in pieces as they arrive: held until a
        writing thread takes it unless it is too large, which is written here."""
        self._check_space(size)
        if isinstance(body, (bytes, memoryview)):
            self._add((self._file, rel, mode, mtime, body), size)
        elif size <= _PENDING_BYTES:
            self._add((self._file, rel, mode, mtime, list(body)), size)
        else:
            self.drain()
            self._file(rel, mode, mtime, body)

    def hard_link(self, rel: str, target: str) -> None:
        self._check_space(0)
        self.drain()  # the target written (and known) first; pyro's own layers have none
        if target not in self.files:
            raise refuse(f"hard link {rel!r} to {target!r}, not a file")
        try:
            os.link(f"{self.dest}/{target}", f"{self.dest}/{rel}", follow_symlinks=False)
        except FileExistsError:
            raise refuse(f"{rel!r} is both present and whited out") from None
        mode, sha256, size = self.files[target]
        self.linked += size  # counted per name, as the store counts a tree
        self.records[rel] = treehash.file_record(rel, mode, sha256)

    def marker(self, rel: str) -> None:
        """An OCI whiteout marker `.wh.<name>`, or a directory's opaque marker."""
        self._check_space(0)
        base = rel.rpartition("/")[2]
        if base != OPAQUE_MARKER:
            hidden = base[len(WHITEOUT_PREFIX) :]
            if not hidden or "/" in hidden:
                raise refuse(f"a whiteout marker {base!r} names nothing")
        self._add((self._marker, rel))

    def finish(self) -> Unpacked:
        """Directories' modes and times last (their contents changed them), then the digest."""
        self.drain()
        for rel in sorted(self.dirs, key=lambda p: p.count("/"), reverse=True):
            mode, mtime = self.dirs[rel]
            path = f"{self.dest}/{rel}"
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))
            self.records[rel] = treehash.dir_record(rel, stat.S_IMODE(mode), rel in self.opaque)
        size = self.linked + sum(file[2] for file in self.files.values())
        return Unpacked(treehash.digest_of_records(self.records), size)

    def drain(self, keep: int = 0) -> None:
        """Wait for the batches handed over until at most `keep` bytes of file contents
        are still being written (all of them by default); the first failure is raised."""
        self._hand_over()
        while self.pending and (keep == 0 or self.pending_bytes > keep):
            future, size = self.pending.popleft()
            self.pending_bytes -= size
            with contextlib.suppress(_GaveUp):  # the failure it gave up for is raised by its own
                future.result()
        if keep == 0 and self.failed:  # every batch waited for: the failure was raised
            raise refuse("a writing thread gave up")

    def _add(self, op: Op, size: int = 0) -> None:
        self.batch.append(op)
        self.batch_bytes += size
        if len(self.batch) >= _BATCH:
            self._hand_over()
            if self.failed:  # a writing thread's failure: raised now, not after the archive
                self.drain()
            elif self.pending_bytes > _PENDING_BYTES:
                self.drain(keep=_PENDING_BYTES // 2)

    def _hand_over(self) -> None:
        if self.batch:
            future = self.pool.submit(self._run, self.batch)
            self.pending.append((future, self.batch_bytes))
            self.pending_bytes += self.batch_bytes
            self.batch, self.batch_bytes = [], 0

    def _check_space(self, size: int) -> None:
        """Every so often, and before a large file, whether the disk still has room for the
        next `size` bytes: a layer of many small files takes more of it than its tar does
        (a block per file), which no size check before the download can know."""
        self.unchecked += size + _ENTRY_COST
        if self.unchecked < max(_CHECK_MIN, self.keep_free // 4):
            return
        self.unchecked = 0
        # The writing threads first: the disk shows only what they have written, and the
        # files still queued would take the room the next check counts on.
        self.drain()
        fs = os.statvfs(self.dest)
        if fs.f_bavail * fs.f_frsize - size < self.keep_free or (
            fs.f_files and fs.f_favail < _INODES_KEPT
        ):
            from pyro_loop import units

            raise no_room(
                f"unpacking it would leave less than {units.size(self.keep_free)} or "
                f"{_INODES_KEPT} files free on the store's disk"
            )

    # -- the writing threads' side -----------------------------------------------------------

    def _run(self, batch: list[Op]) -> None:
        try:
            for op in batch:
                if self.failed:
                    raise _GaveUp
                op[0](*op[1:])
        except _GaveUp:
            raise
        except FileExistsError:
            self._fail()
            raise refuse(f"{op[1]!r} is both present and whited out") from None
        except BaseException:
            self._fail()
            raise

    def _fail(self) -> None:
        """Wake every thread waiting for a directory: it gives up."""
        self.failed = True
        for made in list(self.made.values()):
            made.set()

    def _parent_made(self, rel: str) -> str:
        """The path of `rel`, once its directory is made."""
        made = self.made[rel.rpartition("/")[0]]
        if not made.is_set():
            made.wait()
            if self.failed:
                raise _GaveUp
        return f"{self.dest}/{rel}"

    def _own(self, path: str) -> None:
        if self.owner is not None:
            os.chown(path, self.owner, self.owner, follow_symlinks=False)

    def _mkdir(self, rel: str) -> None:
        path = self._parent_made(rel)
        os.mkdir(path, 0o700)
        self._own(path)
        self.made[rel].set()

    def _symlink(self, rel: str, target: str) -> None:
        path = self._parent_made(rel)
        os.symlink(target, path)
        self._own(path)
        self.records[rel] = treehash.link_record(rel, target)

    def _file(self, rel: str, mode: int, mtime: int, body: Body | Iterable[Body]) -> None:
        exact = not mode & self.masked  # created with its mode: no chmod
        fd = os.open(self._parent_made(rel), _CREATE, mode if exact else 0o600)
        try:
            if isinstance(body, (bytes, memoryview)):
                sha256 = hashlib.sha256(body).hexdigest()
                _write_all(fd, body)
                size = len(body)
            else:
                digest, size = hashlib.sha256(), 0
                for piece in body:
                    digest.update(piece)
                    _write_all(fd, piece)
                    size += len(piece)
                sha256 = digest.hexdigest()
            if not exact:
                os.fchmod(fd, mode)  # exactly the vetted mode, whatever the umask
            os.utime(fd, (mtime, mtime))
            if self.owner is not None:
                os.fchown(fd, self.owner, self.owner)
        finally:
            os.close(fd)
        self.files[rel] = (mode, sha256, size)
        self.records[rel] = treehash.file_record(rel, mode, sha256)

    def _marker(self, rel: str) -> None:
        path = self._parent_made(rel)
        parent, _, base = rel.rpartition("/")
        if base == OPAQUE_MARKER:
            os.setxattr(path.rpartition("/")[0], OPAQUE_XATTR, b"y")
            self.opaque.add(parent)
            return
        name = base[len(WHITEOUT_PREFIX) :]
        hidden = f"{parent}/{name}" if parent else name
        where = f"{self.dest}/{hidden}"
        os.mknod(where, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        self._own(where)
        self.records[hidden] = treehash.whiteout_record(hidden)


def _write_all(fd: int, data: Body) -> None:
    written = os.write(fd, data) if data else 0
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


def _masked_bits(dest: str) -> int:
    """The permission bits a file created in `dest` may lose: the umask's, or all of them
    when it is unknown or `dest` has a default ACL (which replaces the umask)."""
    try:
        os.getxattr(dest, "system.posix_acl_default")
    except OSError:
        pass  # none (ENODATA), or no ACLs on this file system
    else:
        return 0o7777
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o7777

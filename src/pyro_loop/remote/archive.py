"""A layer tree as one compressed tar (a registry blob), and back.

Overlay metadata travels the way OCI image layers carry it: a whiteout (a character device
0:0 in the tree) is an empty file `.wh.<name>`, an opaque directory holds an empty file
`.wh..wh..opq`. So the archive has only directories, regular files and symlinks, and is
unpacked with the rules of every untrusted archive (safetar); the whiteouts are made again
after that. Timestamps are kept: Python's bytecode caches compare them with the sources'.

zstd rather than gzip: it decompresses several times faster at a similar ratio, and pulling
is the path a developer waits on.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pyro_loop.errors import PyroError
from pyro_loop.fs.util import DISK_FULL_ERRNOS, check_tree_depth
from pyro_loop.records import dataclass
from pyro_loop.store.overlay import OPAQUE_XATTR, is_opaque_dir, is_whiteout

if TYPE_CHECKING:
    import tarfile
    from concurrent.futures import Future

MEDIA_TYPE = "application/vnd.pyro.layer.v1.tar+zstd"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_LEVEL = 3  # zstd's default: about gzip's ratio at many times its speed
_CHUNK = 1 << 20
_WRITERS = 4
_BATCH = 64  # small files handed to a writing thread at a time: a task each costs as much again
_PENDING_BYTES = 64 << 20  # file contents read ahead of the writing threads, at most
# The free space is looked at after about this much is unpacked: a quarter of what is kept
# free (so a check always comes before the room kept is used up), 4 MB at least.
_CHECK_MIN = 4 << 20
_ENTRY_COST = 4096  # what an entry takes on disk at least, for that count (a block)
_INODES_KEPT = 1000  # files left free on the store's disk, at least


def pack(tree: Path, out: IO[bytes]) -> int:
    """Write `tree` to `out` as a zstd-compressed tar, entries in a stable order; returns
    the length of the tar (uncompressed), which a pull holds the blob to."""
    import tarfile

    import zstandard

    compressor = zstandard.ZstdCompressor(level=_LEVEL, threads=-1)
    with compressor.stream_writer(out, closefd=False) as stream:
        counted = _Counted(stream)
        with tarfile.open(fileobj=counted, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _add_dir(tar, tree, "")
    return counted.count


class _Counted(io.RawIOBase):
    """A writable stream that counts what goes through it."""

    def __init__(self, out: IO[bytes]) -> None:
        super().__init__()
        self.out, self.count = out, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.count += len(data)
        return self.out.write(data)


def _add_dir(tar: tarfile.TarFile, path: Path, rel: str) -> None:
    import tarfile

    with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: e.name)
    if rel and is_opaque_dir(str(path)):
        tar.addfile(_info(f"{rel}/{OPAQUE_MARKER}", tarfile.REGTYPE, 0o644, 0.0))
    for entry in entries:
        name = f"{rel}/{entry.name}" if rel else entry.name
        if entry.name.startswith(WHITEOUT_PREFIX):
            raise PyroError(
                f"cannot share the layer: {name!r} is named like an OCI whiteout marker"
            )
        st = entry.stat(follow_symlinks=False)
        perms = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            check_tree_depth(name)
            tar.addfile(_info(name, tarfile.DIRTYPE, perms, st.st_mtime))
            _add_dir(tar, Path(entry.path), name)
        elif stat.S_ISLNK(st.st_mode):
            info = _info(name, tarfile.SYMTYPE, 0o777, st.st_mtime)
            info.linkname = os.readlink(entry.path)
            tar.addfile(info)
        elif stat.S_ISREG(st.st_mode):
            info = _info(name, tarfile.REGTYPE, perms, st.st_mtime)
            info.size = st.st_size
            with open(entry.path, "rb") as f:
                tar.addfile(info, f)
        elif is_whiteout(st):
            hidden = f"{rel}/{WHITEOUT_PREFIX}{entry.name}" if rel else WHITEOUT_PREFIX + entry.name
            tar.addfile(_info(hidden, tarfile.REGTYPE, 0o644, 0.0))
        # Sockets, FIFOs and other devices never belong in a layer: left out.


def _info(name: str, kind: bytes, mode: int, mtime: float) -> tarfile.TarInfo:
    import tarfile

    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, int(mtime)
    return info


@dataclass(frozen=True)
class Unpacked:
    digest: str  # the tree's treehash, from what was written
    size: int  # bytes in its regular files, as the store records a layer's size


def unpack(
    blob: IO[bytes],
    dest: Path,
    *,
    tar_size: int,
    keep_free: int = 0,
    owner: int | None = None,
    on_chunk: Callable[[], None] | None = None,
) -> Unpacked:
    """Unpack a blob written by `pack` into the empty directory `dest`.

    The decompressed stream must be exactly `tar_size` bytes (what the manifest records):
    it is cut off as soon as it passes that. Unpacking stops too when the file system of
    `dest` has less than `keep_free` bytes (or a few inodes) left. Every member is vetted by
    safetar's rules before it is written, and written here with O_EXCL and O_NOFOLLOW below
    directories this call made, given to `owner` when one is named. `on_chunk` runs after
    each chunk of the blob (for progress). Raises PyroError naming what is wrong with a
    damaged or hostile archive; `dest` may then hold part of it (callers unpack into the
    store's staging, which is removed on failure).
    """
    import tarfile

    import zstandard

    from pyro_loop.fs import safetar
    from pyro_loop.remote.inflate import CHUNK, Inflated

    # Absolute links stay: a virtualenv's bin/python -> /usr/bin/python3 is read inside the
    # sandbox. Our archives list every directory before what it holds.
    rules = safetar.Rules("the pulled layer", absolute_links=True, implicit_parents=False)
    try:
        with (
            _Writer(dest, keep_free=keep_free, owner=owner) as writer,
            Inflated(blob, expected=tar_size, on_chunk=on_chunk) as inflated,
            io.BufferedReader(inflated, buffer_size=CHUNK) as stream,
            tarfile.open(fileobj=stream, mode="r|") as tar,
        ):
            for member in safetar.vetted(tar, rules):
                writer.write(tar, member)
            unpacked = writer.finish()
            inflated.finish()  # the padding after the archive: the length is checked
            return unpacked
    except (zstandard.ZstdError, EOFError) as exc:
        raise _refuse(f"not a whole zstd stream ({exc})") from None
    except tarfile.TarError as exc:
        raise _refuse(f"not a whole tar archive ({exc})") from None
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:  # filled by something else meanwhile
            raise _no_room("the store's disk filled up while unpacking it") from None
        raise


def _no_room(why: str) -> PyroError:
    return PyroError(
        f"the pulled layer does not fit: {why}",
        hint="free some space there, or move PYRO_HOME to a larger disk",
    )


class _Writer:
    """Writes vetted members, turns `.wh.` markers back into overlay metadata, and keeps
    each entry's treehash record as it goes.

    Small files are written by a few threads, in batches, while the next members are read:
    creating a file is kernel time (the GIL is released), and a layer is thousands of small
    files; a task per file cost the reading thread as much as parsing the file's header.
    Directories, links and whiteouts are made in order, before anything inside them.
    Paths are strings, not Path objects: a layer is thousands of entries.
    """

    def __init__(self, dest: Path, *, keep_free: int, owner: int | None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.dest = str(dest)
        self.keep_free = keep_free
        self.owner = owner
        self.records: dict[str, bytes] = {}
        self.dirs: dict[str, tuple[int, int]] = {}  # rel: (mode, mtime), set once filled
        self.opaque: set[str] = set()
        self.files: dict[str, tuple[int, str, int]] = {}  # rel: (mode, sha256, size)
        self.pool = ThreadPoolExecutor(max_workers=_WRITERS, thread_name_prefix="pyro-unpack")
        self.pending: dict[str, Future[None]] = {}
        self.pending_bytes = 0
        self.batch: list[tuple[str, str, bytes, int, int]] = []  # not handed over yet
        self.batched: set[str] = set()
        self.linked = 0  # bytes of hard links' files
        self.unchecked = 0  # bytes and entries since the free space was last looked at
        if owner is not None:
            os.chown(self.dest, owner, owner)

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        # On a refusal too: no thread may still write into a tree the caller is removing.
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _drain(self) -> None:
        """Wait for every file being written; the first failure is raised."""
        self._hand_over()
        pending, self.pending, self.pending_bytes = self.pending, {}, 0
        for rel, future in pending.items():
            try:
                future.result()
            except FileExistsError:
                raise _refuse(f"{rel!r} is both present and whited out") from None

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
        self._drain()
        fs = os.statvfs(self.dest)
        if fs.f_bavail * fs.f_frsize - size < self.keep_free or (
            fs.f_files and fs.f_favail < _INODES_KEPT
        ):
            from pyro_loop import units

            raise _no_room(
                f"unpacking it would leave less than {units.size(self.keep_free)} or "
                f"{_INODES_KEPT} files free on the store's disk"
            )

    def write(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        import tarfile

        from pyro_loop.store import treehash

        rel = member.name
        parent, _, base = rel.rpartition("/")
        path = f"{self.dest}/{rel}"
        self._check_space(member.size if member.isreg() else 0)
        try:
            if base.startswith(WHITEOUT_PREFIX):
                if not member.isreg():
                    raise _refuse(f"{rel!r} is named like a whiteout marker but is not one")
                self._marker(parent, base)
            elif member.isdir():
                os.mkdir(path, 0o700)
                self._own(path)
                self.dirs[rel] = (member.mode, int(member.mtime))
            elif member.issym():
                os.symlink(member.linkname, path)
                self._own(path)
                self.records[rel] = treehash.link_record(rel, member.linkname)
            elif member.islnk():
                if member.linkname in self.pending or member.linkname in self.batched:
                    self._drain()
                if member.linkname not in self.files:
                    raise _refuse(f"hard link {rel!r} to {member.linkname!r}, not a file")
                os.link(f"{self.dest}/{member.linkname}", path, follow_symlinks=False)
                mode, sha256, size = self.files[member.linkname]
                self.linked += size  # counted per name, as the store counts a tree
                self.records[rel] = treehash.file_record(rel, mode, sha256)
            elif member.type in tarfile.REGULAR_TYPES:
                self._file(tar, member, path)
        except FileExistsError:
            raise _refuse(f"{rel!r} is both present and whited out") from None

    def _own(self, path: str) -> None:
        if self.owner is not None:
            os.chown(path, self.owner, self.owner, follow_symlinks=False)

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
        source = tar.extractfile(member)
        assert source is not None  # a regular member always has a body
        if member.size > _CHUNK:  # large: streamed here, never held in memory whole
            self._store(member.name, path, source, member.mode, int(member.mtime))
            return
        data = source.read()
        self.batch.append((member.name, path, data, member.mode, int(member.mtime)))
        self.batched.add(member.name)
        self.pending_bytes += len(data)
        if len(self.batch) >= _BATCH:
            self._hand_over()
        if self.pending_bytes > _PENDING_BYTES:
            self._drain()

    def _hand_over(self) -> None:
        """The batch of small files to a writing thread."""
        if not self.batch:
            return
        batch, self.batch, self.batched = self.batch, [], set()
        future = self.pool.submit(self._store_batch, batch)
        for item in batch:
            self.pending[item[0]] = future

    def _store_batch(self, batch: list[tuple[str, str, bytes, int, int]]) -> None:
        for rel, path, data, mode, mtime in batch:
            try:
                self._store(rel, path, data, mode, mtime)
            except FileExistsError:
                raise _refuse(f"{rel!r} is both present and whited out") from None

    def _store(self, rel: str, path: str, body: bytes | IO[bytes], mode: int, mtime: int) -> None:
        import hashlib

        from pyro_loop.store import treehash

        digest = hashlib.sha256()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        size = 0
        try:
            chunks = [body] if isinstance(body, bytes) else iter(lambda: body.read(_CHUNK), b"")
            for chunk in chunks:
                digest.update(chunk)
                _write_all(fd, chunk)
                size += len(chunk)
            os.fchmod(fd, mode)  # exactly the vetted mode, whatever the umask
            os.utime(fd, (mtime, mtime))
            if self.owner is not None:
                os.fchown(fd, self.owner, self.owner)
        finally:
            os.close(fd)
        self.files[rel] = (mode, digest.hexdigest(), size)
        self.records[rel] = treehash.file_record(rel, mode, self.files[rel][1])

    def _marker(self, parent: str, base: str) -> None:
        from pyro_loop.store import treehash

        where = f"{self.dest}/{parent}" if parent else self.dest
        if base == OPAQUE_MARKER:
            os.setxattr(where, OPAQUE_XATTR, b"y")
            self.opaque.add(parent)
            return
        hidden = base[len(WHITEOUT_PREFIX) :]
        if not hidden or "/" in hidden:
            raise _refuse(f"a whiteout marker {base!r} names nothing")
        os.mknod(f"{where}/{hidden}", stat.S_IFCHR | 0o600, os.makedev(0, 0))
        self._own(f"{where}/{hidden}")
        rel = f"{parent}/{hidden}" if parent else hidden
        self.records[rel] = treehash.whiteout_record(rel)

    def finish(self) -> Unpacked:
        """Directories' modes and times last (their contents changed them), then the digest."""
        from pyro_loop.store import treehash

        self._drain()
        for rel in sorted(self.dirs, key=lambda p: p.count("/"), reverse=True):
            mode, mtime = self.dirs[rel]
            path = f"{self.dest}/{rel}"
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))
            self.records[rel] = treehash.dir_record(rel, stat.S_IMODE(mode), rel in self.opaque)
        size = self.linked + sum(file[2] for file in self.files.values())
        return Unpacked(treehash.digest_of_records(self.records), size)


def _refuse(why: str) -> PyroError:
    return PyroError(f"refusing the pulled layer: {why}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]

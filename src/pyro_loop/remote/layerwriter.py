"""Writing a pulled layer's vetted members to disk, through GNU tar (fs/gnutar.py).

The reading thread parses, vets (by the caller) and hashes each member and hands tar only
headers built from the vetted fields, with the bodies: tar makes the files on the other core
while Python reads on. OCI whiteout markers never reach tar (it would make a device for one):
they are made here once tar has finished, as character devices 0:0, and an opaque marker sets
its directory's overlay attribute.

Each entry's treehash record is kept as it goes by, so the tree's digest comes from what was
written without reading the tree back; or, given the digest the layer's publisher recorded
(its manifest's annotation, the blob's digest checked), no body is hashed at all: hashing
each file was a sixth of a pull's CPU, and the digest serves `verify`, which then checks
the tree against what its publisher had.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from pyro_loop.errors import PyroError
from pyro_loop.fs import gnutar
from pyro_loop.remote.archive import OPAQUE_MARKER, WHITEOUT_PREFIX, Unpacked
from pyro_loop.store import treehash
from pyro_loop.store.overlay import OPAQUE_XATTR

CHUNK = 1 << 20  # a body larger than this is handed over as pieces
# The free space is looked at after about this much is unpacked: a quarter of what is kept
# free (so a check always comes before the room kept is used up), 4 MB at least.
_CHECK_MIN = 4 << 20
_ENTRY_COST = 4096  # what an entry takes on disk at least, for that count (a block)
_INODES_KEPT = 1000  # files left free on the store's disk, at least
_DEFAULT_ACL = "system.posix_acl_default"

Body = bytes | memoryview  # a file's contents, or a piece of them


def refuse(why: str) -> PyroError:
    return PyroError(f"refusing the pulled layer: {why}")


def no_room(why: str) -> PyroError:
    return PyroError(
        f"the pulled layer does not fit: {why}",
        hint="free some space there, or move PYRO_HOME to a larger disk",
    )


class LayerWriter:
    """Writes vetted members below `dest` (an empty directory), given to `owner` when one is
    named; use as a context manager, which stops tar however it is left."""

    def __init__(
        self, dest: Path, *, keep_free: int, owner: int | None, tree_digest: str | None = None
    ) -> None:
        self.dest = str(dest)
        self.keep_free = keep_free
        self.tree_digest = tree_digest  # the publisher's, if known: then no records are kept
        self.records: dict[str, bytes] = {}
        self.dirs: dict[str, tuple[int, int]] = {}  # rel: (mode, mtime)
        self.files: dict[str, tuple[int, str, int]] = {}  # rel: (mode, sha256, size)
        self.names: set[str] = set()  # every entry tar writes
        self.whiteouts: list[str] = []  # the names they hide
        self.opaque: list[str] = []  # directories with an opaque marker
        self.owner = owner
        self.size = 0  # bytes of regular files, counted per name as the store counts a tree
        self.unchecked = 0  # bytes and entries since the free space was last looked at
        if owner is not None:
            os.chown(self.dest, owner, owner)
        # A default ACL would stand in for the umask of what tar creates: the tree's modes
        # are the archive's (the root's own ACL is left alone). Most have none (ENODATA), or
        # no ACLs on their file system.
        with contextlib.suppress(OSError):
            os.removexattr(self.dest, _DEFAULT_ACL)
        self.tar = gnutar.Untar(self.dest, owner=owner)

    def __enter__(self) -> LayerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.tar.__exit__()

    def directory(self, rel: str, mode: int, mtime: int) -> None:
        self._entry(rel, 0)
        self.dirs[rel] = (mode, mtime)
        self.tar.add(rel, gnutar.DIRECTORY, mode=mode, mtime=mtime)

    def symlink(self, rel: str, target: str, mtime: int) -> None:
        if not target:
            raise refuse(f"link {rel!r} points nowhere")
        self._entry(rel, 0)
        self.records[rel] = treehash.link_record(rel, target)
        self.tar.add(rel, gnutar.SYMLINK, mode=0o777, mtime=mtime, linkname=target)

    def file(self, rel: str, mode: int, mtime: int, size: int, body: Body | Iterable[Body]) -> None:
        """A regular file of `size` bytes, whole or in pieces as they arrive."""
        self._entry(rel, size)
        self.tar.add(rel, gnutar.REGULAR, mode=mode, mtime=mtime, size=size)
        self.size += size
        if self.tree_digest is not None:
            self.files[rel] = (mode, "", size)
            for piece in [body] if isinstance(body, (bytes, memoryview)) else body:
                self.tar.write(piece)
            return
        if isinstance(body, (bytes, memoryview)):
            sha256 = hashlib.sha256(body).hexdigest()
            self.tar.write(body)
        else:
            digest = hashlib.sha256()
            for piece in body:
                digest.update(piece)
                self.tar.write(piece)
            sha256 = digest.hexdigest()
        self.files[rel] = (mode, sha256, size)
        self.records[rel] = treehash.file_record(rel, mode, sha256)

    def hard_link(self, rel: str, target: str) -> None:
        if target not in self.files:
            raise refuse(f"hard link {rel!r} to {target!r}, not a file")
        self._entry(rel, 0)
        mode, sha256, size = self.files[target]
        self.records[rel] = treehash.file_record(rel, mode, sha256)
        self.size += size
        self.tar.add(rel, gnutar.HARD_LINK, linkname=target)

    def marker(self, rel: str) -> None:
        """An OCI whiteout marker `.wh.<name>`, or a directory's opaque marker: made once
        tar has finished."""
        self._check_space(0)
        parent, _, base = rel.rpartition("/")
        if base == OPAQUE_MARKER:
            self.opaque.append(parent)
            return
        name = base[len(WHITEOUT_PREFIX) :]
        if not name or "/" in name:
            raise refuse(f"a whiteout marker {base!r} names nothing")
        hidden = f"{parent}/{name}" if parent else name
        if hidden in self.names:
            raise refuse(f"{hidden!r} is both present and whited out")
        self.whiteouts.append(hidden)
        self.names.add(hidden)

    def finish(self) -> Unpacked:
        """The end of the archive for tar; the digest while tar finishes; then the markers."""
        self._tar(self.tar.end)
        opaque = set(self.opaque)
        for rel, (mode, _mtime) in self.dirs.items():
            self.records[rel] = treehash.dir_record(rel, stat.S_IMODE(mode), rel in opaque)
        for hidden in self.whiteouts:
            self.records[hidden] = treehash.whiteout_record(hidden)
        digest = self.tree_digest or treehash.digest_of_records(self.records)
        self._tar(self.tar.wait)
        for parent in opaque:
            os.setxattr(f"{self.dest}/{parent}" if parent else self.dest, OPAQUE_XATTR, b"y")
        touched = set()
        for hidden in self.whiteouts:
            where = f"{self.dest}/{hidden}"
            os.mknod(where, stat.S_IFCHR | 0o600, os.makedev(0, 0))
            if self.owner is not None:
                os.chown(where, self.owner, self.owner, follow_symlinks=False)
            touched.add(hidden.rpartition("/")[0])
        for parent in touched:  # its time, which the marker made changed
            mtime = self.dirs[parent][1] if parent else None
            if mtime is not None:
                os.utime(f"{self.dest}/{parent}", (mtime, mtime), follow_symlinks=False)
        return Unpacked(digest, self.size)

    @staticmethod
    def _tar(step: Callable[[], None]) -> None:
        try:
            step()
        except gnutar.UntarError as exc:
            if exc.disk_full:
                raise no_room("the store's disk filled up while unpacking it") from None
            raise refuse(str(exc)) from None

    def _entry(self, rel: str, size: int) -> None:
        if rel in self.names:  # the vetting refuses a name twice: only a whiteout's is left
            raise refuse(f"{rel!r} is both present and whited out")
        self.names.add(rel)
        self._check_space(size)

    def _check_space(self, size: int) -> None:
        """Every so often, and before a large file, whether the disk still has room for the
        next `size` bytes: a layer of many small files takes more of it than its tar does
        (a block per file), which no size check before the download can know. What tar
        has been handed but may not have written yet is counted as taken."""
        self.unchecked += size + _ENTRY_COST
        if self.unchecked < max(_CHECK_MIN, self.keep_free // 4):
            return
        self.unchecked = 0
        fs = os.statvfs(self.dest)
        if fs.f_bavail * fs.f_frsize - size - gnutar.IN_FLIGHT < self.keep_free or (
            fs.f_files and fs.f_favail - gnutar.IN_FLIGHT // gnutar.BLOCK < _INODES_KEPT
        ):
            from pyro_loop import units

            raise no_room(
                f"unpacking it would leave less than {units.size(self.keep_free)} or "
                f"{_INODES_KEPT} files free on the store's disk"
            )

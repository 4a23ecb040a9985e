"""`tar`: a tree of the workspace streamed out as an uncompressed tar archive in D frames
(what `export` unpacks on the host).

Trusts nothing in the request: the path goes through `confine`, and a symlink is exported
as the link itself, never as what it points to (one the request names, only if what it
points to is inside the workspace). Files, directories, symlinks and hard links are
archived; devices, FIFOs and sockets are left out. The tree is walked by descriptor
(treewalk.py), not by tarfile's recursion, and at most MAX_TREE_DEPTH levels down: the host
unpacks no deeper (fsutil.MAX_TREE_DEPTH), so a deeper tree ends the request with
`too_deep`.
"""

from __future__ import annotations

import os

import protocol as p
import treewalk
from confine import WORKSPACE, RequestError, confine

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` is not imported at run time (agent start-up)
    import tarfile
    from _socket import socket
    from typing import Any, BinaryIO

MAX_TREE_DEPTH = 256  # the same bound as fsutil.MAX_TREE_DEPTH on the host


def op_tar(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    """Stream `path` as an uncompressed tar archive in D frames (symlinks stay symlinks)."""
    import tarfile

    path = confine(req.get("path"), follow=False)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise RequestError("not_found", "no such file in the workspace: " + path) from None
    if st.st_mode & 0o170000 == 0o120000:
        confine(path, follow=True)
    arcname = os.path.basename(path) if path != WORKSPACE else "workspace"
    with tarfile.open(fileobj=_FrameWriter(conn), mode="w|", format=tarfile.PAX_FORMAT) as tar:
        archive = _Archive(tar)
        if st.st_mode & 0o170000 == 0o040000:
            archive.add_tree(path, arcname)
        else:
            parent = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                archive.add(parent, os.path.basename(path), arcname)
            finally:
                os.close(parent)
    return {"path": path, "arcname": arcname}


class _FrameWriter:
    """The file object a streaming tarfile ("w|") writes to: it only calls `write`; the
    rest is the file interface tarfile's type declares."""

    def __init__(self, conn: socket) -> None:
        self.conn = conn

    def write(self, data: bytes, /) -> int:
        p.send_data(self.conn, p.KIND_DATA, data)
        return len(data)

    def read(self, size: int, /) -> bytes:
        raise OSError("the archive stream is write-only")

    def seek(self, pos: int, /) -> int:
        raise OSError("the archive stream cannot seek")

    def tell(self) -> int:
        raise OSError("the archive stream cannot seek")

    def close(self) -> None:
        pass


class _Archive:
    """Adds entries to the archive as tarfile's `add` would, each one read relative to its
    directory's descriptor: a path that deep can be longer than the kernel takes."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        import tarfile

        self.tarfile = tarfile
        self.tar = tar
        self.linked: dict[tuple[int, int], str] = {}  # (dev, inode) -> first member's name

    def add_tree(self, top: str, arcname: str) -> None:
        for here in treewalk.walk(top):
            if here.depth >= MAX_TREE_DEPTH:
                raise RequestError(
                    "too_deep",
                    "nested more than %d directories deep: %s/%s..."
                    % (MAX_TREE_DEPTH, arcname, here.rel[:60]),
                )
            if top == WORKSPACE and not here.rel:  # the empty directory over the home's place
                for names in (here.dirs, here.others):
                    if p.HOME_DIR in names:
                        names.remove(p.HOME_DIR)
            base = arcname + "/" + here.rel if here.rel else arcname
            self.tar.addfile(self._info(base, os.fstat(here.fd), self.tarfile.DIRTYPE))
            for name in here.others:
                self.add(here.fd, name, base + "/" + name)

    def add(self, dir_fd: int, name: str, arcname: str) -> None:
        """Entry `name` of the directory `dir_fd`: a file with its data, a symlink, or a
        directory's own header; anything else is left out, as is what vanished meanwhile."""
        tf = self.tarfile
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            kind = st.st_mode & 0o170000
            if kind == 0o120000:
                info = self._info(arcname, st, tf.SYMTYPE)
                info.linkname = os.readlink(name, dir_fd=dir_fd)
                self.tar.addfile(info)
            elif kind == 0o040000:
                self.tar.addfile(self._info(arcname, st, tf.DIRTYPE))
            elif kind == 0o100000:
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                fd = os.open(name, flags, dir_fd=dir_fd)
                with open(fd, "rb") as data:
                    self._add_file(arcname, os.fstat(fd), data)
        except FileNotFoundError:
            pass

    def _add_file(self, arcname: str, st: os.stat_result, data: BinaryIO) -> None:
        tf = self.tarfile
        if st.st_mode & 0o170000 != 0o100000:
            return  # replaced by something else since it was looked at
        if st.st_nlink > 1:  # a hard link to a file archived before is a link member
            key = (st.st_dev, st.st_ino)
            first = self.linked.setdefault(key, arcname)
            if first != arcname:
                info = self._info(arcname, st, tf.LNKTYPE)
                info.linkname = first
                self.tar.addfile(info)
                return
        info = self._info(arcname, st, tf.REGTYPE)
        info.size = st.st_size
        self.tar.addfile(info, data)

    def _info(self, arcname: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
        info = self.tarfile.TarInfo(arcname)
        info.type = kind
        info.mode = st.st_mode & 0o7777
        info.uid, info.gid = st.st_uid, st.st_gid
        info.mtime = st.st_mtime
        return info

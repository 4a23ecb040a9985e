"""Syncing into the workspace: `put_tar` writes the members of a tar stream, `remove_many`
removes paths.

Trusts nothing in the request: a member named with an absolute path or `..` is refused,
each member's parent is resolved in the sandbox and must stay in /workspace, and each
removed path goes through `confine`. Never follows a link at the target itself: a link or
directory in the way is replaced, and set-id bits are never set.
"""

from __future__ import annotations

import os

import deeptree
import protocol as p
import quiet
from confine import WORKSPACE, RequestError, confine, inside, realpath
from fileops import temp_name
from recycle import Recycler, sole_own_file
from tarread import FrameReader, TarReader

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` is not imported at run time (agent start-up)
    from _socket import socket
    from typing import Any

    from tarread import TarMember

MAX_REPORTED_ERRORS = 1000  # per reply: keeps it far below the JSON frame bound


def _member_parts(name: str) -> list[str]:
    """The components of a tar member's name, or RequestError for one that may not be written."""
    if not name or "\0" in name:
        raise RequestError("invalid_path", "archive member with an empty or NUL-bearing name")
    if name.startswith("/"):
        raise RequestError("outside_workspace", "absolute path in the archive: " + name)
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise RequestError("outside_workspace", "'..' in an archive path: " + name)
    return parts


def _member_target(parts: list[str]) -> tuple[str, str] | None:
    """Where a member goes: its parent resolved (symlinks followed) inside /workspace, or None."""
    parent = realpath(WORKSPACE + "".join("/" + part for part in parts[:-1]))
    if not inside(parent):
        return None
    return parent, parent + "/" + parts[-1]


def _remove_any(path: str) -> bool:
    """Remove whatever is at `path` (a directory with its contents); False if nothing was."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if st.st_mode & 0o170000 == 0o040000:
        deeptree.remove_tree(path)
    else:
        os.unlink(path)
    return True


def _is_dir(path: str) -> bool:
    try:
        return os.lstat(path).st_mode & 0o170000 == 0o040000
    except OSError:
        return False


class _Putter:
    """Writes the members of a put_tar stream, and keeps the counts and errors of the reply."""

    def __init__(self, recycler: Recycler, rewrite: set[str]) -> None:
        self.counts = {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0}
        self.errors: list[dict[str, str]] = []
        self.dir_modes: list[tuple[str, int]] = []
        self.recycler = recycler
        # Member names whose file pyro put there, written again in its own inode: only in a
        # stream nobody can see (quiet.py). How many were.
        self.rewrite = rewrite
        self.rewritten = 0
        self.uid = os.geteuid()
        # The last member's parent: its name's parts, where it resolved, and a descriptor of
        # the directory found there. The members of one directory come one after another:
        # the next one with the same parent is written relative to that descriptor, neither
        # resolved nor looked at again, and never through a link put in its path meanwhile.
        self.parent: tuple[list[str], str, int] | None = None

    def error(self, path: str, kind: str, message: str) -> None:
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"path": path, "kind": kind, "error": message})

    def put(self, tar: TarReader, member: TarMember) -> None:
        parts = _member_parts(member.name)
        if member.kind not in ("file", "dir", "symlink"):
            raise RequestError(
                "invalid_request", "only files, directories and symlinks can be put: " + member.name
            )
        if not parts:
            if member.kind == "dir":
                return  # the workspace itself: it stays as it is
            raise RequestError("invalid_path", "cannot replace /workspace itself")
        try:
            found = self.directory(parts)
            if found is None:
                reason = "its directory resolves outside /workspace through a symlink"
                self.error(member.name, "outside_workspace", reason)
                return
            parent, dir_fd = found
            name = parts[-1]
            if member.kind == "file":
                self.put_file(parent, dir_fd, name, member, tar)
            elif member.kind == "symlink":
                self.put_symlink(parent, dir_fd, name, member)
            else:
                self.put_dir(parent + "/" + name, member)
        except OSError as exc:
            self.error(member.name, "os_error", str(exc))

    def directory(self, parts: list[str]) -> tuple[str, int] | None:
        """The member's parent directory, made if missing: (its path, a descriptor of it),
        or None when it resolves outside /workspace. The last member's, if it is the same."""
        last = self.parent
        if last is not None and last[0] == parts[:-1]:
            return last[1], last[2]
        self.close()
        placed = _member_target(parts)
        if placed is None:
            return None
        parent = placed[0]
        deeptree.makedirs(parent)
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.parent = (parts[:-1], parent, fd)
        return parent, fd

    def close(self) -> None:
        if self.parent is not None:
            os.close(self.parent[2])
            self.parent = None

    def put_file(
        self, parent: str, dir_fd: int, name: str, member: TarMember, source: TarReader
    ) -> None:
        if member.name in self.rewrite and self.rewrite_file(dir_fd, name, member, source):
            self.rewritten += 1
            self.counts["files"] += 1
            return
        reused = self.recycler.take(member.size)
        if reused is not None:
            tmp, fd, size, mode = reused
        else:
            temp, size, mode = temp_name("put"), 0, -1  # its mode is the umask's word
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temp, flags, 0o600, dir_fd=dir_fd)
            tmp = parent + "/" + temp
        try:
            try:
                self.counts["bytes"] += _fill(fd, source, member, size=size, mode=mode)
            finally:
                os.close(fd)
            st, old = self.recycler.look(member.name, dir_fd, name)
            if st is not None and st.st_mode & 0o170000 == 0o040000:
                _remove_any(parent + "/" + name)
                st = None
            self.recycler.replace(member.name, tmp, parent, dir_fd, name, st=st, fd=old)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.counts["files"] += 1

    def rewrite_file(self, dir_fd: int, name: str, member: TarMember, source: TarReader) -> bool:
        """Write the member into the file at `name` itself, rather than a new file renamed
        over it: only a regular file with that one name, the agent's own, without extended
        attributes (ACLs): what a rename would leave behind is the same. False when it is
        not such a file; nothing was written then."""
        try:
            fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)  # fmt: skip
        except OSError:  # a directory, a link: the usual way replaces it
            return False
        try:
            st = os.fstat(fd)
            if not sole_own_file(st, self.uid) or os.listxattr(fd):
                return False
            self.counts["bytes"] += _fill(fd, source, member, size=st.st_size,
                                          mode=st.st_mode & 0o7777)  # fmt: skip
        finally:
            os.close(fd)
        return True

    def put_symlink(self, parent: str, dir_fd: int, name: str, member: TarMember) -> None:
        temp = temp_name("put")
        os.symlink(member.linkname, temp, dir_fd=dir_fd)
        try:
            if _is_dir(parent + "/" + name):
                _remove_any(parent + "/" + name)
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            os.unlink(temp, dir_fd=dir_fd)
            raise
        self.counts["symlinks"] += 1

    def put_dir(self, target: str, member: TarMember) -> None:
        if not _is_dir(target):
            _remove_any(target)
            os.mkdir(target, 0o700)
        self.dir_modes.append((target, member.mode & 0o1777))
        self.counts["dirs"] += 1

    def finish(self) -> None:
        self.close()
        # Directory modes last and deepest first, so a read-only directory could be filled.
        for target, mode in reversed(self.dir_modes):
            if _is_dir(target):  # never chmod through a link that replaced it meanwhile
                try:
                    os.chmod(target, mode)
                except OSError:
                    pass


def _fill(fd: int, source: TarReader, member: TarMember, *, size: int, mode: int) -> int:
    """Write the member's content into the file open at `fd`, which held `size` bytes (cut
    off what it held beyond the content) with permission bits `mode` (-1: unknown), and
    give it the member's (never set-id bits); returns the content's size."""
    written = 0
    while True:
        chunk = source.read(p.MAX_CHUNK)
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
        written += len(chunk)
    if written < size:
        os.ftruncate(fd, written)
    if mode != member.mode & 0o777:
        os.fchmod(fd, member.mode & 0o777)
    return written


def op_put_tar(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    """Unpack the tar stream that follows in D frames into /workspace.

    Written without tarfile (its extraction filters are missing from older Pythons): each
    member's parent is resolved here, in the sandbox, and must stay in /workspace; files are
    written to a temporary name beside the target and renamed over it, so a reader sees the
    old content or the new, never a mix; what was at the target (a directory, a link) is
    replaced. A member named with an absolute path or `..`, or of another type than file,
    directory or symlink, ends the request (members before it stay written).

    `reuse` (optional) names members whose present file in the workspace pyro put there.
    While no process of the workspace is there to see a file half written (quiet.py), each
    is written again in its own inode; otherwise their old inodes may hold later files of
    the stream (recycle.py). The reply counts both (`rewritten`, `reused`).
    """
    reuse = req.get("reuse", [])
    if not isinstance(reuse, list) or not all(isinstance(name, str) for name in reuse):
        raise RequestError("invalid_request", "reuse must be a list of strings")
    reader = FrameReader(conn)
    tar = TarReader(reader)
    alone = quiet.hold_if_alone()
    try:
        recycler = Recycler(set() if alone else set(reuse))
        putter = _Putter(recycler, set(reuse) if alone else set())
        try:
            while True:
                member = tar.next()
                if member is None:
                    break
                putter.put(tar, member)
        except RequestError:
            reader.drain()
            raise
        finally:
            recycler.discard()
            putter.finish()
    finally:
        if alone:
            quiet.leave()  # the stream is written: the requests waiting at the gate go on
    reader.drain()  # the end-of-archive blocks, and the empty frame that ends the stream
    reply: dict[str, Any] = dict(putter.counts)
    reply["reused"] = recycler.reused
    reply["rewritten"] = putter.rewritten
    reply["errors"] = putter.errors
    return reply


def op_remove_many(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    """Remove each path (recursively); missing ones are counted, not errors."""
    paths = req.get("paths")
    if not isinstance(paths, list) or not all(isinstance(path, str) for path in paths):
        raise RequestError("invalid_request", "paths must be a list of strings")
    removed = missing = 0
    errors: list[dict[str, str]] = []
    for path in paths:
        try:
            target = confine(path, follow=False)
            if target == WORKSPACE:
                raise RequestError("invalid_path", "refusing to remove /workspace itself")
            if _remove_any(target):
                removed += 1
            else:
                missing += 1
        except RequestError as exc:
            error = {"path": path, "kind": exc.kind, "error": str(exc)}
        except OSError as exc:
            error = {"path": path, "kind": "os_error", "error": str(exc)}
        else:
            continue
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append(error)
    return {"removed": removed, "missing": missing, "errors": errors}

"""Paths below a directory, opened without ever following a symbolic link out of it.

A repository, and everything a workspace hands back, is untrusted: a committed symlink, or
one a workspace made, must never make the host read or write somewhere else. So every path
here is resolved relative to a descriptor of the tree's root, one component at a time, and
a symlink in any component fails the open with ELOOP instead of being followed. The kernel
does that in one call where it has `openat2` (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, Linux
5.6); elsewhere (older kernels, seccomp profiles that hide it) each component is opened
with O_NOFOLLOW relative to its parent. Paths that are absolute or climb with `..` are
refused (EXDEV) before anything is opened.

A reader that looks at many paths of one tree (the sync engine, once per sync) may keep the
descriptors of the directories it went through (`cache_dirs=True`): each was opened the same
way, without following a link, and the next lookup below it starts from it, one `openat` or
`fstatat` with O_NOFOLLOW / AT_SYMLINK_NOFOLLOW for the last component, instead of resolving
the whole path again. A directory swapped for a link after it was opened is then not followed
either: the descriptor still names the directory that was there (what a lookup a moment
earlier would have read). `close()` drops them; the engine closes its tree after each sync.

One rule is looser, for files pyro reads by name from a repository (the lockfiles that key
the dependency snapshot): `open_following` follows a link whose target stays inside the tree
and out of `.git` (`requirements.txt -> requirements/base.txt`), resolving it here, one
component at a time, and refuses any other link with LinkEscapeError.

The writes (`makedirs`, `write`, `symlink`, `remove`) are for trees the host owns (a scratch
directory, the user's repository on `pyro apply`): each is made relative to its parent's
descriptor, with O_NOFOLLOW / O_EXCL, then renamed into place, so a link that content put
there is replaced, never written through.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Callable
from types import TracebackType
from typing import IO, TypeVar

T = TypeVar("T")

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
_SYS_OPENAT2 = 437  # the same on every architecture: it came after the tables were unified
# What a lookup beneath the root fails with when `rel` is no path of this tree: missing, below
# a file, or below a symbolic link (which Beneath never follows).
NOT_A_PATH = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
_MAX_LINKS = 40  # links followed by one open_following, as the kernel's own limit
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Directory descriptors a caching tree keeps at most: a sorted walk needs a few at a time, and
# the process's descriptor limit (1,024 by default) is shared with everything else.
_MAX_CACHED_DIRS = 128


class LinkEscapeError(OSError):
    """A symbolic link whose target leaves the tree (or enters its `.git`)."""

    def __init__(self, rel: str, link: str, target: str, *, into_git: bool = False) -> None:
        where = "into git's own files" if into_git else "outside the repository"
        super().__init__(errno.EXDEV, f"{link} is a symbolic link to {target}, {where}", rel)
        self.rel, self.link, self.target = rel, link, target


def _lstat_at(name: str, dir_fd: int) -> os.stat_result:
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def _readlink_at(name: str, dir_fd: int) -> str:
    return os.readlink(name, dir_fd=dir_fd)


_UNLOADED = object()


class _Openat2:
    """The openat2 system call through libc's syscall(), or None once it proved missing.

    ctypes is loaded on the first call, not at import: the daily commands import this
    module, and a repository path they open usually comes through a kept directory."""

    def __init__(self) -> None:
        self.call: object | None = _UNLOADED

    def _load(self) -> object | None:
        import ctypes

        class OpenHow(ctypes.Structure):
            _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                        ("resolve", ctypes.c_uint64)]  # fmt: skip

        self._ctypes, self._how = ctypes, OpenHow
        try:
            return ctypes.CDLL(None, use_errno=True).syscall
        except (OSError, AttributeError):
            return None

    def __call__(self, dir_fd: int, rel: str, flags: int, mode: int) -> int | None:
        call = self.call
        if call is _UNLOADED:
            call = self.call = self._load()
        if call is None:
            return None
        ctypes = self._ctypes
        how = self._how(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, _RESOLVE)
        fd = int(call(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd),  # type: ignore[operator]
                      ctypes.c_char_p(os.fsencode(rel)), ctypes.byref(how),
                      ctypes.c_size_t(ctypes.sizeof(how))))  # fmt: skip
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            self.call = None  # an old kernel, or a seccomp filter that hides it
            return None
        raise OSError(err, os.strerror(err), rel)


_openat2 = _Openat2()


def split(rel: str) -> list[str]:
    """`rel`'s components; EXDEV for an absolute path or one with `..`."""
    if rel.startswith("/"):
        raise OSError(errno.EXDEV, "an absolute path is not below the tree", rel)
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OSError(errno.EXDEV, "a path with `..` may leave the tree", rel)
    return parts


def link_stays_inside(rel: str, target: str, within: str = "") -> bool:
    """Does symlink `rel` (relative to a tree's root) with `target` point inside the tree,
    or inside its directory `within` when one is named? (By its text: the links on the way
    are never followed by this module, so the text is what counts.)"""
    if not target or target.startswith("/"):
        return False
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if within:
        return resolved == within or resolved.startswith(within + "/")
    return resolved != ".." and not resolved.startswith("../")


def _open_dir_at(dir_fd: int, name: str) -> int:
    """An O_PATH descriptor of directory `name` in `dir_fd`; ELOOP when it is a symlink."""
    return _open_last(dir_fd, name, _DIR, 0)


def _open_walk(dir_fd: int, parts: list[str], flags: int, mode: int) -> int:
    """openat2's answer without it: each directory opened with O_NOFOLLOW from its parent."""
    fd = dir_fd
    try:
        for i, part in enumerate(parts):
            if i == len(parts) - 1:
                child = _open_last(fd, part, flags, mode)
            else:
                child = _open_dir_at(fd, part)
            if fd != dir_fd:
                os.close(fd)
            fd = child
        return fd if fd != dir_fd else os.dup(dir_fd)
    except BaseException:
        if fd != dir_fd:
            os.close(fd)
        raise


def _open_last(dir_fd: int, name: str, flags: int, mode: int) -> int:
    """Open `name` in `dir_fd` without following it, failing as openat2 does: ELOOP for a
    symlink (where O_NOFOLLOW alone says ENOTDIR, or hands out the link itself to O_PATH)."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except NotADirectoryError:
        if flags & os.O_DIRECTORY and stat.S_ISLNK(
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        ):
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name) from None
        raise
    if flags & os.O_PATH and not flags & os.O_DIRECTORY and stat.S_ISLNK(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name)
    return fd


class Beneath:
    """The tree below `root`, reached only through real directories.

    `root` itself is whatever the caller named (it may be a link: the caller chose it); a
    descriptor of it is taken on first use and held until `close()`.
    """

    def __init__(
        self, root: str | os.PathLike[str], *, create: bool = False, cache_dirs: bool = False
    ) -> None:
        self.root = os.fspath(root)
        self._fd: int | None = None
        # rel dir -> O_PATH descriptor, kept until close() (see the module doc)
        self._dirs: dict[str, int] | None = {} if cache_dirs else None
        if create:
            os.mkdir(self.root, 0o700)

    def __enter__(self) -> Beneath:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.close_dirs()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._fd

    # -- reading ----------------------------------------------------------------------------

    def open(self, rel: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
        """A descriptor of root/rel; ELOOP when any component of `rel` is a symlink."""
        kept = self._kept_parent(rel)
        if kept is not None:
            return _open_last(kept[0], kept[1], flags, mode)
        parts = split(rel)
        if not parts:
            return os.open(".", flags | os.O_CLOEXEC, dir_fd=self.fd)
        if self._dirs is not None:
            return _open_last(self._cached_dir(parts[:-1]), parts[-1], flags, mode)
        fd = _openat2(self.fd, "/".join(parts), flags | os.O_NOFOLLOW, mode)
        return fd if fd is not None else _open_walk(self.fd, parts, flags, mode)

    def open_dir(self, rel: str) -> int:
        """An O_PATH descriptor of directory root/rel (to use as a dir_fd)."""
        return self.open(rel, os.O_PATH | os.O_DIRECTORY)

    def _cached_dir(self, parts: list[str]) -> int:
        """The kept descriptor of directory `parts` (opened now if need be, each component
        from its parent's descriptor, none followed). Not to be closed by the caller."""
        assert self._dirs is not None
        if not parts:
            return self.fd
        rel = "/".join(parts)
        fd = self._dirs.get(rel)
        if fd is not None:
            return fd
        if len(self._dirs) >= _MAX_CACHED_DIRS:
            self.close_dirs()
        parent = self._dirs.get("/".join(parts[:-1])) if len(parts) > 1 else self.fd
        if parent is not None:  # one component from the parent's descriptor
            fd = _open_dir_at(parent, parts[-1])
        else:  # the whole path, from the root's
            fd = _openat2(self.fd, rel, _DIR, 0)
            if fd is None:
                fd = _open_walk(self.fd, parts, _DIR, 0)
        self._dirs[rel] = fd
        return fd

    def close_dirs(self) -> None:
        """Drop the kept directory descriptors (a caching tree keeps the root's)."""
        if self._dirs:
            for fd in self._dirs.values():
                os.close(fd)
            self._dirs.clear()

    def _parent(self, rel: str) -> tuple[int, str]:
        parts = split(rel)
        if not parts:
            raise OSError(errno.EINVAL, "the tree's root has no parent here", rel)
        return self.open_dir("/".join(parts[:-1])), parts[-1]

    def _kept_parent(self, rel: str) -> tuple[int, str] | None:
        """(the kept descriptor of `rel`'s parent, its last component), found by the path's
        text alone, or None (not kept, or a path to take apart with `split`). Only a path
        made of clean components can name a kept directory, so this gives what the walk
        through `split` and `_cached_dir` would, in a dictionary lookup: a sync looks up
        each of a branch switch's thousand paths a few times."""
        if self._dirs is None:
            return None
        parent, slash, name = rel.rpartition("/")
        if name in ("", ".", "..") or (slash and not parent):  # "/name" is absolute
            return None
        fd = self._dirs.get(parent) if parent else self._fd
        return None if fd is None else (fd, name)

    def _at_parent(self, rel: str, call: Callable[[str, int], T]) -> T:
        """`call(name, dir_fd)` on the last component of `rel`, in its parent directory."""
        kept = self._kept_parent(rel)
        if kept is not None:
            return call(kept[1], kept[0])
        if self._dirs is not None:
            parts = split(rel)
            if not parts:
                raise OSError(errno.EINVAL, "the tree's root has no parent here", rel)
            return call(parts[-1], self._cached_dir(parts[:-1]))
        dir_fd, name = self._parent(rel)
        try:
            return call(name, dir_fd)
        finally:
            os.close(dir_fd)

    def lstat(self, rel: str) -> os.stat_result:
        """stat of root/rel itself; ELOOP when one of its parents is a symlink."""
        return self._at_parent(rel, _lstat_at)

    def readlink(self, rel: str) -> str:
        return self._at_parent(rel, _readlink_at)

    def scandir(self, rel: str) -> list[os.DirEntry[str]]:
        """The entries of directory root/rel (DirEntry.path is the bare name)."""
        fd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with os.scandir(fd) as it:
                return list(it)
        finally:
            os.close(fd)

    def read(self, rel: str, *, limit: int | None = None) -> bytes:
        """The content of regular file root/rel (a FIFO or device is refused, not read)."""
        fd = self.open(rel, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", rel)
            return f.read() if limit is None else f.read(limit)

    def open_following(self, rel: str) -> int:
        """A read descriptor of regular file root/rel, following the symlinks on the way
        whose targets stay inside the tree and out of `.git`; LinkEscapeError for others."""
        pending = list(reversed(split(rel)))
        stack: list[tuple[str, int]] = []  # the directories entered: (name, O_PATH fd)
        links = 0
        link = (rel, rel)  # the last link followed, named in the error: (where, target)
        try:
            while pending:
                name = pending.pop()
                if name in ("", "."):
                    continue
                where = "/".join([n for n, _ in stack] + [name])
                if name == "..":
                    if not stack:
                        raise LinkEscapeError(rel, *link)
                    os.close(stack.pop()[1])
                    continue
                if name == ".git":
                    if not links:
                        raise OSError(errno.EXDEV, "git's own files are not the tree's", rel)
                    raise LinkEscapeError(rel, *link, into_git=True)
                parent = stack[-1][1] if stack else self.fd
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(name, dir_fd=parent)
                    links += 1
                    link = (where, target)
                    if target.startswith("/") or links > _MAX_LINKS:
                        raise LinkEscapeError(rel, where, target)
                    pending.extend(reversed(target.split("/")))
                    continue
                if pending:
                    stack.append((name, os.open(name, _DIR, dir_fd=parent)))
                    continue
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=parent)  # fmt: skip
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    raise OSError(errno.EINVAL, "not a regular file", rel)
                return fd
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), rel)
        finally:
            for _name, fd in stack:
                os.close(fd)

    # -- writing (trees the host owns) ----------------------------------------------------

    def makedirs(self, rel: str, mode: int = 0o755) -> None:
        """Create root/rel and its missing parents; ELOOP where one is a symlink."""
        parts = split(rel)
        for end in range(1, len(parts) + 1):
            dir_fd, name = self._parent("/".join(parts[:end]))
            try:
                os.mkdir(name, mode, dir_fd=dir_fd)
            except FileExistsError:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise OSError(errno.ELOOP, "a symbolic link, not a directory", rel) from None
                if not stat.S_ISDIR(st.st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                             rel) from None  # fmt: skip
            finally:
                os.close(dir_fd)

    def write(self, rel: str, data: bytes | IO[bytes], mode: int = 0o644) -> None:
        """Replace root/rel with a regular file holding `data` (bytes, or a file read to its
        end), never writing through a link at rel: the link itself is replaced."""
        dir_fd, name = self._parent(rel)
        tmp = f".{name[:180]}.{os.urandom(6).hex()}.pyro-tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dir_fd)  # fmt: skip
            try:
                with os.fdopen(fd, "wb", closefd=False) as f:
                    if isinstance(data, bytes):
                        f.write(data)
                    else:
                        import shutil  # only for a stream, not on the daily commands' path

                        shutil.copyfileobj(data, f, 1024 * 1024)
                os.fchmod(fd, mode & 0o777)
            except BaseException:
                os.unlink(tmp, dir_fd=dir_fd)
                raise
            finally:
                os.close(fd)
            self._replace(dir_fd, tmp, name)
        finally:
            os.close(dir_fd)

    def symlink(self, rel: str, target: str) -> None:
        """Replace root/rel with a symlink to `target` (made, never followed)."""
        dir_fd, name = self._parent(rel)
        tmp = f".{name[:180]}.{os.urandom(6).hex()}.pyro-tmp"
        try:
            os.symlink(target, tmp, dir_fd=dir_fd)
            self._replace(dir_fd, tmp, name)
        finally:
            os.close(dir_fd)

    @staticmethod
    def _replace(dir_fd: int, tmp: str, name: str) -> None:
        try:
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            os.unlink(tmp, dir_fd=dir_fd)
            raise

    def link_above(self, rel: str) -> str | None:
        """The first of `rel`'s parent directories that is a symlink here, if one is."""
        parts = split(rel)
        for end in range(1, len(parts)):
            parent = "/".join(parts[:end])
            try:
                if stat.S_ISLNK(self.lstat(parent).st_mode):
                    return parent
            except OSError:
                return None  # missing (or not a directory): nothing above is a link
        return None

    def remove(self, rel: str) -> bool:
        """Remove file or link root/rel (an empty directory too); False if it was not there
        or sits below a symlink (then it is no path of this tree)."""
        try:
            dir_fd, name = self._parent(rel)
        except OSError as exc:
            if exc.errno in NOT_A_PATH:
                return False
            raise
        try:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except IsADirectoryError:
                os.rmdir(name, dir_fd=dir_fd)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(dir_fd)

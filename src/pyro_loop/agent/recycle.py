"""Recycled inodes for put_tar: a replaced file's old inode holds the next file's content.

put_tar writes each file to a temporary name and renames it over the target, so a reader
sees the old content or the new, never a mix. A branch switch does that for hundreds of
files pyro put before, and each one costs a new inode and frees another. On ext4 without a
journal, allocating an inode skips every inode freed in the last minute, one look at the
inode table each: the more files were replaced lately, the slower the next one is created
(a 1,000-file switch took 0.3 ms a file; recycled, 0.04 ms). So the new file takes the
target's place by swapping the two names (renameat2 RENAME_EXCHANGE; where that is missing,
a hard link keeps the old inode before the rename), the old inode stays under a temporary
name, and a later file of the same stream is written into it and swapped in turn.

An old inode is written again only when nothing else can see it: a regular file with just
that temporary name, owned by the agent's user, without extended attributes (ACLs), and held
open or mapped by no process of the workspace. The last is checked in /proc after the
swap, for a batch of kept inodes at once; a process that still reads the old content keeps
it, as with a plain rename. Which targets may be kept is the request's word: files pyro put
there itself, which live in the workspace's own layer (keeping a file of a lower layer would
copy it up first). A stream nobody in the workspace can see (quiet.py) writes those files
again in place instead, and keeps nothing.
"""

from __future__ import annotations

import os

import proctree
from fileops import temp_name

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` is not imported at run time (agent start-up)
    from collections.abc import Callable

BATCH = 16  # kept inodes checked in /proc at once: fewer scans, or fewer new inodes


class Recycler:
    """The old inodes of one put_tar stream's targets, and the ones cleared for reuse."""

    def __init__(self, keep: set[str]) -> None:
        # Member names whose present file pyro put there; fewer than a batch would never be
        # checked, and so never reused.
        self.keep = keep if len(keep) >= BATCH else set()
        self.uid = os.geteuid()
        # (temporary path, inode, a write descriptor of it or None, its size when kept): not
        # yet checked, and checked (held by no process)
        self.pending: list[tuple[str, int, int | None, int]] = []
        self.ready: list[tuple[str, int, int | None, int]] = []
        self.reused = 0
        # Loading ctypes costs a request 1.5 ms unless the agent has (proctree.preload): only
        # for a stream with a batch to reuse.
        self.exchange = _exchanger() if self.keep else None

    def look(self, name: str, dir_fd: int, base: str) -> tuple[os.stat_result | None, int | None]:
        """What is at `base` in directory `dir_fd` (member `name`): its stat (None: nothing),
        and a write descriptor of it when its inode may be kept. Opened now, while the name
        is the target's: writing a later file into the inode then needs no open of its
        temporary name (an open on the workspace's overlay costs about as much as the swap)."""
        if self.exchange is not None and name in self.keep:
            flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                fd = os.open(base, flags, dir_fd=dir_fd)
            except OSError:  # a directory, a link, nothing: the lstat below says which
                pass
            else:
                st = os.fstat(fd)
                if self._keepable(name, st):
                    return st, fd
                os.close(fd)
                return st, None
        try:
            return os.lstat(base, dir_fd=dir_fd), None
        except OSError:
            return None, None

    def _keepable(self, name: str, st: os.stat_result | None) -> bool:
        return st is not None and name in self.keep and sole_own_file(st, self.uid)

    def replace(
        self,
        name: str,
        tmp: str,
        parent: str,
        dir_fd: int,
        base: str,
        *,
        st: os.stat_result | None,
        fd: int | None = None,
    ) -> None:
        """Put the file at `tmp` in place of `base` in directory `parent` (`dir_fd` a
        descriptor of it; member `name`; `st` and `fd` what `look` gave, `st` not a
        directory's; `fd` is closed or kept here) in one step, and keep the old inode if it
        may be reused: the two names swapped (renameat2 RENAME_EXCHANGE), else a link to it,
        then a rename."""
        if not self._keepable(name, st):
            if fd is not None:
                os.close(fd)
            os.rename(tmp, base, dst_dir_fd=dir_fd)
            return
        assert st is not None
        if self.exchange is not None:
            if self.exchange(tmp, dir_fd, base):
                self.pending.append((tmp, st.st_ino, fd, st.st_size))
                return
            self.exchange = None  # refused here (kernel, filesystem, filter): links from now on
        if fd is not None:
            os.close(fd)
        spare = temp_name("old")
        try:
            os.link(base, spare, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            spare = ""
        os.rename(tmp, base, dst_dir_fd=dir_fd)
        if spare:
            self.pending.append((parent + "/" + spare, st.st_ino, None, st.st_size))

    def take(self, size: int) -> tuple[str, int, int, int] | None:
        """(temporary path, descriptor open for writing, its size, its permission bits) of an
        inode to write the next file (of `size` bytes) into, or None: the caller makes a new
        one. One no larger than the file if there is one: it needs no truncation after."""
        if not self.ready and len(self.pending) >= BATCH:
            self._check()
        while self.ready:
            spare, ino, fd, _ = self.ready.pop(_fitting(self.ready, size))
            if fd is None:
                try:
                    fd = os.open(spare, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError:
                    _unlink(spare)
                    continue
            # One link, held by descriptor since the swap: its name is still the temporary
            # one, or the swap that puts it in place fails (nothing else is written).
            try:
                st = os.fstat(fd)
                usable = st.st_ino == ino and sole_own_file(st, self.uid) and not os.listxattr(fd)
            except OSError:
                usable = False
            if usable:
                self.reused += 1
                return spare, fd, st.st_size, st.st_mode & 0o7777
            os.close(fd)
            _unlink(spare)
        return None

    def discard(self) -> None:
        """Remove the kept inodes left at the end of the stream (a batch or so). Each is
        open before its name goes, and left open: freeing an inode whose pages are being
        written back waits for that (milliseconds each while the disk is busy), and the
        handler's exit, after its reply, closes them instead."""
        for spare, _, fd, _ in self.pending + self.ready:
            if fd is None:
                try:
                    os.open(spare, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError:
                    pass
            _unlink(spare)
        self.pending = []
        self.ready = []

    def _check(self) -> None:
        held = held_inodes()
        for kept in self.pending:
            if held is None or kept[1] in held:
                _unlink(kept[0])  # its last name goes; the holder keeps the old content
                if kept[2] is not None:
                    os.close(kept[2])
            else:
                self.ready.append(kept)
        self.pending = []


def sole_own_file(st: os.stat_result, uid: int) -> bool:
    """Is it a regular file with that one name, owned by `uid`? Then nothing but that name
    shows what is written into it (extended attributes, ACLs, are the caller's to ask)."""
    return st.st_mode & 0o170000 == 0o100000 and st.st_nlink == 1 and st.st_uid == uid


def _fitting(ready: list[tuple[str, int, int | None, int]], size: int) -> int:
    """The index in `ready` of the last inode no larger than `size` bytes (else the last)."""
    for index in range(len(ready) - 1, -1, -1):
        if ready[index][3] <= size:
            return index
    return -1


def held_inodes() -> set[int] | None:
    """The inode numbers every process in the sandbox has open or mapped, or None when a
    process's descriptors or mappings cannot be read (then nothing counts as free). Inode
    numbers alone: a match on another device only costs a new inode."""
    held: set[int] = set()
    # Not the agent's own: this handler and the server that forked it hold no workspace file.
    agent = {str(os.getpid()), str(os.getppid())}
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit() and name not in agent]
    except OSError:
        return None
    for pid in pids:
        try:
            fds = os.listdir("/proc/%s/fd" % pid)
            for fd in fds:
                try:
                    held.add(os.stat("/proc/%s/fd/%s" % (pid, fd)).st_ino)
                except (FileNotFoundError, ProcessLookupError):
                    continue  # closed meanwhile
            with open("/proc/%s/maps" % pid, "rb") as f:
                maps = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the process ended meanwhile
        except OSError:
            return None
        for line in maps.splitlines():
            fields = line.split(None, 5)
            if len(fields) >= 5 and fields[4] != b"0":
                held.add(int(fields[4]))
    return held


def _exchanger() -> Callable[[str, int, str], bool] | None:
    """A function swapping a path and a name in a directory (its descriptor) atomically
    (True when it did), or None without ctypes or renameat2 (glibc 2.28)."""
    found = proctree.libc()
    try:
        import ctypes

        call = found.renameat2
    except (ImportError, AttributeError):  # no ctypes (found is None), or no renameat2
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int

    def exchange(path: str, dir_fd: int, name: str) -> bool:
        result: int = call(AT_FDCWD, os.fsencode(path), dir_fd, os.fsencode(name), EXCHANGE)
        return result == 0

    return exchange


AT_FDCWD = -100
EXCHANGE = 2  # RENAME_EXCHANGE


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

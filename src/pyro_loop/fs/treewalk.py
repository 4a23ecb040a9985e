"""Walking and removing trees a workspace wrote, at any depth, without recursion.

A workspace can nest directories without end (10,000 levels take a second to make). The
standard library's walks recurse once per level (`os.walk`, `os.fwalk`, `shutil.rmtree`),
so such a tree ends them with RecursionError, and a path of that depth is far longer than
the kernel's PATH_MAX. The walk here keeps a list of names instead of a call stack and opens
each directory relative to its parent's descriptor (one descriptor open at a time, never
following a symlink); it climbs back with "..", checked against the parent it came from, so
a directory moved during the walk ends the walk instead of leading elsewhere.

Walks that must not go deep at all (diff, snapshot, export) bound the depth instead
(fs.util.check_tree_depth); these are the walks that must finish whatever the tree holds:
measuring a workspace, sweeping its temp files, handing it over, deleting it.

The same walk serves the agent inside the sandbox (agent/deeptree.py): this file is shipped
beside the agent's modules (runtime.bwrap.AGENT_FILES), so it runs on the agent's floor
(Python 3.9) and imports nothing but `os` and `stat` at its top, which a request's handler
has loaded already.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` and friends are not imported at run time (agent start-up)
    from collections.abc import Callable, Iterator
    from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeChangedError(OSError):
    """A directory was moved while the walk was below it."""


class Directory:
    """One directory of the walk: its descriptor (valid until the walk moves on), its path
    relative to the top ("" for the top itself) and depth, and its entries by name, sorted.
    Remove names from `dirs` to keep the walk out of them."""

    __slots__ = ("depth", "dirs", "fd", "others", "rel")

    def __init__(self, fd: int, rel: str, depth: int, dirs: list[str], others: list[str]):
        self.fd = fd
        self.rel = rel
        self.depth = depth
        self.dirs = dirs
        self.others = others  # files, symlinks (to directories too), devices, FIFOs, sockets


def walk(
    top: Path | str, *, leave: Callable[[int, str], None] | None = None
) -> Iterator[Directory]:
    """Every directory below `top` (itself first), top down, each one's subdirectories in
    name order, symlinks never followed.

    `leave(parent_fd, name)` is called after the walk has finished directory `name` and
    climbed back to its parent (a remover deletes it there). Directories that cannot be
    opened are skipped; `top` itself must open.
    """
    fd = os.open(top, _DIR_FLAGS)
    # Per level: the subdirectories still to visit, the (dev, inode) of that level's
    # directory, and the name it was entered by.
    pending: list[list[str]] = []
    identity: list[tuple[int, int]] = []
    names: list[str] = []
    rel = ""
    try:
        while True:
            dirs, others = _entries(fd)
            here = Directory(fd, rel, len(names), dirs, others)
            yield here
            st = os.fstat(fd)
            pending.append(sorted(here.dirs, reverse=True))
            identity.append((st.st_dev, st.st_ino))
            while True:
                if pending[-1]:
                    name = pending[-1].pop()
                    try:
                        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    except OSError:
                        continue  # gone, replaced by a link, or not readable
                    os.close(fd)
                    fd = child
                    names.append(name)
                    rel = rel + "/" + name if rel else name
                    break
                pending.pop()
                identity.pop()
                if not names:
                    return
                parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = parent
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != identity[-1]:
                    raise TreeChangedError(f"a directory under {top} moved during the walk")
                name = names.pop()
                rel = rel[: len(rel) - len(name) - 1] if names else ""
                if leave is not None:
                    leave(fd, name)
    finally:
        os.close(fd)


def _entries(fd: int) -> tuple[list[str], list[str]]:
    dirs: list[str] = []
    others: list[str] = []
    try:
        with os.scandir(fd) as it:
            for entry in it:
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                (dirs if is_dir else others).append(entry.name)
    except OSError:
        pass  # unreadable: nothing to list
    dirs.sort()
    others.sort()
    return dirs, others


def tree_bytes(top: Path | str) -> int:
    """Bytes in the regular files below `top` (links not followed); 0 if it is missing."""
    import contextlib  # host only: not at the top, which the agent loads too

    total = 0
    with contextlib.suppress(OSError):
        for here in walk(top):
            for name in here.others:
                with contextlib.suppress(OSError):
                    st = os.stat(name, dir_fd=here.fd, follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        total += st.st_size
    return total


def remove_contents(top: Path | str) -> None:
    """Delete everything below directory `top` (best effort, as `rmtree(ignore_errors)`),
    making each directory writable and searchable first: the overlay workdir leaves
    mode-000 ones."""
    import contextlib  # host only: not at the top, which the agent loads too

    def rmdir(parent_fd: int, name: str) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=parent_fd)

    for here in walk(top, leave=rmdir):
        for name in here.others:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=here.fd)
        for name in here.dirs:
            make_searchable(here.fd, name)


def make_searchable(parent_fd: int | None, name: str) -> None:
    """chmod 0700 the directory `name` (in the directory `parent_fd`, or a path), never
    through a symlink: chmod itself follows links, so it goes through an O_PATH descriptor
    that refused one (and needs no permission on a mode-000 directory)."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC,
                     dir_fd=parent_fd)  # fmt: skip
    except OSError:
        return
    try:
        os.chmod(f"/proc/self/fd/{fd}", stat.S_IRWXU)
    except OSError:
        pass
    finally:
        os.close(fd)

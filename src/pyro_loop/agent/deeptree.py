"""Trees at any depth: walking and removing them, and making directories, without recursion.

A workspace's processes can nest directories without end (10,000 levels take a second to
make). The standard library goes down such a tree by recursion, one call per level
(`shutil.rmtree`, `tarfile`'s `add`, `os.makedirs`), and a request would end in
RecursionError; and a path that deep is longer than PATH_MAX, so what is below it cannot be
named by its full path. The walk here keeps a list of names instead of a call stack and
opens each directory relative to its parent's descriptor (one descriptor open at a time,
never following a symlink); it climbs back with "..", checked against the directory it came
from, so a directory moved during the walk ends the walk instead of leading elsewhere.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` is not imported at run time (agent start-up)
    from collections.abc import Callable, Iterator

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


def walk(top: str, leave: Callable[[int, str], None] | None = None) -> Iterator[Directory]:
    """Every directory below `top` (itself first), top down, each one's subdirectories in
    name order, symlinks never followed.

    `leave(parent_fd, name)` is called once the walk has finished directory `name` and
    climbed back to its parent (a remover deletes it there). Directories that cannot be
    opened are skipped; `top` itself must open.
    """
    fd = os.open(top, DIR_FLAGS)
    # Per level below the top: the subdirectories still to visit, the (dev, inode) of that
    # level's directory, and the name it was entered by.
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
                        child = os.open(name, DIR_FLAGS, dir_fd=fd)
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
                parent = os.open("..", DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = parent
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != identity[-1]:
                    raise TreeChangedError("a directory under %s moved during the walk" % top)
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


def remove_tree(path: str) -> None:
    """Remove the directory `path` with everything below it, links not followed; a
    directory without write or search permission for its owner is opened up first (the
    workspace's user may make one). Raises on the first failure, as shutil.rmtree does."""

    def rmdir(parent_fd: int, name: str) -> None:
        os.rmdir(name, dir_fd=parent_fd)

    _open_up(None, path)
    for here in walk(path, leave=rmdir):
        for name in here.others:
            os.unlink(name, dir_fd=here.fd)
        for name in here.dirs:
            _open_up(here.fd, name)
    os.rmdir(path)


def _open_up(parent_fd: int | None, name: str) -> None:
    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if st.st_mode & 0o170000 == 0o040000 and st.st_mode & 0o700 != 0o700:
        # chmod follows a link, but `name` was a directory a moment ago, and whatever a link
        # put there instead could lead to is the sandbox's as much as the agent's.
        os.chmod(name, (st.st_mode & 0o7777) | 0o700, dir_fd=parent_fd)


def makedirs(path: str) -> None:
    """os.makedirs(path, exist_ok=True), without its recursion (one call per missing level):
    creates the missing directories of `path`, top down; raises FileExistsError when `path`
    is something else than a directory."""
    missing: list[str] = []
    head = path
    while head and not os.path.exists(head):  # as os.makedirs: a dangling link is missing
        head, name = os.path.split(head)
        missing.append(name)
    if not missing:
        if not os.path.isdir(path):
            os.mkdir(path)  # raises FileExistsError, as os.makedirs does
        return
    for name in reversed(missing):
        head = os.path.join(head, name)
        try:
            os.mkdir(head)
        except FileExistsError:  # made meanwhile, by the workspace or another request
            if not os.path.isdir(head):
                raise

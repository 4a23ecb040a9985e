"""Read a stack of overlay layers on the host, the way overlayfs would present it.

Used for diffs, without entering the workspace. Upper dirs are written by the workspace, so
nothing here follows a symlink: every path is opened beneath the layer's root by `Beneath`
(no symlink in any component), and a swapped-in symlink or a FIFO makes the lookup fail
instead of escaping or blocking.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from pyro_loop.fs.beneath import NOT_A_PATH, Beneath
from pyro_loop.fs.util import check_tree_depth
from pyro_loop.records import dataclass
from pyro_loop.store.overlay import OPAQUE_XATTR, is_whiteout


@dataclass(frozen=True)
class Entry:
    """One path as a stack presents it."""

    kind: str  # "file" | "symlink" | "dir" | "other"
    mode: int
    size: int
    layer: Path
    target: str | None = None  # for symlinks


def _open_dir(root: Path, parts: list[str]) -> int | None:
    """An O_PATH descriptor of root/parts... (no symlinks followed), or None if it is not a dir."""
    with Beneath(root) as tree:
        try:
            return tree.open_dir("/".join(parts))
        except OSError as exc:
            if exc.errno in (*NOT_A_PATH, errno.EXDEV):
                return None
            raise


def _list_dir(root: Path, rel: str) -> list[str]:
    """Names in root/rel, or nothing if it is not a directory reached without symlinks."""
    path_fd = _open_dir(root, rel.split("/") if rel else [])
    if path_fd is None:
        return []
    try:
        # listdir needs a readable descriptor; O_PATH ones only name the directory.
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=path_fd)
    except OSError:
        return []
    finally:
        os.close(path_fd)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def _lstat_at(root: Path, rel: str) -> os.stat_result | None:
    parts = rel.split("/")
    dir_fd = _open_dir(root, parts[:-1])
    if dir_fd is None:
        return None
    try:
        return os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    finally:
        os.close(dir_fd)


def is_opaque(root: Path, rel: str) -> bool:
    fd = _open_dir(root, rel.split("/") if rel else [])
    if fd is None:
        return False
    try:
        return os.getxattr(f"/proc/self/fd/{fd}", OPAQUE_XATTR) == b"y"
    except OSError:
        return False
    finally:
        os.close(fd)


def read_file(root: Path, rel: str, *, limit: int | None = None) -> bytes | None:
    """The content of regular file root/rel (at most `limit` bytes), never following links."""
    parts = rel.split("/")
    dir_fd = _open_dir(root, parts[:-1])
    if dir_fd is None:
        return None
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)  # fmt: skip
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f.read() if limit is None else f.read(limit)


def read_link(root: Path, rel: str) -> str | None:
    parts = rel.split("/")
    dir_fd = _open_dir(root, parts[:-1])
    if dir_fd is None:
        return None
    try:
        return os.readlink(parts[-1], dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)


class LayerStack:
    """Layers topmost first; `lookup` answers what the merged view shows at a path."""

    def __init__(self, layers: list[Path]) -> None:
        self.layers = layers

    def lookup(self, rel: str) -> Entry | None:
        parts = rel.split("/")
        for layer in self.layers:
            hidden_below = False
            present = True
            for depth in range(1, len(parts)):
                prefix = "/".join(parts[:depth])
                st = _lstat_at(layer, prefix)
                if st is None:
                    present = False
                    break
                if not stat.S_ISDIR(st.st_mode):
                    return None  # a file or whiteout here hides everything below it
                if is_opaque(layer, prefix):
                    hidden_below = True
            if present:
                st = _lstat_at(layer, rel)
                if st is not None:
                    return None if is_whiteout(st) else _entry(layer, rel, st)
            if hidden_below:
                return None
        return None

    def walk(self, rel: str = "") -> Iterator[str]:
        """Every path the merged view shows below `rel` (files, links and dirs), sorted."""
        names: set[str] = set()
        for layer in self.layers:
            names.update(_list_dir(layer, rel))
        for name in sorted(names):
            child = f"{rel}/{name}" if rel else name
            entry = self.lookup(child)
            if entry is None:
                continue
            yield child
            if entry.kind == "dir":
                check_tree_depth(child)
                yield from self.walk(child)


def _entry(layer: Path, rel: str, st: os.stat_result) -> Entry:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        kind = "file"
    elif stat.S_ISDIR(mode):
        kind = "dir"
    elif stat.S_ISLNK(mode):
        return Entry("symlink", stat.S_IMODE(mode), st.st_size, layer, read_link(layer, rel))
    else:
        kind = "other"
    return Entry(kind, stat.S_IMODE(mode), st.st_size, layer)


def changed_paths(layers: list[Path]) -> set[str]:
    """Every path that appears in any of `layers` (the layers above a baseline).

    `os.fwalk` works on directory descriptors and never follows symlinks, so a workspace
    swapping a directory for a link cannot send the walk outside the layer.
    """
    found: set[str] = set()
    for layer in layers:
        for dirpath, dirnames, filenames, _fd in os.fwalk(layer):
            rel_dir = os.path.relpath(dirpath, layer)
            check_tree_depth(rel_dir)  # before fwalk descends further
            for name in dirnames + filenames:
                found.add(name if rel_dir == "." else f"{rel_dir}/{name}")
    return found

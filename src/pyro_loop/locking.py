"""Advisory file locks that say when they wait."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(
    path: Path, *, on_wait: Callable[[], None] | None = None, shared: bool = False
) -> Iterator[None]:
    """Hold an flock on `path` (created if missing) for the duration of the block.

    `on_wait` is called once if another process holds the lock, so callers can say
    "waiting for ..." instead of hanging silently. If the lock file is deleted or replaced
    while held, a waiter takes the lock on the file now at the path (see `_locked_fd`), so
    holders exclude each other again from then on; the holder of the old file may still be
    inside its block meanwhile, which is why the store's publish never replaces a complete
    layer.
    """
    fd = acquire_lock(path, on_wait=on_wait, shared=shared)
    try:
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def acquire_lock(
    path: Path, *, on_wait: Callable[[], None] | None = None, shared: bool = False
) -> int:
    """The lock of `file_lock`, held until the returned descriptor is closed: for a lock that
    outlives a block, handed to the thread that finishes the work it guards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return _locked_fd(path, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, on_wait)


def _locked_fd(path: Path, mode: int, on_wait: Callable[[], None] | None) -> int:
    """A descriptor of the file at `path`, locked. A lock on a file that is no longer the one
    at `path` (deleted or replaced while we waited) excludes nobody: whoever opens the path
    next locks another file. So after each flock the descriptor is checked against the path,
    and the lock taken again on the current file when they differ."""
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None and not told:
                    on_wait()
                    told = True
                fcntl.flock(fd, mode)
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    held = os.fstat(fd)
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino)

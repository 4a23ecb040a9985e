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
    "waiting for ..." instead of hanging silently.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock

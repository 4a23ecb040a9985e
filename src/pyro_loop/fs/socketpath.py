"""Unix socket addresses for paths of any length.

A socket's address is limited to 107 bytes (sun_path), and pyro's sockets live deep in the
user's cache directory; a longer path is reached through an open descriptor of its directory.
"""

from __future__ import annotations

import os
from pathlib import Path

_DIR_FDS: dict[str, int] = {}


def socket_address(path: Path) -> str:
    """A bindable/connectable address for `path`, even beyond the 107-byte sun_path limit."""
    text = str(path)
    if len(text.encode()) < 100:
        return text
    # Go through the directory's /proc fd link: "/proc/self/fd/N/agent.sock" is always short.
    parent = str(path.parent)
    fd = _DIR_FDS.get(parent)
    if fd is None:
        fd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        _DIR_FDS[parent] = fd
    return f"/proc/self/fd/{fd}/{path.name}"

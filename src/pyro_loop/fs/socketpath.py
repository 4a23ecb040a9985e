"""Unix socket addresses for paths of any length.

A socket's address is limited to 107 bytes (sun_path), and pyro's sockets live deep in the
user's cache directory; a longer path is reached through an open descriptor of its directory.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # pathlib is not loaded for this: the fork server's client stays lean
    from pathlib import PurePath

_DIR_FDS: dict[str, int] = {}


def socket_address(path: PurePath | str) -> str:
    """A bindable/connectable address for `path`, even beyond the 107-byte sun_path limit."""
    text = os.fspath(path)
    if len(text.encode()) < 100:
        return text
    # Go through the directory's /proc fd link: "/proc/self/fd/N/agent.sock" is always short.
    parent, name = os.path.split(text)
    fd = _DIR_FDS.get(parent)
    if fd is None:
        fd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        _DIR_FDS[parent] = fd
    return f"/proc/self/fd/{fd}/{name}"

"""Unix socket addresses for paths of any length.

A socket's address is limited to 107 bytes (sun_path), and pyro's sockets live deep in the
user's cache directory; a longer path is reached through an open descriptor of its directory.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # pathlib is not loaded for this: the fork server's client stays lean
    import _socket
    import socket
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


def user_runtime_dir() -> str | None:
    """This user's directory for pyro's background servers' sockets ($XDG_RUNTIME_DIR or
    /tmp, then `pyro-UID`); None when it is not safely this user's alone."""
    import stat

    runtime = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    directory = os.path.join(runtime, f"pyro-{os.getuid()}")
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = os.lstat(directory)
    except OSError:
        return None
    # Another user's directory (or a link) in a shared /tmp must never be used.
    if st.st_uid != os.getuid() or (st.st_mode & 0o777) != 0o700 or not stat.S_ISDIR(st.st_mode):
        return None
    return directory


def server_socket(kind: str, *scope: str) -> str | None:
    """The socket of one of pyro's background servers (`kind`) for this user, interpreter,
    installation and PYRO_HOME (and `scope`, such as the tree it serves); None when the
    user's runtime directory is not safely theirs."""
    import sys
    import zlib

    directory = user_runtime_dir()
    if directory is None:
        return None
    package = os.path.dirname(os.path.dirname(__file__))
    identity = "\0".join((sys.executable, package, os.environ.get("PYRO_HOME", ""), *scope))
    return os.path.join(directory, f"{kind}-{zlib.crc32(identity.encode()):08x}.sock")


def recv_exact(sock: _socket.socket, size: int) -> bytes | None:
    """`size` bytes from `sock`; None when the stream ends first."""
    data = bytearray()  # not bytes: a message of many chunks is not copied once per chunk
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def hold_lock(path: str) -> int | None:
    """Take `path.lock` for a server that must run once: its descriptor (held while the
    process lives, with the pid written in it), or None when another process holds it.
    The lock file is never removed: a process that opened it just before would then lock a
    file no longer at that path, and a second server could start beside a new one."""
    import fcntl

    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # who serves, for whoever wants to stop it
    return fd


def lock_holder(path: str) -> int | None:
    """The pid of the process holding `path.lock` (see hold_lock), if one does."""
    import fcntl

    try:
        fd = os.open(path + ".lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            return int(os.read(fd, 32) or b"0") or None
        except ValueError:
            return None
    else:
        return None  # nobody holds it: no server
    finally:
        os.close(fd)


def listen_at(path: str) -> socket.socket:
    """A non-blocking listening socket at `path` (a crashed server's socket file is replaced:
    call this only while holding the lock)."""
    import contextlib
    import socket

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_address(path))
    listener.listen(64)
    listener.setblocking(False)
    return listener


def peer_is_me(conn: socket.socket) -> bool:
    """Is the process at the other end of a Unix socket this user's?"""
    import socket
    import struct

    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return bool(struct.unpack("3i", creds)[1] == os.getuid())

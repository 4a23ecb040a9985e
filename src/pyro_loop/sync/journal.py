"""The change journal: which paths of the host tree changed since the last look, without an
lstat of every path (git's fsmonitor, for pyro's host scan).

A host scan record (hostscan.py) vouches for the stat data of every path that takes part in
sync. Checking it costs one lstat per path: a few milliseconds at 2,000 files, forty at
20,000, on every exec. The journal's server (journald.py, one per host tree and user) holds
inotify watches on the record's directories and numbers what it saw in batches. A record
keeps the number (the token) up to which it accounts for every event; the next check asks
for the paths changed after it and looks at just those.

Why that is safe, and where it stops:
- A token is only given for watches already in place before the look at every path (a
  check's, or a full sync's walk) that it is stored with: every change after that look's
  lstat of a path made an event.
- A directory new to the record is watched, then its entries are looked at again, and
  those that changed meanwhile are not vouched for (hostscan.HostScan._watch_new).
- Lost events (the kernel's queue overflowed), a restarted server, a server that cannot
  watch (the user's watch limit, or more than its share of it) and any error: no answer,
  and the caller looks at every path as before. Nothing waits on the server longer than
  TIMEOUT.
- Not seen by inotify, as by git's fsmonitor: a write through a shared memory mapping, and a
  write through a hard link from outside the tree. `PYRO_JOURNAL=0` turns the journal off.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import socket
import sys
from typing import Any, ClassVar

from pyro_loop.fs.socketpath import recv_exact, server_socket, socket_address

PROTOCOL = 1
SWITCH = "PYRO_JOURNAL"
TIMEOUT = 1.0
MAX_MESSAGE = 64 << 20

Token = tuple[str, int]  # the server's epoch, and a batch number in it

# Requests: (PROTOCOL, root, "watch", [directory, ...]) -> ("ok", epoch, seq, []), and
# (PROTOCOL, root, "since", (epoch, seq)) -> ("ok", epoch, seq, [path, ...]); ("no",) when
# the server cannot answer (a server of another root, whose socket's name collided, too).
# Paths are relative to the tree's root ("" is the root); a directory that is no longer the
# one watched at its path (deleted, moved away) is named with a "/" after it ("/": the root).
# Each message is a 4-byte length, then marshal'd data.


def send_message(sock: socket.socket, value: Any) -> None:
    data = marshal.dumps(value)
    sock.sendall(len(data).to_bytes(4, "big") + data)


def recv_message(sock: socket.socket) -> Any:
    """The next message, or None at the end of the stream."""
    head = recv_exact(sock, 4)
    if head is None:
        return None
    size = int.from_bytes(head, "big")
    if size > MAX_MESSAGE:
        raise ValueError("message too large")
    body = recv_exact(sock, size)
    if body is None:
        raise EOFError("truncated message")
    return marshal.loads(body)


class JournalClient:
    """This process's line to the journal server of one host tree. Every call answers None
    when the server cannot tell; one that is not running is started for the next call."""

    _started: ClassVar[set[str]] = set()  # servers this process started: once each

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/") or "/"
        self.path = server_socket("journal", self.root)

    def since(self, token: Token) -> tuple[list[str], Token] | None:
        """The paths changed since `token`, and the token that accounts for them."""
        reply = self._ask("since", tuple(token))
        if reply is None or not isinstance(reply[3], list):
            return None
        return reply[3], (reply[1], reply[2])

    def watch(self, dirs: list[str]) -> Token | None:
        """Have these directories watched: the token from which every change in them counts."""
        reply = self._ask("watch", dirs)
        return None if reply is None else (reply[1], reply[2])

    def _ask(self, op: str, args: object) -> tuple[str, str, int, object] | None:
        """One request on a connection of its own (a few tens of microseconds: not worth a
        connection kept open, which every caller would have to close)."""
        if self.path is None:
            return None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(TIMEOUT)
            try:
                sock.connect(socket_address(self.path))
            except OSError:
                self._start()
                return None
            try:
                send_message(sock, (PROTOCOL, self.root, op, args))
                reply = recv_message(sock)
            except (OSError, ValueError, EOFError, TypeError):
                return None
        if (isinstance(reply, tuple) and len(reply) == 4 and reply[0] == "ok"
                and isinstance(reply[1], str) and isinstance(reply[2], int)):  # fmt: skip
            return reply
        return None

    def _start(self) -> None:
        assert self.path is not None
        if self.path in self._started:
            return
        self._started.add(self.path)
        from pyro_loop.procutil import spawn_detached

        # This process's environment: where pyro is found (PYTHONPATH), and its PYRO_HOME,
        # whose removal ends the server.
        with contextlib.suppress(OSError):
            spawn_detached([sys.executable, "-m", "pyro_loop.sync.journald", self.root, self.path],
                           env=dict(os.environ))  # fmt: skip


def switched_off() -> bool:
    return os.environ.get(SWITCH) == "0"


def user_watch_limit() -> int | None:
    """fs.inotify.max_user_watches: how many directories one user may watch in all."""
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def describe(root: str) -> str:
    """One line for `pyro doctor` about the journal of the tree at `root`."""
    from pyro_loop.fs.socketpath import lock_holder

    if switched_off():
        return f"off ({SWITCH}=0): every check looks at each path of the tree"
    path = JournalClient(root).path
    pid = None if path is None else lock_holder(path)
    limit = user_watch_limit()
    per_user = "" if limit is None else f"; up to {limit:,} watched directories per user"
    if pid is None:
        return f"not running for this project: the next sync starts it{per_user}"
    return f"running for this project (pid {pid}){per_user}; {SWITCH}=0 turns it off"

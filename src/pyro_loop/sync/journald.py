"""The change journal's server: one process per host tree, holding inotify watches on the
directories a host scan record covers, and telling a client which paths changed since it
last asked. The client half, and why this is safe, are in journal.py.

The kernel queues an inotify event before the system call that caused it returns, so events
read after a client's request include every change finished before it. The server reads
its queue whenever it is readable (so it does not overflow) and once more for each request.

Run as `python -m pyro_loop.sync.journald ROOT SOCKET`: it serves ROOT until it has been idle
for IDLE_EXIT seconds, or ROOT or its PYRO_HOME disappears.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import time

from inotify_simple import INotify, flags

from pyro_loop.fs.socketpath import hold_lock, listen_at, peer_is_me
from pyro_loop.sync.journal import PROTOCOL, recv_message, send_message, user_watch_limit

IDLE_EXIT = 900.0
TICK = 5.0
# Seconds the queue is left to fill after each read of it: far below what fills the kernel's
# queue (16,384 events by default; an overflow only makes a client look at every path).
DRAIN_PAUSE = 0.02
# What changes a path's stat data or a directory's listing. IN_ONLYDIR|IN_DONTFOLLOW: a watch
# lands on a directory or not at all, never through a link.
MASK = (flags.MODIFY | flags.ATTRIB | flags.CREATE | flags.DELETE | flags.MOVED_FROM
        | flags.MOVED_TO | flags.DELETE_SELF | flags.MOVE_SELF | flags.ONLYDIR
        | flags.DONT_FOLLOW)  # fmt: skip
LISTING = flags.CREATE | flags.DELETE | flags.MOVED_FROM | flags.MOVED_TO
GONE = flags.IGNORED | flags.DELETE_SELF | flags.MOVE_SELF
# Past this many remembered paths, the oldest are forgotten: a client that asks from before
# them is told the journal cannot say (it then looks at every path itself).
MAX_REMEMBERED = 100_000


def watch_share() -> int:
    """How many directories one server may watch: a quarter of the user's inotify watches
    (8,192 on older kernels, up to about a million on newer ones), so that the rest are left
    to the user's other tools."""
    limit = user_watch_limit()
    return 2048 if limit is None else limit // 4


class Journal:
    """The watches and what they saw: batches of changed paths, numbered."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/") or "/"
        self.inotify = INotify(nonblocking=True)
        self.epoch = os.urandom(8).hex()  # a restarted server's numbers mean nothing old
        self.seq = 0
        self.oldest = 0  # the oldest batch number a client can ask from
        self.batches: list[tuple[int, set[str]]] = []
        self.remembered = 0
        self.dirs: dict[int, str] = {}  # watch descriptor -> directory, relative to root

    def close(self) -> None:
        self.inotify.close()

    def watch(self, dirs: list[str]) -> bool:
        """Watch these directories (relative to the root; "" is the root). False when one
        could not be watched for another reason than being gone, or when there are more
        than this server's share of the user's watches: a tree that large (or hostile) must
        not leave the user's editor or other tools without any."""
        if len(self.dirs) + len(set(dirs) - set(self.dirs.values())) > watch_share():
            return False  # (a directory watched already is no new watch)
        for rel in dirs:
            path = f"{self.root}/{rel}" if rel else self.root
            try:
                wd = self.inotify.add_watch(path, MASK)
            except FileNotFoundError:
                continue  # gone: its parent's listing changed, which the client sees
            except NotADirectoryError:
                continue  # a link or file now: the same
            except OSError:  # the user's limit, reached by others: give back what this took
                for wd in list(self.dirs):
                    with contextlib.suppress(OSError):
                        self.inotify.rm_watch(wd)
                self.dirs.clear()
                self.seq += 1  # and no token from before vouches for anything now
                self.batches.append((self.seq, set()))
                self.oldest = self.seq
                return False
            self.dirs[wd] = rel  # the same directory moved keeps its descriptor: renamed here
        return True

    def drain(self) -> None:
        """Read every queued event into a new batch."""
        changed: set[str] = set()
        lost = False
        for event in self.inotify.read(timeout=0):
            if event.mask & flags.Q_OVERFLOW:
                lost = True
                continue
            rel = self.dirs.get(event.wd)
            if rel is None:
                continue
            if event.mask & GONE:
                # No longer the directory at that path (deleted, moved away, unmounted):
                # named with a "/" after it, so that a client watches what is there now.
                if event.mask & flags.IGNORED:
                    del self.dirs[event.wd]
                changed.add(rel + "/")
                continue
            if event.name:
                changed.add(f"{rel}/{event.name}" if rel else event.name)
            if not event.name or event.mask & LISTING:
                changed.add(rel)
        if changed or lost:
            self.seq += 1
            self.batches.append((self.seq, changed))
            self.remembered += len(changed)
        if lost:
            self.oldest = self.seq  # events were lost: nothing from before can be answered
        while self.remembered > MAX_REMEMBERED:
            seq, paths = self.batches.pop(0)
            self.remembered -= len(paths)
            self.oldest = max(self.oldest, seq)

    def since(self, epoch: str, seq: int) -> list[str] | None:
        """The paths changed after batch `seq` of `epoch`; None when that is not known."""
        if epoch != self.epoch or not self.oldest <= seq <= self.seq:
            return None
        changed: set[str] = set()
        for number, paths in reversed(self.batches):
            if number <= seq:
                break
            changed |= paths
        return sorted(changed)


def answer(journal: Journal, request: object) -> object:
    """The reply to one request (see journal.py for the messages)."""
    if (not isinstance(request, tuple) or len(request) != 4 or request[0] != PROTOCOL
            or request[1] != journal.root):  # fmt: skip
        return ("no",)
    _protocol, _root, op, args = request
    journal.drain()
    if op == "watch" and isinstance(args, list) and all(isinstance(a, str) for a in args):
        if not journal.watch(args):
            return ("no",)
        journal.drain()
        return ("ok", journal.epoch, journal.seq, [])
    if op == "since" and isinstance(args, tuple) and len(args) == 2:
        epoch, seq = args
        if not isinstance(epoch, str) or not isinstance(seq, int):
            return ("no",)
        changed = journal.since(epoch, seq)
        if changed is None:
            return ("no",)
        return ("ok", journal.epoch, journal.seq, changed)
    return ("no",)


def serve(journal: Journal, listener: socket.socket, home: str | None) -> None:
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    events = journal.inotify.fileno()
    poller.register(events, select.POLLIN)
    clients: dict[int, socket.socket] = {}
    last = checked = time.monotonic()
    resume: float | None = None  # when the queue is listened to again, after a pause
    while True:
        wait = TICK if resume is None else max(0.0, resume - time.monotonic())
        for fd, _event in poller.poll(wait * 1000):
            if fd == events:
                journal.drain()
                # Events come one at a time while a checkout writes: read at each, they cost
                # a wake-up apiece (44 ms of CPU for a 1,000-file switch, taken from the sync
                # that follows). A pause lets them gather; a request still drains them all.
                poller.unregister(events)
                resume = time.monotonic() + DRAIN_PAUSE
            elif fd == listener.fileno():
                _accept(listener, poller, clients)
            else:
                last = time.monotonic()
                _serve_one(journal, clients, fd, poller)
        now = time.monotonic()
        if resume is not None and now >= resume:
            poller.register(events, select.POLLIN)
            resume = None
        if now - checked >= TICK:  # also while events keep coming (a build writing)
            checked = now
            gone = not os.path.isdir(journal.root) or (home and not os.path.isdir(home))
            if gone or now - last > IDLE_EXIT:
                return


def _accept(
    listener: socket.socket, poller: select.poll, clients: dict[int, socket.socket]
) -> None:
    try:
        conn, _addr = listener.accept()
    except (BlockingIOError, InterruptedError):
        return
    if not peer_is_me(conn):
        conn.close()
        return
    conn.settimeout(2.0)  # a request comes whole: a client that stalls is dropped
    clients[conn.fileno()] = conn
    poller.register(conn.fileno(), select.POLLIN)


def _serve_one(journal: Journal, clients: dict[int, socket.socket], fd: int,
               poller: select.poll) -> None:  # fmt: skip
    conn = clients[fd]
    try:
        request = recv_message(conn)
        if request is not None:
            send_message(conn, answer(journal, request))
            return
    except (OSError, ValueError, EOFError, TypeError):
        pass
    poller.unregister(fd)
    del clients[fd]
    conn.close()


def main(argv: list[str]) -> int:
    root, path = argv[1], argv[2]
    home = os.environ.get("PYRO_HOME")
    lock = hold_lock(path)
    if lock is None:
        return 0  # another server holds it
    journal = Journal(root)
    listener = listen_at(path)
    try:
        serve(journal, listener, home)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while holding the lock: no other server can have bound it
        listener.close()
        journal.close()
        os.close(lock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

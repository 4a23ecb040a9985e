"""The gate that lets put_tar write files in place while nobody could see one half written.

put_tar writes each file to a temporary name and renames it over its target, so a reader
sees the old content or the new, never a mix. The rename and the inode behind it are most of
what a file costs the agent (a 1,000-file branch switch spends half its time there), and they
buy nothing while no process of the workspace is there to read. Then a file pyro put before
is written again in its own inode instead (tarput.py).

"Nobody there" must hold for the whole stream, and the server forks a handler for every
request, which may start commands. So each handler holds a shared lock (flock) on this
module's file from before its operation until the operation is done (before its reply goes
out, so the caller's next request never finds it held), and put_tar asks for the
exclusive lock without waiting: granted, no handler is at work. A handler forked since waits
for the shared lock until the stream ends, before it can start anything. Then the stream is
quiet if /proc shows no process but the agent's own: the server, its handlers (done, or
waiting at the gate) and the sandbox's init (the server's parent, which never opens a
workspace file). A command, a service or anything they left running is a process of another
parent: the stream is then written the usual way.

A process of the workspace could lock the file as well and keep every request waiting at the
gate; so could it by stopping the server, which it may signal.
"""

from __future__ import annotations

import fcntl  # a small C module (0.1 ms): loaded with the server, shared by its handlers
import os


class _Gate:
    fd = -1  # this handler's own open description of the file (a flock belongs to one)
    init = 0  # the sandbox's init: the server's parent


_gate = _Gate()


def note_server() -> None:
    """Called by the server at start, before it forks a handler."""
    _gate.init = os.getppid()


def enter() -> None:
    """Every handler, before its operation: wait while a stream writes files in place, then
    hold the gate open (shared) until `leave`."""
    try:
        _gate.fd = os.open(__file__, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no file to lock: no stream is quiet
        return
    fcntl.flock(_gate.fd, fcntl.LOCK_SH)


def leave() -> None:
    """The handler's operation is done: it no longer counts as at work (a process it forked,
    a service's supervisor, counts as one of the workspace's)."""
    if _gate.fd >= 0:
        fcntl.flock(_gate.fd, fcntl.LOCK_UN)


def hold_if_alone() -> bool:
    """Shut the gate (until `leave`) if no handler is at work and no process but the agent's
    own is in the sandbox: then nothing can see the workspace. False: the gate stays open
    and the caller writes files the usual way."""
    if _gate.fd < 0:
        return False
    fcntl.flock(_gate.fd, fcntl.LOCK_UN)  # what `enter` took (the same description)
    try:
        fcntl.flock(_gate.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a handler is at work
        fcntl.flock(_gate.fd, fcntl.LOCK_SH)
        return False
    if _alone():
        return True
    fcntl.flock(_gate.fd, fcntl.LOCK_SH)  # downgraded: waiting handlers may go on
    return False


def _alone() -> bool:
    server = os.getppid()
    own = {os.getpid(), server, _gate.init}
    try:
        names = os.listdir("/proc")
    except OSError:
        return False
    for name in names:
        if name.isdigit() and int(name) not in own and _parent(name) not in (0, server):
            return False
    return True


def _parent(pid: str) -> int:
    """The parent of process `pid`, 0 if it is gone (then it counts for nothing)."""
    try:
        with open("/proc/%s/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    # "pid (comm) state ppid ...": comm may hold any byte, the last ")" ends it
    return int(stat[stat.rindex(b")") + 2 :].split(None, 2)[1])

"""The fork server: pyro with its daily modules loaded, forking a child per command.

Started in the background by the first daily command that finds none (starter.py), one per
user, interpreter, installation and PYRO_HOME. It serves only its own user (the socket's
directory is the user's, mode 0700, and each peer's uid is checked), and goes away on its
own: after IDLE_EXIT seconds without a command, when its socket is removed or replaced or
its PYRO_HOME deleted, and when a pyro source file it loaded changed (an upgrade: it answers
"stale" and exits, and the command runs in full). It holds no state between commands: each
child is a fresh copy of the server as it was after loading, and reads the project, its
configuration and the store anew, as a `pyro` started in full does.

    python -m pyro_loop.cli.forkserver SOCKET_PATH
"""

from __future__ import annotations

import contextlib
import gc
import io
import marshal
import os
import select
import signal
import socket
import sys
import time
from typing import NoReturn

from pyro_loop.cli import starter
from pyro_loop.fs.socketpath import hold_lock, listen_at, peer_is_me, recv_exact
from pyro_loop.procutil import settle_background

IDLE_EXIT = 900.0  # seconds without a command before the server exits
TICK = 10.0  # seconds between looks at the socket and the idle time
MAX_MESSAGE = 4 * 1024 * 1024
# What the daily commands load. Loaded once here, they cost the children nothing.
PRELOAD = (
    "pyro_loop.cli.daily",
    "pyro_loop.cli.entry",
    "pyro_loop.cli.lean",
    "pyro_loop.cli.progress",
    "pyro_loop.cli.terminal",
    "pyro_loop.fs.socketpath",
    "pyro_loop.guard",
    "pyro_loop.loop.live",
    "pyro_loop.loop.prepare",
    "pyro_loop.loop.status",
    "pyro_loop.loop.warmth",
    "pyro_loop.project.config",
    "pyro_loop.project.discovery",
    "pyro_loop.project.hooks",
    "pyro_loop.runtime.bwrap",
    "pyro_loop.sync",
    "pyro_loop.sync.hostscan",
    "pyro_loop.sync.journal",
    "pyro_loop.sync.result",
    "pyro_loop.sync.watcher",
    "pyro_loop.workspace.client",
    "pyro_loop.workspace.manager",
    "pyro_loop.workspace.ports",
    "pygit2",
    "hashlib",  # a full sync's digests
    "subprocess",  # background processes: the change journal's server, a standby's boot
)


def main(argv: list[str]) -> int:
    path = argv[1]
    lock = hold_lock(path)
    if lock is None:
        return 0  # another server holds it
    preload()
    # After loading: meanwhile commands run in full, not wait. A spare polls it, beside the
    # server's end.
    listener = listen_at(path)
    sources = _sources()
    own = starter.context()
    gc.collect()
    gc.freeze()  # what is loaded stays shared with the children, not copied on write
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    identity = os.stat(path).st_ino  # the socket's: replaced or removed, the server ends
    serve(listener, path, identity, sources, own, lock)
    if _still_ours(path, identity):  # its socket goes with it (its lock file stays: hold_lock)
        os.unlink(path)
    return 0


def preload() -> None:
    """Load what the daily commands need, and compile their patterns."""
    for module in PRELOAD:
        __import__(module)
    from pyro_loop.project.config import compile_rules

    compile_rules()


def _sources() -> dict[str, float]:
    """The mtimes of the pyro sources loaded: a change means this server is out of date."""
    found = {}
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        source = getattr(module, "__file__", None)
        if source and (name == "pyro_loop" or name.startswith("pyro_loop.")):
            try:
                found[source] = os.stat(source).st_mtime
            except OSError:
                found[source] = 0.0
    return found


def _stale(sources: dict[str, float]) -> bool:
    for source, mtime in sources.items():
        try:
            if os.stat(source).st_mtime != mtime:
                return True
        except OSError:
            return True
    return False


def serve(listener: socket.socket, path: str, identity: int, sources: dict[str, float],
          own: starter.Context, lock: int) -> None:  # fmt: skip
    """Keep one spare child waiting for the next command, and fork another once it is taken.

    The spare, not the server, accepts the connection: forked while nobody waits, it starts
    the command sooner than a fork made after the request would (a fork of this process
    takes about 2 ms; copying its memory ahead with MADV_POPULATE_WRITE was measured too,
    and made commands slower)."""
    home = os.environ.get("PYRO_HOME")
    alive_r, alive_w = os.pipe()  # the spare sees end of file on it once the server is gone
    while True:
        taken_r, taken_w = os.pipe()
        try:
            spare = os.fork()
        except OSError:
            time.sleep(1)
            continue
        if spare == 0:
            for fd in (taken_r, alive_w, lock):  # the lock is the server's alone
                os.close(fd)
            _spare(listener, taken_w, alive_r, (path, identity, sources, own))
        os.close(taken_w)
        outcome = _wait_taken(taken_r, path, identity, home)
        os.close(taken_r)
        if outcome != starter.CHILD:
            with contextlib.suppress(OSError):
                os.kill(spare, signal.SIGKILL)  # idle too long, or out of date: no spare left
            return


def _wait_taken(taken: int, path: str, identity: int, home: str | None) -> bytes:
    """What became of the spare: CHILD (it took a command), STALE (it found the server out
    of date), or b"" (it died, or the server has been idle too long, or its socket or
    PYRO_HOME is gone: time to exit)."""
    poller = select.poll()
    poller.register(taken, select.POLLIN)
    waited = 0.0
    while True:
        if poller.poll(TICK * 1000):
            return os.read(taken, 1)
        waited += TICK
        if waited > IDLE_EXIT or not _still_ours(path, identity):
            return b""
        if home and not os.path.isdir(home):
            return b""  # its PYRO_HOME was deleted (a test's, a benchmark's): nothing to serve


Checks = tuple[str, int, dict[str, float], "starter.Context"]


def _spare(listener: socket.socket, taken: int, alive: int, checks: Checks) -> NoReturn:
    """Wait for a command (or the server's end), tell the server it was taken, run it."""
    path, identity, sources, own = checks
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    poller.register(alive, select.POLLIN)
    while True:
        ready = {fd for fd, _event in poller.poll()}
        if alive in ready:
            os._exit(0)
        try:
            conn, _addr = listener.accept()
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            os._exit(1)
        received = _receive(conn)
        if received is None:
            conn.close()
            continue
        request, fds = received
        if _stale(sources) or not _still_ours(path, identity):
            _close_all(fds)
            _send(conn, starter.STALE)
            os.write(taken, starter.STALE)
            os._exit(0)
        if request[5] != own:
            _close_all(fds)
            _send(conn, starter.ELSEWHERE)
            conn.close()
            continue
        os.write(taken, starter.CHILD)
        for fd in (taken, alive, listener.fileno()):
            os.close(fd)
        _child(conn, request, fds)


def _still_ours(path: str, identity: int) -> bool:
    try:
        return os.stat(path).st_ino == identity
    except OSError:
        return False


def _receive(conn: socket.socket) -> tuple[starter.Request, list[int]] | None:
    """The client's request and descriptors; None for anything but this user's well-formed
    request of this protocol."""
    fds: list[int] = []
    try:
        if not peer_is_me(conn):
            return None
        conn.settimeout(5.0)
        data, ancillary, _flags, _addr = conn.recvmsg(65536, socket.CMSG_SPACE(4 * 4))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += starter.unpack_fds(payload)
        if len(data) < 4 or len(fds) != 4:
            raise ValueError("malformed request")
        size = int.from_bytes(data[:4], "big")
        if size > MAX_MESSAGE:
            raise ValueError("request too large")
        rest = recv_exact(conn, size - len(data) + 4)
        if rest is None:
            raise ValueError("truncated request")
        message = data[4:] + rest
        conn.settimeout(None)
        request = marshal.loads(message)
        if not isinstance(request, tuple) or len(request) != 6 or request[0] != starter.PROTOCOL:
            raise ValueError("not a request of this protocol")
        return request, fds
    except (OSError, ValueError, EOFError, TypeError):
        _close_all(fds)
        return None


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _send(conn: socket.socket, kind: bytes, value: int = 0) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(kind + value.to_bytes(4, "big", signed=True))


def _child(conn: socket.socket, request: starter.Request, fds: list[int]) -> NoReturn:
    """Become the client's `pyro`: its directory, environment, umask and streams, then the
    same entry as a full start. Never returns."""
    code = 1
    try:
        _version, argv0, argv, environ, umask, _context = request
        _become(fds, environ, umask)
        sys.argv = [argv0, *argv]
        _send(conn, starter.CHILD, os.getpid())
        _hang_up_with(conn)
        from pyro_loop.cli.entry import dispatch

        code = dispatch(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        # The command is done: its pyro exits now, and this child finishes what it handed
        # to the background (the next standby's boot, a trash removal) on its own, which
        # os._exit would cut off midway; the client's going away no longer stops it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        _send(conn, starter.EXITED, code)
        with contextlib.suppress(Exception):
            settle_background()
        os._exit(code & 0xFF)


def _become(fds: list[int], environ: dict[str, str], umask: int) -> None:
    cwd, *stdio = fds
    os.fchdir(cwd)
    os.close(cwd)
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(environ)
    os.umask(umask)
    # As a Python started by the client would have them: its own handlers, the terminal's
    # job-control signals harmless (this process is not in the terminal's foreground group,
    # and reads no terminal: see starter.py).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for job_control in (signal.SIGTTOU, signal.SIGTTIN):
        signal.signal(job_control, signal.SIG_IGN)
    original = sys.__stdout__
    encoding = original.encoding if original else "utf-8"
    errors = (original.errors if original else None) or "strict"
    sys.stdin = _stream(0, "r", encoding, errors)
    sys.stdout = _stream(1, "w", encoding, errors)
    sys.stderr = _stream(2, "w", encoding, "backslashreplace", line_buffering=True)


def _stream(fd: int, mode: str, encoding: str, errors: str, *,
            line_buffering: bool = False) -> io.TextIOWrapper:  # fmt: skip
    """A standard stream on `fd`, buffered as the interpreter sets it up at start."""
    raw = io.FileIO(fd, mode, closefd=False)
    tty = raw.isatty()
    buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffered, encoding=encoding, errors=errors,
                            line_buffering=line_buffering or tty)  # fmt: skip


def _hang_up_with(conn: socket.socket) -> None:
    """When the client goes away (killed), this child gets SIGHUP, as a `pyro` whose
    terminal closed would: the command in the workspace is stopped with it."""
    import threading

    def wait() -> None:
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGHUP)

    threading.Thread(target=wait, daemon=True).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The daily commands through a preloaded pyro: the client half of the fork server.

A Python CLI pays for its imports on every start: for `pyro exec -- true`, about twice what
the interpreter's own start costs, before any work. The fork server (forkserver.py) has
pyro's modules loaded already and forks a child per command; the child takes this process's
working directory, environment, umask and standard streams (passed over a Unix socket) and
runs the same entry as a `pyro` started in full (entry.dispatch), so output, errors and exit
codes are one code path. This process waits, forwards the signals it gets to the child, and
exits with the child's code.

This module imports only what the interpreter has loaded anyway, or cheap C modules.
Whenever the server cannot serve (not running, another pyro version, refused), `run`
returns None and the command runs in this process, as it always can; a server that is not
running is started in the background for the next command. `PYRO_FORK_SERVER=0` turns it
off. Only the commands that never read a terminal go through it: the child is not in the
terminal's foreground process group, so `exec -i`/`-t` and the full CLI run here.
"""

from __future__ import annotations

import _socket
import marshal
import os
import sys

from pyro_loop.fs.socketpath import lock_holder, recv_exact, server_socket, socket_address

TYPE_CHECKING = False
if TYPE_CHECKING:  # typeshed describes `_signal` (cheap to import) as `signal` (slow: enum)
    import signal as _signal
    from types import FrameType
else:
    import _signal

PROTOCOL = 1
SWITCH = "PYRO_FORK_SERVER"
DAILY = frozenset(("exec", "retry", "status", "up", "prepare"))
TERMINAL_OPTIONS = frozenset(("-i", "--interactive", "-t", "--tty"))
# What the client forwards to the child, as a terminal's keys or `kill` would reach a pyro
# running in the foreground: these end or steer the command there too.
FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGWINCH)

# Client -> server: one message, a 4-byte length then marshal'd (PROTOCOL, argv0, argv,
# environ, umask, context), with the working directory, stdin, stdout and stderr as
# descriptors. Server -> client: b"P" + the child's pid (4 bytes) once it runs, b"X" + its
# exit code (4 bytes, signed) when it ends; instead of P, b"S": the server is out of date,
# or b"N": this process's context is not the server's; either way, run here.
CHILD, EXITED, STALE, ELSEWHERE = b"P", b"X", b"S", b"N"
NAMESPACES = ("mnt", "user", "pid", "net", "uts", "ipc", "cgroup")
if TYPE_CHECKING:
    # Priority, resource limits, control groups, namespaces, gid, groups, text encodings.
    Context = tuple[int, bytes, bytes, tuple[str, ...], int, tuple[int, ...], str]


# SCM_RIGHTS carries C ints; packed by hand on both sides (the array module would load
# collections to register itself, on the path of every command).
FD_SIZE = 4
Request = tuple[int, str, list[str], dict[str, str], int, "Context"]  # what the message holds


def pack_fds(fds: tuple[int, ...]) -> bytes:
    return b"".join(fd.to_bytes(FD_SIZE, sys.byteorder, signed=True) for fd in fds)


def unpack_fds(data: bytes) -> list[int]:
    whole = len(data) - len(data) % FD_SIZE
    return [int.from_bytes(data[i : i + FD_SIZE], sys.byteorder, signed=True)
            for i in range(0, whole, FD_SIZE)]  # fmt: skip


def switched_off() -> bool:
    return os.environ.get(SWITCH, "1") == "0"


def eligible(argv: list[str]) -> bool:
    """A daily command that never reads the terminal (see the module's docstring)."""
    if not argv or argv[0] not in DAILY:
        return False
    options = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
    return not any(arg in TERMINAL_OPTIONS for arg in options)


def socket_path() -> str | None:
    """The server's socket for this user, interpreter, installation and PYRO_HOME; None
    when its directory is not safely this user's."""
    return server_socket("forkserver")


def context() -> Context:
    """What a process inherits besides its environment, directory, umask and streams: its
    priority, resource limits, control groups, namespaces, groups and text encodings. The
    server's child runs a command only for a client whose context is the server's (else a
    `nice pyro`, or one in a memory-limited CI job, would run as the server does). Read
    from /proc: the `resource` module would cost more to load than the whole look."""
    try:
        found = [_read(f"/proc/self/{name}") for name in ("limits", "cgroup")]
        namespaces = tuple(os.readlink(f"/proc/self/ns/{name}") for name in NAMESPACES)
    except OSError:
        found, namespaces = [b"?", b"?"], ()
    limits, cgroups = found
    # And how this interpreter encodes text (the locale, PYTHONUTF8, PYTHONIOENCODING at its
    # start): the child writes through streams encoded as the server's.
    stdout = sys.__stdout__
    encoding = f"{sys.getfilesystemencoding()}:{stdout.encoding if stdout else ''}"
    return (os.getpriority(os.PRIO_PROCESS, 0), limits, cgroups, namespaces, os.getgid(),
            tuple(os.getgroups()), encoding)  # fmt: skip


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def run(argv: list[str]) -> int | None:
    """Run the command through the fork server: its exit code, or None to run it here."""
    if switched_off() or not eligible(argv):
        return None
    path = socket_path()
    if path is None:
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(socket_address(path))
        except (FileNotFoundError, ConnectionRefusedError):
            start_server(path)
            return None
        except OSError:
            return None
        return _ask(sock, argv)
    finally:
        sock.close()


def _ask(sock: _socket.socket, argv: list[str]) -> int | None:
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None  # a deleted working directory: the full path says so
    payload = marshal.dumps((PROTOCOL, sys.argv[0], argv, dict(os.environ), umask, context()))
    message = len(payload).to_bytes(4, "big") + payload
    fds = pack_fds((cwd, 0, 1, 2))
    # From here a signal is the command's: held until the child is known, then passed on.
    forwarder = _Forwarder()
    try:
        sent = sock.sendmsg([message], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        sock.sendall(message[sent:])
        reply = recv_exact(sock, 5)
    except OSError:
        reply = None  # closed stdio, or the server went away: run here
    finally:
        os.close(cwd)
    if reply is None or reply[:1] != CHILD:
        forwarder.release()
        return None
    forwarder.attach(int.from_bytes(reply[1:], "big"))
    while True:
        try:
            reply = recv_exact(sock, 5)
            break
        except InterruptedError:
            continue
        except OSError:
            reply = None
            break
    if reply is not None and reply[:1] == EXITED:
        return int.from_bytes(reply[1:], "big", signed=True)
    # The child ended without a code: killed. End as it did, by the signal that ended it.
    fatal = forwarder.fatal()
    if fatal:
        _signal.signal(fatal[-1], _signal.SIG_DFL)
        os.kill(os.getpid(), fatal[-1])
    sys.stderr.write("pyro: error: the command's process ended without an exit code\n")
    return 1


class _Forwarder:
    """The signals this process gets (FORWARDED), passed on to the child running the command,
    or held until it is known."""

    def __init__(self) -> None:
        self.child: int | None = None
        self.received: list[int] = []
        for signum in FORWARDED:
            _signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.child is not None:
            self._send(signum)

    def _send(self, signum: int) -> None:
        if self.child is None:
            return
        try:  # noqa: SIM105 - contextlib is not loaded yet, and this path stays lean
            os.kill(self.child, signum)
        except OSError:
            pass

    def attach(self, child: int) -> None:
        self.child = child
        for signum in self.received:
            self._send(signum)

    def fatal(self) -> list[int]:
        return [s for s in self.received if s != _signal.SIGWINCH]

    def release(self) -> None:
        """The command runs here after all: the usual handlers back, and a signal that came
        meanwhile delivered to this process as if it had come now."""
        for signum in FORWARDED:
            default = _signal.default_int_handler if signum == _signal.SIGINT else _signal.SIG_DFL
            _signal.signal(signum, default)
        for pending in self.fatal():
            os.kill(os.getpid(), pending)


def running_server() -> int | None:
    """The pid of this user's fork server for this installation and PYRO_HOME, if one runs
    (it holds its lock file while it lives)."""
    path = socket_path()
    return None if path is None else lock_holder(path)


def describe_server() -> str:
    """One line for `pyro doctor`."""
    if switched_off():
        return f"off ({SWITCH}=0): every command loads pyro itself"
    pid = running_server()
    if pid is None:
        return "not running: the next daily command starts it"
    return f"running (pid {pid}): the daily commands start through it; {SWITCH}=0 turns it off"


def start_server(path: str) -> None:
    """Start the fork server in the background, for the next command (this one runs here).
    Two commands starting one each is harmless: the server's lock lets one live."""
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.posix_spawn(
            sys.executable,
            [sys.executable, "-m", "pyro_loop.cli.forkserver", path],
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1, 2)],
            setsid=True,
        )
    except OSError:
        pass
    finally:
        os.close(devnull)

"""The workspace's processes: `exec` runs a command and forwards its output (and its input,
on request, through a pipe or a pseudo-terminal), `freeze` stops every other process until
the client thaws them.

Trusts nothing in the request: argv and env must be strings, the working directory goes
through `confine`, and the environment is the sandbox's own plus what the request adds.
A command runs in a session of its own; on a timeout, or when the client goes away, it is
killed with every process it left behind.

While a command runs, the client may send, besides `I` frames for its stdin (an empty one
closes it), J frames that steer it: {"resize": [rows, cols]} sets the terminal's size (the
kernel tells the foreground process with SIGWINCH) and {"signal": "INT"} signals the
terminal's foreground process group, or the command's own group without a terminal.
"""

from __future__ import annotations

import os
import select
import time

import proctree
import protocol as p
from confine import WORKSPACE, RequestError, confine

TYPE_CHECKING = False
if TYPE_CHECKING:  # typeshed describes `_signal` (cheap to import) as `signal` (slow: enum)
    import signal as _signal
    from _socket import socket
    from typing import Any, NoReturn
else:
    import _signal

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DRAIN_AFTER_EXIT = 0.05  # seconds to keep reading output held open by background children
READ_SIZE = 65536
READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


def command_spec(req: dict[str, Any]) -> tuple[list[str], str, dict[str, str]]:
    """The argv, working directory and environment a request asks for, checked."""
    argv = req.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise RequestError("invalid_request", "argv must be a non-empty list of strings")
    cwd = confine(req.get("cwd") or WORKSPACE)
    if not os.path.isdir(cwd):
        raise RequestError("not_a_directory", "working directory does not exist: " + cwd)
    # The sandbox's own environment (set by the runtime) is the base: nothing from the host.
    env = dict(os.environ)
    env.setdefault("PATH", DEFAULT_PATH)
    env["PWD"] = cwd
    extra = req.get("env") or {}
    if not isinstance(extra, dict):
        raise RequestError("invalid_request", "env must be an object")
    for key, value in extra.items():
        if not isinstance(key, str) or not isinstance(value, str) or "=" in key or not key:
            raise RequestError("invalid_request", "env entries must be NAME=value strings")
        env[key] = value
    return argv, cwd, env


def _window(value: object) -> tuple[int, int]:
    """A request's terminal size [rows, cols] -> (rows, cols), or RequestError."""
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n < 10000 for n in value)
    ):
        raise RequestError("invalid_request", "a terminal size is [rows, cols], each 1-9999")
    return value[0], value[1]


def set_window(fd: int, rows: int, cols: int) -> None:
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


# Python ignores SIGPIPE and SIGXFSZ (and the agent SIGCHLD); an ignored signal stays ignored
# across exec, and commands must meet them as anywhere else (killed).
RESET_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGCHLD)


def reset_signals() -> None:
    for signum in RESET_SIGNALS:
        _signal.signal(signum, _signal.SIG_DFL)


def spawn(
    argv: list[str], cwd: str, env: dict[str, str], fds: tuple[int, int, int], tty: bool = False
) -> int:
    """Start the command in a new session; returns its pid, or raises RequestError when it
    cannot be run. Without a terminal through posix_spawn (vfork and exec: no copy of this
    process), with one through fork, which alone can make the terminal the controlling one."""
    if tty:
        return _fork_exec(argv, cwd, env, fds)
    stdin_fd, out_fd, err_fd = fds
    # This handler process serves this one request: it may take the command's directory, and
    # its PATH (posix_spawnp searches the caller's, where execvpe searched the command's).
    os.chdir(cwd)
    os.environ["PATH"] = env["PATH"]
    try:
        return os.posix_spawnp(
            argv[0], argv, env,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, target)
                          for target, fd in enumerate((stdin_fd, out_fd, err_fd))],
            setsid=True,
            setsigdef=RESET_SIGNALS,
        )  # fmt: skip
    except OSError as exc:
        raise _cannot_run(argv, exc.errno or 0) from None


def _fork_exec(argv: list[str], cwd: str, env: dict[str, str], fds: tuple[int, int, int]) -> int:
    """`spawn` on a terminal: `fds` are its slave side, which becomes the controlling
    terminal of the command's new session. The exec's errno comes back through a pipe."""
    stdin_fd, out_fd, err_fd = fds
    fail_r, fail_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the command
        try:
            os.close(fail_r)
            os.setsid()
            import fcntl
            import termios

            fcntl.ioctl(stdin_fd, termios.TIOCSCTTY, 0)  # the controlling terminal
            reset_signals()
            os.dup2(stdin_fd, 0)
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        except BaseException as exc:
            code = getattr(exc, "errno", None) or 0
            os.write(fail_w, str(code).encode())
        os._exit(127)
    os.close(fail_w)
    failure = os.read(fail_r, 64)
    os.close(fail_r)
    if failure:
        os.waitpid(pid, 0)
        raise _cannot_run(argv, int(failure or b"0"))
    return pid


def _cannot_run(argv: list[str], errno: int) -> RequestError:
    # As shells do: 127 when there is no such file, 126 when it cannot be run (a directory,
    # a file without execute permission, one the kernel cannot load).
    if errno == 2:
        return RequestError(
            "exec_failed", "command not found: %s (%s)" % (argv[0], os.strerror(errno))
        )
    return RequestError(
        "not_executable", "cannot run command: %s (%s)" % (argv[0], os.strerror(errno))
    )


def op_exec(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    argv, cwd, env = command_spec(req)
    timeout = req.get("timeout")
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    want_stdin = req.get("stdin") is True
    tty = req.get("tty")
    started = time.monotonic()

    proctree.become_subreaper()
    to_close = []
    if tty is not None:
        rows, cols = _window(tty)
        master, slave = os.openpty()
        set_window(master, rows, cols)
        child_fds = (slave, slave, slave)
        streams = {master: p.KIND_STDOUT}
        stdin_w = master if want_stdin else None
        to_close.append(master)
    else:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        if want_stdin:
            in_r, stdin_w = os.pipe()
        else:
            in_r, stdin_w = os.open("/dev/null", os.O_RDONLY), None
        child_fds = (in_r, out_w, err_w)
        streams = {out_r: p.KIND_STDOUT, err_r: p.KIND_STDERR}
        to_close += [out_r, err_r] + ([stdin_w] if stdin_w is not None else [])
    try:
        pid = spawn(argv, cwd, env, child_fds, tty=tty is not None)
    except BaseException:
        for fd in set(child_fds) | set(to_close):
            os.close(fd)
        raise
    for fd in set(child_fds):
        os.close(fd)

    pump = _Pump(conn, pid, streams, stdin_w, tty_fd=to_close[0] if tty is not None else None)
    status, timed_out = pump.run(deadline)
    for fd in to_close:
        try:
            os.close(fd)
        except OSError:
            pass
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        exit_code = 128 + sig
    else:
        sig = None
        exit_code = os.WEXITSTATUS(status)
    if timed_out:
        exit_code = 124
    return {
        "exit_code": exit_code,
        "signal": sig,
        "timed_out": timed_out,
        "duration": time.monotonic() - started,
    }


class _Pump:
    """Moves bytes until the command exits (or times out, or the client goes away): its
    output to the client, the client's input to it, the client's resizes and signals to
    its terminal or process group."""

    def __init__(
        self,
        conn: socket,
        pid: int,
        streams: dict[int, bytes],
        stdin_fd: int | None,
        tty_fd: int | None,
    ) -> None:
        self.conn = conn
        self.pid = pid
        self.streams = dict(streams)  # fd -> frame kind, while open
        self.stdin_fd = stdin_fd  # where input goes (None: the command has none)
        self.tty_fd = tty_fd
        self.pending = b""  # input received but not yet taken by the command
        self.stdin_closing = False
        for fd in (*self.streams, stdin_fd):
            if fd is not None:
                os.set_blocking(fd, False)

    def run(self, deadline: float | None) -> tuple[int, bool]:
        pidfd = os.pidfd_open(self.pid)
        status = None
        timed_out = False
        drain_until = None
        conn_fd = self.conn.fileno()
        try:
            while self.streams:
                now = time.monotonic()
                limits = [t for t in (deadline, drain_until) if t is not None]
                wait_ms = None if not limits else max(0, int((min(limits) - now) * 1000) + 1)
                poller = self._poller(pidfd if status is None else None)
                events = poller.poll(wait_ms)
                if deadline is not None and time.monotonic() >= deadline and status is None:
                    timed_out = True
                    self._kill()
                    status = os.waitpid(self.pid, 0)[1]
                    break
                for fd, event in events:
                    if fd == pidfd:
                        status = os.waitpid(self.pid, 0)[1]
                        drain_until = time.monotonic() + DRAIN_AFTER_EXIT
                    elif fd == conn_fd:
                        self._from_client(event)
                    elif fd == self.stdin_fd and event & (select.POLLOUT | select.POLLERR):
                        self._feed()
                    if fd in self.streams and event & READABLE:
                        self._forward(fd)
                if drain_until is not None and time.monotonic() >= drain_until:
                    break
            if status is None:
                status = os.waitpid(self.pid, 0)[1]
        finally:
            os.close(pidfd)
        return status, timed_out

    def _poller(self, pidfd: int | None) -> select.poll:
        wanted: dict[int, int] = {}
        for fd in self.streams:
            wanted[fd] = select.POLLIN
        if self.stdin_fd is not None and self.pending:
            wanted[self.stdin_fd] = wanted.get(self.stdin_fd, 0) | select.POLLOUT
        # While input waits for the command, read no more from the client (its writes
        # block: backpressure), but still notice when it hangs up.
        wanted[self.conn.fileno()] = select.POLLRDHUP | (0 if self.pending else select.POLLIN)
        if pidfd is not None:
            wanted[pidfd] = select.POLLIN
        poller = select.poll()
        for fd, mask in wanted.items():
            poller.register(fd, mask)
        return poller

    def _kill(self) -> None:
        proctree.kill_tree(os.getpid())

    def _gone(self) -> NoReturn:
        self._kill()  # the client is gone: nobody will read the output
        os.waitpid(self.pid, 0)
        raise SystemExit(0)

    def _from_client(self, event: int) -> None:
        if not event & select.POLLIN or self.pending:
            self._gone()  # hung up (POLLRDHUP/POLLHUP with nothing more to read)
        try:
            kind, payload = p.recv_frame(self.conn)
        except (p.ProtocolError, OSError):
            self._gone()
        if kind == p.KIND_STDIN and self.stdin_fd is not None:
            if payload:
                self.pending = payload
                self._feed()
            elif self.tty_fd is None:
                self.stdin_closing = True
                self._feed()
        elif kind == p.KIND_JSON:
            self._control(p.decode_json(payload))
        elif kind != p.KIND_STDIN:  # input for a command without stdin is dropped
            self._gone()

    def _control(self, message: dict[str, Any]) -> None:
        if "resize" in message and self.tty_fd is not None:
            try:
                rows, cols = _window(message["resize"])
                set_window(self.tty_fd, rows, cols)
            except (RequestError, OSError):
                pass
        if "signal" in message:
            sig = proctree.signal_number(message["signal"])
            if sig is None:
                return
            group = self.pid
            if self.tty_fd is not None:
                try:
                    group = os.tcgetpgrp(self.tty_fd)
                except OSError:
                    pass
            try:
                os.killpg(group, sig)
            except OSError:
                pass

    def _feed(self) -> None:
        """Write pending input without blocking; close the command's stdin once asked to."""
        if self.stdin_fd is None:
            return
        try:
            while self.pending:
                written = os.write(self.stdin_fd, self.pending)
                self.pending = self.pending[written:]
        except BlockingIOError:
            return
        except OSError:  # the command closed its stdin (or exited): drop the rest
            self.pending = b""
            if self.tty_fd is None:
                self.stdin_closing = True
        if self.stdin_closing and self.tty_fd is None and not self.pending:
            os.close(self.stdin_fd)
            self.stdin_fd = None

    def _forward(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:  # a terminal whose last user closed it reads EIO: its end
            data = b""
        if data:
            p.send_frame(self.conn, self.streams[fd], data)
        else:
            del self.streams[fd]


def op_freeze(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    """Stop every other process in the workspace until the client says thaw (or goes away)."""
    os.kill(-1, _signal.SIGSTOP)
    try:
        p.send_json(conn, {"ok": True, "frozen": True})
        try:
            p.recv_frame(conn)
        except p.ProtocolError:
            pass
    finally:
        os.kill(-1, _signal.SIGCONT)
    return {"thawed": True}

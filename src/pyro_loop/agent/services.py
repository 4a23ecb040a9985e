"""Services: commands that outlive the request that started them (`exec --detach`).

Each service has a supervisor: a process forked from the request's handler into a session
of its own, which starts the command (stdin empty, stdout and stderr into one pipe), copies
its output into a bounded log and records how it ended. The supervisor is a child subreaper,
so everything the command starts stays below it, and `service_stop` finds the whole tree.

State lives in the sandbox, in a tmpfs that the sandbox's end takes with it: a reset or a
stop ends every service. Under SERVICES/<name>/:
  meta.json   argv, cwd, pid, supervisor, started (written once the command runs)
  exit.json   exit_code, signal, ended (written when the command ended)
  log, log.1  the output: `log` is renamed to `log.1` (replacing it) when it reaches
              LOG_PART bytes, so a service keeps at most 2 * LOG_PART bytes of its latest
              output whatever it prints; older output is dropped, and counted in
              log.dropped.
"""

from __future__ import annotations

import os
import select
import time

import execop
import proctree
import protocol as p
from confine import RequestError
from redact import Redactor

TYPE_CHECKING = False
if TYPE_CHECKING:  # typeshed describes `_signal` (cheap to import) as `signal` (slow: enum)
    import signal as _signal
    from _socket import socket
    from typing import Any, BinaryIO
else:
    import _signal

SERVICES = "/run/pyro/services"
LOG_PART = 4 * 1024 * 1024
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
FOLLOW_POLL = 0.05  # seconds between looks at a followed log
STOP_TIMEOUT = 5.0


def _dir(req: dict[str, Any]) -> tuple[str, str]:
    name = req.get("name")
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= 64
        or not set(name) <= NAME_CHARS
        or name.startswith(".")
    ):
        raise RequestError("invalid_request", "a service name is 1-64 of A-Z a-z 0-9 . _ -")
    return name, SERVICES + "/" + name


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            return p.decode_json(f.read())
    except (OSError, p.ProtocolError):
        return None


def _write_json(path: str, obj: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(p.dumps(obj))
    os.rename(tmp, path)


def _alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


def describe(name: str, path: str) -> dict[str, Any] | None:
    meta = _read_json(path + "/meta.json")
    if meta is None:
        return None
    ended = _read_json(path + "/exit.json")
    info: dict[str, Any] = {
        "name": name,
        "argv": meta.get("argv"),
        "cwd": meta.get("cwd"),
        "pid": meta.get("pid"),
        "started": meta.get("started"),
        "state": "running",
        "exit_code": None,
        "signal": None,
        "ended": None,
    }
    if ended is not None:
        info.update(state="exited", **{k: ended.get(k) for k in ("exit_code", "signal", "ended")})
    elif not _alive(meta.get("supervisor") or 0):
        info["state"] = "lost"  # its supervisor was killed from inside the workspace
    return info


def op_service_start(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    name, path = _dir(req)
    argv, cwd, env = execop.command_spec(req)
    mask = req.get("mask") or []
    if not isinstance(mask, list) or not all(isinstance(v, str) for v in mask):
        raise RequestError("invalid_request", "mask must be a list of strings")
    old = describe(name, path)
    if old is not None and old["state"] == "running":
        raise RequestError("conflict", "a service named %s is running already" % name)
    os.makedirs(SERVICES, exist_ok=True)
    if os.path.isdir(path):  # the previous run's state and log go
        for entry in os.listdir(path):
            os.unlink(path + "/" + entry)
    else:
        os.mkdir(path)
    ready_r, ready_w = os.pipe()
    supervisor = os.fork()
    if supervisor == 0:
        status = 0
        try:
            os.close(ready_r)
            conn.close()
            os.setsid()
            _supervise(path, (argv, cwd, env), ready_w, mask)
        except BaseException as exc:
            status = 1
            try:
                os.write(ready_w, ("!" + str(exc)).encode("utf-8", "replace")[:4000])
            except OSError:
                pass
        os._exit(status)
    os.close(ready_w)
    answer = b""
    while True:
        chunk = os.read(ready_r, 4096)
        if not chunk:
            break
        answer += chunk
    os.close(ready_r)
    if not answer.startswith(b"ok"):
        message = answer[1:].decode("utf-8", "replace") or "the service's supervisor failed"
        raise RequestError("exec_failed", message)
    return {"service": describe(name, path)}


def _supervise(
    path: str, command: tuple[list[str], str, dict[str, str]], ready_w: int, mask: list[str]
) -> None:
    argv, cwd, env = command
    proctree.become_subreaper()
    out_r, out_w = os.pipe()
    null = os.open("/dev/null", os.O_RDONLY)
    try:
        pid = execop.spawn(argv, cwd, env, (null, out_w, out_w))
    except RequestError as exc:
        os.write(ready_w, ("!" + str(exc)).encode("utf-8", "replace"))
        os._exit(0)
    os.close(null)
    os.close(out_w)
    log = _Log(path + "/log", Redactor(mask))
    _write_json(
        path + "/meta.json",
        {"argv": argv, "cwd": cwd, "pid": pid, "supervisor": os.getpid(), "started": time.time()},
    )
    os.write(ready_w, b"ok")
    os.close(ready_w)
    # Nothing of the request's connection or terminal stays open here.
    fd = os.open("/dev/null", os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    os.close(fd)
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(out_r, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    status = None
    open_output = True
    while open_output or status is None:
        for fd, _event in poller.poll():
            if fd == pidfd:
                status = os.waitpid(pid, 0)[1]
                poller.unregister(pidfd)
                _ended(path, status)
            else:
                data = os.read(out_r, 65536)
                if data:
                    log.write(data)
                else:
                    poller.unregister(out_r)
                    open_output = False
    log.close()
    # Orphans below the subreaper: collect what exited (the rest dies with the workspace).
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _ended(path: str, status: int) -> None:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        code = 128 + sig
    else:
        sig, code = None, os.WEXITSTATUS(status)
    _write_json(path + "/exit.json", {"exit_code": code, "signal": sig, "ended": time.time()})


class _Log:
    """Appends to `path`, moving it to `path.1` at LOG_PART bytes: at most two parts kept."""

    def __init__(self, path: str, redactor: Redactor) -> None:
        self.path = path
        self.redactor = redactor  # the secrets the service was given: never written
        self.file = open(path, "ab", buffering=0)  # noqa: SIM115 - kept open across writes
        self.size = 0
        self.dropped = 0

    def write(self, data: bytes) -> None:
        if self.redactor:
            data = self.redactor.feed(data)
        try:
            self.file.write(data)
        except OSError:  # the tmpfs is full: this output is lost, the service goes on
            return
        self.size += len(data)
        if self.size >= LOG_PART:
            self.file.close()
            try:  # the part about to be replaced is output dropped: count it
                self.dropped += os.stat(self.path + ".1").st_size
                _write_json(self.path + ".dropped", {"bytes": self.dropped})
            except OSError:
                pass
            os.rename(self.path, self.path + ".1")
            self.file = open(self.path, "ab", buffering=0)  # noqa: SIM115
            self.size = 0

    def close(self) -> None:
        if self.redactor:
            rest = self.redactor.flush()
            if rest:
                try:
                    self.file.write(rest)
                except OSError:
                    pass
        self.file.close()


def op_service_list(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    services = []
    try:
        names = sorted(os.listdir(SERVICES))
    except FileNotFoundError:
        names = []
    for name in names:
        info = describe(name, SERVICES + "/" + name)
        if info is not None:
            services.append(info)
    return {"services": services}


def _require(req: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    name, path = _dir(req)
    info = describe(name, path)
    if info is None:
        raise RequestError("not_found", "no service named %s in this workspace" % name)
    return name, path, info


def op_service_status(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    return {"service": _require(req)[2]}


def op_service_stop(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    """SIGTERM the service's whole tree, SIGKILL what is left after `timeout` seconds."""
    name, path, info = _require(req)
    meta = _read_json(path + "/meta.json") or {}
    supervisor = meta.get("supervisor") or 0
    timeout = req.get("timeout", STOP_TIMEOUT)
    if not isinstance(timeout, (int, float)) or not 0 <= timeout <= 3600:
        raise RequestError("invalid_request", "timeout must be 0-3600 seconds")
    killed = False
    if info["state"] != "exited" and supervisor:
        proctree.kill_tree(supervisor, _signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(supervisor) and time.monotonic() < deadline:
            if not proctree.descendants(supervisor):
                break
            time.sleep(0.01)
        if proctree.descendants(supervisor):
            proctree.kill_tree(supervisor)
            killed = True
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.005)
    return {"service": describe(name, path), "killed": killed}


def op_service_logs(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    """The last `tail` lines of the service's log (all it keeps, when None), as O frames;
    with `follow`, then what it prints until it ends or the client goes away."""
    name, path, _info = _require(req)
    tail = req.get("tail")
    if tail is not None and (not isinstance(tail, int) or isinstance(tail, bool) or tail < 0):
        raise RequestError("invalid_request", "tail must be a number of lines")
    follow = req.get("follow") is True
    current = _open(path + "/log")
    older = _open(path + "/log.1")
    text = b""
    if older is not None:
        text = older.read()
        older.close()
    if current is not None:
        text += current.read()
    if tail is not None:
        lines = text.splitlines(True)
        text = b"".join(lines[-tail:]) if tail else b""
    p.send_data(conn, p.KIND_STDOUT, text)
    if follow:
        current = _follow(conn, path, current)
    if current is not None:
        current.close()
    dropped = (_read_json(path + "/log.dropped") or {}).get("bytes", 0)
    return {"service": describe(name, path), "dropped_bytes": dropped}


def _open(path: str) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except OSError:
        return None


def _follow(conn: socket, path: str, current: BinaryIO | None) -> BinaryIO | None:
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLRDHUP)
    while True:
        if current is None:
            current = _open(path + "/log")
        if current is not None:
            data = current.read()
            if data:
                p.send_data(conn, p.KIND_STDOUT, data)
            try:
                inode = os.stat(path + "/log").st_ino
            except OSError:
                inode = None
            if inode != os.fstat(current.fileno()).st_ino:
                # Rotated: the rest of the old part, then the new one from its start.
                p.send_data(conn, p.KIND_STDOUT, current.read())
                current.close()
                current = None
                continue
        meta = _read_json(path + "/meta.json") or {}
        if _read_json(path + "/exit.json") is not None and not _alive(meta.get("supervisor") or 0):
            if current is not None:
                p.send_data(conn, p.KIND_STDOUT, current.read())
            return current
        if poller.poll(FOLLOW_POLL * 1000):
            raise SystemExit(0)  # the client went away (it sends nothing while following)


def op_ps(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    """Every process in the workspace but pyro's (init, the agent and its handlers and
    service supervisors, which all run the agent's command line): pid, ppid, state, argv."""
    with open("/proc/%d/cmdline" % os.getppid(), "rb") as f:
        agent_cmdline = f.read()
    rows = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or entry == "1":
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                stat = f.read()
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if cmdline == agent_cmdline or fields[0] == b"Z":
            continue
        argv = [a.decode("utf-8", "replace") for a in cmdline.split(b"\0")[:-1]]
        rows.append(
            {"pid": int(entry), "ppid": int(fields[1]), "state": fields[0].decode(), "argv": argv}
        )
    return {"processes": sorted(rows, key=lambda r: r["pid"])}

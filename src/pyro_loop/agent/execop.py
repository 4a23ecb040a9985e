"""The workspace's processes: `exec` runs a command and forwards its output, `freeze` stops
every other process until the client thaws them.

Trusts nothing in the request: argv and env must be strings, the working directory goes
through `confine`, and the environment is the sandbox's own plus what the request adds.
A command runs in a session of its own; on a timeout, or when the client goes away, it is
killed with every process it left behind.
"""

import _signal
import os
import select
import time

import protocol as p
from confine import WORKSPACE, RequestError, confine

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DRAIN_AFTER_EXIT = 0.05  # seconds to keep reading output held open by background children
PR_SET_CHILD_SUBREAPER = 36


def op_exec(conn, req):
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
    timeout = req.get("timeout")
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    started = time.monotonic()

    _become_subreaper()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    fail_r, fail_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the command
        try:
            os.setsid()
            # Python ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored across
            # exec, and commands must meet the file size limit as anywhere else (killed).
            _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
            _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)
            _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        except BaseException as exc:
            code = getattr(exc, "errno", None) or 0
            os.write(fail_w, str(code).encode())
        os._exit(127)
    for fd in (out_w, err_w, fail_w):
        os.close(fd)
    failure = os.read(fail_r, 64)
    os.close(fail_r)
    if failure:
        os.waitpid(pid, 0)
        os.close(out_r)
        os.close(err_r)
        errno = int(failure or b"0")
        what = "command not found" if errno == 2 else "cannot run command"
        raise RequestError("exec_failed", "%s: %s (%s)" % (what, argv[0], os.strerror(errno)))

    status, timed_out = _pump(conn, pid, out_r, err_r, deadline)
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


def _pump(conn, pid, out_r, err_r, deadline):
    """Forward output until the command exits (or times out, or the client goes away)."""
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    streams = {out_r: p.KIND_STDOUT, err_r: p.KIND_STDERR}
    for fd in streams:
        poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    poller.register(conn.fileno(), select.POLLIN)  # readable only when the client hung up
    status = None
    timed_out = False
    drain_until = None
    while streams:
        now = time.monotonic()
        limits = [t for t in (deadline, drain_until) if t is not None]
        wait_ms = None if not limits else max(0, int((min(limits) - now) * 1000) + 1)
        events = poller.poll(wait_ms)
        if deadline is not None and time.monotonic() >= deadline and status is None:
            timed_out = True
            _kill_tree(pid)
            status = os.waitpid(pid, 0)[1]
            break
        for fd, _event in events:
            if fd == pidfd:
                poller.unregister(pidfd)
                status = os.waitpid(pid, 0)[1]
                drain_until = time.monotonic() + DRAIN_AFTER_EXIT
            elif fd == conn.fileno():
                _kill_tree(pid)  # the client is gone: nobody will read the output
                os.waitpid(pid, 0)
                raise SystemExit(0)
            elif fd in streams:
                data = os.read(fd, 65536)
                if data:
                    p.send_frame(conn, streams[fd], data)
                else:
                    poller.unregister(fd)
                    del streams[fd]
        if drain_until is not None and time.monotonic() >= drain_until:
            break
    if status is None:
        status = os.waitpid(pid, 0)[1]
    for fd in (out_r, err_r):
        os.close(fd)
    os.close(pidfd)
    return status, timed_out


def _become_subreaper():
    """Orphaned descendants of the command re-parent to this handler, so a timeout finds them."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except Exception:  # no ctypes in a minimal image: fall back to the process group only
        pass


def _kill_tree(pid):
    """SIGKILL the command and every descendant (including double-forked and setsid ones).

    Orphans re-parent to this handler (a subreaper), so the tree below it is complete. Repeat
    until nothing is left, in case a process forked while we were killing.
    """
    me = os.getpid()
    for _attempt in range(100):
        victims = _descendants(me)
        if not victims:
            return
        for victim in victims:
            try:
                os.kill(victim, _signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.001)


def _descendants(root):
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] == b"Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    found = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def op_freeze(conn, req):
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

"""The agent: serves exec and file requests inside a workspace (protocol.py).

Started by the runtime (through boot.py) as the workspace's main process, with an
already-listening socket on the file descriptor given in argv. It forks one handler per
connection, so a long command never blocks a file read, and a handler that crashes takes
nothing else down. This module reads each request, checks its protocol version and hands it
to the operation `OPS` names; the operations live beside it, one job per module:

  confine.py   which paths a request may name (everything inside /workspace, nothing else)
  deeptree.py  removing trees at any depth, making directories (treewalk.py, the host's
               fs/treewalk.py shipped beside these modules, walks them)
  fileops.py   stat, list, read, write, remove, mkdir, symlink, chmod
  tarexport.py tar: a tree streamed out as a tar archive (what export unpacks)
  tarread.py   parsing a tar stream from a request's data frames
  tarput.py    put_tar and remove_many (sync into the workspace)
  recycle.py   put_tar's reuse of the inodes of the files it replaces
  quiet.py     the gate every handler passes, which lets put_tar write files in place
  execop.py    exec (run a command, forward its output and input), freeze
  services.py  detached commands with bounded logs (service_*), ps
  portfwd.py   sockets, connect: published ports (the workspace's TCP sockets for the
               host's forwarder; a relayed TCP connection)

Nothing a request holds is trusted. The sandbox around the agent is the security boundary;
the agent keeps the file tools' behaviour predictable inside it. Start-up time is on the path
of every create and reset: a module is imported at start only if it is cheap (`_socket` and
`_signal`, not `socket` and `signal`), a slow one (`tarfile`, `shutil`, `ctypes`) only inside
the operation that needs it.
"""

from __future__ import annotations

import _socket
import os
import posix
import select
import sys
import time

import execop
import fileops
import proctree
import protocol as p
import quiet
import tarput
from confine import WORKSPACE, RequestError

IDLE_BEFORE_PRELOAD_MS = 20

TYPE_CHECKING = False
if TYPE_CHECKING:  # typeshed describes `_signal` (cheap to import) as `signal` (slow: enum)
    import signal as _signal
    from collections.abc import Callable
    from typing import Any, NoReturn

    # An operation: the request's connection and its J frame in, the reply's fields out.
    Op = Callable[..., dict[str, Any]]
else:
    import _signal


def op_ping(conn: _socket.socket, req: dict[str, Any]) -> dict[str, Any]:
    return {"protocol": p.VERSION, "pid": os.getpid(), "python": "%d.%d.%d" % sys.version_info[:3]}


OPS: dict[str, Op] = {
    "ping": op_ping,
    "stat": fileops.op_stat,
    "list": fileops.op_list,
    "read": fileops.op_read,
    "write": fileops.op_write,
    "remove": fileops.op_remove,
    "mkdir": fileops.op_mkdir,
    "symlink": fileops.op_symlink,
    "chmod": fileops.op_chmod,
    "put_tar": tarput.op_put_tar,
    "remove_many": tarput.op_remove_many,
    "freeze": execop.op_freeze,
    "exec": execop.op_exec,
}
# Imported by the handler that needs them, not at the agent's start (on every create and
# reset): the operation's module, its function is `op_<name>`.
LAZY_OPS: dict[str, str] = {
    "service_start": "services",
    "service_list": "services",
    "service_status": "services",
    "service_logs": "services",
    "service_stop": "services",
    "ps": "services",
    "connect": "portfwd",
    "sockets": "portfwd",
    "tar": "tarexport",
}


def _op(name: object) -> Op | None:
    if not isinstance(name, str):
        return None
    op = OPS.get(name)
    if op is None and name in LAZY_OPS:
        op = getattr(__import__(LAZY_OPS[name]), "op_" + name)
    return op


def handle(conn: _socket.socket) -> None:
    quiet.enter()
    try:
        # Descriptors sent along with a request are dropped by the kernel: no operation
        # takes one (plain recv has no room for them).
        req = p.recv_json(conn)
    except (p.ProtocolError, OSError):
        return
    try:
        if req.get("v") != p.VERSION:
            raise RequestError(
                "unsupported_version",
                "agent speaks protocol %d, request has %r" % (p.VERSION, req.get("v")),
            )
        op = _op(req.get("op"))
        if op is None:
            raise RequestError("unknown_op", "unknown operation: %r" % (req.get("op"),))
        reply = op(conn, req)
        reply["ok"] = True
    except RequestError as exc:
        reply = {"ok": False, "kind": exc.kind, "error": str(exc)}
    except p.ProtocolError:
        return
    except (OSError, ValueError, TypeError) as exc:
        reply = {"ok": False, "kind": "os_error", "error": "%s: %s" % (type(exc).__name__, exc)}
    quiet.leave()  # before the reply: the caller's next request finds the gate open
    try:
        p.send_json(conn, reply)
    except OSError:
        pass


def serve(listener: _socket.socket) -> NoReturn:
    # Handlers are reaped by the kernel; each handler restores SIGCHLD for its own commands.
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)
    # What is slow to load and every exec needs is loaded at the first pause between
    # requests, not at start-up (see proctree.preload): the handlers forked after it share it.
    waiting = select.poll()
    waiting.register(listener.fileno(), select.POLLIN)
    idle: select.poll | None = waiting
    while True:
        if idle is not None and not idle.poll(IDLE_BEFORE_PRELOAD_MS):
            proctree.preload()
            idle = None
            continue
        try:
            # The raw descriptor (what `socket.accept` wraps): the child makes the socket
            # object. typeshed leaves out this method of `_socket.socket`.
            fd, _addr = listener._accept()  # type: ignore[attr-defined]
        except InterruptedError:
            continue
        try:
            pid = os.fork()
        except OSError:  # out of processes (a fork bomb in the workspace): drop this client
            os.close(fd)
            time.sleep(0.01)
            continue
        if pid == 0:
            status = 0
            try:
                listener.close()
                _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
                conn = _socket.socket(fileno=fd)
                handle(conn)
            except SystemExit:
                pass
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        os.close(fd)


def main(argv: list[str]) -> NoReturn:
    listen_fd = int(argv[1])
    # Nothing but the listening socket is ours to keep: close whatever else was inherited.
    os.closerange(3, listen_fd)
    os.closerange(listen_fd + 1, 65536)
    listener = _socket.socket(fileno=listen_fd)
    os.set_inheritable(listen_fd, False)
    os.chdir(WORKSPACE)
    posix.umask(0o022)
    quiet.note_server()
    serve(listener)


if __name__ == "__main__":
    main(sys.argv)

"""Published ports from inside the workspace: `sockets` (what the host's forwarder uses) and
`connect` (the same over any byte stream).

`sockets` hands the host unconnected TCP sockets made here, in the workspace's own network
namespace (SCM_RIGHTS, attached to the reply): the host's forwarder connects each to the
port on this loopback and relays the client's bytes itself. A client connection then costs
no request to the agent and crosses one process, and no socket of the host's network ever
enters the workspace. The request's connection stays open: each further J frame
{"family": ..., "count": N} is answered with N more sockets, and its end (the host closed
it, or the sandbox ended) tells the host that the sockets it holds are of a namespace that
is gone.

`connect` carries the TCP stream over the request's own connection instead, for transports
that cannot pass descriptors (vsock): after the J reply {"ok": true, "connected": true} the
connection carries the TCP stream's bytes as they are, in both directions, with no framing;
either side's end of data is passed on as a half-close (shutdown SHUT_WR), and the request
ends when both directions have.
"""

from __future__ import annotations

import _socket
import select
import sys

import protocol as p
from confine import RequestError

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` is not imported at run time (agent start-up)
    from typing import Any, NoReturn

CHUNK = 1024 * 1024
MAX_SOCKETS = 64  # per answer: a bounded number of descriptors in flight
FAMILIES = {"inet": _socket.AF_INET, "inet6": _socket.AF_INET6}


def op_sockets(conn: _socket.socket, req: dict[str, Any]) -> NoReturn:
    while True:
        family = FAMILIES.get(str(req.get("family")))
        count = req.get("count")
        if family is None:
            raise RequestError("invalid_request", "family must be inet or inet6")
        if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= MAX_SOCKETS:
            raise RequestError("invalid_request", "count must be 1-%d" % MAX_SOCKETS)
        made = [_socket.socket(family, _socket.SOCK_STREAM) for _ in range(count)]
        fds = b"".join(s.fileno().to_bytes(4, sys.byteorder) for s in made)
        frame = p.encode_frame(p.KIND_JSON, p.dumps({"ok": True, "sockets": count}).encode())
        conn.sendmsg([frame], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        for s in made:  # the host holds them now
            s.close()
        try:
            req = p.recv_json(conn)
        except (p.ProtocolError, OSError):
            raise SystemExit(0) from None  # the host is done with this namespace's sockets


def op_connect(conn: _socket.socket, req: dict[str, Any]) -> NoReturn:
    port = req.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise RequestError("invalid_request", "port must be 1-65535")
    # 127.0.0.1 first, then ::1: a server bound to "localhost" may have either.
    upstream = None
    for family, address in ((_socket.AF_INET, "127.0.0.1"), (_socket.AF_INET6, "::1")):
        sock = _socket.socket(family, _socket.SOCK_STREAM)
        try:
            sock.connect((address, port))
        except OSError:
            sock.close()
            continue
        upstream = sock
        break
    if upstream is None:
        raise RequestError(
            "connection_refused", "nothing listens on port %d in the workspace" % port
        )
    upstream.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    p.send_json(conn, {"ok": True, "connected": True})
    relay(conn, upstream)
    raise SystemExit(0)  # the stream was the answer: no reply follows


def relay(a: _socket.socket, b: _socket.socket) -> None:
    """Copy bytes both ways between two sockets until both directions have ended."""
    peer = {a.fileno(): b, b.fileno(): a}
    source = {a.fileno(): a, b.fileno(): b}
    poller = select.poll()
    for fd in peer:
        poller.register(fd, select.POLLIN)
    open_ends = set(peer)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while open_ends:
        for fd, _event in poller.poll():
            try:
                n = source[fd].recv_into(buf)
            except OSError:
                n = 0
            if n:
                try:
                    peer[fd].sendall(view[:n])
                    continue
                except OSError:
                    return  # the other side is gone: nothing more can be delivered
            poller.unregister(fd)
            open_ends.discard(fd)
            try:
                peer[fd].shutdown(_socket.SHUT_WR)
            except OSError:
                pass

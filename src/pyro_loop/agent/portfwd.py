"""`connect`: a TCP connection to a port inside the workspace, carried over the request's
own connection (how `pyro exec --publish` reaches a server in a workspace that has no
network of its own).

After the J reply {"ok": true, "connected": true} the connection carries the TCP stream's
bytes as they are, in both directions, with no framing: either side's end of data is passed
on as a half-close (shutdown SHUT_WR), and the request ends when both directions have. Any
reliable byte stream (a Unix socket, vsock) carries it the same way.

Over a Unix socket the host may instead send the client's TCP connection with the request
(SCM_RIGHTS): the agent then relays between that socket and the port, and replies nothing.
Each process a request passes through is a wait for the CPU on a busy machine; this takes
the host's relay off the path.
"""

from __future__ import annotations

import _socket
import os
import select

import protocol as p
from confine import RequestError

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` is not imported at run time (agent start-up)
    from typing import Any, NoReturn

CHUNK = 1024 * 1024


def op_connect(
    conn: _socket.socket, req: dict[str, Any], fds: list[int] | tuple[int, ...] = ()
) -> NoReturn:
    """With a descriptor passed along (over a Unix socket), that connected socket is the
    client: no reply, the relay starts at once. Without one, the reply says `connected`
    and the request's own connection carries the stream."""
    client = _socket.socket(fileno=fds[0]) if len(fds) == 1 else None
    for fd in fds[1:] if client is not None else fds:
        os.close(fd)
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
        if client is not None:
            raise SystemExit(0)  # the client sees its connection closed
        raise RequestError(
            "connection_refused", "nothing listens on port %d in the workspace" % port
        )
    upstream.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    if client is None:
        p.send_json(conn, {"ok": True, "connected": True})
    relay(client or conn, upstream)
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

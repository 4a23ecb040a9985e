"""The published-port forwarder.

One small process per published port, started by `ports.publish` with the listening socket
(bound to 127.0.0.1 by the caller, so a taken port is reported there) as an inherited
descriptor. It outlives the command that published it and belongs to the workspace:
`pyro down`, `pyro workspace stop` and `delete` kill it, and it exits by itself once the
workspace's directory is gone.

It relays each client connection itself, to a TCP socket that lives in the workspace's
network namespace: the workspace's agent makes such sockets, unconnected, and hands them
over in batches (`sockets`, docs/protocol.md); this process connects one to 127.0.0.1:PORT
(then ::1) for each client. A connection so costs no request to the agent and crosses one
process, as through any user-space proxy, and no socket of the host's network ever enters
the workspace. The agent connection that brought a batch stays open: its end means the
sandbox ended (a reset, say), so the sockets left of that batch, of a namespace that is
gone, are dropped and the next batch is asked of the new sandbox's agent.

All of it runs in one thread around a selector: accepting, the agent's batches, connecting
and relaying (read into one buffer, send at once, keep only what the peer did not take, and
read no more from that side until it has).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import selectors
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from pyro_loop.agent import protocol as p
from pyro_loop.fs.socketpath import socket_address

BATCH = 32  # sockets asked of the agent at a time
LOW = 8  # fewer than this in stock: the next batch is asked for
CHUNK = 1024 * 1024  # read at most this much per wake-up
# Socket buffers of a relayed connection, from the start (the kernel caps them at its
# maximum): a response of a few MiB then passes in a few wake-ups instead of waiting for
# autotuning to grow them. Measured: a third less of the forwarder's CPU per 1 MiB response.
BUFFER = 4 * 1024 * 1024
WATCH_INTERVAL = 1.0  # seconds between looks at whether the workspace still exists
AGENT_TIMEOUT = 5.0  # for connecting to the agent's socket
# 127.0.0.1 first, then ::1: a server bound to "localhost" may have either.
FAMILIES = ((socket.AF_INET, "inet", "127.0.0.1"), (socket.AF_INET6, "inet6", "::1"))
_NAMES = {int(family): name for family, name, _address in FAMILIES}

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends a reset
Handler = Callable[[int], None]  # called with the selector's event mask


class Batches:
    """The agent connection that hands over sockets of the workspace's network namespace,
    and the stock it brought. Dead once the agent closes it (the sandbox ended)."""

    def __init__(self, loop: Forwarder) -> None:
        self.loop = loop
        self.stock: dict[int, deque[socket.socket]] = {f: deque() for f, _n, _a in FAMILIES}
        self.asked: int | None = None  # the family of the batch on its way
        self.started = False
        self.delivered = False  # a batch came: the agent could make sockets
        self.alive = True
        self.inbox = b""
        self.fds: list[int] = []
        self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.conn.settimeout(AGENT_TIMEOUT)
            self.conn.connect(socket_address(loop.agent_socket))
            self.conn.setblocking(False)
        except OSError:
            self.conn.close()
            raise
        loop.selector.register(self.conn, selectors.EVENT_READ, self.on_readable)

    def take(self, family: int) -> socket.socket | None:
        """A socket of `family` from the stock, if there is one."""
        stock = self.stock[family]
        sock = stock.popleft() if stock else None
        self.top_up(family)
        return sock

    def top_up(self, family: int) -> None:
        """Ask for a batch of `family` when its stock runs low (one batch at a time)."""
        if len(self.stock[family]) < LOW and self.asked is None and self.alive:
            self._ask(family)

    def _ask(self, family: int) -> None:
        request: dict[str, object] = {"family": _NAMES[family], "count": BATCH}
        if not self.started:  # the request; then one frame per further batch
            request = {"v": p.VERSION, "op": "sockets", **request}
        try:
            # A few dozen bytes into a connection with nothing else in flight: never blocks.
            self.conn.send(p.encode_frame(p.KIND_JSON, p.dumps(request).encode()))
        except OSError:
            self.close()
            return
        self.started = True
        self.asked = family

    def on_readable(self, _mask: int) -> None:
        try:
            data, ancillary, _flags, _addr = self.conn.recvmsg(65536, socket.CMSG_SPACE(BATCH * 4))
        except BlockingIOError:
            return
        except OSError:
            data, ancillary = b"", []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                self.fds += [int.from_bytes(payload[i : i + 4], sys.byteorder)
                             for i in range(0, usable, 4)]  # fmt: skip
        if not data:
            self.close()
            return
        self.inbox += data
        if len(self.inbox) < p.HEADER_SIZE:
            return
        size = int.from_bytes(self.inbox[1:5], "big")
        if self.inbox[:1] != p.KIND_JSON or size > p.MAX_JSON:
            self.close()  # not a reply this side understands
            return
        if len(self.inbox) < p.HEADER_SIZE + size:
            return
        payload, self.inbox = self.inbox[5 : 5 + size], self.inbox[5 + size :]
        try:
            reply = p.decode_json(payload)
        except p.ProtocolError:
            reply = {}
        family, self.asked = self.asked, None
        fds, self.fds = self.fds, []
        made = [sock for sock in (_adopt(fd, family) for fd in fds) if sock is not None]
        if reply.get("ok") is not True or family is None:
            for sock in made:
                sock.close()
            self.close()  # an agent without `sockets`, or one that refused: no way in
            return
        self.stock[family].extend(made)
        self.delivered = True
        self.loop.on_stock()

    def close(self) -> None:
        if not self.alive:
            return
        self.alive = False
        with contextlib.suppress(KeyError, ValueError):
            self.loop.selector.unregister(self.conn)
        self.conn.close()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []
        for stock in self.stock.values():
            while stock:
                stock.popleft().close()
        # Ended before any batch came: the agent cannot help now, so the clients waiting
        # are let go rather than kept asking; after a batch, the sandbox ended (a reset)
        # and they wait for the new one's.
        self.loop.on_stock(give_up=not self.delivered)


def _adopt(fd: int, family: int | None) -> socket.socket | None:
    """The descriptor as a socket if it is what was asked for (an unconnected TCP socket of
    `family`); anything else the agent sent is closed."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.close(fd)
        return None
    if sock.family != family or sock.type != socket.SOCK_STREAM:
        sock.close()
        return None
    return sock


class Flow:
    """One direction of a relayed connection: bytes read from `src`, sent to `dst`."""

    def __init__(self, src: Side, dst: Side) -> None:
        self.src, self.dst = src, dst
        self.pending = memoryview(b"")  # read, not yet taken by dst
        self.ended = False  # src's end of data has been passed on


class Side:
    """One socket of a relayed connection, registered for what its flows wait for."""

    def __init__(self, conn: Connection, sock: socket.socket) -> None:
        self.conn, self.sock = conn, sock
        self.out: Flow
        self.into: Flow
        self.events = 0

    def want(self) -> None:
        events = 0
        if not self.out.ended and not self.out.pending:
            events |= selectors.EVENT_READ
        if self.into.pending:
            events |= selectors.EVENT_WRITE
        selector = self.conn.loop.selector
        if events == self.events:
            return
        if not events:
            selector.unregister(self.sock)
        elif not self.events:
            selector.register(self.sock, events, self.on_event)
        else:
            selector.modify(self.sock, events, self.on_event)
        self.events = events

    def on_event(self, mask: int) -> None:
        try:
            if mask & selectors.EVENT_WRITE:
                self.conn.send(self.into)
            if mask & selectors.EVENT_READ:
                self.conn.pump(self.out)
        except OSError:
            # Reset by either side, or gone: nothing more can be delivered either way.
            self.conn.close(abort=True)
            return
        if not self.conn.closed:
            self.conn.a.want()
            self.conn.b.want()


class Connection:
    """A client's connection and its way into the workspace: first connecting (a socket
    from the stock, 127.0.0.1 then ::1), then relaying both ways."""

    def __init__(self, loop: Forwarder, client: socket.socket) -> None:
        self.loop, self.client = loop, client
        self.family_index = 0
        self.retries = 0  # connections refused in a sandbox that had ended meanwhile
        self.upstream: socket.socket | None = None
        self.connecting = False  # the upstream is registered, waiting to be connected
        self.batches: Batches | None = None
        self.closed = False
        self.a: Side
        self.b: Side

    def start(self) -> bool:
        """Connect to the port inside with the next socket; False: wait for the stock."""
        family, _name, address = FAMILIES[self.family_index]
        batches = self.loop.batches()
        sock = batches.take(family) if batches is not None else None
        if sock is None:
            if batches is None or not batches.alive:
                self.close()  # no agent: the workspace is stopped or starting
                return True
            return False
        self.upstream, self.batches = sock, batches
        sock.setblocking(False)
        code = sock.connect_ex((address, self.loop.port))
        if code == errno.EINPROGRESS:
            self.loop.selector.register(sock, selectors.EVENT_WRITE, self._on_connected)
            self.connecting = True
        else:
            self._connected(code)
        return True

    def _on_connected(self, _mask: int) -> None:
        if self.closed:
            return  # closed by an earlier event of the same wake-up
        assert self.upstream is not None
        self.loop.selector.unregister(self.upstream)
        self.connecting = False
        self._connected(self.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    def _connected(self, code: int) -> None:
        assert self.upstream is not None and self.batches is not None
        if code == 0:
            self._relay(self.upstream)
            return
        self.upstream.close()
        self.upstream = None
        self.loop.check_batches()
        if not self.batches.alive and self.retries < 2:
            self.retries += 1  # a socket of a sandbox that has ended: again in the new one
        elif code == errno.ECONNREFUSED and self.family_index + 1 < len(FAMILIES):
            self.family_index += 1
        else:
            self.close()  # nothing listens on the port inside: the client sees it closed
            return
        self.loop.begin(self)

    def _relay(self, upstream: socket.socket) -> None:
        for sock in (self.client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, BUFFER)
        self.a, self.b = Side(self, self.client), Side(self, upstream)
        self.a.out = self.b.into = Flow(self.a, self.b)
        self.b.out = self.a.into = Flow(self.b, self.a)
        self.a.want()
        self.b.want()

    def pump(self, flow: Flow) -> None:
        """Read what `flow.src` has and send it on; what `dst` does not take waits."""
        buffer = self.loop.buffer
        try:
            n = flow.src.sock.recv_into(buffer)
        except BlockingIOError:
            return
        if n == 0:
            flow.ended = True
            flow.dst.sock.shutdown(socket.SHUT_WR)
            if flow.dst.out.ended:
                self.close()
            return
        try:
            sent = flow.dst.sock.send(buffer[:n])
        except BlockingIOError:
            sent = 0
        if sent < n:
            flow.pending = memoryview(bytes(buffer[sent:n]))

    def send(self, flow: Flow) -> None:
        try:
            sent = flow.dst.sock.send(flow.pending)
        except BlockingIOError:
            return
        flow.pending = flow.pending[sent:]

    def close(self, *, abort: bool = False) -> None:
        """Close both sockets; `abort`: with a reset (RST), as a peer's own close would
        have been had it been connected directly, so a cut-off stream never looks ended."""
        if self.closed:
            return
        self.closed = True
        for side in (getattr(self, "a", None), getattr(self, "b", None)):
            if side is not None and side.events:
                self.loop.selector.unregister(side.sock)
        for sock in (self.client, self.upstream) if abort else ():
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        self.client.close()
        if self.upstream is not None:
            if self.connecting:
                self.loop.selector.unregister(self.upstream)
            self.upstream.close()


class Forwarder:
    def __init__(self, agent_socket: Path, workspace_dir: Path, port: int) -> None:
        self.agent_socket, self.workspace_dir, self.port = agent_socket, workspace_dir, port
        self.selector = selectors.DefaultSelector()
        self.buffer = memoryview(bytearray(CHUNK))
        self.waiting: deque[Connection] = deque()
        self._batches: Batches | None = None

    def batches(self) -> Batches | None:
        """The live agent connection for sockets, opened again after the sandbox ended."""
        if self._batches is None or not self._batches.alive:
            try:
                self._batches = Batches(self)
            except OSError:
                self._batches = None
        return self._batches

    def check_batches(self) -> None:
        """Notice now whether the agent connection has ended (before trusting a refusal)."""
        batches = self._batches
        if batches is not None and batches.alive and select.select([batches.conn], [], [], 0)[0]:
            batches.on_readable(selectors.EVENT_READ)

    def begin(self, conn: Connection) -> None:
        if self.waiting or not conn.start():
            self.waiting.append(conn)

    def on_stock(self, *, give_up: bool = False) -> None:
        """Serve the clients waiting for a socket, in order, as long as the stock lasts."""
        while give_up and self.waiting:
            self.waiting.popleft().close()
        while self.waiting:
            conn = self.waiting[0]
            if not conn.start():
                return
            self.waiting.popleft()

    def on_client(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _addr = listener.accept()
            except BlockingIOError:
                return
            except OSError:
                time.sleep(0.01)  # out of descriptors, say: try again, never spin
                return
            self.begin(Connection(self, client))

    def run(self, listener: socket.socket) -> int:
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, lambda _m: self.on_client(listener))
        batches = self.batches()  # the first batch before the first client
        if batches is not None:
            batches.top_up(FAMILIES[0][0])
        next_look = time.monotonic() + WATCH_INTERVAL
        while True:
            timeout = max(0.0, next_look - time.monotonic())
            for key, mask in self.selector.select(timeout):
                handler: Handler = key.data
                handler(mask)
            if time.monotonic() >= next_look:
                if not (self.workspace_dir / "workspace.json").exists():
                    return 0
                next_look = time.monotonic() + WATCH_INTERVAL


def main(argv: list[str]) -> int:
    agent_socket, workspace_dir = Path(argv[1]), Path(argv[2])
    fd, port = (int(n) for n in argv[3].split(":"))
    return Forwarder(agent_socket, workspace_dir, port).run(socket.socket(fileno=fd))


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The published-port forwarder: `python -m pyro_loop.forwarder SOCKET WORKSPACE_DIR FD:PORT`.

One small process per published port, started by `ports.publish` with the listening socket
(bound to 127.0.0.1 by the caller, so a taken port is reported there) as an inherited
descriptor. It outlives the command that published the port and belongs to the workspace:
`pyro down`, `pyro workspace stop` and `delete` kill it, and it exits by itself once the
workspace's directory is gone.

Each accepted connection is handed to the workspace's agent with a `connect` request
(docs/protocol.md): the connection itself travels with the request (SCM_RIGHTS), and the
agent relays it to the port inside, so no byte of it passes through this process. A couple
of agent connections are opened ahead of time (their handlers already forked); the socket
path is connected again for each new one, so the forwarder keeps working across resets.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pyro_loop.agent import protocol as p
from pyro_loop.client import socket_address

BUFFER = 4 * 1024 * 1024  # socket buffers asked for (the kernel caps them at its maximum)
POOL = 2  # agent connections kept ready
WATCH_INTERVAL = 1.0  # seconds between looks at whether the workspace still exists


class _Pool:
    """Connections to the agent opened ahead of time, each with its handler already forked
    and waiting for a request: a new client then costs no accept and no fork in the
    workspace on its way in (under load, each is a wait for the CPU)."""

    def __init__(self, agent_socket: Path, size: int = POOL) -> None:
        self.agent_socket = agent_socket
        self.idle: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        self.size = size
        self.refill()

    def _open(self) -> socket.socket:
        agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            agent.connect(socket_address(self.agent_socket))
            _big_buffers(agent)
        except OSError:
            agent.close()
            raise
        return agent

    def _add(self) -> None:
        with contextlib.suppress(OSError):
            self.idle.put(self._open())

    def refill(self) -> None:
        while self.idle.qsize() < self.size:
            self._add()

    def take(self) -> Iterator[socket.socket]:
        """A pooled connection (replaced in the background), then fresh ones: a pooled one
        may be stale (its sandbox was reset meanwhile)."""
        with contextlib.suppress(queue.Empty):
            yield self.idle.get_nowait()
        while True:
            yield self._open()


def _big_buffers(sock: socket.socket) -> None:
    # One wake-up moves a whole response of a few MiB instead of many 200 KiB pieces.
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, BUFFER)


def _hand_over(pool: _Pool, port: int, client: socket.socket) -> None:
    """Send `client` with a `connect` request for `port` to the agent (SCM_RIGHTS, in the
    request's own message): the agent relays it to the port inside, and no byte of it
    passes through here. A pooled connection may be stale (its sandbox was reset): then a
    fresh one is tried."""
    frame = p.encode_frame(
        p.KIND_JSON, p.dumps({"v": p.VERSION, "op": "connect", "port": port}).encode()
    )
    for attempt, agent in enumerate(pool.take()):
        with agent:
            try:
                socket.send_fds(agent, [frame], [client.fileno()])
                return
            except OSError:
                if attempt >= 1:
                    return  # a fresh connection failed too: the agent is not there


def _serve(client: socket.socket, pool: _Pool, port: int) -> None:
    with client, contextlib.suppress(OSError):
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _big_buffers(client)
        _hand_over(pool, port, client)


def _accept(listener: socket.socket, pool: _Pool, port: int) -> None:
    while True:
        try:
            client, _addr = listener.accept()
        except OSError:
            time.sleep(0.01)  # out of descriptors, say: try again, never spin
            continue
        # Handled in this thread: a hand-over is a few small messages, no copying.
        _serve(client, pool, port)
        pool.refill()


def main(argv: list[str]) -> int:
    agent_socket, workspace_dir = Path(argv[1]), Path(argv[2])
    pool = _Pool(agent_socket)
    for spec in argv[3:]:
        fd, port = (int(n) for n in spec.split(":"))
        listener = socket.socket(fileno=fd)
        threading.Thread(target=_accept, args=(listener, pool, port), daemon=True).start()
    while (workspace_dir / "workspace.json").exists():
        time.sleep(WATCH_INTERVAL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

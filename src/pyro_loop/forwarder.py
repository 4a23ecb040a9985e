"""The published-port forwarder: `python -m pyro_loop.forwarder SOCKET WORKSPACE_DIR FD:PORT`.

One small process per published port, started by `ports.publish` with the listening socket
(bound to 127.0.0.1 by the caller, so a taken port is reported there) as an inherited
descriptor. It outlives the command that published the port and belongs to the workspace:
`pyro down`, `pyro workspace stop` and `delete` kill it, and it exits by itself once the
workspace's directory is gone. Each accepted connection becomes an agent `connect` request
over the workspace's socket (docs/protocol.md), then the bytes are copied both ways by two
threads. The socket path is looked up for each connection, so the forwarder keeps working
across resets (the new sandbox's socket takes the old one's place).
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from pathlib import Path

from pyro_loop.agent import protocol as p
from pyro_loop.client import socket_address

CHUNK = 256 * 1024
WATCH_INTERVAL = 1.0  # seconds between looks at whether the workspace still exists


def _copy(src: socket.socket, dst: socket.socket) -> None:
    """One direction, until its end (passed on as a half-close) or an error."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        while True:
            n = src.recv_into(buf)
            if not n:
                break
            dst.sendall(view[:n])
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _serve(client: socket.socket, agent_socket: Path, port: int) -> None:
    agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        agent.connect(socket_address(agent_socket))
        p.send_json(agent, {"v": p.VERSION, "op": "connect", "port": port})
        if p.recv_json(agent).get("ok") is not True:
            return  # nothing listens there: the client sees its connection closed
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=_copy, args=(agent, client), daemon=True)
        back.start()
        _copy(client, agent)
        back.join()
    except (OSError, p.ProtocolError):
        pass
    finally:
        agent.close()
        client.close()


def _accept(listener: socket.socket, agent_socket: Path, port: int) -> None:
    while True:
        try:
            client, _addr = listener.accept()
        except OSError:
            time.sleep(0.01)  # out of descriptors, say: try again, never spin
            continue
        threading.Thread(target=_serve, args=(client, agent_socket, port), daemon=True).start()


def main(argv: list[str]) -> int:
    agent_socket, workspace_dir = Path(argv[1]), Path(argv[2])
    for spec in argv[3:]:
        fd, port = (int(n) for n in spec.split(":"))
        listener = socket.socket(fileno=fd)
        threading.Thread(target=_accept, args=(listener, agent_socket, port), daemon=True).start()
    while (workspace_dir / "workspace.json").exists():
        time.sleep(WATCH_INTERVAL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

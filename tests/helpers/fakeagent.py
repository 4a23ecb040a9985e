"""An in-process agent that speaks the protocol, for client tests without a sandbox."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

from pyro_loop.agent import protocol as p
from pyro_loop.fs.socketpath import socket_address


class FakeAgent:
    """Serves one connection: reads the request, sends `reply`, then holds the line open."""

    def __init__(self, path: Path, reply: bytes, *, close: bool = False) -> None:
        self.path = path
        self.reply = reply
        self.close = close
        self.request: dict[str, Any] | None = None
        self.release = threading.Event()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(socket_address(path))
        self.listener.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(10)
            try:
                self.request = p.recv_json(conn)
                conn.sendall(self.reply)
                if not self.close:
                    self.release.wait(20)
            except OSError:
                pass

    def stop(self) -> None:
        self.release.set()
        self.listener.close()
        self.thread.join(timeout=5)

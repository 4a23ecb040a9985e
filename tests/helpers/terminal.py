"""A real pseudo-terminal driving the `pyro` CLI, as a person at a terminal would."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
from collections.abc import Iterator


class Terminal:
    """`pyro ARGS` on a pseudo-terminal of its own (its controlling terminal, as a login's)."""

    def __init__(self, *args: str, rows: int = 24, cols: int = 80) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - the child
            os.execv(sys.executable, [sys.executable, "-m", "pyro_loop", *args])
        self.pid, self.fd = pid, fd
        self.resize(rows, cols)
        self.screen = b""  # everything read so far
        self.seen = 0  # where the last match ended
        self.status: int | None = None

    def send(self, data: str | bytes) -> None:
        os.write(self.fd, data.encode() if isinstance(data, str) else data)

    def resize(self, rows: int, cols: int) -> None:
        """Resize the terminal: the kernel sends SIGWINCH to pyro, as a terminal window does."""
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def expect(self, pattern: str, timeout: float = 30.0) -> re.Match[bytes]:
        """Read until `pattern` matches what arrived since the last match."""
        regex = re.compile(pattern.encode())
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.screen, self.seen)
            if found:
                self.seen = found.end()
                return found
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"{pattern!r} not seen; the terminal showed:\n{self.tail()}")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the program exited and closed its terminal
            return False
        self.screen += data
        return bool(data)

    def tail(self) -> str:
        return self.screen[-2000:].decode("utf-8", "replace")

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.05)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
        raise AssertionError(f"pyro did not exit; the terminal showed:\n{self.tail()}")

    def close(self) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@contextlib.contextmanager
def terminal(*args: str, rows: int = 24, cols: int = 80) -> Iterator[Terminal]:
    term = Terminal(*args, rows=rows, cols=cols)
    try:
        yield term
    finally:
        term.close()

"""How the CLI shows a prepare's phases: one line each, and on a terminal a live last line.

A Debian environment or an install can take minutes with no new phase: on a terminal the
current phase's line is redrawn every second with the time it has taken so far, so a long
step is visibly alive. Piped or redirected, each phase is one plain line, as logs want.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from pyro_loop.safetext import visible


class PhaseDisplay:
    """`display(phase, message)` for library progress callbacks."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._lock = threading.Lock()
        self._line: str | None = None
        self._since = 0.0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __call__(self, phase: str, message: str) -> None:
        line = f"prepare: {phase}: {message}"
        with self._lock:
            if not self.live:
                self.stream.write(line + "\n")
            else:
                if self._line is not None:  # the previous phase stays, with its time
                    self._draw(final=True)
                # On a terminal: a message may quote a repository's text (a lockfile's name).
                self._line, self._since = visible(line), time.monotonic()
                self._draw(final=False)
                if self._ticker is None:
                    self._ticker = threading.Thread(target=self._tick, daemon=True)
                    self._ticker.start()
            self.stream.flush()

    def _draw(self, *, final: bool) -> None:
        took = f"{time.monotonic() - self._since:.0f} s"
        self.stream.write(f"\r\x1b[K{self._line} ({took})" + ("\n" if final else ""))

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self._line is not None:
                    self._draw(final=False)
                    self.stream.flush()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self.live and self._line is not None:
                self._draw(final=True)
                self._line = None
            self.stream.flush()


@contextmanager
def phases(stream: TextIO | None = None) -> Iterator[PhaseDisplay]:
    display = PhaseDisplay(stream)
    try:
        yield display
    finally:
        display.close()

"""How the CLI shows progress events (pyro_loop.progress): lines, a live line, or JSON.

Each event is one line, "prepare: <phase>: <message>", as logs want. On a terminal the
current event's line is redrawn every second with the time it has taken so far (and how far
it got, when the event counts), so a Debian build or an install that runs for minutes with
no new event is visibly alive. With `--json`, each event is one JSON object on stderr, so
stdout stays the command's one JSON document.
"""

from __future__ import annotations

import _thread
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

from pyro_loop.progress import OnProgress, Progress
from pyro_loop.safetext import visible

if TYPE_CHECKING:
    import threading


class ProgressDisplay:
    """An `OnProgress` writing "prefix: phase: message" lines (no prefix: "phase: message"),
    live on a terminal."""

    def __init__(
        self, stream: TextIO | None = None, *, live: bool | None = None, prefix: str = "prepare"
    ) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.prefix = prefix
        # threading itself is imported only for a live line's ticker: a warm prepare or up
        # whose output is piped starts no thread and needs no import of it.
        self._lock = _thread.allocate_lock()
        self._event: Progress | None = None
        self._line = ""
        self._since = 0.0
        self._stop: threading.Event | None = None
        self._ticker: threading.Thread | None = None

    def __call__(self, event: Progress) -> None:
        line = f"{self.prefix}: {event.text()}" if self.prefix else event.text()
        with self._lock:
            if not self.live:
                self.stream.write(line + "\n")
            else:
                if self._event is not None:  # the previous event's line stays, with its time
                    self._draw(final=True)
                # On a terminal: a message may quote a repository's text (a lockfile's name).
                self._event, self._line = event, visible(line)
                self._since = time.monotonic()
                self._draw(final=False)
                if self._ticker is None:
                    import threading

                    self._stop = threading.Event()
                    self._ticker = threading.Thread(target=self._tick, args=(self._stop,),
                                                    daemon=True)  # fmt: skip
                    self._ticker.start()
            self.stream.flush()

    def _draw(self, *, final: bool) -> None:
        assert self._event is not None
        took = f"{time.monotonic() - self._since:.0f} s"
        amount = self._event.amount()
        how_far = f"{amount}, {took}" if amount else took
        self.stream.write(f"\r\x1b[K{self._line} ({how_far})" + ("\n" if final else ""))

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            with self._lock:
                if self._event is not None:
                    self._draw(final=False)
                    self.stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._stop is not None:
                self._stop.set()
            if self.live and self._event is not None:
                self._draw(final=True)
                self._event = None
            self.stream.flush()


class JsonProgress:
    """An `OnProgress` writing each event as one JSON line (`--json`: stdout holds the result)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def __call__(self, event: Progress) -> None:
        self.stream.write(json.dumps(event.to_json()) + "\n")
        self.stream.flush()


@contextmanager
def progress_display(
    *, as_json: bool = False, live: bool | None = None, prefix: str = "prepare"
) -> Iterator[OnProgress]:
    """The CLI's `on_progress` for one command: JSON lines with `--json`, else lines (live
    on a terminal unless `live` is False: a command whose own output follows on the same
    stream must not have a line redrawn over it)."""
    if as_json:
        yield JsonProgress()
        return
    display = ProgressDisplay(live=live, prefix=prefix)
    try:
        yield display
    finally:
        display.close()

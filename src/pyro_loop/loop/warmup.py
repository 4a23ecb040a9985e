"""The project's workspace, made ready in the background while the server answers.

A chat host starts `pyro mcp serve` and expects `initialize` answered at once, yet a cold
project needs a prepare that can take minutes. `ProjectWarmup` runs `ProjectLoop.up` (prepare
included) on a thread, records the phase it is in, then keeps a watcher syncing host edits
into the workspace until the server exits. Tools that need the workspace `poll` it (the
server waits a bounded time, reporting progress) and otherwise say where it stands.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pyro_loop.errors import NotFoundError, PyroError
from pyro_loop.records import dataclass

if TYPE_CHECKING:
    from pyro_loop.loop.live import ProjectLoop
    from pyro_loop.progress import Progress
    from pyro_loop.project.config import ConfigResult
    from pyro_loop.project.discovery import Project
    from pyro_loop.shapes import WarmupEventJSON, WarmupJSON, WarmupState
    from pyro_loop.workspace.manager import Workspaces

logger = logging.getLogger("pyro.mcp")

EventSink = Callable[[str, str], None]  # (level: "info" | "warning" | "error", message)


class WarmupPendingError(PyroError):
    """The project's workspace is not ready yet; the message says how far it got."""


class NotAProjectError(NotFoundError):
    """The server's directory has no `.pyro.toml` (here or above, up to the repo root)."""


@dataclass(frozen=True)
class Event:
    time: float
    level: str
    message: str

    def to_json(self) -> WarmupEventJSON:
        return {"time": round(self.time, 3), "level": self.level, "message": self.message}


def load_project(project_dir: Path) -> tuple[Project, ConfigResult]:
    """The project `project_dir` is in, and its `.pyro.toml`; `NotAProjectError` without one."""
    from pyro_loop.project.config import load_project_config
    from pyro_loop.project.discovery import find_project

    project = find_project(project_dir)
    if not project.config_path.is_file():
        raise NotAProjectError(
            f"{project.root} is not a pyro project (no .pyro.toml here or above)",
            hint="run `pyro init` in the repository; the next call picks it up. Meanwhile the "
            "tools given a workspace_id, and vm_run, still work",
        )
    return project, load_project_config(project.root)


class ProjectWarmup:
    """One project's workspace: made ready once, kept synced, followed when recreated."""

    def __init__(
        self,
        project_dir: Path,
        workspaces: Callable[[], Workspaces],
        *,
        on_event: EventSink | None = None,
    ) -> None:
        self.project_dir = project_dir
        self._workspaces = workspaces
        self._on_event = on_event
        # Reentrant: the signal handler that closes the server may interrupt a holder.
        self._lock = threading.RLock()
        self._state: WarmupState = "idle"
        self._phase = "waiting for the client to connect"
        self._started: float | None = None
        self._seconds: float | None = None  # how long the last warm-up took
        self._error: PyroError | None = None
        self._loop: ProjectLoop | None = None
        self._thread: threading.Thread | None = None
        self._events: deque[Event] = deque(maxlen=40)
        self._watcher: tuple[str, threading.Event, threading.Thread] | None = None
        self._closed = False
        self._settled = threading.Event()  # set when a warm-up ends, ready or failed

    # -- starting and waiting -------------------------------------------------------------------

    def start(self, *, retry: bool = False) -> None:
        """Start warming up, unless it is running or ready; with `retry`, after a failure too.

        Tools that need the workspace retry: the user may have fixed the cause meanwhile
        (written the .pyro.toml, fixed a prepare command).
        """
        with self._lock:
            if self._closed or self._state in ("running", "ready"):
                return
            if self._state == "failed" and not retry:
                return
            self._state, self._phase = "running", "finding the project"
            self._settled.clear()
            self._started, self._error = time.monotonic(), None
            self._thread = threading.Thread(target=self._run, name="pyro-warmup", daemon=True)
            # Daemon: a prepare still running when the host disconnects must not keep the
            # process alive. Killing it midway is safe: nothing half-built is ever used.
            self._thread.start()

    def poll(self) -> ProjectLoop | None:
        """The project's loop when ready, None while warming up; raises what made it fail."""
        with self._lock:
            if self._state == "ready":
                return self._loop
            if self._state == "failed":
                assert self._error is not None
                raise self._error
            return None

    def settle(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for a warm-up in progress to end."""
        with self._lock:
            if self._state != "running":
                return
        self._settled.wait(timeout)

    def pending(self) -> WarmupPendingError:
        """The error a tool gives when its wait for the workspace ran out."""
        return WarmupPendingError(
            f"the project's workspace is not ready yet: {self.phase()}",
            hint="call this tool again in a moment; project_status shows the progress",
        )

    def phase(self) -> str:
        """Where the warm-up is: "preparing: dependencies: running: npm ci, 12 s so far"."""
        with self._lock:
            if self._state == "running" and self._started is not None:
                return f"{self._phase}, {time.monotonic() - self._started:.0f} s so far"
            return self._phase

    def _run(self) -> None:
        try:
            loop = self._make_loop()
            self._set_phase("checking the project's warm snapshot")
            result = loop.up(prepare=True, on_progress=self._progress)
        except PyroError as exc:
            self._fail(exc)
            return
        except Exception as exc:  # a bug: the server keeps serving and says so
            logger.exception("warming up the project's workspace failed")
            self._fail(PyroError(f"internal error while warming up: {type(exc).__name__}: {exc}"))
            return
        record = result.record
        with self._lock:
            self._loop, self._state = loop, "ready"
            self._seconds = time.monotonic() - (self._started or time.monotonic())
            self._phase = "ready"
            self._settled.set()
        self._note("info", f"workspace {result.describe()}; watching host edits")
        self.follow(record.id)

    def _make_loop(self) -> ProjectLoop:
        from pyro_loop.loop.live import ProjectLoop

        project, loaded = load_project(self.project_dir)
        for warning in loaded.warnings:
            self._note("warning", f".pyro.toml: {warning}")
        return ProjectLoop(project, loaded.config, self._workspaces())

    def _progress(self, event: Progress) -> None:
        self._set_phase(f"preparing: {event.describe()}")
        self._note("info", f"prepare: {event.describe()}")

    def _set_phase(self, phase: str) -> None:
        with self._lock:
            self._phase = phase

    def _fail(self, error: PyroError) -> None:
        with self._lock:
            self._state, self._error = "failed", error
            self._phase = f"failed: {error.message}"
            self._seconds = time.monotonic() - (self._started or time.monotonic())
            self._settled.set()
        self._note("error", f"the workspace could not be made ready: {error.message}")

    # -- keeping it synced --------------------------------------------------------------------

    def follow(self, workspace_id: str) -> None:
        """Watch `workspace_id`, the project's workspace; a recreated one gets a new watcher.

        The watcher's syncer is bound to one workspace, so after the workspace is replaced
        (deleted and made again) the old watcher would wait for it forever.
        """
        with self._lock:
            loop = self._loop
            current = self._watcher
            if loop is None or self._closed or (current and current[0] == workspace_id):
                return
            stop = threading.Event()
            thread = threading.Thread(
                target=self._watch, args=(loop, stop), name="pyro-watcher", daemon=True
            )
            self._watcher = (workspace_id, stop, thread)
            thread.start()  # under the lock, so `close` never sees a watcher not yet started
        if current is not None:
            current[1].set()
            current[2].join(timeout=5)

    def _watch(self, loop: ProjectLoop, stop: threading.Event) -> None:
        try:
            loop.watch(stop_event=stop, on_event=lambda text: self._note("info", f"sync: {text}"))
        except PyroError as exc:
            self._note(
                "warning",
                f"the file watcher stopped: {exc.message} (each workspace_exec still syncs "
                "first; workspace_sync syncs on demand)",
            )
        except Exception:
            logger.exception("the file watcher failed")

    # -- reporting ----------------------------------------------------------------------------

    def _note(self, level: str, message: str) -> None:
        with self._lock:
            self._events.append(Event(time.time(), level, message))
        logger.log(logging.WARNING if level != "info" else logging.INFO, "%s", message)
        if self._on_event is not None:
            try:
                self._on_event(level, message)
            except Exception:  # a closed client connection must not stop the warm-up
                logger.debug("could not forward an event", exc_info=True)

    def to_json(self) -> WarmupJSON:
        with self._lock:
            error = self._error
            watching = self._watcher is not None and self._watcher[2].is_alive()
            return {
                "state": self._state,
                "phase": self._phase,
                "seconds": (
                    round(time.monotonic() - self._started, 1)
                    if self._state == "running" and self._started is not None
                    else (round(self._seconds, 1) if self._seconds is not None else None)
                ),
                "error": error.message if error else None,
                "hint": error.hint if error else None,
                "watching": watching,
                "events": [e.to_json() for e in list(self._events)[-10:]],
            }

    # -- the end ------------------------------------------------------------------------------

    def close(self, *, down: bool = False) -> None:
        """Stop the watcher; with `down`, stop the workspace too (it stays by default)."""
        with self._lock:
            self._closed = True
            watcher, loop = self._watcher, self._loop
        if watcher is not None:
            watcher[1].set()
            watcher[2].join(timeout=5)
        if down and loop is not None:
            try:
                loop.down()
            except PyroError as exc:
                logger.warning("could not stop the workspace: %s", exc)

"""The file watcher: host edits reach the project's workspace as they happen.

`watch` turns filesystem events (inotify through watchfiles; polling where inotify cannot be
used) into batches of host paths; `run_watcher` feeds them to a Syncer, after a first full
reconcile, and records how it is doing in a small status file for `pyro status`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pyro_loop.errors import AgentUnavailableError, PyroError
from pyro_loop.fs.util import write_json_atomic
from pyro_loop.procutil import pid_alive
from pyro_loop.records import dataclass

if TYPE_CHECKING:
    from pyro_loop.sync import Syncer, SyncResult

# Latency: an edit is visible in the workspace after (the time to the watcher's next step) +
# one quiet step + the sync itself (~3 ms for one file). watchfiles' defaults (a 50 ms step,
# batches held up to 1600 ms) suit reloaders, not this. Measured on a 2-core VM, 30 edits of
# one file, host write -> seen by `exec cat` polled in the workspace (which adds ~7 ms):
#   step  5 ms: p50 15 ms, p95 21 ms      step 20 ms: p50 34 ms, p95  39 ms
#   step 10 ms: p50 24 ms, p95 31 ms      step 50 ms: p50 106 ms, p95 108 ms
# 10 ms keeps p95 well under the 100 ms target for an idle cost of 0.5% of one core (a Rust
# thread's sleep and an `is_set` call every step; 0.3% at 50 ms). The debounce only bounds how
# long a burst (a branch switch, a build) is gathered before a batch is cut: 100 ms keeps a
# long burst from holding everything back, and each batch is synced as it comes.
STEP_MS = 10
DEBOUNCE_MS = 100
TICK_MS = 100  # how often watchfiles hands control back without events (root checks, rescans)
POLL_DELAY_MS = 300  # the polling fallback's interval (it stats the whole tree each time)
FULL_RECONCILE_AT = 5000  # a batch this large is cheaper (and safer) as one full reconcile
RESCAN_EVERY = 120.0  # seconds: a full reconcile during quiet times catches lost events


class Stoppable(Protocol):
    def is_set(self) -> bool: ...


class WatchRootGoneError(PyroError):
    """The watched directory was deleted, moved or replaced while being watched."""


class _WatcherFailed(Exception):
    """watchfiles itself failed (not the batch handler)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def watch(
    root: Path,
    on_batch: Callable[[set[Path]], None],
    *,
    stop_event: Stoppable | None = None,
    debounce_ms: int = DEBOUNCE_MS,
    step_ms: int = STEP_MS,
    path_filter: Callable[[Path], bool] | None = None,
    force_polling: bool | None = None,
    poll_delay_ms: int = POLL_DELAY_MS,
    on_event: Callable[[str], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    on_idle: Callable[[], None] | None = None,
    tick_ms: int = TICK_MS,
) -> None:
    """Call `on_batch` with the host paths that changed, until `stop_event` is set.

    Paths under `.git`, and those `path_filter` refuses (by default: excluded by git's
    ignore rules, unless tracked), never reach `on_batch`. An editor's intermediate files
    may; what counts is that the final path of an atomic save (a rename) is in a batch.
    When inotify cannot watch (its watch or instance limit is reached), the watcher falls
    back to polling and says so through `on_event`. `on_ready` is called once the watcher
    is live (it sees every change from then on), and again after each restart: the moment
    for a full reconcile, which then misses nothing. `on_idle` is called every `tick_ms`
    without events. Raises WatchRootGoneError when `root` disappears.
    """
    import watchfiles

    from pyro_loop.sync import PathFilter

    root = root.resolve()
    identity = _identity(root)
    keep = path_filter or PathFilter.for_root(root)
    refresh = getattr(keep, "refresh", None)
    recovery = _Recovery(root, on_event or (lambda _text: None), poll_delay_ms, force_polling)

    def wanted(_change: Any, path: str) -> bool:
        if "/.git/" in path or path.endswith("/.git"):
            return False  # whatever the filter: git's own files are never synced
        return bool(keep(Path(path)))

    while True:
        # Only the directories that take part are watched, each without recursion: inotify
        # has no way to leave a subtree out, and a recursive watch of the root would hold a
        # watch for every directory of an ignored node_modules or build tree (thousands, up
        # to the user's limit, after which everything falls back to polling). A directory
        # that appears later is watched after a restart, which reconciles (`on_ready`).
        watched = _watched_dirs(root, keep)
        changes_iter = watchfiles.watch(
            *watched,
            watch_filter=wanted,
            debounce=debounce_ms,
            step=step_ms,
            stop_event=stop_event,
            rust_timeout=tick_ms,
            yield_on_timeout=True,
            debug=False,
            raise_interrupt=True,
            force_polling=recovery.polling,
            poll_delay_ms=poll_delay_ms,
            recursive=False,
            ignore_permission_denied=recovery.ignore_denied,
        )
        ready = False
        try:
            for changes in _guarded(changes_iter):
                # The first yield (changes, or a tick without any) comes from a watcher
                # whose watches are all in place.
                _check_root(root, identity)
                recovery.failures = 0
                if not ready:
                    ready = True
                    if on_ready is not None:
                        on_ready()
                if changes:
                    paths = {Path(path) for _change, path in changes}
                    on_batch(paths)
                    if _new_dirs(paths, watched):
                        break  # watch them too: restart (events in them meanwhile: reconciled)
                elif on_idle is not None:
                    on_idle()
                if refresh is not None:
                    refresh()
            else:
                return  # stopped
            changes_iter.close()
        except _WatcherFailed as failed:
            _check_root(root, identity)
            if not isinstance(failed.error, FileNotFoundError):
                recovery.failed(failed.error)  # (else a directory went before it was watched)


@dataclass
class _Recovery:
    """How the watcher recovers from watchfiles' failures: skip unreadable directories,
    poll when inotify's limits are reached (or it keeps failing), else restart, up to 5."""

    root: Path
    say: Callable[[str], None]
    poll_delay_ms: int
    polling: bool | None
    # watchfiles' ignore_permission_denied swallows every error of adding a watch, the
    # limits' too: it is set only once an unreadable directory has been met.
    ignore_denied: bool = False
    failures: int = 0

    def failed(self, error: BaseException) -> None:
        self.failures += 1
        if isinstance(error, PermissionError) and not self.ignore_denied:
            self.ignore_denied = True
            self.say(f"some directories cannot be watched ({_first_line(error)}): skipping them")
        elif not self.polling and (_is_limit(error) or self.failures >= 3):
            self.polling = True
            self.say(
                f"inotify cannot watch {self.root} ({_first_line(error)}): "
                f"falling back to polling every {self.poll_delay_ms} ms"
            )
        else:
            self.say(f"the file watcher failed ({_first_line(error)}): restarting it")
            if self.failures >= 5:
                raise PyroError(
                    f"the file watcher keeps failing: {_first_line(error)}",
                    hint="`pyro sync` still brings the workspace up to date by hand",
                ) from error
            time.sleep(min(0.05 * 2**self.failures, 2.0))


def _watched_dirs(root: Path, keep: Callable[[Path], bool]) -> list[str]:
    """`root` and every directory below it that takes part in sync (`keep` says which), by
    path; never `.git`, never through a symlink."""
    found = [str(root)]
    pending = [str(root)]
    while pending:
        try:
            with os.scandir(pending.pop()) as it:
                entries = list(it)
        except OSError:
            continue  # gone or unreadable: its parent's events still report it
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir and entry.name != ".git" and keep(Path(entry.path)):
                found.append(entry.path)
                pending.append(entry.path)
    return found


def _new_dirs(paths: set[Path], watched: list[str]) -> bool:
    """Is one of the reported (wanted) paths a directory that is not watched yet?"""
    known = set(watched)
    return any(str(p) not in known and p.is_dir() and not p.is_symlink() for p in paths)


def _guarded(changes_iter: Any) -> Any:
    """Iterate watchfiles' generator, telling its own failures apart from the handler's."""
    while True:
        try:
            changes = next(changes_iter)
        except StopIteration:
            return
        except (OSError, RuntimeError) as exc:  # its errors: OSError or a RuntimeError subclass
            raise _WatcherFailed(exc) from exc
        yield changes


def _identity(root: Path) -> tuple[int, int]:
    try:
        st = os.stat(root)
    except OSError as exc:
        raise WatchRootGoneError(f"cannot watch {root}: {exc.strerror or exc}") from exc
    return st.st_dev, st.st_ino


def _check_root(root: Path, identity: tuple[int, int]) -> None:
    try:
        st = os.stat(root)
    except OSError:
        raise WatchRootGoneError(
            f"{root} vanished while being watched", hint="nothing more to sync: watcher stopped"
        ) from None
    if (st.st_dev, st.st_ino) != identity:
        raise WatchRootGoneError(
            f"{root} was replaced by another directory while being watched",
            hint="start the watcher again to follow the new one",
        )


def _is_limit(error: BaseException) -> bool:
    text = str(error).lower()
    markers = ("limit", "no space left", "too many open files", "os error 28", "os error 24")
    return any(marker in text for marker in markers)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]


# -- the watcher, synced --------------------------------------------------------------------


def run_watcher(
    syncer: Syncer,
    root: Path | None = None,
    *,
    stop_event: Stoppable | None = None,
    status_path: Path | None = None,
    debounce_ms: int = DEBOUNCE_MS,
    step_ms: int = STEP_MS,
    force_polling: bool | None = None,
    rescan_every: float | None = RESCAN_EVERY,
    retry_max: float = 2.0,
    on_event: Callable[[str], None] | None = None,
    on_sync: Callable[[SyncResult], None] | None = None,
    on_quiet: Callable[[], SyncResult] | None = None,
) -> None:
    """Keep the workspace in sync with the host until `stop_event` is set (or Ctrl-C).

    Reconciles once the watcher is live (so nothing changed before it, or while no watcher
    ran, is missed), then syncs each batch of events. When the agent is unavailable (the
    workspace restarting), it retries with backoff (up to `retry_max` seconds apart) and
    reconciles once it is back; after a watcher failure, for a very large batch, and every
    `rescan_every` seconds of quiet, it reconciles fully. `root` (what is watched) defaults
    to the syncer's root, the whole work tree. The watcher's pid, state and last sync time
    go to `status_path` (see `read_status`). `on_quiet` runs at the first quiet moment
    after syncs (a full sync that records the host's state, say).
    """
    root = (root or syncer.root).resolve()
    say = on_event or (lambda _text: None)
    status = _StatusFile(status_path, root)
    import threading

    stopped = stop_event or threading.Event()
    last_full = [0.0]
    unsettled = [False]  # synced since the last quiet moment

    def synced(result: SyncResult | None, full: bool) -> None:
        if result is None:
            return
        unsettled[0] = True
        if full:
            last_full[0] = time.monotonic()
        status.update(state="watching", last_sync=time.time(), last_result=result.to_json(),
                      error=None)  # fmt: skip
        if on_sync is not None:
            on_sync(result)

    def full_reconcile() -> None:
        synced(_retrying(syncer.reconcile, say, status, stopped, retry_max), True)

    def on_batch(paths: set[Path]) -> None:
        if len(paths) >= FULL_RECONCILE_AT:
            full_reconcile()
            return
        try:
            result = syncer.sync_paths(paths)
        except AgentUnavailableError:
            full_reconcile()  # it retries until the agent is back, then catches up fully
            return
        except (PyroError, OSError) as exc:
            say(f"sync failed ({exc}): reconciling")
            status.update(error=str(exc))
            full_reconcile()
            return
        synced(result, False)

    def on_idle() -> None:
        if rescan_every is not None and time.monotonic() - last_full[0] >= rescan_every:
            full_reconcile()
        if on_quiet is not None and unsettled[0]:
            unsettled[0] = False
            _retrying(on_quiet, say, status, stopped, retry_max)

    def on_watch_event(text: str) -> None:
        if "polling" in text:
            status.update(mode="polling")
        say(text)

    status.update(state="starting", mode="polling" if force_polling else "inotify")
    try:
        watch(
            root,
            on_batch,
            stop_event=stopped,
            debounce_ms=debounce_ms,
            step_ms=step_ms,
            path_filter=syncer.filter,
            force_polling=force_polling,
            on_event=on_watch_event,
            on_ready=full_reconcile,
            on_idle=on_idle,
        )
    except BaseException as exc:
        status.update(state="failed" if isinstance(exc, Exception) else "stopped",
                      error=str(exc) or type(exc).__name__)  # fmt: skip
        raise
    status.update(state="stopped")


def _retrying(
    sync: Callable[[], SyncResult],
    say: Callable[[str], None],
    status: _StatusFile,
    stopped: Stoppable,
    retry_max: float,
) -> SyncResult | None:
    """Run `sync`, retrying while the workspace's agent is unavailable; None if stopped.

    Other failures are reported and leave the next batch (or rescan) to try again: a watcher
    that dies on a transient error would miss everything after it.
    """
    delay = 0.05
    waiting = False
    while not stopped.is_set():
        try:
            result = sync()
        except AgentUnavailableError as exc:
            if not waiting:
                # Said before the status changes, so whoever sees "waiting" has the reason too.
                say(f"workspace unavailable ({exc}): retrying until it is back")
                status.update(state="waiting", error=str(exc))
                waiting = True
        except (PyroError, OSError) as exc:
            say(f"sync failed: {exc}")
            status.update(error=str(exc))
            return None
        else:
            if waiting:
                status.update(state="watching", error=None)
                say("workspace back: synced")
            return result
        _wait(stopped, delay)
        delay = min(delay * 2, retry_max)
    return None


def _wait(stopped: Stoppable, seconds: float) -> None:
    wait = getattr(stopped, "wait", None)
    if callable(wait):
        wait(seconds)
    else:
        time.sleep(seconds)


# -- the status file ------------------------------------------------------------------------


class _StatusFile:
    def __init__(self, path: Path | None, root: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "pid": os.getpid(),
            "root": str(root),
            "started": time.time(),
            "state": "starting",
            "mode": "inotify",
            "last_sync": None,
            "last_result": None,
            "error": None,
        }

    def update(self, **changes: Any) -> None:
        self.data.update(changes)
        if self.path is None:
            return
        with contextlib.suppress(OSError):  # status is informative: never fatal
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, {**self.data, "updated": time.time()}, durable=False)


@dataclass(frozen=True)
class WatchStatus:
    pid: int
    alive: bool  # the watcher's process still exists
    state: str  # "starting" | "watching" | "waiting" | "stopped" | "failed"
    mode: str  # "inotify" | "polling"
    root: str
    last_sync: float | None  # epoch seconds of the last successful sync
    error: str | None

    @property
    def running(self) -> bool:
        return self.alive and self.state in ("starting", "watching", "waiting")

    def describe(self, now: float | None = None) -> str:
        """One line for `pyro status`: "watching, last sync 2 s ago"."""
        if not self.running:
            return "not watching" + (f" (last error: {self.error})" if self.error else "")
        what = {"waiting": "watching, waiting for the workspace"}.get(self.state, self.state)
        if self.mode == "polling":
            what += " (polling)"
        if self.last_sync is None:
            return f"{what}, not synced yet"
        ago = max(0.0, (now if now is not None else time.time()) - self.last_sync)
        return f"{what}, last sync {_ago(ago)} ago"

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "alive": self.alive, "running": self.running,
                "state": self.state, "mode": self.mode, "root": self.root,
                "last_sync": self.last_sync, "error": self.error}  # fmt: skip


def read_status(path: Path) -> WatchStatus | None:
    """The watcher status recorded at `path`, or None if no watcher ever wrote one."""
    try:
        data = json.loads(path.read_text())
        pid = int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    last_sync = data.get("last_sync")
    return WatchStatus(
        pid=pid,
        alive=pid_alive(pid),
        state=str(data.get("state", "stopped")),
        mode=str(data.get("mode", "inotify")),
        root=str(data.get("root", "")),
        last_sync=float(last_sync) if isinstance(last_sync, int | float) else None,
        error=data.get("error") if isinstance(data.get("error"), str) else None,
    )


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

"""The file watcher: real inotify (and polling), real workspaces, edits made on the host.

Timings are printed, not asserted tightly: the suite runs on loaded 2-core machines. Every
deadline is generous; what is asserted is that each change arrives.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pyro_loop.sync import SyncResult
from pyro_loop.sync.watcher import WatchRootGoneError, read_status, run_watcher, watch
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.live import Live, assert_in_sync, files_only, host_tree, live_factory, make_repo
from tests.helpers.project import git

DEADLINE = 30.0  # seconds for any one change to show up: generous on purpose


@dataclass
class Running:
    live: Live
    status_path: Path
    stop: threading.Event
    thread: threading.Thread
    notices: list[str] = field(default_factory=list)
    syncs: list[SyncResult] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def make_live(workspaces: Workspaces, tmp_path: Path) -> Callable[..., Live]:
    return live_factory(workspaces, tmp_path)


@pytest.fixture
def watching(make_live: Callable[..., Live], tmp_path: Path) -> Iterator[Callable[[Path], Running]]:
    started: list[Running] = []

    def start(repo_path: Path) -> Running:
        live = make_live(repo_path)
        running = Running(live, tmp_path / "watch.json", threading.Event(),
                          threading.Thread(target=lambda: None))  # fmt: skip

        def run() -> None:
            try:
                run_watcher(
                    live.syncer,
                    repo_path,
                    stop_event=running.stop,
                    status_path=running.status_path,
                    on_event=running.notices.append,
                    on_sync=running.syncs.append,
                )
            except BaseException as exc:
                running.errors.append(exc)

        running.thread = threading.Thread(target=run, daemon=True)
        running.thread.start()
        started.append(running)
        _until(lambda: bool(running.syncs), "the first reconcile")
        return running

    yield start
    for running in started:
        running.stop.set()
        running.thread.join(timeout=20)
        assert not running.thread.is_alive(), "the watcher stops when asked"
        assert not running.errors, running.errors


def _until(check: Callable[[], bool], what: str, deadline: float = DEADLINE) -> float:
    """Poll `check` until it holds; returns the seconds it took."""
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > deadline:
            raise AssertionError(f"timed out after {deadline:.0f} s waiting for {what}")
        time.sleep(0.002)
    return time.perf_counter() - started


def _shows(live: Live, rel: str, content: bytes) -> Callable[[], bool]:
    def check() -> bool:
        result = live.workspaces.exec(live.ref, ["cat", f"/workspace/{rel}"], timeout=60)
        return result.exit_code == 0 and result.stdout == content

    return check


def test_edits_appear_in_the_workspace(watching: Callable[[Path], Running], repo: Path) -> None:
    running = watching(repo)
    live = running.live
    latencies = []
    for i in range(20):
        time.sleep(0.05)  # separate edits, as a person makes them
        rel = "src/app.py" if i % 2 else f"new_{i}.txt"
        content = f"edit {i} at {time.time()}\n".encode()
        started = time.perf_counter()
        (repo / rel).write_bytes(content)
        _until(_shows(live, rel, content), f"edit {i}")
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    p50 = statistics.median(latencies)
    p95 = latencies[int(0.95 * len(latencies)) - 1]
    print(f"\nwatcher latency, host write -> visible to `cat` in the workspace, 20 edits:"
          f" p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {latencies[-1]:.0f} ms")  # fmt: skip

    status = read_status(running.status_path)
    assert status is not None and status.running and status.pid == os.getpid()
    assert status.describe().startswith("watching, last sync ")
    assert status.last_sync is not None and time.time() - status.last_sync < DEADLINE


def test_a_directory_rename_and_a_branch_switch(
    watching: Callable[[Path], Running], tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "switching", lib_files=300)
    git(repo, "checkout", "-q", "-b", "other")
    for i in range(0, 300, 2):
        (repo / "lib" / f"mod_{i:03}.py").write_text(f"VALUE = {i}  # other\n")
    (repo / "only-on-other").mkdir()
    for i in range(100):
        (repo / "only-on-other" / f"f{i}.txt").write_text(f"{i}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "other")
    git(repo, "checkout", "-q", "main")
    running = watching(repo)
    live = running.live

    def in_sync() -> bool:
        return files_only(live.tree()) == host_tree(repo)

    os.rename(repo / "lib", repo / "library")
    took = _until(in_sync, "the renamed directory")
    print(f"\ndirectory of 300 files renamed: in sync after {took * 1000:.0f} ms")
    assert "lib" not in live.sh("ls /workspace").split()

    os.rename(repo / "library", repo / "lib")
    _until(in_sync, "the directory renamed back")

    git(repo, "checkout", "-q", "other")
    took = _until(in_sync, "the branch switch")
    print(f"branch switch (250 files): in sync after {took * 1000:.0f} ms")
    git(repo, "checkout", "-q", "main")
    took = _until(in_sync, "the switch back")
    print(f"switch back: in sync after {took * 1000:.0f} ms")
    assert_in_sync(live)


def test_the_watcher_survives_a_workspace_restart(
    watching: Callable[[Path], Running], repo: Path
) -> None:
    running = watching(repo)
    live = running.live
    live.workspaces.stop(live.ref)
    (repo / "while-stopped.txt").write_text("written while the workspace was down\n")
    _until(lambda: _state(running) == "waiting", "the watcher to notice")
    assert any("unavailable" in n for n in running.notices)

    live.workspaces.start(live.ref)
    took = _until(_shows(live, "while-stopped.txt", b"written while the workspace was down\n"),
                  "the edit made while the workspace was down")  # fmt: skip
    print(f"\nworkspace back: caught up {took * 1000:.0f} ms after its start")
    (repo / "README.md").write_text("after the restart\n")
    _until(_shows(live, "README.md", b"after the restart\n"), "an edit after the restart")
    assert _state(running) == "watching"
    assert not running.errors


def _state(running: Running) -> str | None:
    status = read_status(running.status_path)
    return status.state if status is not None else None


def test_the_status_file_after_a_stop(watching: Callable[[Path], Running], repo: Path) -> None:
    running = watching(repo)
    assert read_status(running.status_path.with_name("missing.json")) is None
    running.stop.set()
    running.thread.join(timeout=20)
    status = read_status(running.status_path)
    assert status is not None
    assert (status.state, status.running) == ("stopped", False)
    assert status.describe() == "not watching"
    assert json.loads(running.status_path.read_text())["pid"] == os.getpid()


def test_the_filter_drops_git_internals_and_ignored_directories(repo: Path) -> None:
    batches: list[set[Path]] = []
    stop = threading.Event()
    ready = threading.Event()
    thread = threading.Thread(
        target=lambda: watch(repo, batches.append, stop_event=stop, on_ready=ready.set)
    )
    thread.start()
    try:
        assert ready.wait(DEADLINE)
        (repo / ".git" / "pyro-test").write_text("internal\n")
        (repo / ".venv" / "lib").mkdir(parents=True)
        (repo / ".venv" / "lib" / "site.py").write_text("ignored\n")
        (repo / "build").mkdir()
        (repo / "build" / "out.o").write_bytes(b"\0")
        (repo / "debug.log").write_text("ignored\n")
        (repo / "src" / "app.py").write_text("print('seen')\n")
        _until(lambda: any(repo / "src" / "app.py" in b for b in batches), "the edit")
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=20)
    seen = set().union(*batches)
    assert seen == {repo / "src" / "app.py"}, seen


@pytest.mark.parametrize("how", ["removed", "renamed"])
def test_the_watcher_stops_when_its_root_vanishes(how: str, tmp_path: Path) -> None:
    root = tmp_path / "doomed"
    root.mkdir()
    failures: list[BaseException] = []
    ready = threading.Event()

    def run() -> None:
        try:
            watch(root, lambda _paths: None, on_ready=ready.set)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(DEADLINE)
    if how == "removed":
        shutil.rmtree(root)
    else:  # its inotify watches follow the directory: the old paths must not be synced
        root.rename(tmp_path / "moved")
        (tmp_path / "moved" / "new.txt").write_text("an event under the old name\n")
    thread.join(timeout=DEADLINE)
    assert not thread.is_alive()
    assert len(failures) == 1 and isinstance(failures[0], WatchRootGoneError)
    assert "vanished" in str(failures[0])


@pytest.mark.parametrize("limit", ["max_inotify_instances", "max_inotify_watches"])
def test_polling_takes_over_when_inotify_cannot_watch(limit: str, tmp_path: Path) -> None:
    """With inotify's instance or watch limit at zero, the watcher polls, and says so.

    The limit is lowered in a user namespace of the child's own (these limits are per user
    namespace), so nothing else on the machine is disturbed.
    """
    root = tmp_path / "polled"
    root.mkdir()
    script = f'echo 0 > /proc/sys/user/{limit} && exec "$0" -c "$1" "$2"'
    child = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", script, sys.executable,
         POLLING_CHILD, str(root)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if child.returncode != 0 and "unshare" in child.stderr and not child.stdout:
        pytest.skip(f"no user namespace for the child: {child.stderr.strip()}")
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert any("falling back to polling" in n for n in report["notices"]), report
    assert report["seen"] == [str(root / "polled.txt")]
    print(f"\npolling fallback ({limit} = 0): {report['notices'][0]}; the edit arrived"
          f" after {report['ms']:.0f} ms")  # fmt: skip


POLLING_CHILD = r"""
import json, sys, threading, time
from pathlib import Path
from pyro_loop.sync.watcher import watch

root = Path(sys.argv[1])
notices, seen, stop, edited = [], [], threading.Event(), []

def on_batch(paths):
    seen.extend(str(p) for p in paths)
    stop.set()

def on_ready():
    edited.append(time.perf_counter())
    (root / "polled.txt").write_text("polled\n")

timer = threading.Timer(60, stop.set)
timer.daemon = True
timer.start()
watch(root, on_batch, stop_event=stop, on_event=notices.append, on_ready=on_ready)
ms = (time.perf_counter() - edited[0]) * 1000 if edited else -1
print(json.dumps({"notices": notices, "seen": seen, "ms": ms}))
"""

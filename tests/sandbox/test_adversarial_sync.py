"""The watcher and sync under hostile timing: editors' atomic saves, renames of large
directories, events the kernel never delivers, bursts past the batch limit, ignored trees.

Each test ends with the workspace exactly matching what git would track on the host, and
checks that syncing wrote nothing to the host (the repository is as the test left it).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyro_loop.runtime import HOME_DIR
from pyro_loop.sync import SyncResult
from pyro_loop.sync.watcher import FULL_RECONCILE_AT, run_watcher, watch
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.live import Live, assert_in_sync, host_tree, live_factory, make_repo
from tests.helpers.project import commit_project, git, run_pyro
from tests.helpers.sandbox import tree_state

DEADLINE = 60.0


def _until(check: Callable[[], bool], what: str) -> None:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < DEADLINE, f"timed out waiting for {what}"
        time.sleep(0.05)


class Watching:
    """A watcher thread over a live workspace, with what it reported."""

    def __init__(self, live: Live, status: Path, rescan_every: float | None) -> None:
        self.live = live
        self.stop = threading.Event()
        self.syncs: list[SyncResult] = []
        self.notices: list[str] = []
        self.errors: list[BaseException] = []

        def run() -> None:
            try:
                run_watcher(live.syncer, live.repo, stop_event=self.stop, status_path=status,
                            rescan_every=rescan_every, on_event=self.notices.append,
                            on_sync=self.syncs.append)  # fmt: skip
            except BaseException as exc:
                self.errors.append(exc)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        _until(lambda: bool(self.syncs), "the first reconcile")

    def in_sync(self) -> bool:
        return host_tree(self.live.repo) == {
            rel: spec for rel, spec in self.live.tree().items() if spec[0] != "dir"
        }

    def settle(self) -> None:
        """Wait until the workspace matches the host, then check the host was not written."""
        host_after_edits = tree_state(self.live.repo)
        _until(self.in_sync, "the workspace to match the host")
        assert_in_sync(self.live)
        assert tree_state(self.live.repo) == host_after_edits  # sync never writes the host


@pytest.fixture
def watch_repo(
    workspaces: Workspaces, tmp_path: Path
) -> Iterator[Callable[..., Watching]]:  # fmt: skip
    make = live_factory(workspaces, tmp_path)
    started: list[Watching] = []

    def start(repo: Path, *, rescan_every: float | None = None) -> Watching:
        watching = Watching(make(repo), tmp_path / f"watch-{len(started)}.json", rescan_every)
        started.append(watching)
        return watching

    yield start
    for watching in started:
        watching.stop.set()
        watching.thread.join(timeout=30)
        assert not watching.thread.is_alive()
        assert not watching.errors, watching.errors


def _vim_save(path: Path, content: str) -> None:
    """Save the way vim does with `backupcopy=no`: swap file, backup by rename, new file."""
    swap = path.with_name(f".{path.name}.swp")
    backup = path.with_name(f"{path.name}~")
    probe = path.with_name("4913")  # vim's "can I create files here" probe
    swap.write_bytes(b"\0" * 4096)
    probe.write_text("")
    probe.unlink()
    os.rename(path, backup)
    path.write_text(content)
    backup.unlink()
    swap.unlink()


def _vscode_save(path: Path, content: str) -> None:
    """Write a temporary file beside it, then rename it over the original (atomic)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(content)
    os.replace(tmp, path)


def test_editor_atomic_saves_in_quick_succession(
    watch_repo: Callable[..., Watching], tmp_path: Path
) -> None:
    watching = watch_repo(make_repo(tmp_path / "repo"))
    readme, app = watching.live.repo / "README.md", watching.live.repo / "src" / "app.py"
    for i in range(25):
        _vim_save(readme, f"vim save {i}\n")
        _vscode_save(app, f"print({i})\n")
    watching.settle()
    assert watching.live.cat("README.md") == b"vim save 24\n"
    assert watching.live.cat("src/app.py") == b"print(24)\n"
    leftovers = [rel for rel in watching.live.tree() if rel.endswith(("~", ".swp", "4913"))]
    assert leftovers == [] and not any(".tmp-" in rel for rel in watching.live.tree())


def test_renaming_a_large_directory_back_and_forth(
    watch_repo: Callable[..., Watching], tmp_path: Path
) -> None:
    watching = watch_repo(make_repo(tmp_path / "repo", lib_files=2000))
    repo = watching.live.repo
    os.rename(repo / "lib", repo / "lib2")
    os.rename(repo / "lib2", repo / "src" / "lib3")
    (repo / "lib").mkdir()
    (repo / "lib" / "new.py").write_text("NEW = 1\n")
    watching.settle()
    tree = watching.live.tree()
    assert "src/lib3/mod_1999.py" in tree and "lib/mod_000.py" not in tree


def test_events_the_kernel_never_delivers_are_caught_by_the_rescan(
    watch_repo: Callable[..., Watching], tmp_path: Path
) -> None:
    """A write through a hard link outside the watched tree raises no inotify event there
    (events go to the parent directory the write went through): only a rescan sees it."""
    repo = make_repo(tmp_path / "repo")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.link(repo / "README.md", outside / "alias")
    watching = watch_repo(repo, rescan_every=1.5)
    fulls_before = len(watching.syncs)
    with (outside / "alias").open("w") as f:  # same inode, truncated in place
        f.write("changed behind the watcher's back\n")
    watching.settle()
    assert watching.live.cat("README.md") == b"changed behind the watcher's back\n"
    assert len(watching.syncs) > fulls_before


def test_a_burst_past_the_batch_limit_is_reconciled_in_full(
    watch_repo: Callable[..., Watching], tmp_path: Path
) -> None:
    watching = watch_repo(make_repo(tmp_path / "repo"))
    burst = watching.live.repo / "burst"
    for d in range(FULL_RECONCILE_AT // 500 + 1):
        (burst / f"d{d}").mkdir(parents=True)
        for i in range(500):
            (burst / f"d{d}" / f"f{i}.txt").write_text(f"{d}/{i}\n")
    watching.settle()
    assert sum(rel.startswith("burst/") for rel in watching.live.tree()) > FULL_RECONCILE_AT


def test_ignored_trees_never_reach_the_workspace(
    watch_repo: Callable[..., Watching], tmp_path: Path
) -> None:
    watching = watch_repo(make_repo(tmp_path / "repo"))
    repo = watching.live.repo
    for i in range(300):
        (repo / "build" / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
        (repo / "build" / f"d{i % 10}" / f"out{i}.o").write_bytes(b"\x7fELF" * 100)
    (repo / ".venv" / "lib").mkdir(parents=True)
    (repo / ".venv" / "lib" / "secret.py").write_text("TOKEN = 'do not sync'\n")
    (repo / "debug.log").write_text("log line\n")
    # An ignored name that is a link to a host secret: neither followed nor synced.
    (repo / "secrets.log").symlink_to("/etc/passwd")
    (repo / "src" / "visible.py").write_text("VISIBLE = True\n")  # the positive control
    watching.settle()
    tree: dict[str, Any] = watching.live.tree()
    assert "src/visible.py" in tree
    ignored = [r for r in tree if r.startswith(("build/", ".venv/")) or r.endswith(".log")]
    assert ignored == [], ignored[:5]
    assert watching.live.sh("ls -a /workspace").split() == sorted(
        [".", "..", ".gitignore", HOME_DIR, "README.md", "lib", "run.sh", "src"]
    )


# -- a repository's symlinks ----------------------------------------------------------------

PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY----- pyro-test-not-a-real-key\n"


def test_a_directory_turned_into_a_link_to_the_host_is_never_read_through(
    tmp_path: Path,
) -> None:
    """A commit turns directory `a/` into a link to a host directory; `[sync] exclude` keeps
    the link itself from being pushed. Paths below it are no paths of the repository: the
    next `pyro exec` must not read them through the link (only the ordinary CLI is used)."""
    config = '[sync]\nexclude = ["a", "!a/"]\n'
    repo = commit_project(tmp_path / "repo", config, {"a/id_ed25519": "a public test fixture\n",
                                                      "a/notes.txt": "notes\n"})  # fmt: skip
    first = run_pyro("exec", "-C", str(repo), "--", "cat", "a/id_ed25519")
    assert first.returncode == 0 and first.stdout == "a public test fixture\n", first
    host_ssh = tmp_path / "host-ssh"
    host_ssh.mkdir()
    (host_ssh / "id_ed25519").write_text(PRIVATE_KEY)
    (host_ssh / "new-secret").write_text(PRIVATE_KEY)
    git(repo, "rm", "-rq", "a")
    (repo / "a").symlink_to(host_ssh)
    git(repo, "add", "a")
    git(repo, "commit", "-qm", "a is a link now")
    host_before = tree_state(host_ssh)
    try:
        seen = run_pyro("exec", "-C", str(repo), "--", "sh", "-c",
                        "cat a/* 2>/dev/null; ls -la a/ 2>&1; true")  # fmt: skip
        assert seen.returncode == 0, seen
        assert "PRIVATE KEY" not in seen.stdout, seen.stdout
        for _ in range(2):  # a sync with the manifest as the first one left it, too
            again = run_pyro("sync", "-C", str(repo), "--json")
            assert again.returncode == 0, again
            look = run_pyro("exec", "-C", str(repo), "--", "sh", "-c", "cat a/* 2>/dev/null; true")
            assert "PRIVATE KEY" not in look.stdout
    finally:
        run_pyro("down", "--delete", "-C", str(repo))
    assert tree_state(host_ssh) == host_before


# -- ignored trees hold no watches -------------------------------------------------------------


def _inotify_watches() -> int:
    """inotify watches this process holds now, from each inotify descriptor's fdinfo."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as info:
                total += sum(1 for line in info if line.startswith("inotify wd:"))
        except OSError:
            continue  # closed meanwhile
    return total


def test_an_ignored_node_modules_of_20k_files_holds_no_watches(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    with (repo / ".gitignore").open("a") as f:
        f.write("node_modules/\n")
    git(repo, "commit", "-qam", "ignore node_modules")
    for package in range(400):  # 800 directories, 20,000 files: a small real node_modules
        lib = repo / "node_modules" / f"pkg{package}" / "lib"
        lib.mkdir(parents=True)
        for i in range(50):
            (lib.parent if i % 2 else lib).joinpath(f"f{i}.js").write_text("x\n")
    batches: list[set[Path]] = []
    stop, ready = threading.Event(), threading.Event()
    before = _inotify_watches()
    thread = threading.Thread(target=lambda: watch(repo, batches.append, stop_event=stop,
                                                   on_ready=ready.set))  # fmt: skip
    thread.start()
    try:
        assert ready.wait(DEADLINE)
        watches = _inotify_watches() - before
        print(f"\ninotify watches with a 20k-file ignored node_modules: {watches}")
        assert watches <= 4, watches  # the root, src, lib (and nothing of .git or node_modules)
        (repo / "node_modules" / "pkg1" / "f1.js").write_text("ignored edit\n")
        (repo / "pkg").mkdir()  # a new directory: watched from now on
        (repo / "pkg" / "first.py").write_text("first\n")
        _until(lambda: any(repo / "pkg" in b for b in batches), "the new directory")
        _until(lambda: _inotify_watches() - before == watches + 1, "the new directory's watch")
        (repo / "pkg" / "later.py").write_text("later\n")
        _until(lambda: any(repo / "pkg" / "later.py" in b for b in batches), "the edit in it")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not any(p.is_relative_to(repo / "node_modules") for b in batches for p in b)

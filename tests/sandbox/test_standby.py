"""A reset to a standby sandbox that got the host's synced files ahead (loop/standby.py)
gives the same workspace as a reset to a sandbox at its baseline."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pyro_loop.loop.live import ProjectLoop
from pyro_loop.loop.standby import StandbyFill
from pyro_loop.workspace.manager import Workspaces
from pyro_loop.workspace.record import FILLING
from tests.helpers.loop import loop_for, sh
from tests.helpers.project import DEPS_CONFIG, commit_project, git
from tests.helpers.scan import full_sync_finds_nothing, settle

# Every path of the workspace but the dependencies' install: its kind, mode, link target,
# and content digest.
LISTING = (
    "find . -path ./.deps -prune -o -mindepth 1 -printf '%y %m %p -> %l\\n' | sort; "
    "find . -path ./.deps -prune -o -type f -print0 | sort -z | xargs -0 sha256sum"
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    files = {
        "requirements.txt": "requests==2.32.0\n",
        "src/app.py": "print('v1')\n",
        "src/util.py": "U = 1\n",
        "docs/guide.md": "guide\n",
        "run.sh": "echo run\n",
        ".gitignore": ".deps/\n*.log\n",
    }
    return commit_project(tmp_path / "repo", DEPS_CONFIG, files)


def edit_host(repo: Path) -> None:
    """Host changes of every kind: modified, new, deleted, a new directory, a symlink, an
    executable bit."""
    (repo / "src" / "app.py").write_text("print('host')\n")
    (repo / "notes.txt").write_text("notes\n")
    (repo / "docs" / "guide.md").unlink()
    (repo / "new" / "deep").mkdir(parents=True)
    (repo / "new" / "deep" / "file.txt").write_text("deep\n")
    (repo / "link").symlink_to("src/util.py")
    (repo / "run.sh").chmod(0o755)


def reset_without_standby(loop: ProjectLoop, monkeypatch: pytest.MonkeyPatch) -> str:
    """A reset whose standby is refused: a sandbox booted at its baseline takes over, and
    the synced files are replayed into it."""
    with monkeypatch.context() as patch:
        patch.setattr(StandbyFill, "acceptor", lambda self, synced: lambda name: False)
        loop.reset()
    assert loop.require().filled is None
    return sh(loop, LISTING)


def test_a_standby_filled_ahead_resets_to_the_same_workspace(
    repo: Path, workspaces: Workspaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = loop_for(repo, workspaces)
    edit_host(repo)
    loop.up()
    workspaces.settle()  # the standby has the host's files now
    assert loop.require().spare_filled not in (None, FILLING)
    # Host changes after the standby got its files: synced ones (a file changed again, one
    # deleted, one new) and one not synced before the reset.
    (repo / "src" / "app.py").write_text("print('host, again')\n")
    (repo / "src" / "util.py").unlink()
    (repo / "later.txt").write_text("later\n")
    settle()
    sh(loop, "echo junk > junk.txt; rm -r src; mkdir -p .cache && echo x > .cache/x")
    (repo / "unsynced.txt").write_text("arrives with the next command\n")
    loop.reset()
    record = loop.require()
    assert record.filled is not None  # the standby filled ahead took over
    with_standby = sh(loop, LISTING)
    assert "junk.txt" not in with_standby and "host, again" in sh(loop, "cat src/app.py")
    workspaces.settle()
    assert with_standby == reset_without_standby(loop, monkeypatch)
    full_sync_finds_nothing(loop)


def test_a_directory_made_afresh_is_reset_to_what_the_host_has_in_it(
    repo: Path, workspaces: Workspaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen on pytest's repository: a directory removed on the host and brought back with
    some of its files is one pyro made afresh; a reset, to a sandbox at its baseline (which
    has all of its files), puts back the host's few and not the baseline's others."""
    loop = loop_for(repo, workspaces)
    loop.up()
    (repo / "src" / "app.py").unlink()
    (repo / "src" / "util.py").unlink()
    (repo / "src").rmdir()
    settle()
    assert "src" not in sh(loop, "ls")
    git(repo, "checkout", "-q", "--", "src/app.py")  # back, without util.py
    settle()
    assert sh(loop, "ls src") == "app.py\n"
    workspaces.settle()
    loop.reset()
    assert sh(loop, "ls src") == "app.py\n"
    assert reset_without_standby(loop, monkeypatch) == sh(loop, LISTING)
    assert sh(loop, "ls src") == "app.py\n"
    full_sync_finds_nothing(loop)


def test_a_standby_holding_a_path_no_longer_synced_is_not_taken(
    repo: Path, workspaces: Workspaces
) -> None:
    loop = loop_for(repo, workspaces)
    (repo / "src" / "app.py").write_text("print('host')\n")
    loop.up()
    workspaces.settle()  # the standby holds the host's app.py
    git(repo, "checkout", "src/app.py")  # the baseline's again
    with (repo / ".gitignore").open("a") as f:
        f.write("*.tmp\n")  # a full sync, which drops the record of app.py
    settle()
    loop.sync()
    manifest = json.loads(loop.files.sync_manifest.read_text())
    assert "src/app.py" not in manifest["entries"]
    loop.reset()
    assert loop.require().filled is None  # booted at its baseline instead
    assert sh(loop, "cat src/app.py") == "print('v1')\n"
    full_sync_finds_nothing(loop)


def test_a_standby_left_half_filled_is_never_promoted(repo: Path, workspaces: Workspaces) -> None:
    loop = loop_for(repo, workspaces)
    (repo / "src" / "app.py").write_text("print('host')\n")
    loop.up()
    workspaces.settle()
    wdir = workspaces.resolve(loop.require().id)
    record = wdir.load()
    spare = record.spare
    record.spare_filled = FILLING  # as if its filler died midway
    wdir.save(record)
    sh(loop, "echo junk > junk.txt")
    loop.reset()
    record = loop.require()
    assert record.handle != spare and record.filled is None
    assert spare is not None and not workspaces.runtime.is_running(spare)
    assert sh(loop, "cat src/app.py") == "print('host')\n"
    assert "junk.txt" not in sh(loop, "ls")
    full_sync_finds_nothing(loop)


def test_the_replaced_sandbox_stops_once_the_reset_has_returned(
    repo: Path, workspaces: Workspaces
) -> None:
    loop = loop_for(repo, workspaces)
    loop.up()
    workspaces.settle()
    old = loop.require().handle
    assert old is not None
    loop.start_service(["sleep", "600"], name="sleeper")
    loop.reset()
    workspaces.settle()  # its stop is the background thread's first step
    assert not workspaces.runtime.is_running(old)
    assert "sleeper" not in json.dumps(loop.services().service_list())


def test_a_process_leaving_by_os_exit_settles_its_standby_first(
    seed_dir: Path, workspaces: Workspaces
) -> None:
    """A forked child ends with os._exit, which would cut the standby's thread off midway
    (a sandbox started and not yet recorded would run on, nobody's): it settles first."""
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from pyro_loop.procutil import settle_background\n"
        "from pyro_loop.workspace.manager import Workspaces\n"
        "ws = Workspaces(home=Path(sys.argv[1]))\n"
        "record = ws.create(seed=Path(sys.argv[2]), fill=lambda client: 'written')\n"
        "print(record.id, flush=True)\n"
        "settle_background()\n"
        "os._exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(workspaces.home), str(seed_dir)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    record = workspaces.resolve(done.stdout.strip()).load()
    assert record.spare is not None and workspaces.runtime.is_running(record.spare)
    assert (record.spare_filled, record.spare_ready) == ("written", True)


def test_resets_from_two_threads_each_hand_their_standby_over(
    seed_dir: Path, workspaces: Workspaces
) -> None:
    """What one thread's `deferring` block holds back is its own: another thread's reset of
    the same workspace, waiting for the lock that work holds, is not held up by it."""
    record = workspaces.create(seed=seed_dir, fill=lambda client: "written")
    errors: list[BaseException] = []

    def reset() -> None:
        try:
            for _ in range(3):
                with workspaces.deferring():
                    workspaces.reset(record.id, accept=lambda name: True, fill=lambda c: "written")
                    time.sleep(0.01)  # the other thread comes in meanwhile
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reset) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and errors == []
    workspaces.settle()
    final = workspaces.resolve(record.id).load()
    assert final.generation == 6 and final.filled == "written"
    assert workspaces.exec(record.id, ["cat", "README.md"]).stdout == b"hello\n"

"""The project's live workspace, end to end: up, exec, retry, reset, diff, apply, down."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pyro_loop.errors import ConflictError
from pyro_loop.loop.live import NotWarmError
from pyro_loop.project.config import load_project_config
from pyro_loop.project.discovery import find_project
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.loop import loop_for, sh
from tests.helpers.project import DEPS_CONFIG, commit_project, git, run_pyro


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    files = {"requirements.txt": "requests==2.32.0\n", "src/app.py": "print('v1')\n",
             ".gitignore": ".deps/\n*.log\n"}  # fmt: skip
    return commit_project(tmp_path / "repo", DEPS_CONFIG, files)


def test_up_creates_then_reuses_and_syncs_the_working_tree(
    repo: Path, workspaces: Workspaces
) -> None:
    (repo / "src" / "app.py").write_text("print('dirty')\n")  # modified, not committed
    (repo / "notes.txt").write_text("untracked\n")
    (repo / "debug.log").write_text("ignored\n")
    loop = loop_for(repo, workspaces)
    first = loop.up()
    assert first.action == "created"
    second = loop.up()
    assert second.action == "reused" and second.record.id == first.record.id
    out = sh(loop, "cat src/app.py notes.txt .deps/installed.txt; ls -a")
    assert "print('dirty')" in out and "untracked" in out and "requests==2.32.0" in out
    assert "debug.log" not in out and ".git\n" not in out


def test_exec_sees_host_edits_without_a_watcher_and_retry_reruns(
    repo: Path, workspaces: Workspaces
) -> None:
    loop = loop_for(repo, workspaces)
    loop.up()
    assert sh(loop, "cat src/app.py") == "print('v1')\n"
    (repo / "src" / "app.py").write_text("print('v2')\n")
    assert sh(loop, "cat src/app.py") == "print('v2')\n"
    (repo / "src" / "app.py").write_text("print('v3')\n")
    again = loop.retry()
    assert again.stdout == b"print('v3')\n"


def test_reset_discards_workspace_changes_and_keeps_host_files(
    repo: Path, workspaces: Workspaces
) -> None:
    loop = loop_for(repo, workspaces)
    loop.up()
    (repo / "host-new.txt").write_text("from host\n")
    sh(loop, "echo junk > junk.txt; rm src/app.py")
    loop.reset()
    out = sh(loop, "ls; cat src/app.py host-new.txt")
    assert "junk.txt" not in out
    assert "print('v1')" in out and "from host" in out


def test_diff_shows_only_workspace_changes_and_apply_brings_them_back(
    repo: Path, workspaces: Workspaces
) -> None:
    loop = loop_for(repo, workspaces)
    loop.up()
    (repo / "host-only.txt").write_text("host\n")  # synced: not a workspace change
    sh(loop, "echo \"print('fixed')\" > src/app.py; echo new > src/new.py; echo x > run.log")
    changes = {c.path: c.status for c in loop.changes()}
    assert changes == {"src/app.py": "modified", "src/new.py": "added"}
    before = (repo / "requirements.txt").read_bytes()
    applied = loop.apply()
    assert sorted(applied) == ["src/app.py", "src/new.py"]
    assert (repo / "src" / "app.py").read_text() == "print('fixed')\n"
    assert (repo / "src" / "new.py").read_text() == "new\n"
    assert (repo / "requirements.txt").read_bytes() == before
    assert loop.changes() == []


def test_diff_leaves_out_what_gitignore_files_written_in_the_workspace_exclude(
    repo: Path, workspaces: Workspaces
) -> None:
    # As pytest, ruff and build tools do: a cache directory that ignores itself entirely,
    # and an output directory that ignores part of its files.
    loop = loop_for(repo, workspaces)
    loop.up()
    sh(loop, "mkdir -p .pytest_cache/v/cache build"
             " && printf '# Created by pytest automatically.\\n*\\n' > .pytest_cache/.gitignore"
             " && echo '{}' > .pytest_cache/v/cache/lastfailed"
             " && printf '*.o\\n' > build/.gitignore && echo o > build/a.o"
             " && echo k > build/keep.txt"
             " && echo result > result.txt")  # fmt: skip
    assert [c.path for c in loop.changes()] == ["build/.gitignore", "build/keep.txt", "result.txt"]


def test_apply_refuses_where_the_host_changed_since_unless_forced(
    repo: Path, workspaces: Workspaces
) -> None:
    loop = loop_for(repo, workspaces)
    loop.up()
    sh(loop, "echo \"print('agent')\" > src/app.py")
    (repo / "src" / "app.py").write_text("print('human')\n")  # not synced yet: no exec since
    with pytest.raises(ConflictError):
        loop.apply()
    assert (repo / "src" / "app.py").read_text() == "print('human')\n"
    loop.apply(force=True)
    assert (repo / "src" / "app.py").read_text() == "print('agent')\n"


def test_a_lockfile_change_moves_the_workspace_onto_the_new_dependencies(
    repo: Path, workspaces: Workspaces
) -> None:
    loop = loop_for(repo, workspaces)
    with pytest.raises(NotWarmError):
        loop.up(prepare=False)
    first = loop.up().record
    sh(loop, "echo work > work.txt; echo stale > .deps/written-over-the-old.txt")
    (repo / "requirements.txt").write_text("requests==2.32.3\n")
    with pytest.raises(NotWarmError, match=r"requirements.txt changed: \w+ -> \w+") as err:
        loop.exec(["true"], prepare=False)
    assert "\n" not in err.value.message
    phases: list[str] = []
    out = loop.exec(
        ["sh", "-c", "cat .deps/installed.txt work.txt; ls .deps"],
        on_progress=lambda event: phases.append(event.text()),
    )
    assert out.stdout == b"requests==2.32.3\nwork\ninstalled.txt\n"  # the work kept
    assert any(p.startswith("dependencies: running:") for p in phases)  # prepared: progress
    assert loop.find() is not None and loop.find().id == first.id  # type: ignore[union-attr]

    # Back to the first lockfile: its snapshot is cached, so the move prepares nothing.
    (repo / "requirements.txt").write_text("requests==2.32.0\n")
    phases.clear()
    loop.reset(on_progress=lambda event: phases.append(event.text()))
    assert sh(loop, "cat .deps/installed.txt") == "requests==2.32.0\n"
    assert not any("running:" in p for p in phases) and any("moving" in p for p in phases)
    (repo / "requirements.txt").write_text("requests==2.32.4\n")
    again = loop.retry()
    assert again.stdout == b"requests==2.32.4\n"
    sh(loop, "echo work > work.txt")  # the reset above discarded the first
    (repo / "requirements.txt").write_text("requests==2.32.5\n")
    moved = loop_for(repo, workspaces).up()
    assert moved.action == "moved" and moved.record.id == first.id
    assert sh(loop, "cat .deps/installed.txt work.txt") == "requests==2.32.5\nwork\n"
    assert len(workspaces.list()) == 1


def test_after_a_prepare_status_names_the_outdated_workspace_and_exec_moves_it(
    repo: Path,
) -> None:
    assert run_pyro("up", "-C", str(repo)).returncode == 0
    (repo / "requirements.txt").write_text("requests==2.32.3\n")
    refused = run_pyro("exec", "--no-prepare", "-C", str(repo), "--", "true")
    assert refused.returncode == 1
    assert "requirements.txt changed" in refused.stderr.splitlines()[0]
    stale = run_pyro("status", "-C", str(repo))
    assert stale.returncode == 1 and "dependencies  stale: requirements.txt changed" in stale.stdout
    assert run_pyro("prepare", "-C", str(repo)).returncode == 0
    status = run_pyro("status", "-C", str(repo))
    assert "made for other dependencies: the next exec moves it" in status.stdout
    ran = run_pyro("exec", "-C", str(repo), "--", "cat", ".deps/installed.txt")
    assert ran.stdout == "requests==2.32.3\n", ran.stderr
    assert "moving" in ran.stderr
    assert "moves it" not in run_pyro("status", "-C", str(repo)).stdout
    assert run_pyro("down", "--delete", "-C", str(repo)).returncode == 0


def test_cache_gc_keeps_what_the_current_lockfiles_need(repo: Path, workspaces: Workspaces) -> None:
    from pyro_loop.loop.gc import gc
    from pyro_loop.loop.prepare import prepare

    first = prepare(*_project(repo), workspaces=workspaces).dependencies_layer
    (repo / "requirements.txt").write_text("requests==2.32.3\n")
    second = prepare(*_project(repo), workspaces=workspaces).dependencies_layer
    (repo / "requirements.txt").write_text("requests==2.32.0\n")  # restored, not prepared
    gc(workspaces)
    kept = {layer.key for layer in workspaces.store.list()}
    assert first in kept, "the snapshot of the current lockfile was removed"
    assert second in kept  # the last prepare's, until the next one
    loop = loop_for(repo, workspaces)
    assert sh(loop, "cat .deps/installed.txt") == "requests==2.32.0\n"


def _project(repo: Path) -> tuple[Any, Any]:
    project = find_project(repo)
    return project, load_project_config(project.root).config


def test_two_ups_at_once_make_one_workspace(repo: Path, workspaces: Workspaces) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-m", "pyro_loop", "up", "--json", "-C", str(repo)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ids = {json.loads(out)["id"] for out, _ in outs}
    assert len(ids) == 1
    assert len([s for s in workspaces.list() if s.record.labels.get("pyro") == "project"]) == 1


def test_cli_loop(repo: Path) -> None:
    def bare_pyro() -> str:  # the root help, run in the repository
        done = subprocess.run([sys.executable, "-m", "pyro_loop"], cwd=repo, text=True,
                              capture_output=True, check=True, timeout=60)  # fmt: skip
        return done.stdout.splitlines()[-1]

    assert bare_pyro() == f"Here: {repo}: not warm (dependencies missing, baseline missing): " \
        "`pyro up` prepares it"  # fmt: skip
    assert run_pyro("up", "-C", str(repo)).returncode == 0
    assert bare_pyro() == f"Here: {repo}: warm, workspace running, sync not watching"
    ran = run_pyro("exec", "-C", str(repo), "--", "sh", "-c", "echo out; exit 3")
    assert ran.returncode == 3 and ran.stdout == "out\n"
    assert run_pyro("retry", "-C", str(repo)).returncode == 3
    assert run_pyro("reset", "-C", str(repo)).returncode == 0
    assert run_pyro("down", "--delete", "-C", str(repo)).returncode == 0


@pytest.mark.slow
def test_cli_exec_of_a_command_silent_for_eleven_seconds(repo: Path) -> None:
    # The agent client's default silence bound is 10 s: a command quiet for longer (a slow
    # test, a compiler, an install) must still run to its end.
    assert run_pyro("up", "-C", str(repo)).returncode == 0
    ran = run_pyro("exec", "-C", str(repo), "--", "sh", "-c", "sleep 11; echo done")
    assert (ran.returncode, ran.stdout) == (0, "done\n"), ran.stderr
    assert run_pyro("down", "--delete", "-C", str(repo)).returncode == 0


def test_cli_retry_echoes_its_command_and_a_directory_exits_126(repo: Path) -> None:
    assert run_pyro("up", "-C", str(repo)).returncode == 0
    ran = run_pyro("exec", "-C", str(repo), "--", "./src")
    assert ran.returncode == 126 and "cannot run command: ./src" in ran.stderr
    assert run_pyro("exec", "-C", str(repo), "--", "echo", "two words").returncode == 0
    again = run_pyro("retry", "-C", str(repo))
    assert again.returncode == 0 and again.stdout == "two words\n"
    assert again.stderr.splitlines()[0] == "pyro: retry: echo 'two words'"
    assert run_pyro("down", "--delete", "-C", str(repo)).returncode == 0


def test_up_in_a_plain_directory_with_nothing_to_install(
    tmp_path: Path, workspaces: Workspaces
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / ".pyro.toml").write_text("")
    (plain / "notes.txt").write_text("no git here\n")
    loop = loop_for(plain, workspaces)
    assert loop.up().action == "created"
    assert sh(loop, "cat notes.txt") == "no git here\n"


def test_outside_a_project_says_how_to_fix_it(tmp_path: Path) -> None:
    result = run_pyro("up", "-C", str(tmp_path))
    assert result.returncode == 1
    assert "not a pyro project" in result.stderr and "pyro init" in result.stderr


def test_a_workspace_killed_while_syncing_recovers_on_the_next_up(
    repo: Path, workspaces: Workspaces
) -> None:
    loop = loop_for(repo, workspaces)
    record = loop.up().record
    assert record.handle is not None
    big = repo / "big.bin"
    big.write_bytes(os.urandom(1024 * 1024) * 200)  # 200 MB: the push takes a while
    (repo / "src" / "app.py").write_text("print('after the crash')\n")
    failure: list[BaseException] = []

    def sync() -> None:
        try:
            loop.sync()
        except BaseException as exc:  # the push breaks off: that is the point
            failure.append(exc)

    thread = threading.Thread(target=sync)
    thread.start()
    time.sleep(0.15)
    os.kill(record.handle.keeper_pid, signal.SIGKILL)  # the sandbox dies mid-stream
    thread.join(timeout=60)
    assert not thread.is_alive()

    again = loop.up()
    assert again.action == "started" and again.record.id == record.id
    want = hashlib.sha256(big.read_bytes()).hexdigest()
    out = sh(loop, "sha256sum big.bin; cat src/app.py; ls -a | grep -c pyro-tmp || true")
    assert out.splitlines() == [f"{want}  big.bin", "print('after the crash')", "0"], out
    assert failure or loop.sync().copied == 0  # killed before the end, or it had finished


def test_a_submodule_checkout_is_synced_into_the_workspace(
    repo: Path, tmp_path: Path, workspaces: Workspaces
) -> None:
    library = commit_project(tmp_path / "library", "", {"lib.txt": "v1\n", "pkg/mod.py": "x\n"})
    git(
        repo,
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        str(library),
        "vendor/lib",
    )
    git(repo, "commit", "-qm", "add the library as a submodule")
    loop = loop_for(repo, workspaces)
    loop.up()
    assert sh(loop, "cat vendor/lib/lib.txt vendor/lib/pkg/mod.py") == "v1\nx\n"
    assert sh(loop, "test -e vendor/lib/.git || echo no-git") == "no-git\n"
    (repo / "vendor" / "lib" / "lib.txt").write_text("edited in the submodule\n")
    (repo / "vendor" / "lib" / "pkg" / "mod.py").unlink()
    assert sh(loop, "cat vendor/lib/lib.txt; ls vendor/lib/pkg") == "edited in the submodule\n"
    assert loop.changes() == []  # synced from the host: nothing for review

"""`pyro prepare` and `pyro status` on real git repositories, with real sandboxes.

Prepare commands here write files instead of downloading (no network needed), which is
exactly what a package manager does from the sandbox's point of view.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyro_loop.errors import PrepareFailedError
from pyro_loop.loop.prepare import compute_inputs, prepare
from pyro_loop.loop.status import readiness
from pyro_loop.loop.warmth import judge
from pyro_loop.progress import Progress
from pyro_loop.project.config import ProjectConfig, load_project_config
from pyro_loop.project.discovery import Project, find_project
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.project import commit_project, git, run_pyro, write_config

INSTALL = "mkdir -p .deps && cp requirements.txt .deps/installed.txt && date +%s%N > .deps/stamp"
CONFIG = f"""\
[prepare]
keys = ["requirements.txt"]
run = ["{INSTALL}"]
timeout = 60
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    files = {"requirements.txt": "requests==2.32.0\n", "app.py": "print('hello')\n"}
    return commit_project(tmp_path / "repo", CONFIG, files)


def _config(project: Project) -> ProjectConfig:
    return load_project_config(project.root).config


def test_first_prepare_builds_then_a_second_is_a_warm_no_op(
    repo: Path, workspaces: Workspaces
) -> None:
    project = find_project(repo / "")
    config = _config(project)
    phases: list[str] = []
    first = prepare(
        project, config, workspaces=workspaces, on_progress=lambda e: phases.append(e.message)
    )
    assert sorted(first.built) == ["baseline", "dependencies"]
    assert first.dependencies_layer is not None and first.baseline_layer is not None
    assert any("running: mkdir" in m for m in phases)
    state = workspaces.home / "projects" / f"{project.id}.json"
    recorded = os.stat(state)
    second = prepare(project, config, workspaces=workspaces)
    assert second.built == []
    assert second.key == first.key
    again = os.stat(state)  # a warm no-op leaves the project's state as it was: not rewritten
    assert (again.st_ino, again.st_mtime_ns) == (recorded.st_ino, recorded.st_mtime_ns)
    assert judge(project, config, workspaces.home).warm
    assert readiness(project, config, workspaces).warm
    # No prepare sandbox is left behind.
    assert [s for s in workspaces.list() if s.record.labels.get("pyro") == "prepare"] == []


def test_a_workspace_over_the_prepared_layers_sees_sources_and_installed_files(
    repo: Path, workspaces: Workspaces
) -> None:
    project = find_project(repo)
    result = prepare(project, _config(project), workspaces=workspaces)
    assert result.baseline_layer and result.dependencies_layer
    record = workspaces.create(layers=[result.baseline_layer, result.dependencies_layer])
    out = workspaces.exec(record.id, ["sh", "-c", "cat app.py .deps/installed.txt; ls -a"])
    assert out.exit_code == 0
    assert b"print('hello')" in out.stdout
    assert b"requests==2.32.0" in out.stdout
    assert b".git\n" not in out.stdout, "the baseline holds the tree's files, not the git dir"


def test_changing_a_lockfile_makes_the_snapshot_stale_and_prepare_rebuilds(
    repo: Path, workspaces: Workspaces
) -> None:
    project = find_project(repo)
    config = _config(project)
    first = prepare(project, config, workspaces=workspaces)
    (repo / "requirements.txt").write_text("requests==2.32.3\n")
    state = readiness(project, config, workspaces)
    assert state.dependencies["state"] == "stale"
    assert any(r.startswith("requirements.txt changed") for r in state.dependencies["reasons"])
    assert not judge(project, config, workspaces.home).warm
    second = prepare(project, config, workspaces=workspaces)
    assert "dependencies" in second.built
    assert second.key != first.key


def test_editing_source_files_never_invalidates_the_dependency_snapshot(
    repo: Path, workspaces: Workspaces
) -> None:
    project = find_project(repo)
    config = _config(project)
    first = prepare(project, config, workspaces=workspaces)
    (repo / "app.py").write_text("print('changed')\n")
    (repo / "new_module.py").write_text("x = 1\n")
    assert compute_inputs(project, config).key == first.key
    assert readiness(project, config, workspaces).dependencies["state"] == "warm"
    # Committing moves HEAD: only the baseline is rebuilt.
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "edit")
    assert readiness(project, config, workspaces).baseline["state"] == "missing"
    second = prepare(project, config, workspaces=workspaces)
    assert second.built == ["baseline"]
    assert second.key == first.key


def test_a_failing_prepare_command_names_it_and_its_log_and_leaves_nothing(
    repo: Path, workspaces: Workspaces
) -> None:
    write_config(
        repo,
        '[prepare]\nkeys = ["requirements.txt"]\nrun = ["echo resolving; echo boom >&2; exit 7"]\n',
    )
    project = find_project(repo)
    config = _config(project)
    with pytest.raises(PrepareFailedError) as failure:
        prepare(project, config, workspaces=workspaces)
    assert "exit code 7" in failure.value.message
    assert failure.value.hint is not None
    assert "boom" in failure.value.hint and "prepare-" in failure.value.hint
    key = compute_inputs(project, config).key
    assert workspaces.store.get(key) is None
    assert workspaces.list() == []


def test_a_hanging_prepare_command_times_out(repo: Path, workspaces: Workspaces) -> None:
    write_config(repo, '[prepare]\nkeys = ["requirements.txt"]\nrun = ["sleep 30"]\ntimeout = 1\n')
    project = find_project(repo)
    started = time.monotonic()
    with pytest.raises(PrepareFailedError, match="timed out"):
        prepare(project, _config(project), workspaces=workspaces)
    assert time.monotonic() - started < 15
    assert workspaces.list() == []


def test_a_declared_keying_file_that_does_not_exist_is_a_clear_error(
    repo: Path, workspaces: Workspaces
) -> None:
    write_config(repo, '[prepare]\nkeys = ["uv.lock"]\nrun = ["true"]\n')
    result = run_pyro("prepare", "-C", str(repo))
    assert result.returncode == 1
    assert result.stderr.startswith(
        "pyro: error: .pyro.toml: [prepare] keys: uv.lock does not exist"
    )


def test_plain_directory_and_empty_repository(tmp_path: Path, workspaces: Workspaces) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "requirements.txt").write_text("x\n")
    write_config(plain, CONFIG)
    project = find_project(plain)
    result = prepare(project, _config(project), workspaces=workspaces)
    assert result.baseline_layer is None and result.dependencies_layer is not None
    assert (
        readiness(project, _config(project), workspaces).baseline["state"] == "not a git repository"
    )

    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    (empty / "requirements.txt").write_text("x\n")
    write_config(empty, CONFIG)
    project = find_project(empty)
    result = prepare(project, _config(project), workspaces=workspaces)
    assert result.baseline_layer is None
    state = readiness(project, _config(project), workspaces)
    assert state.baseline["state"] == "no commits" and state.warm


def _prepare_process(repo: Path, config_text: str | None = None) -> subprocess.Popen[str]:
    if config_text is not None:
        write_config(repo, config_text)
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_loop", "prepare", "--json", "-C", str(repo)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip


@pytest.mark.slow
def test_two_prepares_of_the_same_key_build_once(repo: Path, workspaces: Workspaces) -> None:
    slow = CONFIG.replace(INSTALL, f"sleep 1 && {INSTALL}")
    first = _prepare_process(repo, slow)
    time.sleep(0.3)
    second = _prepare_process(repo)
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    results = [json.loads(out) for out, _err in outputs]
    assert results[0]["dependencies_layer"] == results[1]["dependencies_layer"]
    built = ["dependencies" in r["built"] for r in results]
    assert built.count(True) == 1, results
    waited = outputs[1][1] if built[0] else outputs[0][1]
    assert "waiting for another prepare" in waited


@pytest.mark.slow
def test_a_prepare_killed_mid_build_leaves_nothing_trusted(
    repo: Path, workspaces: Workspaces
) -> None:
    slow = CONFIG.replace(INSTALL, f"{INSTALL} && sleep 30")
    victim = _prepare_process(repo, slow)
    deadline = time.monotonic() + 30
    assert victim.stderr is not None
    for line in victim.stderr:
        if "running:" in line or time.monotonic() > deadline:
            break
    time.sleep(0.5)  # the command is running inside the sandbox now
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=10)  # also closes its pipes
    project = find_project(repo)
    key = compute_inputs(project, _config(project)).key
    assert workspaces.store.get(key) is None, "a killed build is never trusted"
    # The next prepare recovers by itself: it removes the abandoned sandbox and builds.
    write_config(repo, CONFIG)
    result = prepare(project, _config(project), workspaces=workspaces)
    assert "dependencies" in result.built
    assert [s for s in workspaces.list() if s.record.labels.get("pyro") == "prepare"] == []


def test_cli_status_and_if_changed(repo: Path) -> None:
    cold = run_pyro("status", "--json", "-C", str(repo))
    assert cold.returncode == 1
    assert json.loads(cold.stdout)["dependencies"]["state"] == "missing"
    assert run_pyro("prepare", "-C", str(repo)).returncode == 0
    warm = run_pyro("status", "-C", str(repo))
    assert warm.returncode == 0, warm.stdout + warm.stderr
    assert "dependencies  warm" in warm.stdout
    assert (
        "sync          not watching (exec syncs first; `pyro watch` keeps it live)" in warm.stdout
    )
    again = run_pyro("prepare", "--if-changed", "--json", "-C", str(repo))
    assert again.returncode == 0 and json.loads(again.stdout)["warm"] is True


def test_a_gc_during_prepare_waits_and_removes_nothing_it_uses(
    repo: Path, workspaces: Workspaces
) -> None:
    project = find_project(repo)
    config = _config(project)
    collector: list[subprocess.Popen[str]] = []

    def progress(event: Progress) -> None:
        # The baseline is built and recorded nowhere yet: a gc now would see it unused.
        if event.phase == "dependencies" and not collector:
            collector.append(subprocess.Popen(
                [sys.executable, "-m", "pyro_loop", "cache", "gc", "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))  # fmt: skip
            time.sleep(0.5)  # long enough for it to reach the lock

    result = prepare(project, config, workspaces=workspaces, on_progress=progress)
    out, err = collector[0].communicate(timeout=60)
    assert collector[0].returncode == 0, err
    assert "waiting for running prepares" in err  # it waited for this prepare ...
    removed = {layer["key"] for layer in json.loads(out)["removed"]}
    for key in (result.baseline_layer, result.dependencies_layer):  # ... and kept these
        assert key is not None and key not in removed and workspaces.store.get(key) is not None
    assert judge(project, config, workspaces.home).warm


def test_cli_prepare_progress_is_plain_lines_piped_and_json_lines_with_json(repo: Path) -> None:
    piped = run_pyro("prepare", "-C", str(repo))
    assert piped.returncode == 0, piped.stderr
    lines = piped.stderr.splitlines()
    assert any(line.startswith("prepare: baseline: writing HEAD's files (") for line in lines)
    assert f"prepare: dependencies: running: {INSTALL}" in lines
    assert "\r" not in piped.stderr and "\x1b" not in piped.stderr  # no live line in a pipe

    (repo / "requirements.txt").write_text("requests==2.32.3\n")
    as_json = run_pyro("prepare", "--json", "-C", str(repo))
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["built"] == ["dependencies"]  # stdout: the result only
    events = [json.loads(line) for line in as_json.stderr.splitlines()]
    assert all(set(e) == {"phase", "message", "done", "total", "unit"} for e in events)
    running = next(e for e in events if e["message"].startswith("running: "))
    # The step counts: the first of the one command to run.
    assert running == {"phase": "dependencies", "message": f"running: {INSTALL}",
                       "done": 0, "total": 1, "unit": "items"}  # fmt: skip


def test_cli_prepare_on_a_terminal_redraws_the_current_step(repo: Path) -> None:
    from tests.helpers.terminal import terminal

    with terminal("prepare", "-C", str(repo)) as term:
        term.expect(
            r"\r\x1b\[Kprepare: dependencies: running: mkdir [^\r\n]*\(0 of 1 done, \d+ s\)"
        )
        assert term.wait(timeout=60) == 0, term.tail()
    assert b"\rprepare: " not in term.screen  # each line is cleared before it is drawn

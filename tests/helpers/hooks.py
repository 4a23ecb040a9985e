"""git with pyro's hooks installed, run from a bare shell environment, and the background
prepare they start."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from pyro_loop.loop.projecthome import ProjectHome
from pyro_loop.procutil import pid_alive
from pyro_loop.project.discovery import Project, find_project
from tests.helpers.project import GIT_ENV


def project_of(repo: Path) -> Project:
    return find_project(repo)


def background_record(home: Path, repo: Path) -> Path:
    """Where the background prepare a hook started for `repo` is recorded."""
    return ProjectHome.of(home, project_of(repo)).background_prepare


def bare_shell_env(tmp_path: Path) -> dict[str, str]:
    """A login-shell-like environment: system PATH only (no virtualenv), pinned git."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path / "user-home"),
        "PYRO_HOME": os.environ["PYRO_HOME"],
        **GIT_ENV,
    }


def git_run(repo: Path, *args: str, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Real git, its hooks included; the result is returned whatever the exit code."""
    return subprocess.run(
        ["git", *args], cwd=repo, env=env or {**os.environ, **GIT_ENV}, capture_output=True,
        text=True, input=input, timeout=120, check=False,
    )  # fmt: skip


def pyro_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("pyro")]


def wait_for_background_prepare(repo: Path, home: Path) -> dict[str, object]:
    record = json.loads(background_record(home, repo).read_text())
    deadline = time.monotonic() + 120
    while pid_alive(int(record["pid"])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(int(record["pid"])), "the background prepare did not finish"
    return dict(record)

"""Real git repositories with a `.pyro.toml`, and pyro run as a user runs it (`run_pyro`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from pyro_loop.workspace.manager import Workspaces

SRC = Path(__file__).resolve().parents[2] / "src"


def delete_all_workspaces(ws: Workspaces) -> None:
    for status in ws.list():
        ws.delete(status.record.id)
    ws.pool.drain()


def write_seed_tree(root: Path) -> Path:
    """A small project tree at `root`: text files, a subdirectory, an executable and a
    relative symlink."""
    (root / "src").mkdir(parents=True)
    (root / "README.md").write_text("hello\n")
    (root / "src" / "app.py").write_text("print('app')\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    (root / "src" / "link").symlink_to("../README.md")
    return root


GIT_ENV = {
    "GIT_AUTHOR_NAME": "pyro test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "pyro test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def git(repo: Path, *args: str) -> str:
    """Run real git in `repo` (new repositories start on `main`); returns its stdout."""
    return subprocess.run(
        ["git", "-c", "init.defaultBranch=main", *args],
        cwd=repo, env={**os.environ, **GIT_ENV}, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


DEPS_CONFIG = """\
[prepare]
keys = ["requirements.txt"]
run = ["mkdir -p .deps && cp requirements.txt .deps/installed.txt"]
"""


def trust_config(root: Path, home: Path | None = None) -> None:
    """Approve `root`'s `.pyro.toml` as it is now, in `home` (default: the test's pyro home),
    as the user does with `pyro trust` after reviewing it."""
    from pyro_loop.project.trust import allow_content

    path = root / ".pyro.toml"
    allow_content(home or Path(os.environ["PYRO_HOME"]), path, path.read_bytes())


def write_config(root: Path, text: str) -> Path:
    """Write `root`'s `.pyro.toml` and trust it (tests of other things than trust)."""
    (root / ".pyro.toml").write_text(text)
    trust_config(root)
    return root / ".pyro.toml"


def commit_project(root: Path, config: str, files: dict[str, str], *, trusted: bool = True) -> Path:
    """A git repository at `root` on `main` whose first commit holds `files` (relative path
    -> text), a `.gitignore` for `.deps/` and `.pyro.toml` = `config`, trusted unless
    `trusted` is False."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    for rel, text in {".gitignore": ".deps/\n", **files, ".pyro.toml": config}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "initial")
    if trusted:
        trust_config(root)
    return root


def run_pyro(*args: str, env: dict[str, str] | None = None, input: str | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run the real `pyro` CLI in a subprocess (same interpreter, current PYRO_HOME)."""
    return subprocess.run(
        [sys.executable, "-m", "pyro_loop", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        input=input,
        timeout=timeout,
        check=False,
    )


def owners_below(root: Path) -> set[int]:
    """The uids owning `root` and everything below it, links not followed. Deleted
    workspaces' trees may still be going (pyro removes them in the background): what
    vanishes during the walk is skipped."""
    owners = {root.lstat().st_uid}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                owners.add(os.lstat(os.path.join(directory, name)).st_uid)
    return owners

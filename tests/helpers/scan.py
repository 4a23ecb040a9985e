"""The host-scan repository (tracked, ignored and empty directories) and its sync checks.

Fixtures: `repo`, `journal_on` (the change journal on).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pyro_loop.loop.live import ProjectLoop
from tests.helpers.project import DEPS_CONFIG, commit_project, git


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    files = {"requirements.txt": "requests==2.32.0\n", "src/app.py": "print('v1')\n",
             "src/util.py": "X = 1\n", "docs/guide.md": "guide\n",
             "build/keep.txt": "tracked in an ignored dir\n",
             ".gitignore": ".deps/\n*.log\nbuild/\n"}  # fmt: skip
    root = commit_project(tmp_path / "repo", DEPS_CONFIG, {k: v for k, v in files.items()
                                                            if k != "build/keep.txt"})  # fmt: skip
    (root / "build").mkdir()
    (root / "build" / "keep.txt").write_text(files["build/keep.txt"])
    git(root, "add", "-f", "build/keep.txt")
    git(root, "commit", "-qm", "tracked despite the ignore")
    (root / "empty").mkdir()  # git does not list empty directories
    return root


def full_sync_finds_nothing(loop: ProjectLoop) -> None:
    result = loop._syncer(loop.require()).reconcile()
    assert (result.copied, result.removed, result.skipped) == (0, 0, []), result.to_json()


def settle() -> None:
    # Past the racy window: the record then vouches by stat data alone, as it does for
    # anything not edited in the last moment.
    time.sleep(0.1)


@pytest.fixture
def journal_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal on (the `pyro_home` fixture stops its servers after the test)."""
    monkeypatch.delenv("PYRO_JOURNAL")


def journal_running(loop: ProjectLoop) -> None:
    """Wait until the change journal's server for the loop's tree answers (the first check
    starts it in the background), so the checks that follow go through it."""
    root = str((loop.project.repo_root or loop.project.root).resolve())
    client = loop._journal(root)
    assert client is not None, "the journal is switched off"
    deadline = time.monotonic() + 10
    while client.watch([]) is None:
        assert time.monotonic() < deadline, "the journal's server did not start"
        time.sleep(0.05)

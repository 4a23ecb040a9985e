"""Shared fixtures: every test gets its own pyro home, and no workspace outlives its test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyro_loop.workspace.manager import Workspaces
from tests.helpers.journal import stop_journal_servers
from tests.helpers.project import delete_all_workspaces, write_seed_tree

# Fixtures several test modules use: pyro installed for uid 65534 (`user`, `nobody_env`), and
# the host-scan repository (`repo`, for the modules that do not define a `repo` of their own).
pytest_plugins = ("tests.helpers.nobody", "tests.helpers.scan")


@pytest.fixture(autouse=True)
def pyro_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private PYRO_HOME, and a HOME that is not the user's, so no test touches `~`.
    Workspaces a test left in it (through the CLI, the loop or the MCP server) are deleted
    after the test: their sandboxes outlive the process that made them, by design."""
    # A deleted workspace's standby is not kept for the next create (workspace/pool.py): the tests
    # that delete expect nothing left running. tests/sandbox/test_pool.py turns it back on.
    monkeypatch.setenv("PYRO_POOL_SECONDS", "0")
    # Nor is a fork server started (cli/starter.py) for each test's home: it would outlive
    # the test. tests/sandbox/test_forkserver.py turns it on and stops it.
    monkeypatch.setenv("PYRO_FORK_SERVER", "0")
    # Nor a change journal's server (sync/journal.py) per test repository, for the same
    # reason; the `journal_on` fixture (tests/helpers/scan.py) turns it on and stops it.
    monkeypatch.setenv("PYRO_JOURNAL", "0")
    home = tmp_path / "pyro-home"
    monkeypatch.setenv("PYRO_HOME", str(home))
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))
    yield home
    if (home / "workspaces").is_dir():
        delete_all_workspaces(Workspaces(home=home))
    stop_journal_servers(home)  # any a test started all the same


@pytest.fixture(autouse=True)
def _no_environment_leaks() -> Iterator[None]:
    before = dict(os.environ)
    yield
    leaked = {k for k in set(before) ^ set(os.environ)} | {
        k for k in before if k in os.environ and before[k] != os.environ[k]
    }
    # monkeypatch restores its own changes after this fixture's teardown runs.
    leaked -= {"PYRO_HOME", "HOME", "PYTEST_CURRENT_TEST"}
    assert not leaked, f"test leaked environment changes: {sorted(leaked)}"


@pytest.fixture
def workspaces(pyro_home: Path) -> Iterator[Workspaces]:
    """The library over the test's home; every workspace is deleted (processes killed) after."""
    ws = Workspaces(home=pyro_home)
    yield ws
    delete_all_workspaces(ws)


@pytest.fixture
def seed_dir(tmp_path: Path) -> Path:
    """`write_seed_tree` in the test's directory."""
    return write_seed_tree(tmp_path / "seed")


# Pinned identity, dates and configuration: the same commits on every machine, and nothing
# from the user's or the system's git configuration.


# A project whose dependency snapshot is keyed by requirements.txt and "installs" it into
# .deps/ (ignored by git): fast, offline, and visible from inside the workspace.

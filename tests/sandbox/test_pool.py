"""The standby pool: `pyro down --delete` keeps the workspace's standby sandbox, and the next
`up` from the same layers takes it over instead of booting one."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pyro_loop.loop.gc import gc
from pyro_loop.workspace.manager import Workspaces
from pyro_loop.workspace.pool import POOL_LIMIT
from tests.helpers.loop import loop_for, sh
from tests.helpers.scan import full_sync_finds_nothing, settle


@pytest.fixture(autouse=True)
def _pool_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRO_POOL_SECONDS", "600")


def test_up_after_delete_takes_over_the_deleted_workspaces_standby(
    repo: Path, workspaces: Workspaces
) -> None:
    loop = loop_for(repo, workspaces)
    loop.up()
    (repo / "src" / "app.py").write_text("print('host')\n")
    settle()
    loop.sync()
    sh(loop, "echo junk > junk.txt")
    workspaces.settle()  # the standby boots once up has returned
    spare = loop.require().spare
    assert spare is not None
    loop.down(delete=True)
    assert workspaces.runtime.is_running(spare)  # kept, in the pool
    assert len(list((workspaces.home / "pool").iterdir())) == 1
    up = loop.up()
    assert up.action == "created"
    assert up.record.handle == spare  # the very sandbox: nothing booted for this create
    assert up.record.filled is not None  # with the host's synced files written ahead
    assert list((workspaces.home / "pool").iterdir()) == []
    out = sh(loop, "cat src/app.py; ls")
    assert out.startswith("print('host')\n") and "junk.txt" not in out
    full_sync_finds_nothing(loop)
    workspaces.settle()
    assert loop.require().spare is not None  # and a standby of its own for resets
    loop.reset()
    assert sh(loop, "cat src/app.py") == "print('host')\n"


def test_a_pooled_sandbox_that_is_not_the_one_recorded_is_skipped(
    repo: Path, workspaces: Workspaces
) -> None:
    loop = loop_for(repo, workspaces)
    loop.up()
    workspaces.settle()  # the standby boots once up has returned
    spare = loop.require().spare
    assert spare is not None
    loop.down(delete=True)
    (entry,) = (workspaces.home / "pool").iterdir()
    data = json.loads((entry / "pool.json").read_text())
    data["handle"]["keeper_start"] += 1  # as if its pid now named another process
    (entry / "pool.json").write_text(json.dumps(data))
    up = loop.up()
    assert up.record.handle != spare
    assert sh(loop, "cat src/app.py") == "print('v1')\n"
    assert list((workspaces.home / "pool").iterdir()) == []


def test_the_pool_is_bounded_and_gc_stops_what_it_holds(
    tmp_path: Path, repo: Path, workspaces: Workspaces
) -> None:
    records = [workspaces.create(seed=repo) for _ in range(POOL_LIMIT + 1)]
    spares = [workspaces.resolve(r.id).load().spare for r in records]
    for record in records:
        workspaces.delete(record.id, keep_standby=True)
        time.sleep(0.01)  # distinct ages
    running = [s is not None and workspaces.runtime.is_running(s) for s in spares]
    assert running == [False] + [True] * POOL_LIMIT  # the oldest was stopped
    gc(workspaces)
    assert not any(s is not None and workspaces.runtime.is_running(s) for s in spares)
    assert list((workspaces.home / "pool").iterdir()) == []


def test_plain_delete_leaves_nothing_running(repo: Path, workspaces: Workspaces) -> None:
    record = workspaces.create(seed=repo)
    spare = workspaces.resolve(record.id).load().spare
    assert spare is not None
    workspaces.delete(record.id)
    assert not workspaces.runtime.is_running(spare)


def test_a_pooled_sandbox_no_create_takes_stops_by_itself(
    repo: Path, workspaces: Workspaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYRO_POOL_SECONDS", "8")
    loop = loop_for(repo, workspaces)
    loop.up()
    workspaces.settle()  # the standby boots once up has returned
    spare = loop.require().spare
    assert spare is not None
    loop.down(delete=True)
    assert len(list((workspaces.home / "pool").iterdir())) == 1  # kept, for now
    deadline = time.monotonic() + 60
    pool = workspaces.home / "pool"
    while workspaces.runtime.is_running(spare) or list(pool.iterdir()):
        assert time.monotonic() < deadline, "the pooled sandbox outlived its time"
        time.sleep(0.1)


def test_no_pool_when_its_time_is_zero(
    repo: Path, workspaces: Workspaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYRO_POOL_SECONDS", "0")
    loop = loop_for(repo, workspaces)
    loop.up()
    workspaces.settle()  # the standby boots once up has returned
    spare = loop.require().spare
    assert spare is not None
    loop.down(delete=True)
    assert not workspaces.runtime.is_running(spare)

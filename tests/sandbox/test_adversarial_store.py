"""The layer store under concurrency, kills and corruption.

Many processes publishing one key make one entry; a builder killed at a random point leaves
nothing that is trusted; a flipped byte is detected and the layer is rebuilt; garbage
collection racing with creates never removes a layer a workspace uses. Each test also checks
that the user's seed is unchanged.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pyro_loop.locking import file_lock
from pyro_loop.loop.gc import gc_lock, verify
from pyro_loop.store.layers import COMPLETE_MARKER, LayerStore
from pyro_loop.store.treehash import tree_digest
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.project import DEPS_CONFIG, commit_project, run_pyro
from tests.helpers.sandbox import sh, tree_state

SRC = str(Path(__file__).resolve().parents[2] / "src")

# Stages a 300-file tree (the same content in every process) and publishes it, after waiting
# for a start time so all processes race. argv: home, start time, key ("" = content key).
PUBLISHER = r"""
import sys, time
from pathlib import Path
from pyro_loop.store.layers import LayerStore
store = LayerStore(Path(sys.argv[1]))
start, key = float(sys.argv[2]), sys.argv[3] or None
def build(tree):
    for i in range(300):
        (tree / ("f%03d" % i)).write_text("content %d\n" % i)
        if key:  # the slow builder of the kill test: gives the kill room to land anywhere
            time.sleep(0.0005)
while time.time() < start:
    time.sleep(0.001)
if key:
    layer = store.build(key, build, kind="test")
else:
    with store.staging() as staging:
        (staging / "tree").mkdir()
        build(staging / "tree")
        layer = store.publish(staging / "tree", kind="test")
print(layer.key)
"""


def _spawn(home: Path, start: float, key: str = "") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(home), str(start), key],
        env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _expected_tree(tmp: Path) -> str:
    tree = tmp / "expected"
    tree.mkdir()
    for i in range(300):
        (tree / f"f{i:03d}").write_text(f"content {i}\n")
    return tree_digest(tree)


def test_many_processes_publishing_one_key_make_one_entry(tmp_path: Path) -> None:
    home = tmp_path / "store"
    start = time.time() + 1.0
    procs = [_spawn(home, start) for _ in range(8)]
    keys = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        keys.append(out.strip())
    assert len(set(keys)) == 1 and keys[0] == _expected_tree(tmp_path)
    store = LayerStore(home)
    assert [p.name for p in store.layers_dir.iterdir()] == keys[:1]  # one entry, no debris
    assert store.verify(keys[0]) is None
    assert list(store.tmp_dir.iterdir()) == []  # every loser's staging tree is gone
    store.empty_trash()


def test_builders_killed_at_random_points_leave_nothing_trusted(tmp_path: Path) -> None:
    home = tmp_path / "store"
    key = "ab" * 16
    expected = _expected_tree(tmp_path)
    store = LayerStore(home)
    rng = random.Random(8)
    outcomes = []
    for _ in range(10):
        proc = _spawn(home, 0.0, key)
        time.sleep(rng.uniform(0.08, 0.6))  # python start-up, then anywhere in the build
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        layer = store.get(key)
        if layer is None:
            outcomes.append("nothing")
            continue
        # If the store trusts it, it is whole: the digest of what was built and published.
        assert tree_digest(layer.tree) == expected
        assert store.verify(key) is None
        outcomes.append("complete")
        store.delete(key)  # and again, to land the next kill elsewhere
    assert "nothing" in outcomes, outcomes  # the kills did land mid-build
    # The debris of killed builders is never used, and is cleaned up.
    store.clean_leftovers()
    assert list(store.tmp_dir.iterdir()) == []
    layer = store.build(key, _fill, kind="test")
    assert tree_digest(layer.tree) == expected and store.verify(key) is None
    store.empty_trash()
    assert [p.name for p in store.layers_dir.iterdir()] == [key]


def _fill(tree: Path) -> None:
    for i in range(300):
        (tree / f"f{i:03d}").write_text(f"content {i}\n")


def _flip_byte(path: Path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_detected_and_the_layer_rebuilt(
    workspaces: Workspaces, seed_dir: Path
) -> None:
    seed_before = tree_state(seed_dir)
    record = workspaces.create(seed=seed_dir)
    key = record.base_layers[0]
    layer = workspaces.store.require(key)
    workspaces.delete(record.id)
    _flip_byte(layer.tree / "README.md")  # "hello" -> "iello"
    assert workspaces.store.verify(key) is not None
    # A check alone changes nothing, and says what would.
    report = run_pyro("cache", "verify")
    assert report.returncode == 1
    assert f"{key[:12]}  seed  content " in report.stdout and "unused" in report.stdout
    assert "--repair" in report.stdout
    assert workspaces.store.get(key) is not None
    report = run_pyro("cache", "verify", "--repair", "--json")
    assert report.returncode == 1
    damaged = json.loads(report.stdout)["damaged"]
    assert [(d["key"], d["action"], d["deleted"]) for d in damaged] == [(key, "deleted", True)]
    assert workspaces.store.get(key) is None
    # The next create from the same seed makes the layer again, with the right content.
    again = workspaces.create(seed=seed_dir)
    assert again.base_layers == [key]
    assert sh(workspaces, again.id, "cat README.md").stdout == b"hello\n"
    assert workspaces.store.verify(key) is None
    assert run_pyro("cache", "verify").returncode == 0
    assert tree_state(seed_dir) == seed_before


def test_a_damaged_marker_or_metadata_is_never_trusted(
    workspaces: Workspaces, seed_dir: Path
) -> None:
    record = workspaces.create(seed=seed_dir)
    key = record.base_layers[0]
    workspaces.delete(record.id)
    marker = workspaces.store.layers_dir / key / COMPLETE_MARKER
    _flip_byte(marker, offset=3)
    assert workspaces.store.get(key) is None  # a torn marker means "not built"
    again = workspaces.create(seed=seed_dir)  # republished over the untrusted directory
    assert workspaces.store.get(key) is not None
    assert sh(workspaces, again.id, "cat README.md").stdout == b"hello\n"
    meta = workspaces.store.layers_dir / key / "meta.json"
    meta.write_text(meta.read_text()[:-20])  # truncated JSON
    assert workspaces.store.verify(key) == "its metadata is missing or damaged"


PROJECT_BUILD_CONFIG = DEPS_CONFIG + 'project = ["cp .deps/installed.txt .deps/built.txt"]\n'


def _layer_keys(kind: str) -> list[str]:
    listed = json.loads(run_pyro("cache", "list", "--json").stdout)["layers"]
    return [layer["key"] for layer in listed if layer["kind"] == kind]


def test_a_damaged_dependency_layer_in_use_is_quarantined_and_rebuilt(tmp_path: Path) -> None:
    """A byte flipped in a project's dependency snapshot: verify reports it and the project
    snapshot built on it; --repair takes both out, stops the workspace running on them, and
    the next prepare rebuilds them (never "warm" on them again)."""
    files = {"requirements.txt": "requests==2.32.0\n"}
    repo = commit_project(tmp_path / "repo", PROJECT_BUILD_CONFIG, files)
    assert run_pyro("up", "-C", str(repo), timeout=120).returncode == 0
    [key], [project_key] = _layer_keys("dependencies"), _layer_keys("project")
    home = Path(os.environ["PYRO_HOME"])
    _flip_byte(home / "layers" / key / "tree" / ".deps" / "installed.txt")  # r -> s

    checked = run_pyro("cache", "verify", "--json")
    assert checked.returncode == 1
    found = json.loads(checked.stdout)["damaged"]
    assert [(d["key"], d["action"]) for d in found] == [(key, None), (project_key, None)]
    assert found[1]["built_on"] == key and found[1]["problem"].startswith("built on damaged")
    for item in found:  # the project's last prepare, and the workspace `up` made
        assert f"project {repo}" in item["users"] and len(item["users"]) == 2, item
    assert run_pyro("status", "-C", str(repo)).returncode == 0  # a check changes nothing

    report = run_pyro("cache", "verify", "--repair")
    assert report.returncode == 1, report.stdout
    lines = report.stdout.splitlines()
    assert lines[0].startswith(f"{key[:12]}  dependencies  content ")
    assert lines[1].startswith(f"{project_key[:12]}  project  built on damaged layer {key[:12]}")
    assert "quarantined" in lines[0] and "stopped" in lines[0]  # the project's workspace
    assert lines[2] == "2 of 2 damaged layers taken out"
    again = run_pyro("cache", "verify", "--repair", "--json")  # nothing damaged is left
    assert again.returncode == 0 and json.loads(again.stdout)["damaged"] == [], again.stdout

    state = json.loads(run_pyro("status", "-C", str(repo), "--json").stdout)
    assert state["dependencies"]["state"] != "warm"
    prepared = run_pyro("prepare", "-C", str(repo), "--json", timeout=120)
    assert prepared.returncode == 0, prepared.stderr
    assert {"dependencies", "project"} <= set(json.loads(prepared.stdout)["built"])
    shown = run_pyro("exec", "-C", str(repo), "--", "cat", ".deps/built.txt", timeout=120)
    assert shown.stdout == "requests==2.32.0\n", shown
    # The quarantined copies are kept for a look until gc.
    assert len(list((home / "quarantine").iterdir())) == 2
    assert run_pyro("cache", "gc").returncode == 0
    assert not list((home / "quarantine").iterdir())


def test_verify_repair_says_what_it_could_not_take_out(
    workspaces: Workspaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged layer --repair fails to remove (the store's disk gone read-only, say) is
    reported with the reason and stays reported; the next repair that works takes it out."""
    store = workspaces.store
    layer = store.build("cd" * 16, _fill, kind="test")
    _flip_byte(layer.tree / "f000")

    def refuse(key: str) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as patched:
        patched.setattr(store, "delete", refuse)
        [item] = verify(workspaces, repair=True)
    assert item.action is None and item.error == "[Errno 30] Read-only file system"
    assert store.get(layer.key) is not None
    [item] = verify(workspaces, repair=True)
    assert item.action == "deleted" and item.error is None
    assert store.get(layer.key) is None and verify(workspaces) == []


def test_a_check_runs_beside_prepares_and_waits_only_for_gc(pyro_home: Path) -> None:
    """Without --repair, verify changes nothing, so a prepare or a create holding the store
    does not hold it off; a gc (which removes layers) does, and it says so."""
    LayerStore(pyro_home).build("ef" * 16, _fill, kind="test")
    with file_lock(gc_lock(pyro_home), shared=True):  # a prepare or a create at work
        checked = run_pyro("cache", "verify", timeout=30)
    assert checked.returncode == 0 and checked.stderr == "", checked
    with file_lock(gc_lock(pyro_home)):  # a gc at work
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyro_loop", "cache", "verify"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "every layer checks out" in out
    assert err == "waiting for a cache gc to finish ...\n"


def test_a_waiter_never_holds_the_lock_of_a_deleted_lock_file(tmp_path: Path) -> None:
    """A holds the lock, B waits; the file is deleted and C locks the new one. When A lets
    go, B must wait for C, not walk in beside it."""
    path = tmp_path / "locks" / "k.lock"
    b_has_it, c_done = threading.Event(), threading.Event()
    overlap: list[bool] = []

    def waiter() -> None:
        with file_lock(path):
            overlap.append(not c_done.is_set())
            b_has_it.set()

    with file_lock(path):  # A
        b = threading.Thread(target=waiter)
        b.start()
        time.sleep(0.2)  # B is blocked in flock on A's file
        path.unlink()
        c_lock = file_lock(path)
        c_lock.__enter__()  # C: a new file at the path, locked at once
    # A released: B's flock returns on the deleted file, and B must go round again.
    assert not b_has_it.wait(0.5), "B holds a lock while C holds the one at the path"
    c_done.set()
    c_lock.__exit__(None, None, None)
    b.join(10)
    assert overlap == [False]


def test_a_publish_never_replaces_a_complete_layer(workspaces: Workspaces) -> None:
    """Two builders of one key at once (the lock file was deleted under the first): the
    first publishes and a workspace starts on it; the second's publish must leave it be."""
    store, key = workspaces.store, "ab" * 16
    first_building, second_building, second_go = (threading.Event() for _ in range(3))

    def build_first(tree: Path) -> None:
        (tree / "who").write_text("first\n")
        first_building.set()
        second_building.wait(10)

    def build_second(tree: Path) -> None:
        (tree / "who").write_text("second\n")
        second_building.set()
        second_go.wait(10)

    first = threading.Thread(target=lambda: store.build(key, build_first, kind="test"))
    first.start()
    assert first_building.wait(10)
    (store.locks_dir / f"{key}.lock").unlink()
    second = threading.Thread(target=lambda: store.build(key, build_second, kind="test"))
    second.start()
    first.join(10)  # published while the second still builds
    record = workspaces.create(layers=[key])
    assert sh(workspaces, record.id, "cat who").stdout == b"first\n"
    second_go.set()
    second.join(10)
    store.empty_trash()
    assert (store.require(key).tree / "who").read_text() == "first\n"
    assert sh(workspaces, record.id, "cat who").stdout == b"first\n"
    assert store.verify(key) is None


# Runs gc back to back until told to stop (argv: the stop file), counting its passes.
GC_LOOP = r"""
import sys
from pathlib import Path
from pyro_loop.loop.gc import gc
from pyro_loop.workspace.manager import Workspaces
ws, stop, passes = Workspaces(), Path(sys.argv[1]), 0
while not stop.exists():
    gc(ws)
    passes += 1
print(passes)
"""


def test_gc_racing_creates_and_snapshots_never_removes_a_used_layer(
    workspaces: Workspaces, tmp_path: Path, pyro_home: Path
) -> None:
    assert gc_lock(pyro_home) == workspaces.store.gc_lock_path  # one lock for both sides
    stop = tmp_path / "stop"
    gc_proc = subprocess.Popen(
        [sys.executable, "-c", GC_LOOP, str(stop)],
        env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        ids = []
        for i in range(6):
            seed = tmp_path / f"seed{i}"
            seed.mkdir()
            (seed / "file.txt").write_text(f"seed {i}\n")
            ws_id = workspaces.create(seed=seed).id
            assert sh(workspaces, ws_id, f"echo snap {i} > snap.txt").exit_code == 0
            workspaces.snapshot_create(ws_id, "s")
            ids.append(ws_id)
    finally:
        stop.touch()
        out, err = gc_proc.communicate(timeout=60)
    assert gc_proc.returncode == 0, err
    assert int(out) > 0  # gc really ran alongside
    for i, ws_id in enumerate(ids):
        record = workspaces.resolve(ws_id).load()
        for key in {*record.layers, *record.snapshots["s"].layers}:
            assert workspaces.store.get(key) is not None, (i, key)
        workspaces.reset(ws_id, snapshot="s")
        assert sh(workspaces, ws_id, "cat file.txt snap.txt").stdout == (
            f"seed {i}\nsnap {i}\n".encode()
        )

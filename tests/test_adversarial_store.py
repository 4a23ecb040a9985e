"""The layer store under concurrency, kills and corruption.

Many processes publishing one key make one entry; a builder killed at a random point leaves
nothing that is trusted; a flipped byte is detected and the layer is rebuilt; garbage
collection racing with creates never removes a layer a workspace uses. Each test also checks
that the user's seed is unchanged.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from pyro_loop.cache import gc_lock
from pyro_loop.store import COMPLETE_MARKER, LayerStore
from pyro_loop.treehash import tree_digest
from pyro_loop.workspace import Workspaces
from tests.conftest import run_pyro
from tests.test_isolation import sh, tree_state

SRC = str(Path(__file__).resolve().parent.parent / "src")

# Stages a 300-file tree (the same content in every process) and publishes it, after waiting
# for a start time so all processes race. argv: home, start time, key ("" = content key).
PUBLISHER = r"""
import sys, time
from pathlib import Path
from pyro_loop.store import LayerStore
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
    report = run_pyro("cache", "verify", "--json")
    assert report.returncode == 1
    damaged = json.loads(report.stdout)["damaged"]
    assert [(d["key"], d["deleted"]) for d in damaged] == [(key, True)]
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


def test_a_damaged_layer_in_use_is_reported_not_deleted(
    workspaces: Workspaces, seed_dir: Path
) -> None:
    record = workspaces.create(seed=seed_dir)
    key = record.base_layers[0]
    _flip_byte(workspaces.store.require(key).tree / "src" / "app.py")
    report = run_pyro("cache", "verify", "--json")
    assert report.returncode == 1
    [item] = json.loads(report.stdout)["damaged"]
    assert item["deleted"] is False and item["users"] == [f"workspace {record.id}"]
    assert workspaces.store.get(key) is not None  # the live workspace keeps its layer
    assert sh(workspaces, record.id, "echo alive").stdout == b"alive\n"


# Runs gc back to back until told to stop (argv: the stop file), counting its passes.
GC_LOOP = r"""
import sys
from pathlib import Path
from pyro_loop.cache import gc
from pyro_loop.workspace import Workspaces
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

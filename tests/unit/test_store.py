"""The layer store (publish, build, recovery from crashes) and the tree digest behind its keys."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pyro_loop.errors import DamagedFileError, InvalidInputError, NotFoundError
from pyro_loop.loop.gc import list_layers
from pyro_loop.loop.status import cache_size
from pyro_loop.store.layers import COMPLETE_MARKER, LayerStore, load_meta
from pyro_loop.store.treehash import tree_digest
from pyro_loop.workspace.manager import Workspaces

KEY = "ab" * 32


@pytest.fixture
def store(tmp_path: Path) -> LayerStore:
    return LayerStore(tmp_path / "store-home")


def _stage(staging: Path, files: dict[str, str]) -> Path:
    tree = staging / "tree"
    tree.mkdir()
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    return tree


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def _run_python(script: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- publish ---------------------------------------------------------------------------------


def test_publish_keys_by_content_and_reuses_the_existing_layer(store: LayerStore) -> None:
    files = {"a.txt": "alpha\n", "sub/b.txt": "beta\n"}
    with store.staging() as staging:
        tree = _stage(staging, files)
        digest = tree_digest(tree)
        first = store.publish(tree, kind="seed", inputs={"source": "first"})
        assert not tree.exists(), "the staged tree is moved into the store"
    assert first.key == digest
    assert first.tree == store.layers_dir / digest / "tree"
    assert (first.tree / "sub" / "b.txt").read_text() == "beta\n"
    assert (first.root / COMPLETE_MARKER).is_file()
    tree_inode = first.tree.stat().st_ino

    with store.staging() as staging:
        again = _stage(staging, files)
        second = store.publish(again, kind="seed", inputs={"source": "second"})
        assert not again.exists(), "a duplicate staged tree is discarded"
    assert second == first
    assert first.tree.stat().st_ino == tree_inode, "the existing layer was not replaced"
    assert first.meta()["inputs"] == {"source": "first"}
    assert store.list() == [first]
    assert _entries(store.tmp_dir) == [], "no staging dir is left behind"

    with store.staging() as staging:
        other = store.publish(_stage(staging, {"a.txt": "changed\n"}), kind="seed")
    assert other.key != first.key
    assert {layer.key for layer in store.list()} == {first.key, other.key}


def test_a_layers_metadata_is_checked_as_it_is_read(tmp_path: Path) -> None:
    """meta.json is what the publisher wrote, or a damaged file named in one line: cut
    short, edited, planted; gc and the cache's size pass over it, verify reports it."""
    home = tmp_path / "home"
    workspaces = Workspaces(home)
    store = workspaces.store
    with store.staging() as staging:
        layer = store.publish(_stage(staging, {"a.txt": "alpha\n"}), kind="seed",
                              inputs={"source": "here"})  # fmt: skip
    meta = layer.meta()
    assert meta == load_meta(layer.meta_path)
    assert (meta["key"], meta["kind"], meta["inputs"]) == (layer.key, "seed", {"source": "here"})
    assert meta["digest"] == layer.key and meta["size"] == 6 and meta["created"] > 0
    assert cache_size(store) == 6

    good = layer.meta_path.read_text()
    hostile = {
        good[:-20]: "damaged layer metadata",  # cut short
        "[1, 2]": "not a JSON object",
        good.replace('"seed"', "7"): "kind is not str",
        good.replace('"size": 6', '"size": "6"'): "size is not int",
        good.replace('"size": 6', '"size": true'): "size is not int",
        good.replace('"size": 6', '"size": -6'): "out of range",
        good.replace(f'"key": "{layer.key}"', '"key": "../../etc"'): "is not a layer key",
        good.replace('"inputs": {', '"inputs": [], "x": {'): "inputs is not dict",
        "[" * 100000 + "]" * 100000: "damaged layer metadata",  # deeper than the parser goes
        " " * (2 * 1024 * 1024): "larger than",
    }
    for text, expected in hostile.items():
        layer.meta_path.write_text(text)
        with pytest.raises(DamagedFileError) as caught:
            layer.meta()
        assert expected in caught.value.message and "\n" not in caught.value.message, text[:80]
        assert str(layer.meta_path) in caught.value.message
        assert store.verify(layer.key) == "its metadata is missing or damaged"
        assert cache_size(store) == 0
        [listed] = list_layers(workspaces)
        assert (listed.kind, listed.size) == ("?", 0)
    layer.meta_path.unlink()
    with pytest.raises(DamagedFileError, match="cannot read"):
        layer.meta()


def test_publish_with_an_explicit_key_and_key_validation(store: LayerStore) -> None:
    with store.staging() as staging:
        layer = store.publish(_stage(staging, {"x": "1"}), kind="env", key=KEY)
    assert layer.key == KEY
    assert store.require(KEY) == layer
    assert layer.meta()["kind"] == "env"
    for bad in ("../../etc", "ABCDEF0123456789", "abc", "g" * 20):
        with pytest.raises(InvalidInputError):
            store.get(bad)
        with pytest.raises(InvalidInputError):
            store.build(bad, lambda tree: None, kind="env")
    with pytest.raises(NotFoundError):
        store.require("cd" * 32)


# -- build -----------------------------------------------------------------------------------

_BUILD_SCRIPT = """
    import os, sys, time
    from pathlib import Path
    from pyro_loop.store.layers import LayerStore

    home, shared, key = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def on_wait():
        (shared / f"waited-{os.getpid()}").touch()

    def builder(tree):
        (shared / f"built-{os.getpid()}").touch()
        (tree / "payload.txt").write_text("built by %d\\n" % os.getpid())
        # Hold the lock until the other process is blocked on it: the builds overlap for sure.
        deadline = time.monotonic() + 20
        while not any(p.name.startswith("waited-") for p in shared.iterdir()):
            if time.monotonic() > deadline:
                sys.exit("the other process never waited for the lock")
            time.sleep(0.002)

    layer = LayerStore(home).build(key, builder, kind="test", on_wait=on_wait)
    print(layer.root)
"""


def test_concurrent_builds_of_one_key_run_the_builder_once(tmp_path: Path) -> None:
    home = tmp_path / "store-home"
    shared = tmp_path / "shared"
    shared.mkdir()
    argv = [sys.executable, "-c", textwrap.dedent(_BUILD_SCRIPT), str(home), str(shared), KEY]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err

    built = [p for p in shared.iterdir() if p.name.startswith("built-")]
    waited = [p for p in shared.iterdir() if p.name.startswith("waited-")]
    assert len(built) == 1, "the builder ran more than once"
    assert len(waited) == 1, "exactly one process waited for the other's build"
    builder_pid = built[0].name.split("-", 1)[1]
    assert waited[0].name.split("-", 1)[1] != builder_pid

    roots = {out.strip() for out, _err in outputs}
    assert roots == {str(home / "layers" / KEY)}, "both processes got the same layer"
    store = LayerStore(home)
    layer = store.require(KEY)
    assert (layer.tree / "payload.txt").read_text() == f"built by {builder_pid}\n"
    assert _entries(store.layers_dir) == [KEY]
    assert _entries(store.tmp_dir) == []


def test_build_returns_an_existing_layer_without_building(store: LayerStore) -> None:
    runs: list[Path] = []

    def builder(tree: Path) -> None:
        runs.append(tree)
        (tree / "f").write_text("1")

    first = store.build(KEY, builder, kind="test", inputs={"n": 1})
    second = store.build(KEY, builder, kind="test", inputs={"n": 2})
    assert len(runs) == 1
    assert first == second
    assert first.meta()["inputs"] == {"n": 1}


def test_incomplete_layer_is_never_used_and_is_replaced_by_build(store: LayerStore) -> None:
    stale = store.layers_dir / KEY
    (stale / "tree").mkdir(parents=True)
    (stale / "tree" / "half-written.txt").write_text("from a killed build")
    assert store.get(KEY) is None
    assert store.list() == []
    with pytest.raises(NotFoundError):
        store.require(KEY)

    def builder(tree: Path) -> None:
        (tree / "fresh.txt").write_text("complete")

    layer = store.build(KEY, builder, kind="test")
    assert store.get(KEY) == layer
    assert _entries(layer.tree) == ["fresh.txt"], "nothing of the incomplete layer survives"
    assert (layer.root / COMPLETE_MARKER).is_file()
    store.empty_trash()
    assert _entries(store.trash_dir) == []


def test_incomplete_layer_is_replaced_by_publish(store: LayerStore) -> None:
    with store.staging() as staging:
        tree = _stage(staging, {"real.txt": "real\n"})
        key = tree_digest(tree)
        stale = store.layers_dir / key / "tree"
        stale.mkdir(parents=True)
        (stale / "junk.txt").write_text("junk")
        assert store.get(key) is None
        layer = store.publish(tree, kind="seed")
    assert layer.key == key
    assert _entries(layer.tree) == ["real.txt"]
    assert store.get(key) == layer


def test_failing_builder_leaves_nothing_behind(store: LayerStore) -> None:
    def builder(tree: Path) -> None:
        (tree / "partial.txt").write_text("partial")
        locked = tree / "locked"
        locked.mkdir()
        (locked / "inner").write_text("x")
        locked.chmod(0)
        raise RuntimeError("build step failed")

    with pytest.raises(RuntimeError, match="build step failed"):
        store.build(KEY, builder, kind="test")
    assert store.get(KEY) is None
    assert _entries(store.layers_dir) == []
    assert _entries(store.tmp_dir) == []

    # The key's lock was released: a later build goes through.
    layer = store.build(KEY, lambda tree: (tree / "ok").write_text("ok"), kind="test")
    assert _entries(layer.tree) == ["ok"]


_KILLED_SCRIPT = """
    import os, signal, sys
    from pathlib import Path
    from pyro_loop.store.layers import LayerStore

    store = LayerStore(Path(sys.argv[1]))
    with store.staging() as staging:
        (staging / "tree").mkdir()
        (staging / "tree" / "big.bin").write_bytes(b"x" * 4096)
        print(staging, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_clean_leftovers_removes_staging_of_killed_processes_only(store: LayerStore) -> None:
    result = _run_python(_KILLED_SCRIPT, str(store.home))
    assert result.returncode == -signal.SIGKILL
    leftover = Path(result.stdout.strip())
    assert leftover.parent == store.tmp_dir
    assert (leftover / "tree" / "big.bin").is_file(), "the killed process left its staging dir"
    dead_pid = int(leftover.name.split("-", 1)[0])
    with pytest.raises(ProcessLookupError):
        os.kill(dead_pid, 0)
    incoming = store.tmp_dir / f"{dead_pid}-incoming-0123456789ab"
    (incoming / "tree").mkdir(parents=True)
    (store.trash_dir / "old-layer").mkdir(parents=True)

    with store.staging() as mine:  # a live process's staging dir must survive
        (mine / "work.txt").write_text("in progress")
        store.clean_leftovers()
        assert not leftover.exists()
        assert not incoming.exists()
        assert (mine / "work.txt").read_text() == "in progress"
        assert _entries(store.trash_dir) == ["old-layer"], "the trash is emptied elsewhere"
        store.empty_trash()
        assert _entries(store.trash_dir) == []
    assert _entries(store.tmp_dir) == []


# -- tree digest -----------------------------------------------------------------------------


def _sample_tree(root: Path) -> Path:
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "file.txt").write_text("content\n")
    (root / "tool.sh").write_text("#!/bin/sh\n")
    (root / "tool.sh").chmod(0o755)
    (root / "link").symlink_to("dir/file.txt")
    return root


def test_tree_digest_is_independent_of_location_and_mtime(tmp_path: Path) -> None:
    a = _sample_tree(tmp_path / "a")
    b = _sample_tree(tmp_path / "b")
    digest = tree_digest(a)
    assert len(digest) == 64
    assert tree_digest(b) == digest
    os.utime(a / "dir" / "file.txt", (1_000_000, 1_000_000))
    os.utime(a / "dir", (2_000_000, 2_000_000))
    os.utime(a / "link", (3_000_000, 3_000_000), follow_symlinks=False)
    assert tree_digest(a) == digest


def test_tree_digest_changes_with_content(tmp_path: Path) -> None:
    root = _sample_tree(tmp_path / "t")
    before = tree_digest(root)
    (root / "dir" / "file.txt").write_text("content!\n")
    changed = tree_digest(root)
    assert changed != before
    (root / "dir" / "file.txt").write_text("content\n")
    assert tree_digest(root) == before
    (root / "dir" / "new.txt").write_text("")
    assert tree_digest(root) != before


def test_tree_digest_changes_with_mode_bits(tmp_path: Path) -> None:
    root = _sample_tree(tmp_path / "t")
    before = tree_digest(root)
    (root / "tool.sh").chmod(0o644)
    assert tree_digest(root) != before
    (root / "tool.sh").chmod(0o755)
    assert tree_digest(root) == before
    (root / "dir").chmod(0o700)
    assert tree_digest(root) != before


def test_tree_digest_changes_with_symlink_target(tmp_path: Path) -> None:
    root = _sample_tree(tmp_path / "t")
    before = tree_digest(root)
    (root / "link").unlink()
    (root / "link").symlink_to("tool.sh")
    assert tree_digest(root) != before
    (root / "link").unlink()
    (root / "link").symlink_to("dir/file.txt")
    assert tree_digest(root) == before
    # A symlink and a file with the link's target as content are different trees.
    (root / "link").unlink()
    (root / "link").write_text("dir/file.txt")
    assert tree_digest(root) != before

"""The host scan: exec, retry and up skip the full sync only when nothing on the host changed.

The proof that the fast path gives the full one's result: whenever the scan record says
"current", a full reconcile right after finds nothing to push; every kind of host change makes
it say "not current" (so the full sync runs); and a watcher-synced exec sees the same files
as a walked one.
"""

from __future__ import annotations

import marshal
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyro_loop.loop.live import ProjectLoop
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.loop import loop_for, sh
from tests.helpers.project import git
from tests.helpers.scan import full_sync_finds_nothing, journal_running, settle

pytestmark = pytest.mark.usefixtures("journal_on")


def current(loop: ProjectLoop) -> bool:
    """The record's verdict, through the change journal when one serves; asserted equal to a
    look at every path's stat data."""
    record = loop.require()
    manifest = loop.files.sync_manifest.read_bytes()
    walked = loop._scan(record)
    walked.journal = None
    expected = walked.current(manifest)
    assert loop._scan(record).current(manifest) == expected
    return expected


def _same_size_rewrite(repo: Path) -> None:
    path = repo / "src" / "app.py"
    st = path.stat()
    path.write_text("print('v2')\n")  # same size, and the old times put back
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _unignore(repo: Path) -> None:
    (repo / ".gitignore").write_text(".deps/\nbuild/\n")  # debug.log takes part now


def _track_ignored(repo: Path) -> None:
    (repo / "trace.log").write_text("t\n")
    git(repo, "add", "-f", "trace.log")


def _new_dir(repo: Path) -> None:
    (repo / "pkg" / "deep").mkdir(parents=True)
    (repo / "pkg" / "deep" / "m.py").write_text("m\n")


def _file_to_link(repo: Path) -> None:
    (repo / "docs" / "guide.md").unlink()
    os.symlink("../src/app.py", repo / "docs" / "guide.md")


CHANGES: dict[str, Callable[[Path], object]] = {
    "content, same size and mtime": _same_size_rewrite,
    "new file in a known directory": lambda r: (r / "src" / "new.py").write_text("new\n"),
    "new file in a new directory": _new_dir,
    "new file in an empty directory": lambda r: (r / "empty" / "f.txt").write_text("f\n"),
    "deleted file": lambda r: (r / "docs" / "guide.md").unlink(),
    "renamed file": lambda r: (r / "src" / "util.py").rename(r / "src" / "util2.py"),
    "mode change": lambda r: (r / "src" / "util.py").chmod(0o755),
    "file replaced by a symlink": _file_to_link,
    "tracked file inside an ignored directory": lambda r: (r / "build" / "keep.txt").write_text(
        "changed\n"
    ),
    "ignore rule removed": _unignore,
    "ignored file added to the index": _track_ignored,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_host_change_ends_the_fast_path_and_the_full_sync_catches_it(
    repo: Path, workspaces: Workspaces, change: str
) -> None:
    (repo / "debug.log").write_text("ignored\n")
    loop = loop_for(repo, workspaces)
    loop.up()
    journal_running(loop)
    settle()
    loop.sync()  # records the host's state, past the racy window
    assert current(loop)
    CHANGES[change](repo)
    assert not current(loop)
    loop.exec(["true"])  # syncs (the changed paths, or in full), and records the new state
    assert current(loop)
    full_sync_finds_nothing(loop)
    settle()
    loop.sync()
    assert current(loop)


def _racy_app(repo: Path, workspaces: Workspaces) -> tuple[ProjectLoop, Any, dict[str, Any]]:
    """A workspace whose host scan recorded src/app.py as racy: (loop, scan, record)."""
    loop = loop_for(repo, workspaces)
    loop.up()
    (repo / "src" / "app.py").write_text("print('v2')\n")
    loop.exec(["true"])  # synced right after the write: app.py is recorded as racy
    scan = loop._scan(loop.require())
    record = scan._load()
    assert record is not None and "src/app.py" in record["racy_files"]
    return loop, scan, record


def test_a_racy_file_is_compared_by_content(repo: Path, workspaces: Workspaces) -> None:
    loop, scan, record = _racy_app(repo, workspaces)
    assert current(loop)  # the content still matches what the workspace holds
    # A rewrite in the same timestamp tick keeps every stat field: simulated by recording
    # the file's new stat data, as if it had not changed.
    (repo / "src" / "app.py").write_text("print('v3')\n")
    st = os.lstat(repo / "src" / "app.py")
    record["entries"]["src/app.py"] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                       st.st_ino)  # fmt: skip
    scan._write(record, journal=None)
    assert not current(loop)
    assert sh(loop, "cat src/app.py") == "print('v3')\n"


def test_a_racy_file_is_read_until_a_check_finds_it_settled(
    repo: Path, workspaces: Workspaces
) -> None:
    """A check past the racy window that finds a racy file as recorded stops reading it:
    from then on its stat data vouch for it, and an edit is seen by them."""
    loop, scan, _ = _racy_app(repo, workspaces)
    settle()
    assert current(loop)
    record = scan._load()
    assert record is not None and record["racy_files"] == {} and "src/app.py" in record["entries"]
    assert current(loop)  # the record still vouches: only its racy table changed
    (repo / "src" / "app.py").write_text("print('v3')\n")
    assert not current(loop)
    assert sh(loop, "cat src/app.py") == "print('v3')\n"


def test_an_edit_is_folded_into_the_record_in_place(
    repo: Path, workspaces: Workspaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit's new stat data are written into the stored numbers, the rest left packed:
    the record is the one a look at every path gives."""
    from pyro_loop.sync.hostscan import HostScan

    loop = loop_for(repo, workspaces)
    loop.up()
    settle()
    loop.sync()
    unpacked: list[str] = []
    load = HostScan._load
    monkeypatch.setattr(HostScan, "_load", lambda self: unpacked.append("") or load(self))
    (repo / "src" / "app.py").write_text("print('edited, longer than before')\n")
    assert sh(loop, "cat src/app.py") == "print('edited, longer than before')\n"
    assert unpacked == []  # neither the delta nor the fold unpacked the record
    record = loop._scan(loop.require())._load()
    st = os.lstat(repo / "src" / "app.py")
    assert record is not None and record["entries"]["src/app.py"] == (
        st.st_mode,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
    )
    settle()
    assert current(loop)
    full_sync_finds_nothing(loop)


def test_no_change_or_an_edit_needs_no_git(repo: Path, workspaces: Workspaces) -> None:
    loop = loop_for(repo, workspaces)
    loop.up()
    settle()
    loop.sync()
    calls = []
    syncer = loop._syncer(loop.require())
    original = syncer.reconcile
    syncer.reconcile = lambda: calls.append(1) or original()  # type: ignore[method-assign]
    for _ in range(3):
        assert sh(loop, "cat src/app.py") == "print('v1')\n"
    (repo / "src" / "app.py").write_text("print('v9')\n")  # an agent's edit
    (repo / "src" / "extra.py").write_text("extra\n")
    (repo / "docs" / "guide.md").unlink()
    assert sh(loop, "cat src/app.py src/extra.py; ls docs") == "print('v9')\nextra\n"
    assert calls == []  # just the changed paths: no git status, no walk of the tree
    assert current(loop)
    syncer.reconcile = original  # type: ignore[method-assign]
    full_sync_finds_nothing(loop)
    (repo / ".gitignore").write_text(".deps/\n")  # what takes part changed: the full sync
    syncer.reconcile = lambda: calls.append(1) or original()  # type: ignore[method-assign]
    sh(loop, "true")
    assert calls == [1]


def test_another_sync_or_a_reset_elsewhere_ends_the_fast_path(
    repo: Path, workspaces: Workspaces
) -> None:
    loop = loop_for(repo, workspaces)
    loop.up()
    settle()
    loop.sync()
    assert current(loop)
    # The workspace reset behind this loop's back (another process): another generation.
    workspaces.reset(loop.require().id)
    assert not current(loop)
    loop.sync()
    # Another syncer wrote the manifest (a watcher, the MCP server).
    settle()
    loop.sync()
    other = loop_for(repo, workspaces)
    (repo / "src" / "new.py").write_text("n\n")
    other._syncer(other.require()).reconcile()
    assert not current(loop)


def test_reset_puts_back_the_synced_host_files_in_o_changed(
    repo: Path, workspaces: Workspaces
) -> None:
    loop = loop_for(repo, workspaces)
    loop.up()
    (repo / "src" / "app.py").write_text("print('host')\n")
    (repo / "docs" / "guide.md").unlink()
    (repo / "pkg").mkdir()
    (repo / "pkg" / "m.py").write_text("m\n")
    settle()
    loop.sync()
    sh(loop, "echo junk > junk.txt; echo ws > src/util.py")
    result = loop.reset()
    assert sorted(result.copied_paths) == ["pkg", "pkg/m.py", "src/app.py"]
    assert result.removed_paths == ["docs/guide.md"]
    out = sh(loop, "cat src/app.py src/util.py pkg/m.py; ls . docs")
    assert out.startswith("print('host')\nX = 1\nm\n")
    assert "junk.txt" not in out and "guide.md" not in out
    assert current(loop)
    full_sync_finds_nothing(loop)


def test_reset_rebinds_the_record_without_rewriting_its_stat_data(
    repo: Path, workspaces: Workspaces
) -> None:
    # The stat data hold a path per file of the tree: a reset that rewrote them would cost
    # more the larger the repository. Only the small binding beside them moves.
    loop = loop_for(repo, workspaces)
    loop.up()
    (repo / "src" / "app.py").write_text("print('host')\n")
    settle()
    loop.sync()
    data = loop.files.host_scan
    before = os.stat(data)
    loop.reset()
    after = os.stat(data)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert current(loop)  # and it vouches for the reset workspace
    assert sh(loop, "cat src/app.py") == "print('host')\n"
    full_sync_finds_nothing(loop)


def test_stat_data_from_another_binding_is_no_record(repo: Path, workspaces: Workspaces) -> None:
    loop = loop_for(repo, workspaces)
    loop.up()
    settle()
    loop.sync()
    data = loop.files.host_scan
    old = data.read_bytes()
    (repo / "src" / "app.py").write_text("print('later')\n")
    settle()
    loop.sync()  # a new record: new stat data, a new binding
    assert current(loop)
    data.write_bytes(old)  # stat data of the earlier sync beside the later binding
    assert not current(loop)
    assert sh(loop, "cat src/app.py") == "print('later')\n"
    assert current(loop)


def test_watcher_synced_exec_sees_the_same_files_as_a_walked_one(
    repo: Path, workspaces: Workspaces
) -> None:
    loop = loop_for(repo, workspaces)
    loop.up()
    stop = threading.Event()
    thread = threading.Thread(target=loop.watch, kwargs={"stop_event": stop}, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # watching
        (repo / "src" / "app.py").write_text("print('watched')\n")
        (repo / "pkg").mkdir()
        (repo / "pkg" / "m.py").write_text("m\n")
        (repo / "docs" / "guide.md").unlink()
        deadline = time.monotonic() + 20
        while not current(loop):  # the watcher synced, then recorded the host at rest
            assert time.monotonic() < deadline, "the watcher never recorded the host"
            time.sleep(0.05)
        calls = []
        syncer = loop._syncer(loop.require())
        original = syncer.reconcile
        syncer.reconcile = lambda: calls.append(1) or original()  # type: ignore[method-assign]
        watched = sh(loop, "cat src/app.py pkg/m.py; ls docs; find . -path ./.git -prune -o "
                     "-path ./.deps -prune -o -type f -print | sort")  # fmt: skip
        assert calls == []  # the exec trusted the watcher's record: no walk, no git
        syncer.reconcile = original  # type: ignore[method-assign]
    finally:
        stop.set()
        thread.join(timeout=10)
    full_sync_finds_nothing(loop)
    (loop.files.host_scan).unlink()  # the same exec, after a full walk
    assert sh(loop, "cat src/app.py pkg/m.py; ls docs; find . -path ./.git -prune -o "
              "-path ./.deps -prune -o -type f -print | sort") == watched  # fmt: skip
    assert "print('watched')" in watched and "guide.md" not in watched


def test_an_ignored_file_that_keeps_changing_keeps_the_fast_path(
    repo: Path, workspaces: Workspaces
) -> None:
    (repo / "debug.log").write_text("1\n")
    loop = loop_for(repo, workspaces)
    loop.up()
    settle()
    loop.sync()
    (repo / "debug.log").write_text("22\n")  # a log the host keeps writing
    assert "debug.log" not in sh(loop, "ls")
    assert current(loop)  # no longer recorded: its changes never matter
    full_sync_finds_nothing(loop)


def test_stat_data_are_stored_packed_and_read_back_exactly(tmp_path: Path) -> None:
    from pyro_loop.sync.hostscan import HostScan

    scan = HostScan(tmp_path / "host-scan", tmp_path, None, workspace=("w", 1), rules=None)
    entries = {
        "": (0o40755, 4096, 1, 2, 3),  # the root's own
        "a/b.py": (0o100644, 120, -5_000_000_000, 1_765_000_000_123_456_789, 2**64 - 1),
        os.fsdecode(b"caf\xe9.txt"): (0o100600, 0, 7, 8, 9),  # not UTF-8
    }
    record = {"identity": scan.identity, "workspace": ("w", 1), "manifest": "m",
              "controls": {}, "entries": entries, "racy_files": {}, "racy_dirs": {}}  # fmt: skip
    scan._write(record, journal=None)
    loaded = scan._load()
    assert loaded is not None and loaded["entries"] == entries
    assert loaded["unwatched"] == ["a/b.py"]  # no recorded directory holds it
    only_root = {"": (0o40755, 4096, 1, 2, 3)}
    scan._write({**record, "entries": only_root}, journal=None)
    loaded = scan._load()
    assert loaded is not None and loaded["entries"] == only_root


def test_damaged_stat_data_are_no_record(repo: Path, workspaces: Workspaces) -> None:
    loop = loop_for(repo, workspaces)
    loop.up()
    settle()
    loop.sync()
    assert current(loop)
    data = loop.files.host_scan
    stored = marshal.loads(data.read_bytes())
    stored["numbers"] = stored["numbers"][:-8]  # one number short
    data.write_bytes(marshal.dumps(stored))
    assert not current(loop)  # no record: the next command syncs in full
    (repo / "src" / "app.py").write_text("print('after')\n")
    assert sh(loop, "cat src/app.py") == "print('after')\n"
    assert current(loop)


def test_paths_are_found_in_the_packed_record_as_in_the_split_one() -> None:
    from pyro_loop.sync import hostscan

    paths = ["", "a", "ab", "a/b", os.fsdecode(b"caf\xe9"), "x/y.py"]
    packed = "\0".join(paths).encode("utf-8", "surrogateescape")
    names = ["a", "a/b", "b", "", os.fsdecode(b"caf\xe9"), "y.py", "x/y.py", "x"]
    expected = [(paths.index(n), n) for n in names if n in paths]
    assert hostscan._locate(packed, names) == expected  # a search of the packed bytes
    many = names * 3 + [f"n{i}" for i in range(20)]  # past 16 names: one split
    assert sorted(hostscan._locate(packed, many)) == sorted(expected)


def test_a_branch_switched_back_to_the_baseline_at_once_keeps_its_record(
    repo: Path, workspaces: Workspaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A switch back to the baseline branch, synced right after the checkout: the files it
    wrote are recent (racy), and the manifest no longer records them (the workspace holds
    the baseline's version again). The baseline's blob ids vouch for them: the record stays,
    a check reads them instead of leaving a full sync to the next command, and an edit of
    one is seen."""
    from pyro_loop.digest import sha256_hex
    from pyro_loop.sync import hostscan

    # Every file the test writes counts as recent, however slowly the test runs.
    monkeypatch.setattr(hostscan, "FINE_RACY_NS", 600 * 10**9)
    monkeypatch.setattr(hostscan, "COARSE_RACY_NS", 600 * 10**9)
    (repo / "link").symlink_to("src/app.py")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a link")
    base = git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
    git(repo, "checkout", "-q", "-b", "other")
    switched = ["src/app.py", "src/util.py", "build/keep.txt"]
    for name in switched:
        (repo / name).write_text(f"{name} on the other branch\n")
    (repo / "link").unlink()
    (repo / "link").symlink_to("src/util.py")
    git(repo, "commit", "-qam", "other")
    git(repo, "checkout", "-q", base)
    loop = loop_for(repo, workspaces)
    loop.up()  # the baseline is the base branch's tree
    git(repo, "checkout", "-q", "other")
    loop.sync()
    git(repo, "checkout", "-q", base)
    loop.sync()

    record = loop._scan(loop.require())._load()
    assert record is not None, "the record was dropped"
    racy = record["racy_files"]
    for name in switched:
        assert racy[name].startswith(hostscan.GIT_BLOB), racy
    assert racy["link"] == sha256_hex(b"src/app.py")
    assert current(loop)
    full_sync_finds_nothing(loop)
    (repo / "src" / "util.py").write_text("X = 2\n")  # the same size as the baseline's
    assert not current(loop)
    assert sh(loop, "cat src/util.py") == "X = 2\n"

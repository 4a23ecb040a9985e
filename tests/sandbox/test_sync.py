"""The sync engine, host -> workspace: real git repositories, real workspaces, real files.

Each workspace starts from a baseline layer holding the files of the repository's HEAD tree
(as `pyro prepare` builds it), and a Syncer brings the host's working tree into it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
import os
import tarfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyro_loop.errors import AgentError, InvalidInputError
from pyro_loop.sync import ExcludeRules, PathFilter, host_digest, manifest_digest
from pyro_loop.workspace.client import AgentClient
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.live import Live, assert_in_sync, files_only, host_tree, live_factory, make_repo
from tests.helpers.project import git

# What the workspace holds, as {path: (kind, mode, sha256) or ("link", target)}.


@pytest.fixture
def make_live(workspaces: Workspaces, tmp_path: Path) -> Callable[..., Live]:
    return live_factory(workspaces, tmp_path)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


# -- reconcile -------------------------------------------------------------------------------


def test_reconcile_pushes_dirty_and_untracked_files_but_not_ignored_ones_or_git(
    make_live: Callable[..., Live], repo: Path
) -> None:
    live = make_live(repo)
    (repo / "README.md").write_text("changed on the host\n")
    (repo / "src" / "app.py").unlink()
    (repo / "notes.txt").write_text("untracked\n")
    (repo / "new" / "deep").mkdir(parents=True)
    (repo / "new" / "deep" / "x.py").write_text("x = 1\n")
    (repo / "debug.log").write_text("ignored\n")
    (repo / "build").mkdir()
    (repo / "build" / "out.bin").write_bytes(b"\0" * 100)
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").write_text("#!/bin/sh\n")

    result = live.syncer.reconcile()

    assert sorted(result.copied_paths) == ["README.md", "new/deep/x.py", "notes.txt"]
    assert result.removed_paths == ["src/app.py"]
    assert (result.copied, result.removed, result.skipped) == (3, 1, [])
    tree = live.tree()
    assert files_only(tree) == host_tree(repo)
    top = {p.split("/")[0] for p in tree}
    assert not top & {".git", "build", ".venv"} and not any(p.endswith(".log") for p in tree)
    assert live.cat("README.md") == b"changed on the host\n"
    json.dumps(result.to_json())  # serialisable as is

    again = live.syncer.reconcile()
    assert (again.copied, again.removed, again.bytes) == (0, 0, 0), "nothing changed since"


def test_ignore_rules_treat_symlinks_as_git_does(tmp_path: Path) -> None:
    """A directory-only pattern (`build/`) does not match a symlink named `build`, even one
    pointing at a directory (libgit2 alone would say it does); a plain pattern does. Each
    verdict is checked against git's own list of untracked files."""
    root = tmp_path / "links"
    root.mkdir()
    git(root, "init", "-q")
    (root / ".gitignore").write_text("build/\ncache\n")
    (root / "real").mkdir()
    (root / "real" / "f.txt").write_text("x\n")
    for name in ("build", "cache"):
        (root / name).symlink_to("real")
    (root / "dist").symlink_to("real/f.txt")
    listed = git(root, "status", "--porcelain", "--untracked-files=all").split("\n")
    untracked = {line[3:] for line in listed if line.startswith("?? ")}
    wanted = PathFilter.for_root(root)
    for name in ("build", "cache", "dist", "real/f.txt"):
        assert wanted(root / name) == (name in untracked), name
    assert untracked >= {"build", "dist"} and "cache" not in untracked


def test_reconcile_syncs_a_link_named_like_an_ignored_directory(
    make_live: Callable[..., Live], repo: Path
) -> None:
    """The repository ignores `build/`; a symlink named `build` is not ignored by git, and
    the reconcile (which starts from git's status, not the watcher) pushes it, as a link."""
    live = make_live(repo)
    (repo / "out").mkdir()
    (repo / "out" / "a.txt").write_text("a\n")
    (repo / "build").symlink_to("out")
    result = live.syncer.reconcile()
    assert sorted(result.copied_paths) == ["build", "out/a.txt"]
    assert live.sh("readlink /workspace/build; cat /workspace/build/a.txt") == "out\na\n"


def test_create_modify_delete_and_rename_files(make_live: Callable[..., Live], repo: Path) -> None:
    live = make_live(repo)
    (repo / "created.txt").write_text("created\n")
    live.syncer.reconcile()
    assert live.cat("created.txt") == b"created\n"

    (repo / "created.txt").write_text("modified, and longer than before\n")
    (repo / "lib" / "mod_001.py").write_text("VALUE = 'modified tracked file'\n")
    result = live.syncer.sync_paths([repo / "created.txt", repo / "lib" / "mod_001.py"])
    assert sorted(result.copied_paths) == ["created.txt", "lib/mod_001.py"]
    assert live.cat("created.txt") == b"modified, and longer than before\n"

    os.rename(repo / "created.txt", repo / "renamed.txt")
    os.rename(repo / "README.md", repo / "README.rst")  # a tracked file
    result = live.syncer.sync_paths([repo / n for n in ("created.txt", "renamed.txt",
                                                        "README.md", "README.rst")])  # fmt: skip
    assert sorted(result.removed_paths) == ["README.md", "created.txt"]
    assert sorted(result.copied_paths) == ["README.rst", "renamed.txt"]
    assert_in_sync(live)

    (repo / "renamed.txt").unlink()
    (repo / "lib" / "mod_002.py").unlink()
    live.syncer.reconcile()
    assert_in_sync(live)


def test_renaming_a_large_directory(make_live: Callable[..., Live], tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "big", lib_files=400)
    live = make_live(repo)
    os.rename(repo / "lib", repo / "library")

    started = time.perf_counter()
    result = live.syncer.sync_paths([repo / "lib", repo / "library"])  # what a watcher reports
    elapsed = time.perf_counter() - started
    print(f"\nrenaming a directory of 400 files synced in {elapsed * 1000:.0f} ms")

    assert result.removed_paths == ["lib"]
    assert result.copied == 401  # the directory and its files
    assert_in_sync(live)
    assert (
        live.sh("ls -d /workspace/lib 2>&1 || true").strip().endswith("No such file or directory")
    )

    os.rename(repo / "library", repo / "lib")  # and back, found by a reconcile this time
    back = live.syncer.reconcile()
    assert (back.copied, back.removed) == (401, 401)
    assert_in_sync(live)
    assert live.syncer.reconcile().copied == 0


def test_an_editors_atomic_save(make_live: Callable[..., Live], repo: Path) -> None:
    live = make_live(repo)
    target = repo / "src" / "app.py"
    temp = repo / "src" / ".app.py.swp"
    temp.write_text("print('saved by the editor')\n")
    temp.chmod(target.stat().st_mode & 0o777)
    os.rename(temp, target)

    # The watcher sees both names; the temporary one no longer exists.
    result = live.syncer.sync_paths([temp, target])

    assert result.copied_paths == ["src/app.py"]
    assert live.cat("src/app.py") == b"print('saved by the editor')\n"
    assert ".app.py.swp" not in live.sh("ls -a /workspace/src")
    assert_in_sync(live)


def test_permission_bits_are_synced(make_live: Callable[..., Live], repo: Path) -> None:
    live = make_live(repo)
    (repo / "README.md").chmod(0o755)  # tracked, content unchanged
    (repo / "run.sh").chmod(0o644)
    (repo / "secret.txt").write_text("private\n")
    (repo / "secret.txt").chmod(0o600)
    (repo / "tool").mkdir()
    (repo / "tool" / "bin.sh").write_text("#!/bin/sh\n")
    (repo / "tool" / "bin.sh").chmod(0o4750)  # set-id bits never reach the workspace
    (repo / "tool").chmod(0o750)

    live.syncer.reconcile()

    tree = live.tree()
    assert tree["README.md"][1] == 0o755
    assert tree["run.sh"][1] == 0o644
    assert tree["secret.txt"][1] == 0o600
    assert tree["tool/bin.sh"][1] == 0o750
    assert tree["tool"] == ["dir", 0o750]

    (repo / "secret.txt").chmod(0o640)
    result = live.syncer.sync_paths([repo / "secret.txt"])
    assert result.copied_paths == ["secret.txt"]
    assert live.tree()["secret.txt"][1] == 0o640


def test_symlinks_are_copied_as_links_never_followed(
    make_live: Callable[..., Live], repo: Path, tmp_path: Path
) -> None:
    live = make_live(repo)
    outside = tmp_path / "outside"
    (outside / "private").mkdir(parents=True)
    (outside / "private" / "key").write_text("never copied\n")
    (repo / "rel-link").symlink_to("src/app.py")
    (repo / "abs-link").symlink_to(outside / "private" / "key")
    (repo / "dir-link").symlink_to(outside / "private")
    (repo / "src" / "link").unlink()
    (repo / "src" / "link").symlink_to("../run.sh")  # retargeted

    live.syncer.reconcile()
    # A watcher following the directory link would report paths through it: never synced.
    through = live.syncer.sync_paths([repo / "dir-link" / "key"])
    assert (through.copied, through.removed) == (0, 0)

    tree = live.tree()
    assert tree["rel-link"] == ["link", "src/app.py"]
    assert tree["abs-link"] == ["link", str(outside / "private" / "key")]
    assert tree["dir-link"] == ["link", str(outside / "private")]
    assert tree["src/link"] == ["link", "../run.sh"]
    assert not any(p.startswith("dir-link/") for p in tree)
    assert live.cat("rel-link") == b"print('app')\n"
    assert "never copied" not in live.sh("grep -rs 'never copied' /workspace || true")

    # A link replaced by a directory with files, and a directory by a link.
    (repo / "dir-link").unlink()
    (repo / "dir-link").mkdir()
    (repo / "dir-link" / "real.txt").write_text("a real file now\n")
    os.rename(repo / "lib", tmp_path / "lib-moved")
    (repo / "lib").symlink_to("src")
    live.syncer.reconcile()
    tree = live.tree()
    assert tree["dir-link"][0] == "dir"
    assert tree["lib"] == ["link", "src"]
    assert_in_sync(live)


def test_a_50_mb_file_streams(make_live: Callable[..., Live], repo: Path) -> None:
    live = make_live(repo)
    big = repo / "data.bin"
    block = os.urandom(1 << 20)
    with big.open("wb") as f:
        for i in range(50):
            f.write(block[i:] + block[:i])
    digest = hashlib.sha256(big.read_bytes()).hexdigest()

    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = live.syncer.reconcile()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    print(f"\n50 MB file synced in {elapsed * 1000:.0f} ms, peak Python memory {peak >> 20} MiB")

    assert result.copied_paths == ["data.bin"]
    assert result.bytes == 50 << 20
    assert peak < 16 << 20, "the file is streamed, never held in memory"
    assert live.sh("sha256sum /workspace/data.bin").split()[0] == digest


def test_a_branch_switch_of_1000_files(make_live: Callable[..., Live], tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "branches", lib_files=700)
    git(repo, "checkout", "-q", "-b", "other")
    for i in range(500):
        (repo / "lib" / f"mod_{i:03}.py").write_text(f"VALUE = {i}  # on the other branch\n")
    for i in range(600, 700):
        (repo / "lib" / f"mod_{i:03}.py").unlink()
    (repo / "pkg").mkdir()
    for i in range(400):
        (repo / "pkg" / f"new_{i:03}.py").write_text(f"NEW = {i}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "other")
    git(repo, "checkout", "-q", "main")
    live = make_live(repo)  # the baseline is main's tree
    (repo / "edited-on-main.txt").write_text("uncommitted, carried across the switch\n")
    live.syncer.reconcile()

    # One file first: the cost of the smallest sync.
    (repo / "README.md").write_text("one file\n")
    started = time.perf_counter()
    one = live.syncer.sync_paths([repo / "README.md"])
    one_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    live.syncer.reconcile()
    idle_ms = (time.perf_counter() - started) * 1000
    assert one.copied_paths == ["README.md"]
    git(repo, "checkout", "-q", "README.md")

    git(repo, "checkout", "-q", "other")
    started = time.perf_counter()
    result = live.syncer.reconcile()
    switch_ms = (time.perf_counter() - started) * 1000
    print(
        f"\nsync of 1 file: {one_ms:.1f} ms; reconcile with nothing to do: {idle_ms:.1f} ms;"
        f" branch switch, {result.copied} copied + {result.removed} removed: {switch_ms:.0f} ms"
    )

    assert result.copied == 500 + 400 + 1  # modified, added, and README.md back
    assert result.removed == 100
    assert switch_ms < 10_000, "target 1 s; generous here for a loaded test machine"
    assert_in_sync(live)

    git(repo, "checkout", "-q", "main")
    back = live.syncer.reconcile()
    assert (back.copied, back.removed) == (600, 401)  # pkg/ goes as one path, with its files
    assert_in_sync(live)
    assert set(live.entries()) == {"edited-on-main.txt"}, "the rest is the baseline again"


def test_a_file_changed_while_being_copied_ends_with_its_final_content(
    make_live: Callable[..., Live], repo: Path
) -> None:
    live = make_live(repo)
    big = repo / "growing.bin"
    big.write_bytes(b"a" * (64 << 20))
    changed_while_open = threading.Event()
    stop = threading.Event()

    def writer() -> None:
        # Waits for the syncer to open the file (it is in this process), then rewrites it.
        while not stop.is_set():
            for fd in os.listdir("/proc/self/fd"):
                with contextlib.suppress(OSError):  # closed while looked at
                    if os.readlink(f"/proc/self/fd/{fd}") == str(big):
                        with big.open("r+b") as f:
                            f.write(b"b" * 1024)
                            f.seek(0, 2)
                            f.write(b"final tail\n")
                        if os.readlink(f"/proc/self/fd/{fd}") == str(big):
                            changed_while_open.set()
                        return
            time.sleep(0.0002)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = live.syncer.reconcile()
    finally:
        stop.set()
        thread.join()

    assert changed_while_open.is_set(), "the test rewrote the file while it was being read"
    assert result.copied_paths == ["growing.bin"]
    final = hashlib.sha256(big.read_bytes()).hexdigest()
    assert live.sh("sha256sum /workspace/growing.bin").split()[0] == final
    assert live.syncer.reconcile().copied == 0


def test_same_size_same_mtime_content_change_is_detected(
    make_live: Callable[..., Live], repo: Path
) -> None:
    live = make_live(repo)
    target = repo / "same.txt"
    old_time = 1_600_000_000_000_000_000  # 2020: far outside the racy window
    target.write_text("version A\n")
    os.utime(target, ns=(old_time, old_time))
    live.syncer.reconcile()
    assert live.cat("same.txt") == b"version A\n"

    target.write_text("version B\n")  # same size
    os.utime(target, ns=(old_time, old_time))  # same mtime
    assert live.syncer.reconcile().copied_paths == ["same.txt"]
    assert live.cat("same.txt") == b"version B\n"

    # And right after a sync (a write in the same timestamp tick as the record).
    target.write_text("version C\n")
    live.syncer.sync_paths([target])
    st = target.stat()
    target.write_text("version D\n")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert live.syncer.sync_paths([target]).copied_paths == ["same.txt"]
    assert live.cat("same.txt") == b"version D\n"


def test_workspace_only_edits_survive_and_the_host_wins_where_both_changed(
    make_live: Callable[..., Live], repo: Path
) -> None:
    live = make_live(repo)
    (repo / "shared.txt").write_text("host v1\n")
    live.syncer.reconcile()
    live.sh(
        "cd /workspace && echo 'workspace edit' > README.md && echo 'ws only' > ws-new.txt"
        " && echo 'workspace edit' > shared.txt && echo 'ws' > src/app.py && rm run.sh"
    )
    (repo / "src" / "app.py").write_text("print('host edit')\n")  # both changed it

    result = live.syncer.reconcile()

    assert result.copied_paths == ["src/app.py"]
    assert live.cat("src/app.py") == b"print('host edit')\n", "the host wins where it changed"
    assert live.cat("README.md") == b"workspace edit\n", "the host did not touch it"
    assert live.cat("shared.txt") == b"workspace edit\n", "unchanged on the host since its sync"
    assert live.cat("ws-new.txt") == b"ws only\n"
    assert "run.sh" not in live.sh("ls /workspace")


def test_an_unreadable_file_is_skipped_and_reported(
    make_live: Callable[..., Live], repo: Path
) -> None:
    live = make_live(repo)
    (repo / "readable.txt").write_text("fine\n")
    locked = repo / "locked.txt"
    locked.write_text("nobody may read this\n")
    locked.chmod(0o000)
    try:
        result = _without_file_permission_override(live.syncer.reconcile)
    finally:
        locked.chmod(0o644)
    assert [(s.path, s.reason) for s in result.skipped] == [("locked.txt", "permission denied")]
    assert result.copied_paths == ["readable.txt"]
    assert result.to_json()["skipped"] == [{"path": "locked.txt", "reason": "permission denied"}]
    assert "locked.txt" not in live.sh("ls /workspace")

    assert live.syncer.reconcile().copied_paths == ["locked.txt"], "readable again: synced"


def _without_file_permission_override(call: Callable[[], Any]) -> Any:
    """Run `call` unable to bypass file permissions. As root that takes dropping
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, which capset does per thread: a thread of its
    own drops them from its effective set and ends; the rest of the process keeps them."""
    if os.geteuid() != 0:
        return call()
    outcome: dict[str, Any] = {}

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]  # fmt: skip

        header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
        data = (Data * 2)()
        assert libc.capget(ctypes.byref(header), data) == 0
        data[0].effective &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        assert libc.capset(ctypes.byref(header), data) == 0, os.strerror(ctypes.get_errno())
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_a_path_back_to_its_head_content_is_pushed_and_leaves_the_manifest(
    make_live: Callable[..., Live], repo: Path
) -> None:
    live = make_live(repo)
    (repo / "README.md").write_text("edited\n")
    (repo / "src" / "app.py").unlink()
    live.syncer.reconcile()
    assert set(live.entries()) == {"README.md", "src/app.py"}
    assert manifest_digest(live.manifest, "README.md") == host_digest(repo, "README.md")

    git(repo, "checkout", "-q", "--", "README.md", "src/app.py")
    result = live.syncer.reconcile()

    assert sorted(result.copied_paths) == ["README.md", "src/app.py"]
    assert live.cat("README.md") == b"hello\n"
    assert live.entries() == {}
    assert manifest_digest(live.manifest, "README.md") is None


def test_forget_after_a_reset_pushes_everything_again(
    make_live: Callable[..., Live], repo: Path
) -> None:
    live = make_live(repo)
    (repo / "README.md").write_text("edited\n")
    (repo / "untracked.txt").write_text("new\n")
    live.syncer.reconcile()
    live.workspaces.reset(live.ref)
    assert live.cat("README.md") == b"hello\n"

    live.syncer.forget()
    result = live.syncer.reconcile()
    assert sorted(result.copied_paths) == ["README.md", "untracked.txt"]
    assert_in_sync(live)


def test_sync_exclude_patterns(make_live: Callable[..., Live], repo: Path) -> None:
    live = make_live(repo, ("*.tmp", "data/", "/README.md", "!keep.tmp"))
    (repo / "scratch.tmp").write_text("x\n")
    (repo / "keep.tmp").write_text("kept\n")
    (repo / "data" / "sub").mkdir(parents=True)
    (repo / "data" / "sub" / "big.csv").write_text("1,2\n")
    (repo / "README.md").write_text("a tracked file, excluded from sync\n")
    (repo / "src" / "README.md").write_text("not anchored there\n")

    result = live.syncer.reconcile()
    assert sorted(result.copied_paths) == ["keep.tmp", "src/README.md"]
    assert live.cat("README.md") == b"hello\n"
    assert live.syncer.sync_paths([repo / "scratch.tmp", repo / "data" / "sub"]).copied == 0

    rules = ExcludeRules(["build/", "**/cache/*.bin", "docs/*.md", "[ab].txt", "# comment"])
    assert rules.excluded("build/x/y.o", is_dir=False)
    assert rules.excluded("build", is_dir=True) and not rules.excluded("build", is_dir=False)
    assert rules.excluded("a/b/cache/x.bin", is_dir=False)
    assert rules.excluded("docs/a.md", is_dir=False)
    assert not rules.excluded("docs/sub/a.md", is_dir=False)
    assert rules.excluded("b.txt", is_dir=False) and not rules.excluded("c.txt", is_dir=False)


def test_a_directory_outside_git_is_walked(make_live: Callable[..., Live], tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    (plain / "pkg").mkdir(parents=True)
    (plain / "pkg" / "a.py").write_text("a\n")
    (plain / "run").write_text("#!/bin/sh\n")
    (plain / "run").chmod(0o700)
    (plain / "node_modules" / "x").mkdir(parents=True)
    (plain / "node_modules" / "x" / "i.js").write_text("1\n")
    (plain / ".git").mkdir()  # not a repository; still never synced
    (plain / ".git" / "HEAD").write_text("junk\n")
    live = make_live(plain, ("node_modules/",), git_baseline=False)

    result = live.syncer.reconcile()

    assert sorted(result.copied_paths) == ["pkg", "pkg/a.py", "run"]
    assert live.tree() == {
        "pkg": ["dir", 0o755],
        "pkg/a.py": ["file", 0o644, hashlib.sha256(b"a\n").hexdigest()],
        "run": ["file", 0o700, hashlib.sha256(b"#!/bin/sh\n").hexdigest()],
    }
    (plain / "pkg" / "a.py").unlink()
    assert live.syncer.reconcile().removed_paths == ["pkg/a.py"]


# -- the agent's batch operations ----------------------------------------------------------


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = "") -> (
    tarfile.TarInfo
):  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    return info


def test_put_tar_refuses_paths_out_of_the_workspace(
    make_live: Callable[..., Live], repo: Path
) -> None:
    live = make_live(repo)
    client = live.client
    live.sh("cd /workspace && ln -s /etc etclink && ln -s .. up")
    marker = f"pyro-escape-{os.getpid()}-{time.monotonic_ns()}"

    for name in (f"/tmp/{marker}", f"../{marker}", f"src/../../{marker}", f"./../{marker}"):
        with pytest.raises(InvalidInputError, match=r"absolute|'\.\.'"):
            client.put_tar(_tar([(_member(name), b"escaped")]))

    # Through a symlink that leaves /workspace: refused member by member, the rest written.
    reply = client.put_tar(_tar([
        (_member(f"etclink/{marker}"), b"escaped"),
        (_member("evil", tarfile.SYMTYPE, link="/"), None),
        (_member(f"evil/tmp/{marker}"), b"escaped"),
        (_member(f"up/tmp/{marker}"), b"escaped"),
        (_member("up/workspace/came-back-in.txt"), b"inside after all\n"),
    ]))  # fmt: skip
    assert [e["path"] for e in reply["errors"]] == [
        f"etclink/{marker}", f"evil/tmp/{marker}", f"up/tmp/{marker}",
    ]  # fmt: skip
    assert {e["kind"] for e in reply["errors"]} == {"outside_workspace"}
    assert (reply["files"], reply["symlinks"]) == (1, 1)
    assert live.cat("came-back-in.txt") == b"inside after all\n"

    for kind in (tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE):
        with pytest.raises(AgentError, match="only files, directories and symlinks"):
            client.put_tar(_tar([(_member("special", kind, link="README.md"), None)]))
    with pytest.raises(AgentError, match="tar"):
        client.put_tar([b"this is not a tar stream" * 100])

    assert marker not in live.sh(f"ls -a / /tmp /etc | grep {marker} || true")
    assert not any(marker in p.name for p in Path("/etc").iterdir())
    assert not any(marker in p.name for p in Path("/tmp").iterdir())
    assert live.client.ping()["ok"], "the agent still serves"


def test_put_tar_replaces_what_is_there_and_remove_many(
    make_live: Callable[..., Live], repo: Path
) -> None:
    live = make_live(repo)
    client = live.client
    live.sh("cd /workspace && mkdir -p was-dir/sub && echo x > was-dir/sub/f && echo f > was-file")

    def chunks() -> Iterator[bytes]:  # a stream of odd-sized chunks, as a generator
        data = _tar([
            (_member("was-dir"), b"now a file\n"),
            (_member("was-file", tarfile.DIRTYPE, 0o750), None),
            (_member("was-file/inner.txt", mode=0o6755), b"set-id bits dropped\n"),
            (_member("lib", tarfile.SYMTYPE, link="src"), None),
            (_member("ro", tarfile.DIRTYPE, 0o555), None),
            (_member("ro/inside.txt"), b"written before the directory became read-only\n"),
        ])  # fmt: skip
        for start in range(0, len(data), 7777):
            yield data[start : start + 7777]

    reply = client.put_tar(chunks())
    assert reply["errors"] == []
    assert (reply["files"], reply["dirs"], reply["symlinks"]) == (3, 2, 1)
    tree = live.tree()
    assert tree["was-dir"][0] == "file" and "was-dir/sub" not in tree
    assert tree["was-file"] == ["dir", 0o750]
    assert tree["was-file/inner.txt"][1] == 0o755
    assert tree["lib"] == ["link", "src"]
    assert tree["ro"] == ["dir", 0o555]
    assert not [p for p in tree if ".pyro-tmp-" in p], "no temporary files left"

    removed = client.remove_many(["was-file", "missing", "src/app.py", "../etc", "/"])
    assert (removed["removed"], removed["missing"]) == (2, 1)
    assert [(e["path"], e["kind"]) for e in removed["errors"]] == [
        ("../etc", "outside_workspace"), ("/", "outside_workspace")
    ]  # fmt: skip
    assert "was-file" not in live.sh("ls /workspace")


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_put_tar_reads_long_and_unicode_names(
    make_live: Callable[..., Live], repo: Path, fmt: int
) -> None:
    live = make_live(repo)
    deep = "/".join(["d" * 40] * 4) + "/" + "f" * 60 + ".txt"  # 225 characters
    unicode = "données/✓ résumé.txt"
    names = [deep, unicode] if fmt != tarfile.USTAR_FORMAT else ["a" * 90 + "/" + "b" * 90]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            data = f"content of {name}\n".encode()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("long-link")
        link.type = tarfile.SYMTYPE
        link.linkname = names[0] if fmt != tarfile.USTAR_FORMAT else "README.md"
        tar.addfile(link)
    reply = live.client.put_tar(io.BytesIO(buffer.getvalue()))
    assert (reply["files"], reply["symlinks"], reply["errors"]) == (len(names), 1, [])
    for name in names:
        assert live.cat(name) == f"content of {name}\n".encode()
    linked = f"content of {names[0]}\n" if fmt != tarfile.USTAR_FORMAT else "hello\n"
    assert live.cat("long-link") == linked.encode()


def test_a_directory_swapped_for_another_of_the_same_name(
    make_live: Callable[..., Live], repo: Path
) -> None:
    live = make_live(repo)
    (repo / "lib.new").mkdir()
    (repo / "lib.new" / "other.py").write_text("OTHER = 1\n")
    (repo / "lib.new" / "mod_000.py").write_text("VALUE = 'replaced'\n")
    os.rename(repo / "lib", repo / "lib.old")
    os.rename(repo / "lib.new", repo / "lib")

    # All a watcher sees: four directory paths, none of the files moved with them.
    live.syncer.sync_paths([repo / "lib", repo / "lib.old", repo / "lib.new"])

    assert live.cat("lib/other.py") == b"OTHER = 1\n"
    assert live.cat("lib/mod_000.py") == b"VALUE = 'replaced'\n"
    assert_in_sync(live)


@pytest.mark.parametrize(
    ("op", "reply"),
    [
        ("put_tar", {"files": "1", "dirs": 0, "symlinks": 0, "bytes": 0, "errors": []}),
        ("put_tar", {"files": 1, "dirs": 0, "symlinks": 0, "bytes": 0, "errors": "none"}),
        ("put_tar", {"files": 1, "dirs": 0, "symlinks": 0, "bytes": 0, "errors": [{"path": 1}]}),
        ("remove_many", {"removed": True, "missing": 0, "errors": []}),
        ("remove_many", {"removed": 1, "missing": 0, "errors": [{"path": "a", "kind": "x"}]}),
    ],
)
def test_the_client_type_checks_batch_replies(
    tmp_path: Path, op: str, reply: dict[str, Any]
) -> None:
    from tests.helpers.fakeagent import FakeAgent

    payload = json.dumps({"ok": True, **reply}).encode()
    agent = FakeAgent(tmp_path / "agent.sock", b"J" + len(payload).to_bytes(4, "big") + payload)
    client = AgentClient(tmp_path / "agent.sock", connect_timeout=5.0)
    try:
        with pytest.raises(AgentError, match="malformed reply"):
            if op == "put_tar":
                client.put_tar([bytes(1024)])
            else:
                client.remove_many(["a"])
    finally:
        agent.stop()


def test_tar_headers_are_the_ones_tarfile_writes() -> None:
    # The stream builds the common header itself (a header per file of a branch switch);
    # whatever it builds must be byte for byte what tarfile's pax format writes.
    from pyro_loop.sync.tarstream import tar_header

    cases = [
        ("a", tarfile.REGTYPE, 0o644, 0, 0, ""),
        ("pkg1/mod1.py", tarfile.REGTYPE, 0o755, 12345, 1_765_000_000, ""),
        ("dir", tarfile.DIRTYPE, 0o1777, 0, 1_765_000_000, ""),
        ("x" * 99, tarfile.DIRTYPE, 0o700, 0, 1, ""),  # 100 with its slash
        ("x" * 100, tarfile.DIRTYPE, 0o700, 0, 1, ""),
        ("link", tarfile.SYMTYPE, 0o777, 0, 5, "../x/y"),
        ("link", tarfile.SYMTYPE, 0o777, 0, 5, "t" * 100),
        ("link", tarfile.SYMTYPE, 0o777, 0, 5, "t" * 101),
        ("n" * 100, tarfile.REGTYPE, 0o600, 8**11 - 1, 8**11 - 1, ""),
        ("n" * 101, tarfile.REGTYPE, 0o600, 1, 1, ""),
        ("café.txt", tarfile.REGTYPE, 0o644, 1, 1, ""),
        ("bad\udcff", tarfile.REGTYPE, 0o644, 1, 1, ""),
        ("big", tarfile.REGTYPE, 0o644, 8**11, 1, ""),
    ]
    for name, kind, mode, length, mtime, target in cases:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.size, info.mtime, info.linkname = (
            kind,
            mode,
            length,
            mtime,
            target,
        )
        assert tar_header(info) == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), name

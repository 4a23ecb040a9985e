"""Branch switches back and forth, where put_tar writes the new files into the files it
replaces while no process of the workspace can see them (agent/quiet.py), else into the inodes
of the ones it replaces (agent/recycle.py): the workspace must equal the host after each
switch, a process that holds an old file keeps its old content, and no request sees a file
half written."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyro_loop.workspace.manager import Workspaces
from tests.helpers.live import Live, assert_in_sync, live_factory, make_repo
from tests.helpers.project import git

BATCH = 16  # agent/recycle.py: kept inodes are checked this many at a time (not importable here)


@pytest.fixture
def make_live(workspaces: Workspaces, tmp_path: Path) -> Callable[..., Live]:
    return live_factory(workspaces, tmp_path)


def _spy_replies(live: Live) -> list[dict[str, Any]]:
    """The put_tar replies the syncer gets, from then on (the real calls, recorded)."""
    replies: list[dict[str, Any]] = []
    client = live.client
    put_tar = client.put_tar

    def recorded(*args: Any, **kwargs: Any) -> dict[str, Any]:
        reply = put_tar(*args, **kwargs)
        replies.append(reply)
        return reply

    client.put_tar = recorded  # type: ignore[method-assign]
    return replies


def _leftovers(live: Live) -> list[str]:
    out = live.sh("cd /workspace && find . -name '.pyro-tmp-*' -print")
    return out.split()


def _inodes(live: Live, names: list[str]) -> list[str]:
    return live.sh("cd /workspace && stat -c %i " + " ".join(names)).split()


@pytest.mark.parametrize("busy", [False, True], ids=["quiet", "busy"])
def test_switching_branches_back_and_forth_reuses_inodes_and_stays_in_sync(
    make_live: Callable[..., Live], tmp_path: Path, busy: bool
) -> None:
    """Quiet (nothing runs in the workspace): the files pyro put are written again in place,
    each keeping its inode. Busy (a service runs): new files take their places by rename,
    in the old ones' inodes."""
    files = 3 * BATCH + 10
    repo = make_repo(tmp_path / "switch", lib_files=files)
    (repo / "tool.sh").write_text("#!/bin/sh\necho main\n")
    (repo / "tool.sh").chmod(0o755)
    (repo / "link").symlink_to("lib/mod_000.py")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "main")
    git(repo, "checkout", "-q", "-b", "other")
    for i in range(files):  # longer on one branch, shorter on the other
        (repo / "lib" / f"mod_{i:03}.py").write_text(f"VALUE = {-i}\n" * (1 + i % 7))
    (repo / "lib" / "mod_001.py").chmod(0o755)  # git keeps the executable bit
    (repo / "lib" / "mod_002.py").unlink()
    (repo / "lib" / "mod_003.py").unlink()
    (repo / "lib" / "mod_003.py").symlink_to("mod_004.py")
    (repo / "link").unlink()
    (repo / "link").write_text("a file where main has a link\n")
    (repo / "tool.sh").write_text("#!/bin/sh\necho other\n")
    (repo / "only-on-other.txt").write_text("new\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "other")
    git(repo, "checkout", "-q", "main")
    live = make_live(repo)  # the baseline is main's tree
    (repo / "debug.log").write_text("ignored, never synced\n")
    live.syncer.reconcile()  # the manifest starts on main
    replies = _spy_replies(live)
    services = live.workspaces.services(live.ref)
    if busy:
        services.service_start("busy", ["sleep", "600"])
    watched = [f"lib/mod_{i:03}.py" for i in range(4, files)]

    for n, branch in enumerate(["other", "main", "other", "main", "other"]):
        before = _inodes(live, watched)
        git(repo, "checkout", "-q", branch)
        live.syncer.reconcile()
        assert_in_sync(live)
        assert _leftovers(live) == [], "no temporary names left behind"
        reply = replies[-1]
        if n > 0 and busy:  # the workspace holds what pyro put there at the last switch
            assert reply["reused"] > 0 and reply["rewritten"] == 0, reply
        elif n > 0:
            assert reply["rewritten"] >= len(watched) and reply["reused"] == 0, reply
            assert _inodes(live, watched) == before, "written again in place"
    if busy:
        services.service_stop("busy")
    tree = live.tree()
    assert "debug.log" not in tree and "lib/mod_002.py" not in tree
    assert tree["lib/mod_003.py"] == ["link", "mod_004.py"]
    assert tree["lib/mod_001.py"][1] == 0o755 and tree["tool.sh"][1] == 0o755
    assert live.sh("/workspace/tool.sh") == "other\n"


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_an_old_file_a_process_holds_open_keeps_its_content(
    make_live: Callable[..., Live], tmp_path: Path
) -> None:
    live = make_live(make_repo(tmp_path / "held"))
    names = [f"f/{i:03}.txt" for i in range(2 * BATCH + 5)]
    old = {name: f"old {name}\n".encode() * 50 for name in names}
    assert live.client.put_tar(_tar(old))["errors"] == []
    services = live.workspaces.services(live.ref)
    # A process reads f/000.txt through a descriptor it keeps, and maps f/001.txt with no
    # descriptor left (as the loader maps a shared library): only /proc/PID/maps shows it.
    reader = (
        "import ctypes, os, sys, time\n"
        "f = open('/workspace/f/000.txt', 'rb')\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.mmap.restype = ctypes.c_void_p\n"
        "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,"
        " ctypes.c_int, ctypes.c_long]\n"
        "fd = os.open('/workspace/f/001.txt', os.O_RDONLY)\n"
        "size = os.fstat(fd).st_size\n"
        "address = libc.mmap(None, size, 1, 2, fd, 0)  # PROT_READ, MAP_PRIVATE\n"
        "os.close(fd)\n"
        "open('/workspace/ready', 'w').close()\n"
        "while not os.path.exists('/workspace/go'): time.sleep(0.01)\n"
        "sys.stdout.write(f.read().decode() + '|' + ctypes.string_at(address, size).decode())\n"
        "sys.stdout.flush()\n"
        "time.sleep(60)\n"
    )
    services.service_start("reader", ["python3", "-c", reader])
    deadline = time.monotonic() + 30
    while live.sh("test -e /workspace/ready && echo yes || true") != "yes\n":
        assert time.monotonic() < deadline, services.service_logs("reader")
        time.sleep(0.05)

    new = {name: f"new {name}\n".encode() for name in names}
    reply = live.client.put_tar(_tar(new), reuse=names)
    assert reply["errors"] == [] and reply["reused"] > 0 and reply["rewritten"] == 0, reply
    for name in names:
        assert live.cat(name) == new[name]
    live.sh("touch /workspace/go")
    deadline = time.monotonic() + 30
    while b"|" not in services.service_logs("reader")[0]:
        assert time.monotonic() < deadline, services.service_logs("reader")
        time.sleep(0.05)
    held, mapped = services.service_logs("reader")[0].decode().split("|")
    assert held == old["f/000.txt"].decode() and mapped == old["f/001.txt"].decode()
    services.service_stop("reader")
    assert _leftovers(live) == []


def test_reuse_never_writes_into_a_file_with_other_links_or_from_below(
    make_live: Callable[..., Live], tmp_path: Path
) -> None:
    """A hard link the workspace made keeps its content; baseline files named in `reuse`
    (pyro never put them) end with the new content all the same."""
    live = make_live(make_repo(tmp_path / "links", lib_files=2 * BATCH))
    names = [f"lib/mod_{i:03}.py" for i in range(2 * BATCH)]
    first = {name: b"pushed once\n" for name in names[:BATCH]}
    assert live.client.put_tar(_tar(first))["errors"] == []
    live.sh("cd /workspace && ln lib/mod_000.py kept-link && ln lib/mod_001.py kept-too")

    new = {name: f"new {name}\n".encode() * 3 for name in names}
    reply = live.client.put_tar(_tar(new), reuse=names)
    assert reply["errors"] == []
    assert live.cat("kept-link") == b"pushed once\n" == live.cat("kept-too")
    for name in names:
        assert live.cat(name) == new[name]
    assert _leftovers(live) == []


# The agent's gate file as /proc/locks names it: device (major:minor, hex) and inode.
GATE_ID = (
    "python3 -c \"import os; s = os.stat('/run/pyro/agent/quiet.py');"
    " print('%02x:%02x:%d' % (os.major(s.st_dev), os.minor(s.st_dev), s.st_ino))\""
)


def _held_exclusively(gate: str) -> bool:
    """Does a process hold an exclusive flock on the gate file (the kernel's list of locks)?"""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 00:2b:567 0 EOF"
        if fields[1:2] == ["FLOCK"] and fields[3:4] == ["WRITE"] and fields[5:6] == [gate]:
            return True
    return False


def test_a_request_waits_while_a_stream_writes_files_in_place(
    make_live: Callable[..., Live], tmp_path: Path
) -> None:
    """A stream that writes files in place holds every other request at the agent's gate
    until it ends: a command started meanwhile sees the new file whole, never half of it."""
    live = make_live(make_repo(tmp_path / "gate"))
    old, new = b"old content\n" * 1000, b"new\n"
    assert live.client.put_tar(_tar({"f/a.txt": old}))["errors"] == []
    go = threading.Event()

    def held_back() -> Iterator[bytes]:
        go.wait(60)  # the request itself is sent: the agent holds the gate meanwhile
        yield _tar({"f/a.txt": new})

    replies: list[dict[str, Any]] = []
    seen: list[bytes] = []
    stream = threading.Thread(
        target=lambda: replies.append(live.client.put_tar(held_back(), reuse=["f/a.txt"]))
    )
    gate = live.sh(GATE_ID).strip()
    stream.start()
    deadline = time.monotonic() + 30
    while not _held_exclusively(gate):
        assert time.monotonic() < deadline, "the stream never shut the agent's gate"
        time.sleep(0.01)
    reader = threading.Thread(target=lambda: seen.append(live.cat("f/a.txt")))
    reader.start()
    reader.join(1.0)
    waited = reader.is_alive()
    go.set()
    stream.join(60)
    reader.join(60)
    assert waited, "a command ran while the stream wrote in place"
    assert replies[0]["rewritten"] == 1 and seen == [new], (replies, seen)


def test_a_stream_right_after_a_command_or_a_service_is_written_as_it_may_be(
    make_live: Callable[..., Live], tmp_path: Path
) -> None:
    """The command before has ended (its handler let go of the gate before it answered):
    in place. A service running: by rename, and in place again once it is stopped."""
    live = make_live(make_repo(tmp_path / "after"))
    assert live.client.put_tar(_tar({"f/a.txt": b"first\n"}))["errors"] == []
    for n in range(10):
        live.sh("true")
        reply = live.client.put_tar(_tar({"f/a.txt": b"%d\n" % n}), reuse=["f/a.txt"])
        assert reply["rewritten"] == 1, (n, reply)
    services = live.workspaces.services(live.ref)
    services.service_start("busy", ["sleep", "600"])
    reply = live.client.put_tar(_tar({"f/a.txt": b"busy\n"}), reuse=["f/a.txt"])
    assert reply["rewritten"] == 0 and live.cat("f/a.txt") == b"busy\n", reply
    services.service_stop("busy")
    reply = live.client.put_tar(_tar({"f/a.txt": b"quiet\n"}), reuse=["f/a.txt"])
    assert reply["rewritten"] == 1 and live.cat("f/a.txt") == b"quiet\n", reply


ELSEWHERE = '[submodule "x"]\n\tpath = elsewhere\n\turl = ../x\n'


@pytest.mark.parametrize("gitmodules", [None, ELSEWHERE])
def test_a_nested_repository_added_without_gitmodules_is_synced(
    make_live: Callable[..., Live], tmp_path: Path, gitmodules: str | None
) -> None:
    """A gitlink the index holds without a .gitmodules entry (`git add` of a nested
    repository; with or without a .gitmodules naming another path) is a submodule all the
    same: its checked-out files are synced."""
    repo = make_repo(tmp_path / "outer")
    inner = repo / "inner"
    inner.mkdir()
    (inner / "inside.txt").write_text("from the nested repository\n")
    git(inner, "init", "-q")
    git(inner, "add", "-A")
    git(inner, "commit", "-q", "-m", "inner")
    if gitmodules is not None:
        (repo / ".gitmodules").write_text(gitmodules)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "a nested repository")
    live = make_live(repo)
    live.syncer.reconcile()
    assert live.cat("inner/inside.txt") == b"from the nested repository\n"
    (inner / "inside.txt").write_text("edited\n")
    live.syncer.reconcile()
    assert live.cat("inner/inside.txt") == b"edited\n"


def test_a_directory_gone_then_back_with_fewer_files_then_whole_again(
    make_live: Callable[..., Live], tmp_path: Path
) -> None:
    """Seen switching black's tags: a directory a switch removes comes back with some of its
    files (pyro makes it afresh), then with all of them, as the baseline has it. The files
    back at their baseline version are named by neither git nor the manifest; and the files
    git tracks in a directory it ignores are listed by neither git's status nor a walk."""
    repo = make_repo(tmp_path / "gone", lib_files=5)
    cases = repo / "tests" / "cases"
    cases.mkdir(parents=True)
    for name in ("a", "b", "c"):
        (cases / f"{name}.py").write_text(f"{name} = 1\n")
    (repo / "tests" / ".gitignore").write_text("large_ignored/\n")
    (repo / "tests" / "large_ignored").mkdir()
    (repo / "tests" / "large_ignored" / "tracked.py").write_text("kept = True\n")
    git(repo, "add", "-A")
    git(repo, "add", "-f", "tests/large_ignored/tracked.py")
    git(repo, "commit", "-q", "-m", "with tests")
    git(repo, "checkout", "-q", "-b", "without")
    git(repo, "rm", "-q", "-r", "tests")
    git(repo, "commit", "-q", "-m", "no tests")
    git(repo, "checkout", "-q", "-b", "fewer", "main")
    git(repo, "rm", "-q", "tests/cases/b.py", "tests/cases/c.py")
    git(repo, "commit", "-q", "-m", "fewer tests")
    git(repo, "checkout", "-q", "main")
    live = make_live(repo)  # the baseline is main's tree
    live.syncer.reconcile()

    for branch in ["without", "fewer", "main", "without", "main"]:
        git(repo, "checkout", "-q", branch)
        live.syncer.reconcile()
        assert_in_sync(live)
    assert "tests/large_ignored/tracked.py" in live.tree()

"""The change journal: a check through it looks only at what changed, and gives the same
answer as a look at every path (tests/sandbox/test_hostscan.py compares the two on every
kind of change); whatever the journal cannot vouch for, the check looks at in full."""

from __future__ import annotations

import contextlib
import errno
import json
import marshal
import os
import random
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from pyro_loop.fs.socketpath import lock_holder, socket_address
from pyro_loop.loop.live import ProjectLoop
from pyro_loop.sync import hostscan, journald
from pyro_loop.sync.journal import PROTOCOL, JournalClient
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.journal import journal_servers
from tests.helpers.loop import loop_for, sh
from tests.helpers.nobody import NOBODY, _commit, _project, _write, nobody
from tests.helpers.scan import full_sync_finds_nothing, journal_running, settle
from tests.helpers.sides import run

pytestmark = pytest.mark.usefixtures("journal_on")


def journaled_loop(repo: Path, workspaces: Workspaces) -> ProjectLoop:
    """A loop whose record holds a journal token: the next check goes through it."""
    loop = loop_for(repo, workspaces)
    loop.up()
    journal_running(loop)
    settle()
    loop.sync()  # a full look, with the watches set first: the record gets its token
    assert binding(loop)["journal"] is not None
    return loop


def binding(loop: ProjectLoop) -> dict[str, object]:
    bind = loop._scan(loop.require())._load_bind()
    assert bind is not None
    return bind


def count_looks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many recorded paths each check looked at."""
    looks: list[int] = []
    compare = hostscan._compare

    def counting(root: str, looked: list[tuple[int, str]], *numbers: object) -> list[str]:
        looked = list(looked)
        looks.append(len(looked))
        return compare(root, looked, *numbers)  # type: ignore[arg-type]

    monkeypatch.setattr(hostscan, "_compare", counting)
    return looks


def test_a_check_through_the_journal_looks_only_at_what_changed(
    repo: Path, workspaces: Workspaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(200):
        (repo / "src" / f"m{i}.py").write_text(f"X = {i}\n")
    loop = journaled_loop(repo, workspaces)
    recorded = len(loop._scan(loop.require())._load()["entries"])  # type: ignore[index]
    looks = count_looks(monkeypatch)
    (repo / "src" / "app.py").write_text("print('v2')\n")
    assert sh(loop, "cat src/app.py") == "print('v2')\n"
    # app.py, and build/keep.txt (tracked below an ignored directory: no watch sees it)
    assert looks == [2], looks
    assert recorded > 200
    assert sh(loop, "cat src/m7.py") == "X = 7\n"
    assert looks[1] <= 2  # nothing changed: only what no watch sees
    full_sync_finds_nothing(loop)


def test_a_full_sync_leaves_a_record_the_journal_vouches_for(
    repo: Path, workspaces: Workspaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full sync (here: a .gitignore changed) watches the directories before it walks
    them: the check after it goes through the journal at once."""
    loop = journaled_loop(repo, workspaces)
    (repo / ".gitignore").write_text(".deps/\n*.log\nbuild/\n*.tmp\n")
    (repo / "src" / "new").mkdir()
    (repo / "src" / "new" / "n.py").write_text("n\n")
    loop.exec(["true"])  # a full sync
    assert binding(loop)["journal"] is not None
    looks = count_looks(monkeypatch)
    (repo / "src" / "new" / "n.py").write_text("n2\n")
    assert sh(loop, "cat src/new/n.py") == "n2\n"
    assert looks == [2], looks
    full_sync_finds_nothing(loop)


def test_a_directory_replaced_by_another_of_its_name_is_watched_anew(
    repo: Path, workspaces: Workspaces
) -> None:
    """`rm -rf src && mkdir src` (a tool replacing a directory): the old watch went with the
    old directory, so the new one must be watched before edits in it can be trusted."""
    loop = journaled_loop(repo, workspaces)
    shutil.rmtree(repo / "src")
    (repo / "src").mkdir()
    (repo / "src" / "app.py").write_text("print('replaced')\n")
    settle()  # recorded past the racy window: only the journal can tell of the next edit
    assert sh(loop, "cat src/app.py") == "print('replaced')\n"
    assert binding(loop)["journal"] is not None  # the exec went through the journal
    (repo / "src" / "app.py").write_text("print('edited after')\n")
    (repo / "src" / "later.py").write_text("later\n")
    assert sh(loop, "cat src/app.py src/later.py") == "print('edited after')\nlater\n"
    # Moved away rather than deleted: the old watch follows the old directory.
    (repo / "src").rename(repo / "src.old")
    (repo / "src").mkdir()
    (repo / "src" / "app.py").write_text("print('third')\n")
    settle()
    assert sh(loop, "cat src/app.py") == "print('third')\n"
    (repo / "src" / "app.py").write_text("print('fourth')\n")
    assert sh(loop, "cat src/app.py; ls src") == "print('fourth')\napp.py\n"
    full_sync_finds_nothing(loop)


def test_every_edit_between_execs_reaches_the_workspace(repo: Path, workspaces: Workspaces) -> None:
    """Random edits of files and directories (new, changed, deleted, moved), an exec after
    each few: the workspace then holds exactly the host's files."""
    loop = journaled_loop(repo, workspaces)
    rng = random.Random(7)
    dirs = [repo / "src", repo / "docs"]
    for step in range(40):
        files = [p for d in dirs if d.is_dir() for p in d.rglob("*") if p.is_file()]
        action = rng.choice(["write", "new", "delete", "newdir", "movedir", "edit-moved"])
        if action == "write" and files:
            rng.choice(files).write_text(f"step {step}\n")
        elif action == "new":
            (rng.choice(dirs) / f"f{step}.txt").write_text("new\n")
        elif action == "delete" and files:
            rng.choice(files).unlink()
        elif action == "newdir":
            new = rng.choice(dirs) / f"d{step}"
            new.mkdir(parents=True)
            (new / "inner.txt").write_text("inner\n")
            dirs.append(new)
        elif action in ("movedir", "edit-moved"):
            source = rng.choice([d for d in dirs if d.is_dir()])
            target = repo / f"moved{step}"
            source.rename(target)
            dirs = [target / d.relative_to(source) if d.is_relative_to(source) else d
                    for d in dirs]  # fmt: skip
            if action == "edit-moved":  # right after the move, before anything looks
                (target / "after-move.txt").write_text("after\n")
        if step % 3 == 2:
            loop.exec(["true"])
            assert workspace_files(loop, dirs) == host_files(repo, dirs)
            # The journal kept up: the record still holds a token (nothing forced a full look).
            assert binding(loop)["journal"] is not None
    loop.exec(["true"])
    full_sync_finds_nothing(loop)


def host_files(repo: Path, dirs: list[Path]) -> dict[str, str]:
    return {str(p.relative_to(repo)): p.read_text() for d in dirs if d.is_dir()
            for p in d.rglob("*") if p.is_file()}  # fmt: skip


def workspace_files(loop: ProjectLoop, dirs: list[Path]) -> dict[str, str]:
    """The same files, read in the workspace (without git: a full sync's status would rewrite
    the index, which the record watches, and end the journal's run)."""
    names = " ".join(str(d.relative_to(loop.project.root)) for d in dirs)
    script = f"for d in {names}; do [ -d $d ] && find $d -type f; done | while read f; do " \
             'printf "%s\\0%s\\0" "$f" "$(cat "$f")"; done'  # fmt: skip
    fields = sh(loop, script).split("\0")
    return {fields[i]: fields[i + 1] + "\n" for i in range(0, len(fields) - 1, 2)}


def test_doctor_names_the_projects_journal_server(repo: Path, workspaces: Workspaces) -> None:
    loop = journaled_loop(repo, workspaces)
    client = loop._journal(str(repo.resolve()))
    assert client is not None and client.path is not None
    doctor = run(False, "doctor", "--json", cwd=repo, env={"PYRO_HOME": str(workspaces.home)})
    check = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "change journal")
    assert f"running for this project (pid {lock_holder(client.path)})" in check["detail"]


def test_a_restarted_journal_server_means_one_full_look(
    repo: Path, workspaces: Workspaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = journaled_loop(repo, workspaces)
    client = loop._journal(str(repo.resolve()))
    assert client is not None and client.path is not None
    pid = lock_holder(client.path)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    while lock_holder(client.path) == pid:
        time.sleep(0.01)
    (repo / "src" / "app.py").write_text("print('while it was down')\n")
    JournalClient._started.discard(client.path)  # this process may start it again
    looks = count_looks(monkeypatch)
    assert sh(loop, "cat src/app.py") == "print('while it was down')\n"
    assert looks and looks[0] > 5  # every path: the old token means nothing to a new server


def test_the_client_never_waits_on_a_server_that_does_not_answer(tmp_path: Path) -> None:
    client = JournalClient(str(tmp_path))
    assert client.path is not None
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(socket_address(client.path))
    mute.listen(1)  # connections queue, nothing answers
    try:
        started = time.monotonic()
        assert client.since(("epoch", 0)) is None
        assert time.monotonic() - started < 5
    finally:
        mute.close()
        os.unlink(client.path)


def test_edits_made_while_the_server_lets_events_gather_are_in_the_next_answer(
    tmp_path: Path,
) -> None:
    """The server reads its queue, then leaves it alone for a moment (journald.DRAIN_PAUSE):
    an answer asked for in that moment still names every edit finished before the asking."""
    tree = tmp_path / "tree"
    tree.mkdir()
    client = JournalClient(str(tree))
    deadline = time.monotonic() + 30
    token = client.watch([""])
    while token is None:  # the first call starts the server
        assert time.monotonic() < deadline, "the journal server did not start"
        time.sleep(0.02)
        token = client.watch([""])
    for n in range(30):
        (tree / f"first{n}").write_text("wakes the server, which reads and pauses\n")
        time.sleep(journald.DRAIN_PAUSE / 4 * (n % 4))  # before, in, and after the pause
        (tree / f"second{n}").write_text("queued meanwhile\n")
        answer = client.since(token)
        assert answer is not None
        changed, token = answer
        assert {f"first{n}", f"second{n}"} <= set(changed), (n, changed)


# -- the server's bookkeeping, in process ----------------------------------------------------


def test_lost_events_and_forgotten_batches_are_no_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = journald.Journal(str(tmp_path))
    with contextlib.closing(journal):
        lost_and_forgotten(journal, tmp_path, monkeypatch)


def lost_and_forgotten(journal: journald.Journal, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    assert journal.watch([""])
    journal.drain()
    before = journal.seq
    (tmp_path / "a").write_text("a")
    journal.drain()
    assert journal.since(journal.epoch, before) == ["", "a"]
    assert journal.since("another epoch", before) is None
    assert journal.since(journal.epoch, journal.seq + 1) is None  # from the future
    # Lost events: more than the kernel queues (fs.inotify.max_queued_events) before a read.
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    fd = os.open(tmp_path / "a", os.O_WRONLY)
    try:
        for _ in range(limit + 10):
            os.write(fd, b"x")  # each write is an event (consecutive equal ones merge)
            os.utime(fd)
    finally:
        os.close(fd)
    after_loss = journal.seq
    journal.drain()
    assert journal.since(journal.epoch, after_loss) is None
    assert journal.since(journal.epoch, journal.seq) == []
    # Past MAX_REMEMBERED paths, the oldest batches are forgotten.
    monkeypatch.setattr(journald, "MAX_REMEMBERED", 2)
    start = journal.seq
    for name in "bcd":
        (tmp_path / name).write_text(name)
        journal.drain()
    assert journal.since(journal.epoch, start) is None
    assert journal.since(journal.epoch, journal.seq - 1) == ["", "d"]


def test_the_server_answers_only_for_its_own_tree(tmp_path: Path) -> None:
    with contextlib.closing(journald.Journal(str(tmp_path))) as journal:
        answers_only_its_own(journal, tmp_path)


def answers_only_its_own(journal: journald.Journal, tmp_path: Path) -> None:
    assert journald.answer(journal, (PROTOCOL, str(tmp_path), "watch", [""]))[0] == "ok"
    assert journald.answer(journal, (PROTOCOL, "/elsewhere", "watch", [""])) == ("no",)
    assert journald.answer(journal, (PROTOCOL + 1, str(tmp_path), "watch", [""])) == ("no",)
    assert journald.answer(journal, "garbage") == ("no",)
    assert journald.answer(journal, (PROTOCOL, str(tmp_path), "since", ("x", "y"))) == ("no",)


def test_the_journal_serves_an_ordinary_user(user: dict[str, Path]) -> None:
    """As uid 65534: the journal's server runs as that user, and an edit made after the
    record took its token reaches the workspace through it."""
    repo = _project(user, "journalapp")
    _write(repo, {"app.py": "print('v1')\n"})
    _commit(repo, user)
    nobody(["init"], cwd=repo, user=user)
    assert nobody(["exec", "--", "cat", "app.py"], cwd=repo, user=user).stdout == "print('v1')\n"
    deadline = time.monotonic() + 30
    while not _journal_servers(repo):  # the first sync started it, in the background
        assert time.monotonic() < deadline, "no journal server started"
        time.sleep(0.1)
    assert {uid for uid in _journal_servers(repo)} == {NOBODY}
    time.sleep(0.1)  # past the racy window
    nobody(["exec", "--", "true"], cwd=repo, user=user)  # a full look, with watches: a token
    bind = next(user["home"].rglob("host-scan.bind"))
    assert marshal.loads(bind.read_bytes())["journal"] is not None
    nobody(["sh", "-c", "echo \"print('v2')\" > app.py"], cwd=repo, user=user, tool=True)
    assert nobody(["exec", "--", "cat", "app.py"], cwd=repo, user=user).stdout == "print('v2')\n"
    assert marshal.loads(bind.read_bytes())["journal"] is not None  # it went through it


def _journal_servers(repo: Path) -> list[int]:
    """The uids of the journal servers of `repo`."""
    return [entry.stat().st_uid for entry, cmdline in journal_servers()
            if str(repo).encode() in cmdline]  # fmt: skip


def test_a_tree_past_the_servers_share_of_watches_is_not_journaled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's other tools keep most of their inotify watches, whatever the tree."""
    monkeypatch.setattr(journald, "watch_share", lambda: 3)
    with contextlib.closing(journald.Journal(str(tmp_path))) as journal:
        for name in "abcd":
            (tmp_path / name).mkdir()
        assert not journal.watch(["", "a", "b", "c"])
        assert journal.dirs == {}
        assert journal.watch(["", "a"])
        journal.drain()
        token = journal.seq
        assert not journal.watch(["b", "c"])  # past the share: refused, the others kept
        assert journal.watch(["", "a"])  # watched already: no new watch, not refused
        (tmp_path / "a" / "f").write_text("f")
        journal.drain()
        assert journal.since(journal.epoch, token) == ["a", "a/f"]


def test_a_watch_the_kernel_refuses_gives_back_all_and_ends_every_token(tmp_path: Path) -> None:
    """The user's limit reached by other programs (ENOSPC): simulated on one call."""
    with contextlib.closing(journald.Journal(str(tmp_path))) as journal:
        (tmp_path / "a").mkdir()
        assert journal.watch(["", "a"])
        journal.drain()
        token = journal.seq
        real = journal.inotify.add_watch

        def refuse(path: str, mask: int) -> int:
            raise OSError(errno.ENOSPC, "no space")

        journal.inotify.add_watch = refuse
        assert not journal.watch(["a"])
        journal.inotify.add_watch = real
        assert journal.dirs == {}
        assert journal.since(journal.epoch, token) is None


def test_a_server_ends_with_its_home_and_takes_its_socket_along(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journald, "TICK", 0.05)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("PYRO_HOME", str(home))
    path = str(tmp_path / "journal.sock")
    server = threading.Thread(target=journald.main, args=(["journald", str(tmp_path), path],))
    server.start()
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    home.rmdir()
    server.join(timeout=10)
    assert not server.is_alive()
    assert not os.path.exists(path)
    assert lock_holder(path) is None


def test_a_directory_the_server_no_longer_watches_is_named_with_a_slash(tmp_path: Path) -> None:
    with contextlib.closing(journald.Journal(str(tmp_path))) as journal:
        for name in ("deleted", "moved"):
            (tmp_path / name).mkdir()
        assert journal.watch(["", "deleted", "moved"])
        journal.drain()
        token = journal.seq
        (tmp_path / "deleted").rmdir()
        (tmp_path / "moved").rename(tmp_path / "elsewhere")
        journal.drain()
        named = journal.since(journal.epoch, token)
        assert named is not None
        assert {"deleted/", "moved/", "deleted", "moved", "elsewhere", ""} <= set(named)

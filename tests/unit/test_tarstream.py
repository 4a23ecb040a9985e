"""TarStream: what a sync sends is one version of each file, also when the file changes while
it is read (the stream is produced lazily, so a test changes the file between its header and
its content, as another process would), and a path planned as a file that is something else
by the time its turn comes is sent as what it is."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from pyro_loop.fs.beneath import Beneath
from pyro_loop.sync.tarstream import TarStream

Members = dict[str, tuple[str, bytes]]  # path: (kind, content or link target)


def _members(data: bytes) -> Members:
    """The last member sent at each path (a later one replaces an earlier one): its kind and
    its content (a link's target)."""
    found: Members = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar:
            if info.isfile():
                extracted = tar.extractfile(info)
                assert extracted is not None
                found[info.name] = ("file", extracted.read())
            elif info.issym():
                found[info.name] = ("symlink", info.linkname.encode())
            else:
                found[info.name.rstrip("/")] = ("dir", b"")
    return found


def _stream(
    root: Path, paths: list[str], *, planned: bool, meanwhile: Callable[[], None]
) -> tuple[TarStream, Members]:
    """The stream of `paths` (`planned`: the plan found them to be regular files), with
    `meanwhile` run right after the first piece is taken (a file's header: it is open)."""
    tree = Beneath(root, cache_dirs=True)
    stream = TarStream(tree, paths, set(paths) if planned else ())
    chunks = stream.chunks()
    data = [next(chunks)]
    meanwhile()
    data += list(chunks)
    tree.close()
    return stream, _members(b"".join(data))


@pytest.mark.parametrize("planned", [True, False], ids=["planned", "looked-at"])
@pytest.mark.parametrize("start", [b"", b"ten bytes\n"], ids=["empty", "small"])
def test_a_file_that_grows_while_read_is_sent_again_whole(
    tmp_path: Path, planned: bool, start: bytes
) -> None:
    target = tmp_path / "a.txt"
    target.write_bytes(start)

    def grow() -> None:
        with target.open("ab") as f:
            f.write(b"and more\n")

    stream, members = _stream(tmp_path, ["a.txt"], planned=planned, meanwhile=grow)
    assert members["a.txt"] == ("file", start + b"and more\n")
    assert stream.sent["a.txt"]["size"] == len(start) + 9
    assert stream.skipped == {}


@pytest.mark.parametrize("planned", [True, False], ids=["planned", "looked-at"])
def test_a_file_replaced_while_read_is_sent_in_its_new_version(
    tmp_path: Path, planned: bool
) -> None:
    (tmp_path / "a.txt").write_bytes(b"old\n")
    (tmp_path / "new.txt").write_bytes(b"the new version\n")

    def replace() -> None:
        os.replace(tmp_path / "new.txt", tmp_path / "a.txt")

    stream, members = _stream(tmp_path, ["a.txt"], planned=planned, meanwhile=replace)
    assert members["a.txt"] == ("file", b"the new version\n")
    assert stream.sent["a.txt"]["ino"] == (tmp_path / "a.txt").stat().st_ino


def test_a_path_planned_as_a_file_is_sent_as_what_it_is_by_its_turn(tmp_path: Path) -> None:
    """Each was a regular file when the plan looked; by the stream's turn one is a
    directory, one a symlink, one gone."""
    (tmp_path / "0-first.txt").write_bytes(b"first\n")
    for name in ("now-a-dir", "now-a-link", "now-gone"):
        (tmp_path / name).write_bytes(b"a file\n")

    def change() -> None:
        (tmp_path / "now-a-dir").unlink()
        (tmp_path / "now-a-dir").mkdir()
        (tmp_path / "now-a-link").unlink()
        (tmp_path / "now-a-link").symlink_to("0-first.txt")
        (tmp_path / "now-gone").unlink()

    paths = ["0-first.txt", "now-a-dir", "now-a-link", "now-gone"]
    stream, members = _stream(tmp_path, paths, planned=True, meanwhile=change)
    assert members["0-first.txt"] == ("file", b"first\n")
    assert members["now-a-dir"] == ("dir", b"")
    assert members["now-a-link"] == ("symlink", b"0-first.txt")
    assert "now-gone" not in members and stream.late_removals == {"now-gone"}
    assert stream.sent["now-a-dir"]["kind"] == "dir"
    assert stream.sent["now-a-link"]["kind"] == "symlink"
    assert stream.skipped == {}

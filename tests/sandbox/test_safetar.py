"""Tar seeds unpacked by pyro's own member checks, identical on every Python 3.11 (Debian 12's
python3 is 3.11.2, older than tarfile's extraction filters): real archives made by GNU tar,
and crafted ones that try to leave the tree."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from pyro_loop.errors import InvalidInputError
from pyro_loop.store.seed import import_seed
from pyro_loop.workspace.manager import Workspaces


def test_a_gnu_tar_seed_becomes_a_workspace(workspaces: Workspaces, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg" / "empty").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("print('mod')\n")
    (src / "tool").write_text("#!/bin/sh\necho tool\n")
    (src / "tool").chmod(0o4755)  # set-uid: never carried into a layer
    os.link(src / "pkg" / "mod.py", src / "pkg" / "same.py")
    (src / "pkg" / "up").symlink_to("../tool")
    archive = tmp_path / "seed.tar.gz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(src), "."], check=True)

    record = workspaces.create(seed=archive)
    result = workspaces.exec(
        record.id,
        ["sh", "-c", "cat pkg/mod.py pkg/same.py; ./pkg/up; readlink pkg/up; ls -d pkg/empty"],
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == b"print('mod')\nprint('mod')\ntool\n../tool\npkg/empty\n"
    tree = workspaces.store.require(record.base_layers[0]).tree
    assert stat.S_IMODE((tree / "tool").stat().st_mode) == 0o755


def test_a_seed_without_directory_entries_gets_its_parents(
    workspaces: Workspaces, tmp_path: Path
) -> None:
    archive = _archive(tmp_path, ("a/b/c.txt", "file", b"deep\n"), ("a/link", "sym", "b/c.txt"))
    tree = import_seed(workspaces.store, archive).tree
    assert (tree / "a" / "b" / "c.txt").read_text() == "deep\n"
    assert (tree / "a" / "link").read_text() == "deep\n"


ESCAPES: dict[str, list[tuple[str, str, Any]]] = {
    "absolute name": [("/etc/escape", "file", b"x")],
    "dot-dot": [("../escape", "file", b"x")],
    "dot-dot inside": [("a/../../escape", "file", b"x")],
    "absolute link": [("link", "sym", "/etc")],
    "relative link out": [("dir/link", "sym", "../../outside")],
    "write through a link": [
        ("link", "sym", "dir"),
        ("dir", "dir", None),
        ("link/f", "file", b"x"),
    ],
    "below a file": [("f", "file", b"x"), ("f/g", "file", b"y")],
    # Each link alone stays inside; together they resolve above the tree.
    "chained links": [("x", "dir", None), ("x/b", "sym", ".."), ("a", "sym", "x/b/..")],
    "hard link out": [("h", "hard", "/etc/passwd")],
    "hard link to a link": [("s", "sym", "f"), ("f", "file", b"x"), ("h", "hard", "s")],
    "device": [("null", "chr", None)],
    "fifo": [("pipe", "fifo", None)],
    "twice": [("f", "file", b"x"), ("f", "file", b"y")],
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_seed_archives_that_leave_the_tree_are_refused(
    workspaces: Workspaces, tmp_path: Path, case: str
) -> None:
    archive = _archive(tmp_path, *ESCAPES[case])
    with pytest.raises(InvalidInputError, match=f"refusing seed archive {archive}: "):
        import_seed(workspaces.store, archive)
    assert workspaces.store.list() == [], "nothing half unpacked is published"
    assert not (tmp_path / "outside").exists() and not Path("/etc/escape").exists()


def _archive(where: Path, *members: tuple[str, str, Any]) -> Path:
    """A tar archive of (name, kind, arg): kind dir | file (arg: bytes) | sym | hard (arg:
    target) | chr | fifo."""
    path = where / "crafted.tar"
    with tarfile.open(path, mode="w") as tar:
        for name, kind, arg in members:
            info = tarfile.TarInfo(name)
            data = None
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "file":
                info.size, info.mode, data = len(arg), 0o644, io.BytesIO(arg)
            elif kind in ("sym", "hard"):
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = arg
            else:
                info.type = tarfile.CHRTYPE if kind == "chr" else tarfile.FIFOTYPE
            tar.addfile(info, data)
    return path

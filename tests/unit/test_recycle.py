"""The agent's inode reuse (agent/recycle.py) on a plain directory: both ways of keeping a
replaced file's inode (the two names swapped, or a link and a rename) end with every target
holding its new content, a file with another link left alone, and no temporary name left.

The agent's modules import each other by bare name, so the scenario runs in a python of its
own with the agent's directory first on its path. The /proc check is the sandbox tests'
(tests/sandbox/test_sync_recycle.py): on the host it would see every user's processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_loop.runtime.bwrap import AGENT_SHARED, AGENT_SOURCE

SCENARIO = r"""
import os, sys
import recycle

root, how = sys.argv[1], sys.argv[2]
recycle.held_inodes = lambda: set()  # see the module's docstring
names = ["f%03d" % i for i in range(3 * recycle.BATCH)]
for name in names:
    with open(os.path.join(root, name), "wb") as f:
        f.write(b"old " * 100)
os.link(os.path.join(root, "f000"), os.path.join(root, "other-link"))
recycler = recycle.Recycler(set(names))
if how == "link":
    recycler.exchange = None
else:
    assert recycler.exchange is not None, "renameat2 through ctypes"
for name in names:
    data = ("new " + name).encode()
    taken = recycler.take(len(data))
    if taken is None:
        tmp = os.path.join(root, ".pyro-tmp-new-" + name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    else:
        tmp, fd, _, _ = taken
    os.write(fd, data)
    os.ftruncate(fd, len(data))
    os.close(fd)
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    st, old = recycler.look(name, dir_fd, name)
    recycler.replace(name, tmp, root, dir_fd, name, st=st, fd=old)
    os.close(dir_fd)
recycler.discard()
print(recycler.reused)
"""


@pytest.mark.parametrize("how", ["exchange", "link"])
def test_replaced_inodes_hold_later_files(tmp_path: Path, how: str) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    path = [str(AGENT_SOURCE), *{str(shared.parent) for shared in AGENT_SHARED.values()}]
    result = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(root), how],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 0, "later files were written into replaced inodes"
    names = sorted(p.name for p in root.iterdir())
    assert names == sorted([*(f"f{i:03}" for i in range(len(names) - 1)), "other-link"])
    for path in root.iterdir():
        if path.name != "other-link":
            assert path.read_bytes() == f"new {path.name}".encode()
    assert (root / "other-link").read_bytes() == b"old " * 100, "its other link kept it"

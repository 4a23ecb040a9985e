"""A live workspace synced from a real repository, and what its tree should hold."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_loop.project.discovery import find_project, head_tree, write_tree
from pyro_loop.sync import Syncer
from pyro_loop.workspace.client import AgentClient
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.project import git, write_seed_tree

WS_TREE = r"""
import hashlib, json, os, stat
out = {}
for d, dirs, files in os.walk("/workspace"):
    if d == "/workspace":  # the home's place, an empty cover (runtime.HOME_DIR)
        dirs[:] = [n for n in dirs if n != ".pyro-home"]
    for name in dirs + files:
        p = os.path.join(d, name)
        rel = os.path.relpath(p, "/workspace")
        try:  # a sync may be writing meanwhile: what vanishes is left out
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ["link", os.readlink(p)]
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ["dir", stat.S_IMODE(st.st_mode)]
            else:
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                out[rel] = ["file", stat.S_IMODE(st.st_mode), h.hexdigest()]
        except FileNotFoundError:
            pass
print(json.dumps(out))
"""


def make_repo(root: Path, *, lib_files: int = 50) -> Path:
    """A committed repository: text files, an executable, a relative symlink, a directory of
    modules, and ignore rules for logs, build output and a virtualenv."""
    write_seed_tree(root)
    (root / ".gitignore").write_text("*.log\nbuild/\n.venv/\n")
    (root / "lib").mkdir()
    for i in range(lib_files):
        (root / "lib" / f"mod_{i:03}.py").write_text(f"VALUE = {i}\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


def baseline_layer(workspaces: Workspaces, repo: Path) -> str:
    """The repository's HEAD tree as a layer, written straight from git (as prepare does)."""
    project = find_project(repo)
    tree = head_tree(project)
    assert tree is not None
    key = hashlib.sha256(f"test-baseline\0{tree}".encode()).hexdigest()
    layer = workspaces.store.build(key, lambda dest: write_tree(project, tree, dest),
                                   kind="baseline")  # fmt: skip
    return layer.key


@dataclass
class Live:
    workspaces: Workspaces
    ref: str
    repo: Path
    syncer: Syncer
    manifest: Path

    @property
    def client(self) -> AgentClient:
        return self.syncer.client

    def sh(self, script: str) -> str:
        result = self.workspaces.exec(self.ref, ["sh", "-c", script], timeout=120)
        assert result.exit_code == 0, result.stderr.decode()
        return result.stdout.decode()

    def tree(self) -> dict[str, list[Any]]:
        result = self.workspaces.exec(self.ref, ["python3", "-c", WS_TREE], timeout=120)
        assert result.exit_code == 0, result.stderr.decode()
        data: dict[str, list[Any]] = json.loads(result.stdout)
        return data

    def cat(self, rel: str) -> bytes:
        result = self.workspaces.exec(self.ref, ["cat", f"/workspace/{rel}"], timeout=60)
        assert result.exit_code == 0, result.stderr.decode()
        return result.stdout

    def entries(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.manifest.read_text())["entries"]
        return data


def live_factory(workspaces: Workspaces, tmp_path: Path) -> Callable[..., Live]:
    """make(repo, exclude=()): a workspace from `repo`'s baseline, and its Syncer."""

    def make(repo: Path, exclude: tuple[str, ...] = (), *, git_baseline: bool = True) -> Live:
        if git_baseline:
            record = workspaces.create(layers=[baseline_layer(workspaces, repo)])
        else:
            record = workspaces.create()
        manifest = tmp_path / f"manifest-{record.id}.json"
        syncer = Syncer(repo, workspaces.client(record.id), manifest, list(exclude))
        return Live(workspaces, record.id, repo, syncer, manifest)

    return make


def host_tree(repo: Path) -> dict[str, list[Any]]:
    """What the workspace should hold: every file git tracks or would track (not ignored)
    that exists on the host, in WS_TREE's form (files and links only)."""
    listed = git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    out: dict[str, list[Any]] = {}
    for rel in sorted(set(filter(None, listed.split("\0")))):
        path = repo / rel
        if path.is_symlink():
            out[rel] = ["link", os.readlink(path)]
        elif path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[rel] = ["file", path.stat().st_mode & 0o777, digest]
    return out


def files_only(tree: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {rel: spec for rel, spec in tree.items() if spec[0] != "dir"}


def assert_in_sync(live: Live) -> None:
    assert files_only(live.tree()) == host_tree(live.repo)

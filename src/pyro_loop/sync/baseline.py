"""The git tree a workspace started from, looked up by path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pyro_loop import git
from pyro_loop.errors import InvalidInputError
from pyro_loop.fs.beneath import Beneath
from pyro_loop.fs.hoststate import HostState, git_blob_id
from pyro_loop.records import dataclass

if TYPE_CHECKING:
    import pygit2


@dataclass(frozen=True)
class BaseEntry:
    kind: str  # "file" | "dir" | "symlink"
    mode: int = 0
    oid: str = ""
    target: str = ""


class Baseline:
    """The git tree the workspace started from, looked up by path.

    Each directory's tree is listed once and kept: a lookup through pygit2's `tree[path]`
    loads the object (~100 us), a dictionary lookup in a listing ~1 us.
    """

    def __init__(self, repo: pygit2.Repository, tree_id: str | None) -> None:
        self.repo = repo
        self.tree_id = tree_id
        self._listings: dict[str, dict[str, tuple[int, str]] | None] = {}
        self.tree = git.tree(repo, tree_id) if tree_id else None
        if tree_id and self.tree is None:
            raise InvalidInputError(
                f"the workspace's baseline tree {tree_id} is not in the repository",
                hint="create the workspace again from the current HEAD",
            )

    def _listing(self, rel_dir: str) -> dict[str, tuple[int, str]] | None:
        """{name: (filemode, oid)} of the baseline directory `rel_dir`; None if it has none."""
        if rel_dir in self._listings:
            return self._listings[rel_dir]
        tree = None
        if not rel_dir:
            tree = self.tree
        else:
            parent, _, name = rel_dir.rpartition("/")
            found = (self._listing(parent) or {}).get(name)
            if found is not None and found[0] == git.MODE_TREE:
                tree = git.tree(self.repo, found[1])
        listing = (
            None if tree is None else {o.name or "": (int(o.filemode), str(o.id)) for o in tree}
        )
        self._listings[rel_dir] = listing
        return listing

    def entry(self, rel: str) -> BaseEntry | None:
        if self.tree is None:
            return None
        parent, _, name = rel.rpartition("/")
        found = (self._listing(parent) or {}).get(name)
        if found is None:
            return None
        filemode, oid = found
        if filemode in (git.MODE_TREE, git.MODE_SUBMODULE):
            return BaseEntry("dir")  # a submodule is an empty directory in the baseline
        if filemode == git.MODE_LINK:
            return BaseEntry("symlink", target=os.fsdecode(git.blob_data(self.repo, oid)))
        mode = 0o755 if filemode == git.MODE_EXECUTABLE else 0o644
        return BaseEntry("file", mode=mode, oid=oid)

    def paths_under(self, rel: str) -> Iterator[str]:
        """Every path the baseline has below the directory `rel`."""
        pending = [rel]
        while pending:
            current = pending.pop()
            for name, (filemode, _oid) in (self._listing(current) or {}).items():
                child = f"{current}/{name}" if current else name
                yield child
                if filemode == git.MODE_TREE:
                    pending.append(child)

    def matches(self, rel: str, tree: Beneath, state: HostState) -> bool:
        """Does the host's `rel` (in `tree`) hold exactly what the baseline has there?"""
        base = self.entry(rel)
        if base is None:
            return state.kind == "absent"
        if base.kind != state.kind:
            return False
        if base.kind == "dir":
            return True
        if base.kind == "symlink":
            return tree.readlink(rel) == base.target
        return state.mode == base.mode and git_blob_id(tree, rel) == base.oid


def tree_paths(tree: pygit2.Tree, prefix: str = "") -> Iterator[str]:
    for obj in tree:
        path = prefix + (obj.name or "")
        yield path
        if obj.filemode == git.MODE_TREE:
            yield from tree_paths(git.as_tree(obj), path + "/")

"""Which project a directory belongs to, and what git says about it.

Finding the project and its HEAD commit is plain file reading (fast: it is on the path of
every daily command). pygit2 is loaded only for real git work: reading trees to build a
baseline layer, comparing two trees and listing the working tree's changes. All of it goes
through `pyro_loop.git`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pyro_loop import git
from pyro_loop.agent.protocol import HOME_DIR
from pyro_loop.digest import sha256_hex
from pyro_loop.errors import InvalidInputError
from pyro_loop.fs.beneath import Beneath
from pyro_loop.records import dataclass

if TYPE_CHECKING:
    import pygit2

CONFIG_NAME = ".pyro.toml"


@dataclass(frozen=True)
class Project:
    root: Path  # the nearest directory with a .pyro.toml up to the repo root, else the repo root
    repo_root: Path | None  # the git work tree, or None for a plain directory
    git_dir: Path | None  # the repository's git dir (a worktree's own, for worktrees)

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def id(self) -> str:
        """Stable per project directory: names its state and labels its workspaces."""
        return sha256_hex(str(self.root).encode())[:16]

    @property
    def name(self) -> str:
        return self.root.name or "root"


def find_project(start: Path) -> Project:
    """The project containing `start` (any subdirectory of a repo or worktree works)."""
    start = start.absolute()
    if not start.is_dir():
        raise InvalidInputError(f"not a directory: {start}")
    repo_root, git_dir = git.find_repository(start)
    boundary = repo_root or Path(start.anchor)
    root = None
    for directory in [start, *start.parents]:
        if (directory / CONFIG_NAME).is_file():
            root = directory
            break
        if directory == boundary:
            break
    return Project(root=root or repo_root or start, repo_root=repo_root, git_dir=git_dir)


def head_commit(project: Project) -> str | None:
    """HEAD's commit id, read without loading a git library; None if unborn or no repository.
    A repository in a format pyro cannot read is refused (`git.check_format`)."""
    return None if project.git_dir is None else git.head_commit(project.git_dir)


def repository(project: Project) -> pygit2.Repository:
    if project.git_dir is None:
        raise InvalidInputError(f"{project.root} is not in a git repository")
    return git.open_repository(project.git_dir)


def head_tree(project: Project) -> str | None:
    """The tree id of HEAD's commit, or None for a repository with no commits yet."""
    if project.git_dir is None:
        return None
    return git.head_tree_id(repository(project))


def write_tree(project: Project, tree_id: str, dest: Path) -> int:
    """Write the files of git tree `tree_id` under `dest` (no checkout, no index): file count."""
    repo = repository(project)
    tree = git.tree(repo, tree_id)
    if tree is None:
        raise InvalidInputError(f"git tree {tree_id} is not in {project.repo_root}")
    with Beneath(dest) as out:
        return _write_tree(repo, tree, out, "")


def _write_tree(repo: pygit2.Repository, tree: pygit2.Tree, out: Beneath, prefix: str) -> int:
    count = 0
    seen: set[str] = set()
    for entry in tree:
        name = entry.name or ""
        # A crafted tree may repeat a name (a link, then a directory below it): first wins.
        if not _safe_name(name) or name in seen:
            continue
        if not prefix and name == HOME_DIR:
            continue  # the sandbox's home (runtime.HOME_DIR) never comes from a repository
        seen.add(name)
        rel = prefix + name
        if entry.filemode == git.MODE_TREE:
            out.makedirs(rel)
            subtree = git.tree(repo, str(entry.id))
            if subtree is None:
                raise InvalidInputError(f"the git tree of {rel} is missing from the repository")
            count += _write_tree(repo, subtree, out, rel + "/")
        else:
            count += _write_entry(repo, out, rel, entry.filemode, str(entry.id))
    return count


def _safe_name(name: str) -> bool:
    # git refuses such names, but a crafted repository may still contain them.
    return name not in ("", ".", "..", ".git") and "/" not in name and "\0" not in name


def _write_entry(repo: pygit2.Repository, out: Beneath, rel: str, mode: int, oid: str) -> int:
    """Write one non-tree entry (file, executable, symlink, submodule): 1 if it is a file.
    Through `out`, so an entry is never written through a link an earlier one made."""
    if mode == git.MODE_LINK:
        out.symlink(rel, os.fsdecode(git.blob_data(repo, oid)))
        return 1
    if mode in (git.MODE_BLOB, git.MODE_EXECUTABLE):
        out.write(rel, git.blob_data(repo, oid), 0o755 if mode == git.MODE_EXECUTABLE else 0o644)
        return 1
    if mode == git.MODE_SUBMODULE:
        out.makedirs(rel)  # a submodule: its own repository, not part of this tree
    return 0


@dataclass(frozen=True)
class TreeChanges:
    """How git tree `new` differs from tree `old`, path by path."""

    old: str
    new: str
    written: tuple[tuple[str, int, str], ...]  # (path, git file mode, blob id): added or changed
    deleted: tuple[str, ...]  # in `old`, gone from `new` (and not replaced by a written path)


def tree_changes(project: Project, old: str, new: str) -> TreeChanges:
    """What turns `old`'s files into `new`'s: a diff of the two trees in the object database.

    Identical subtrees are skipped without being read, so the cost follows the size of the
    change, not of the repository.
    """
    repo = repository(project)
    old_tree, new_tree = git.tree(repo, old), git.tree(repo, new)
    if old_tree is None or new_tree is None:
        raise InvalidInputError(f"git tree {old if old_tree is None else new} is not in "
                                f"{project.repo_root}")  # fmt: skip
    diff = old_tree.diff_to_tree(new_tree)
    written: list[tuple[str, int, str]] = []
    deleted: list[str] = []
    for delta in diff.deltas:
        if delta.status == git.DELTA_DELETED:
            deleted.append(delta.old_file.path)
        else:
            written.append((delta.new_file.path, delta.new_file.mode, str(delta.new_file.id)))
    # A deleted path that is written again (as a file or a directory, or below a parent now
    # written as a file) is replaced, not removed: removing it would remove the new entry.
    kept = {path for path, _, _ in written}
    kept_dirs = {parent for path in kept for parent in _parents(path)}
    gone = [
        path for path in deleted
        if path not in kept and path not in kept_dirs
        and not any(parent in kept for parent in _parents(path))
    ]  # fmt: skip
    return TreeChanges(old, new, tuple(written), tuple(sorted(gone)))


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:n]) for n in range(1, len(parts))]


def write_changes(project: Project, changes: TreeChanges, dest: Path) -> int:
    """Write the added and changed entries of `changes` under `dest`: file count."""

    repo = repository(project)
    count = 0
    with Beneath(dest) as tree:
        for rel, mode, oid in changes.written:
            parts = rel.split("/")
            if not all(_safe_name(part) for part in parts):
                continue
            # A crafted tree may list a symlink and a path below it: never write through one.
            if len(parts) > 1 and tree.link_above(rel) is not None:
                continue
            if len(parts) > 1:
                tree.makedirs("/".join(parts[:-1]))
            count += _write_entry(repo, tree, "/".join(parts), mode, oid)
    return count


def working_changes(project: Project) -> list[str]:
    """Paths that differ from HEAD in the working tree: modified, deleted, untracked (not
    ignored). These go on top of the baseline layer."""
    if project.git_dir is None:
        return []
    repo = repository(project)
    changed = []
    for path, flags in repo.status(untracked_files="all").items():
        if flags & git.STATUS_IGNORED:
            continue
        changed.append(path)
    return sorted(changed)


def tree_file(project: Project, tree: str, rel: str) -> bytes | None:
    """The content of file `rel` in git tree `tree`, or None if it has no such file."""
    return git.tree_file(repository(project), tree, rel)

"""Which project a directory belongs to, and what git says about it.

Finding the project and its HEAD commit is plain file reading (fast: it is on the path of
every daily command). pygit2 is imported only for real git work: reading trees to build a
baseline layer, comparing two trees and listing the working tree's changes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_loop.agent.protocol import HOME_DIR
from pyro_loop.errors import InvalidInputError
from pyro_loop.fs.beneath import Beneath

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
        return hashlib.sha256(str(self.root).encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return self.root.name or "root"


def find_project(start: Path) -> Project:
    """The project containing `start` (any subdirectory of a repo or worktree works)."""
    start = start.absolute()
    if not start.is_dir():
        raise InvalidInputError(f"not a directory: {start}")
    repo_root, git_dir = _find_repo(start)
    boundary = repo_root or Path(start.anchor)
    root = None
    for directory in [start, *start.parents]:
        if (directory / CONFIG_NAME).is_file():
            root = directory
            break
        if directory == boundary:
            break
    return Project(root=root or repo_root or start, repo_root=repo_root, git_dir=git_dir)


def _find_repo(start: Path) -> tuple[Path | None, Path | None]:
    for directory in [start, *start.parents]:
        dot_git = directory / ".git"
        if dot_git.is_dir():
            return directory, dot_git
        if dot_git.is_file():  # a worktree or submodule: "gitdir: <path>"
            text = dot_git.read_text().strip()
            if text.startswith("gitdir:"):
                target = Path(text.partition(":")[2].strip())
                return directory, (directory / target).resolve()
    return None, None


def head_commit(project: Project) -> str | None:
    """HEAD's commit id, read from the git dir without loading a git library; None if unborn."""
    if project.git_dir is None:
        return None
    head = _read(project.git_dir / "HEAD")
    if head is None:
        return None
    if not head.startswith("ref:"):
        return head if _is_oid(head) else None
    ref = head.partition(":")[2].strip()
    common = common_dir(project.git_dir)
    for base in (project.git_dir, common):
        value = _read(base / ref)
        if value is not None and _is_oid(value):
            return value
    packed = _read(common / "packed-refs") or ""
    for line in packed.splitlines():
        oid, _, name = line.partition(" ")
        if name == ref and _is_oid(oid):
            return oid
    return None


def common_dir(git_dir: Path) -> Path:
    """The directory a worktree shares with its main repository (refs, objects, hooks)."""
    common = _read(git_dir / "commondir")
    return (git_dir / common).resolve() if common else git_dir


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _is_oid(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


# -- pygit2 ----------------------------------------------------------------------------------


def _repository(project: Project) -> Any:
    import pygit2

    if project.git_dir is None:
        raise InvalidInputError(f"{project.root} is not in a git repository")
    return pygit2.Repository(str(project.git_dir))


def head_tree(project: Project) -> str | None:
    """The tree id of HEAD's commit, or None for a repository with no commits yet."""
    if project.git_dir is None:
        return None
    repo = _repository(project)
    if repo.head_is_unborn:
        return None
    return str(repo.head.peel().tree_id)


def write_tree(project: Project, tree_id: str, dest: Path) -> int:
    """Write the files of git tree `tree_id` under `dest` (no checkout, no index): file count."""
    import pygit2

    repo = _repository(project)
    with Beneath(dest) as out:
        return _write_tree(repo, repo[tree_id], out, "", pygit2)


def _write_tree(repo: Any, tree: Any, out: Beneath, prefix: str, pygit2: Any) -> int:
    count = 0
    seen: set[str] = set()
    for entry in tree:
        # A crafted tree may repeat a name (a link, then a directory below it): first wins.
        if not _safe_name(entry.name) or entry.name in seen:
            continue
        if not prefix and entry.name == HOME_DIR:
            continue  # the sandbox's home (runtime.HOME_DIR) never comes from a repository
        seen.add(entry.name)
        rel = prefix + entry.name
        if entry.filemode == pygit2.GIT_FILEMODE_TREE:
            out.makedirs(rel)
            count += _write_tree(repo, repo[entry.id], out, rel + "/", pygit2)
        else:
            count += _write_entry(repo, out, rel, entry.filemode, entry.id)
    return count


def _safe_name(name: str) -> bool:
    # git refuses such names, but a crafted repository may still contain them.
    return name not in ("", ".", "..", ".git") and "/" not in name and "\0" not in name


def _write_entry(repo: Any, out: Beneath, rel: str, mode: int, oid: Any) -> int:
    """Write one non-tree entry (file, executable, symlink, submodule): 1 if it is a file.
    Through `out`, so an entry is never written through a link an earlier one made."""
    import pygit2

    if mode == pygit2.GIT_FILEMODE_LINK:
        out.symlink(rel, os.fsdecode(repo[oid].data))
        return 1
    if mode in (pygit2.GIT_FILEMODE_BLOB, pygit2.GIT_FILEMODE_BLOB_EXECUTABLE):
        out.write(rel, repo[oid].data, 0o755 if mode == pygit2.GIT_FILEMODE_BLOB_EXECUTABLE
                  else 0o644)  # fmt: skip
        return 1
    if mode == pygit2.GIT_FILEMODE_COMMIT:
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
    import pygit2

    repo = _repository(project)
    diff = repo[old].diff_to_tree(repo[new])
    written: list[tuple[str, int, str]] = []
    deleted: list[str] = []
    for delta in diff.deltas:
        if delta.status == pygit2.GIT_DELTA_DELETED:
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

    repo = _repository(project)
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
    import pygit2

    repo = _repository(project)
    changed = []
    for path, flags in repo.status(untracked_files="all").items():
        if flags & pygit2.GIT_STATUS_IGNORED:
            continue
        changed.append(path)
    return sorted(changed)


def tree_file(project: Project, tree: str, rel: str) -> bytes | None:
    """The content of file `rel` in git tree `tree`, or None if it has no such file."""
    import pygit2

    repo = _repository(project)
    try:
        entry = repo[tree][rel]
    except KeyError:
        return None
    obj = repo[entry.id]
    return obj.data if isinstance(obj, pygit2.Blob) else None

"""Which project a directory belongs to, and what git says about it.

Finding the project and its HEAD commit is plain file reading (fast: it is on the path of
every daily command). pygit2 is imported only for real git work: reading trees to build a
baseline layer and listing the working tree's changes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_loop.errors import InvalidInputError

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
    common = _common_dir(project.git_dir)
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


def _common_dir(git_dir: Path) -> Path:
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
    return _write_tree(repo, repo[tree_id], dest, pygit2)


def _write_tree(repo: Any, tree: Any, dest: Path, pygit2: Any) -> int:
    count = 0
    for entry in tree:
        name = entry.name
        # git refuses such names, but a crafted repository may still contain them.
        if name in ("", ".", "..", ".git") or "/" in name or "\0" in name:
            continue
        path = dest / name
        mode = entry.filemode
        if mode == pygit2.GIT_FILEMODE_TREE:
            path.mkdir()
            count += _write_tree(repo, repo[entry.id], path, pygit2)
        elif mode == pygit2.GIT_FILEMODE_LINK:
            os.symlink(repo[entry.id].data, path)
            count += 1
        elif mode in (pygit2.GIT_FILEMODE_BLOB, pygit2.GIT_FILEMODE_BLOB_EXECUTABLE):
            path.write_bytes(repo[entry.id].data)
            path.chmod(0o755 if mode == pygit2.GIT_FILEMODE_BLOB_EXECUTABLE else 0o644)
            count += 1
        elif mode == pygit2.GIT_FILEMODE_COMMIT:
            path.mkdir()  # a submodule: its own repository, not part of this tree
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

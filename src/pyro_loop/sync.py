"""The sync engine: the host's working tree -> the project's running workspace.

A workspace of a git project starts from a baseline layer: the files of a git tree (HEAD's
when the workspace was made). What the host has on top of that (modified, deleted, new and
not ignored files) is pushed into the running workspace, and from then on only what changes.

The manifest (a JSON file per project workspace) records every path pyro pushed or removed
over the baseline: what the workspace now holds there (kind, mode, size, times, sha256). A
path's host state is compared with its record, or with the baseline when it has none, and
only what differs moves: all the files in one `put_tar` stream, all the removals in one
`remove_many` request.

When is a file "unchanged" without reading it? Only when its kind, mode, size, mtime_ns,
ctime_ns and inode all equal the record AND both times are at least RACY_NS older than the
moment the record was taken. Anything else is hashed (sha256) and compared. ctime cannot be
set from user space, so a rewrite that restores the old mtime (`touch -d`, `cp -p`, `git
checkout` of same-size content) still changes it; the racy window is git's racy-git rule: a
file written in the same timestamp tick as the record could look unchanged, so recently
written files are always hashed until a later sync has seen them settle.

Conflicts: the host wins for paths it changed; paths the host did not change are never
touched, whatever the workspace did to them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_loop.client import AgentClient
from pyro_loop.errors import InvalidInputError
from pyro_loop.locking import file_lock

MANIFEST_VERSION = 1
RACY_NS = 2_000_000_000  # a record this close to a file's mtime/ctime cannot vouch for it
CHUNK = 1024 * 1024
COPY_ATTEMPTS = 3  # a file still changing after this many copies is left for the next sync


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class SyncResult:
    """What one sync did: counts, the paths behind them, and what it could not sync."""

    copied: int = 0  # files, symlinks and directories written into the workspace
    removed: int = 0  # host deletions carried over
    bytes: int = 0  # file content sent
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    copied_paths: list[str] = field(default_factory=list)
    removed_paths: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.copied or self.removed)

    def to_json(self) -> dict[str, Any]:
        return {
            "copied": self.copied,
            "removed": self.removed,
            "bytes": self.bytes,
            "skipped": [s.to_json() for s in self.skipped],
            "duration_ms": round(self.seconds * 1000, 1),
            "copied_paths": self.copied_paths,
            "removed_paths": self.removed_paths,
        }


# -- gitignore-style patterns ----------------------------------------------------------------


class ExcludeRules:
    """`[sync] exclude`: gitignore-style patterns, matched against paths relative to the root.

    Supported as in .gitignore: `#` comments, `!` negation, a trailing `/` for directories
    only, a leading or inner `/` anchoring to the root, `*`, `?`, `[...]` and `**`. A path
    inside an excluded directory is excluded (a negation cannot bring it back, as in git).
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self.rules: list[tuple[re.Pattern[str], bool, bool]] = []
        for raw in patterns:
            rule = _compile_pattern(raw)
            if rule is not None:
                self.rules.append(rule)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def excluded(self, rel: str, *, is_dir: bool) -> bool:
        if not self.rules:
            return False
        parts = rel.split("/")
        for end in range(1, len(parts)):
            if self._match("/".join(parts[:end]), is_dir=True):
                return True
        return self._match(rel, is_dir=is_dir)

    def _match(self, rel: str, *, is_dir: bool) -> bool:
        result = False
        for regex, negate, dir_only in self.rules:
            if (is_dir or not dir_only) and regex.fullmatch(rel):
                result = not negate
        return result


def _compile_pattern(raw: str) -> tuple[re.Pattern[str], bool, bool] | None:
    pattern = raw.strip()
    if not pattern or pattern.startswith("#"):
        return None
    negate = pattern.startswith("!")
    if negate or pattern.startswith("\\"):  # "\!" and "\#" match a literal first character
        pattern = pattern[1:]
    dir_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    if not pattern:
        return None
    anchored = "/" in pattern
    regex = ("" if anchored else "(?:.*/)?") + _translate_glob(pattern.lstrip("/"))
    try:
        return re.compile(regex), negate, dir_only
    except re.error:
        return None  # a malformed class: git ignores such a pattern too


def _translate_glob(pattern: str) -> str:
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            regex += "/.*"
            i += 3
        elif pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            regex += "[^/]"
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            regex += "[" + body.replace("\\", "\\\\").replace("[", "\\[") + "]"
            i = end + 1
        elif pattern[i] == "\\" and i + 1 < len(pattern):
            regex += re.escape(pattern[i + 1])
            i += 2
        else:
            regex += re.escape(pattern[i])
            i += 1
    return regex


# -- which host paths take part ---------------------------------------------------------------


def _open_repository(root: Path) -> Any | None:
    """The git repository whose work tree contains `root`, or None."""
    import pygit2

    try:
        found = pygit2.discover_repository(str(root))
    except pygit2.GitError:
        return None
    if not found:
        return None
    repo = pygit2.Repository(found)
    return repo if repo.workdir else None


class PathFilter:
    """Decides which host paths are synced: never `.git`, nor `[sync] exclude`d paths, nor
    paths git ignores (unless git tracks them anyway).

    `root` is the directory mirrored at /workspace: the work tree's top in a git repository.
    """

    def __init__(self, root: Path, exclude: Sequence[str] = (), *, repo: Any = None) -> None:
        self.root = root
        self._prefix = str(root).rstrip("/") + "/"
        self.exclude = ExcludeRules(exclude)
        self.repo = repo
        self._ignored_dirs: dict[str, bool] = {}
        self._links: dict[str, bool] = {}

    @classmethod
    def for_root(cls, root: Path, exclude: Sequence[str] = ()) -> PathFilter:
        root = root.resolve()
        repo = _open_repository(root)
        top = Path(repo.workdir).resolve() if repo is not None else root
        return cls(top, exclude, repo=repo)

    def refresh(self) -> None:
        """Forget cached answers: .gitignore files or the index may have changed."""
        self._ignored_dirs.clear()
        self._links.clear()
        if self.repo is not None:
            with contextlib.suppress(Exception):
                self.repo.index.read(False)  # re-read only if it changed on disk

    def rel(self, path: Path | str) -> str | None:
        """`path` relative to the root as a POSIX string; None for the root or outside it."""
        text = os.path.normpath(os.fspath(path))
        if not text.startswith(self._prefix):
            return None
        return text[len(self._prefix) :]

    def __call__(self, path: Path | str) -> bool:
        """Should a change at `path` (absolute) be synced?"""
        rel = self.rel(path)
        return rel is not None and not self.through_symlink(rel) and self.wants(rel)

    def through_symlink(self, rel: str) -> bool:
        """Is one of `rel`'s parent directories a symlink on the host? The kernel follows
        those, a watcher may too (watchfiles does), but pyro never syncs through them: the
        link itself is what the workspace gets."""
        parts = rel.split("/")
        for end in range(1, len(parts)):
            parent = "/".join(parts[:end])
            link = self._links.get(parent)
            if link is None:
                link = self._links[parent] = os.path.islink(self._prefix + parent)
            if link:
                return True
        return False

    def wants(self, rel: str, *, is_dir: bool | None = None) -> bool:
        parts = rel.split("/")
        if ".git" in parts:
            return False
        if is_dir is None:
            is_dir = os.path.isdir(self._prefix + rel) and not os.path.islink(self._prefix + rel)
        if self.exclude.excluded(rel, is_dir=is_dir):
            return False
        if self.repo is None:
            return True
        # A directory git ignores hides everything in it: answer from cached parents first.
        for end in range(1, len(parts)):
            if self._dir_ignored("/".join(parts[:end])):
                return self._tracked(rel)
        if is_dir:
            return not self._dir_ignored(rel)
        return not self._ignored(rel) or self._tracked(rel)

    def _dir_ignored(self, rel: str) -> bool:
        cached = self._ignored_dirs.get(rel)
        if cached is None:
            cached = self._ignored_dirs[rel] = self._ignored(rel + "/")
        return cached

    def _ignored(self, rel: str) -> bool:
        try:
            return bool(self.repo.path_is_ignored(rel))
        except Exception:  # a path libgit2 cannot represent: not ignored, so it is seen
            return False

    def _tracked(self, rel: str) -> bool:
        try:
            return rel in self.repo.index
        except Exception:
            return False


# -- host state ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostState:
    kind: str  # "file" | "dir" | "symlink" | "absent" | "other"
    mode: int = 0
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0

    @classmethod
    def of(cls, st: os.stat_result) -> HostState:
        fmt = stat.S_IFMT(st.st_mode)
        kind = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink"}.get(
            fmt, "other"
        )
        return cls(kind, _mode(st.st_mode, kind), st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                   st.st_ino)  # fmt: skip


ABSENT = HostState("absent")


def _mode(st_mode: int, kind: str) -> int:
    # Permission bits as the workspace gets them: never set-id; the sticky bit on directories.
    return stat.S_IMODE(st_mode) & (0o1777 if kind == "dir" else 0o777)


def _lstat(path: str) -> HostState:
    try:
        return HostState.of(os.lstat(path))
    except (FileNotFoundError, NotADirectoryError):
        return ABSENT


def _sha256_file(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def host_digest(root: Path, rel: str) -> str | None:
    """The digest the manifest would record for the host's `rel`: the sha256 of a file's
    content or of a symlink's target; None when it is missing or something else."""
    path = os.path.join(root, rel)
    state = _lstat(path)
    if state.kind == "file":
        return _sha256_file(path)
    if state.kind == "symlink":
        return hashlib.sha256(os.fsencode(os.readlink(path))).hexdigest()
    return None


def manifest_digest(manifest_path: Path, rel: str) -> str | None:
    """The digest recorded for `rel` in a manifest (what the workspace holds since pyro
    pushed it); None when pyro has not pushed it (the workspace has its baseline version)
    or pushed a deletion or a directory."""
    entry = _read_manifest(manifest_path).get("entries", {}).get(rel)
    digest = entry.get("sha256") if isinstance(entry, dict) else None
    return digest if isinstance(digest, str) else None


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        return {}
    if not isinstance(data.get("entries"), dict):
        return {}
    return data


# -- the baseline ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _BaseEntry:
    kind: str  # "file" | "dir" | "symlink"
    mode: int = 0
    oid: str = ""
    target: str = ""


class _Baseline:
    """The git tree the workspace started from, looked up by path.

    Each directory's tree is listed once and kept: a lookup through pygit2's `tree[path]`
    loads the object (~100 us), a dictionary lookup in a listing ~1 us.
    """

    def __init__(self, repo: Any, tree_id: str | None) -> None:
        import pygit2

        self.repo = repo
        self.tree_id = tree_id
        self._listings: dict[str, dict[str, tuple[int, str]] | None] = {}
        try:
            self.tree = repo[tree_id].peel(pygit2.Tree) if tree_id else None
        except (KeyError, ValueError, pygit2.GitError):
            raise InvalidInputError(
                f"the workspace's baseline tree {tree_id} is not in the repository",
                hint="create the workspace again from the current HEAD",
            ) from None
        self._pygit2 = pygit2

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
            if found is not None and found[0] == self._pygit2.GIT_FILEMODE_TREE:
                tree = self.repo[found[1]]
        listing = None if tree is None else {o.name: (o.filemode, str(o.id)) for o in tree}
        self._listings[rel_dir] = listing
        return listing

    def entry(self, rel: str) -> _BaseEntry | None:
        if self.tree is None:
            return None
        parent, _, name = rel.rpartition("/")
        found = (self._listing(parent) or {}).get(name)
        if found is None:
            return None
        filemode, oid = found
        g = self._pygit2
        if filemode in (g.GIT_FILEMODE_TREE, g.GIT_FILEMODE_COMMIT):
            return _BaseEntry("dir")  # a submodule is an empty directory in the baseline
        if filemode == g.GIT_FILEMODE_LINK:
            return _BaseEntry("symlink", target=os.fsdecode(self.repo[oid].data))
        mode = 0o755 if filemode == g.GIT_FILEMODE_BLOB_EXECUTABLE else 0o644
        return _BaseEntry("file", mode=mode, oid=oid)

    def paths_under(self, rel: str) -> Iterator[str]:
        """Every path the baseline has below the directory `rel`."""
        pending = [rel]
        while pending:
            current = pending.pop()
            for name, (filemode, _oid) in (self._listing(current) or {}).items():
                child = f"{current}/{name}" if current else name
                yield child
                if filemode == self._pygit2.GIT_FILEMODE_TREE:
                    pending.append(child)

    def matches(self, rel: str, path: str, state: HostState) -> bool:
        """Does the host's `path` hold exactly what the baseline has at `rel`?"""
        base = self.entry(rel)
        if base is None:
            return state.kind == "absent"
        if base.kind != state.kind:
            return False
        if base.kind == "dir":
            return True
        if base.kind == "symlink":
            return os.readlink(path) == base.target
        return state.mode == base.mode and str(self._pygit2.hashfile(path)) == base.oid


# -- the syncer ------------------------------------------------------------------------------


@dataclass
class _Push:
    rel: str
    attempts: int = 0


class Syncer:
    """Keeps one workspace in line with the host directory `root`.

    In a git repository the whole work tree is mirrored (the workspace's baseline is the
    whole tree), whichever directory of it `root` is. `baseline_tree` is the git tree the
    workspace's baseline layer was made from; by default the one the manifest recorded, or
    HEAD's tree when a fresh manifest starts (after `forget`).
    """

    def __init__(
        self,
        root: Path,
        client: AgentClient,
        manifest_path: Path,
        exclude: Sequence[str] = (),
        *,
        baseline_tree: str | None = None,
    ) -> None:
        if not root.is_dir():
            raise InvalidInputError(f"not a directory: {root}")
        self.filter = PathFilter.for_root(root, exclude)
        self.root = self.filter.root
        self.repo = self.filter.repo
        self.client = client
        self.manifest_path = manifest_path
        self._lock_path = manifest_path.with_name(manifest_path.name + ".lock")
        self._baseline_tree = baseline_tree
        self._base: _Baseline | None = None  # kept between syncs: a baseline never changes
        self._cached: tuple[tuple[int, int, int], dict[str, Any]] | None = None

    # -- public ---------------------------------------------------------------------------

    def reconcile(self) -> SyncResult:
        """Bring the workspace in line with the host: everything that differs, pushed."""
        started = time.perf_counter()
        with file_lock(self._lock_path):
            manifest = self._load()
            self.filter.refresh()
            if self.repo is not None:
                baseline = self._baseline(manifest)
                dirty = self._git_candidates(baseline)
                candidates = self._expand(dirty | set(manifest["entries"]), manifest, baseline)
                result = self._sync(candidates, manifest, baseline, clean=candidates - dirty)
            else:
                candidates = set(self._walk("")) | set(manifest["entries"])
                result = self._sync(candidates, manifest, None, clean=set())
        result.seconds = time.perf_counter() - started
        return result

    def sync_paths(self, paths: Iterable[Path | str]) -> SyncResult:
        """Sync just these host paths (absolute, as a watcher reports them): files, deleted
        paths, and directories, walked: a watcher reports a directory created, moved in or
        swapped for another one by that directory's path alone, never by its contents."""
        started = time.perf_counter()
        with file_lock(self._lock_path):
            manifest = self._load()
            entries: dict[str, Any] = manifest["entries"]
            self.filter.refresh()
            baseline = self._baseline(manifest) if self.repo is not None else None
            candidates: set[str] = set()
            for path in paths:
                rel = self.filter.rel(path)
                if rel is None or self.filter.through_symlink(rel) or not self.filter.wants(rel):
                    continue
                candidates.add(rel)
                prefix = rel + "/"
                if _lstat(self._abs(rel)).kind == "dir":
                    # What it holds now, and what the workspace may hold there: the baseline's
                    # paths and pyro's own (the directory may be another one than before).
                    candidates.update(self._walk(rel))
                    if baseline is not None:
                        candidates.update(baseline.paths_under(rel))
                candidates.update(p for p in entries if p.startswith(prefix))
            result = self._sync(candidates, manifest, baseline, clean=set())
        result.seconds = time.perf_counter() - started
        return result

    def forget(self, *, baseline_tree: str | None = None) -> None:
        """Clear the manifest: the workspace is back at its baseline (after a reset).

        The next reconcile pushes every difference again. `baseline_tree` names the git
        tree of that baseline; by default the constructor's, else HEAD's at that reconcile.
        """
        if baseline_tree is not None:
            self._baseline_tree = baseline_tree
        with file_lock(self._lock_path):
            self._save({"entries": {}, "baseline_tree": self._baseline_tree})

    def synced_digest(self, rel: str) -> str | None:
        """What `manifest_digest` says for `rel` in this syncer's manifest."""
        return manifest_digest(self.manifest_path, rel)

    # -- manifest -------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        try:
            st = os.stat(self.manifest_path)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = (0, 0, 0)
        if self._cached is not None and self._cached[0] == key:
            data = self._cached[1]  # taken, not shared: a failed sync must not leave it edited
        else:
            data = _read_manifest(self.manifest_path)
        self._cached = None
        fresh = not data or data.get("root") != str(self.root)
        recorded = data.get("baseline_tree")
        if self._baseline_tree is not None and recorded not in (None, self._baseline_tree):
            fresh = True  # recorded for another baseline: another workspace's history
        if fresh:
            data = {"entries": {}, "baseline_tree": self._baseline_tree}
        data.setdefault("baseline_tree", None)
        return data

    def _save(self, data: dict[str, Any]) -> None:
        data = {**data, "version": MANIFEST_VERSION, "root": str(self.root)}
        self.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.manifest_path.with_name(f".{self.manifest_path.name}.{os.getpid()}.tmp")
        # Not fsynced: a manifest lost in a crash only costs hashing and re-pushing.
        tmp.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True))
        os.replace(tmp, self.manifest_path)
        st = os.stat(self.manifest_path)
        self._cached = ((st.st_ino, st.st_size, st.st_mtime_ns), data)

    # -- candidates -----------------------------------------------------------------------

    def _baseline(self, manifest: dict[str, Any]) -> _Baseline:
        tree = manifest.get("baseline_tree")
        if tree is None:
            tree = self._baseline_tree
        if tree is None:  # "" records an empty baseline: the repository had no commit yet
            tree = "" if self.repo.head_is_unborn else str(self.repo.head.peel().tree_id)
        manifest["baseline_tree"] = tree
        if self._base is None or self._base.tree_id != (tree or None):
            self._base = _Baseline(self.repo, tree or None)
        return self._base

    def _git_candidates(self, baseline: _Baseline) -> set[str]:
        """A superset of the paths where the working tree differs from the baseline: what
        differs from HEAD (git status, index and work tree, untracked but not ignored) plus
        what differs between the baseline and HEAD (after a commit or a branch switch)."""
        import pygit2

        paths = {
            path
            for path, flags in self.repo.status(untracked_files="all").items()
            if not flags & pygit2.GIT_STATUS_IGNORED
        }
        head = None if self.repo.head_is_unborn else self.repo.head.peel(pygit2.Tree)
        if baseline.tree is None or head is None:
            for tree in (baseline.tree, head):  # one of them empty: all of the other differs
                if tree is not None:
                    paths.update(_tree_paths(tree))
        elif baseline.tree.id != head.id:
            for delta in self.repo.diff(baseline.tree, head).deltas:
                paths.add(delta.old_file.path)
                paths.add(delta.new_file.path)
        return {p.rstrip("/") for p in paths if p}

    def _walk(self, rel: str) -> Iterator[str]:
        """Every path below `rel` ("" for the root) that takes part, directories included."""
        pending = [rel]
        while pending:
            current = pending.pop()
            try:
                with os.scandir(self._abs(current) if current else self.root) as it:
                    entries = list(it)
            except OSError:
                continue  # unreadable: its own path reports it when synced
            for entry in entries:
                child = f"{current}/{entry.name}" if current else entry.name
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if not self.filter.wants(child, is_dir=is_dir):
                    continue
                yield child
                if is_dir:
                    pending.append(child)

    def _expand(
        self, candidates: set[str], manifest: dict[str, Any], baseline: _Baseline | None
    ) -> set[str]:
        """Add the contents of candidate directories the workspace may not hold: new ones,
        and ones pyro removed or replaced before (their files may equal the baseline and so
        never show up as changed)."""
        expanded = set(candidates)
        for rel in candidates:
            if _lstat(self._abs(rel)).kind == "dir" and not self._known_dir(
                rel, manifest["entries"], baseline
            ):
                expanded.update(self._walk(rel))
        return expanded

    def _known_dir(self, rel: str, entries: dict[str, Any], baseline: _Baseline | None) -> bool:
        """Does the workspace hold this directory with its contents already?"""
        entry = _effective_entry(rel, entries)
        if entry is not None:
            return bool(entry.get("kind") == "dir")
        if baseline is not None:
            base = baseline.entry(rel)
            return base is not None and base.kind == "dir"
        return False

    def _abs(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    # -- planning and pushing -------------------------------------------------------------

    def _sync(
        self,
        candidates: set[str],
        manifest: dict[str, Any],
        baseline: _Baseline | None,
        *,
        clean: set[str],
    ) -> SyncResult:
        """Push what differs among `candidates`. `clean` are paths known to equal the
        baseline on the host (reconcile): once the workspace matches them, their records go.
        """
        result = SyncResult()
        entries: dict[str, Any] = manifest["entries"]
        pushes: list[str] = []
        removals: list[str] = []
        settled: set[str] = set()  # the workspace holds the host's version already
        now = time.time_ns()
        for rel in sorted(candidates):
            if not self.filter.wants(rel):
                entries.pop(rel, None)  # excluded or ignored since: no longer pyro's to sync
                continue
            try:
                action = self._decide(rel, _effective_entry(rel, entries), baseline, now)
            except OSError as exc:
                result.skipped.append(Skipped(rel, _reason(exc)))
                continue
            if action == "push":
                pushes.append(rel)
            elif action == "remove":
                removals.append(rel)
            elif action.startswith("skip:"):
                result.skipped.append(Skipped(rel, action[5:]))
            else:
                settled.add(rel)
        try:
            if removals:
                self._remove(removals, entries, result)
            if pushes:
                settled.update(self._push(pushes, entries, baseline, result))
            if baseline is not None:
                self._drop_baseline_matches(entries, baseline, clean & settled)
        finally:
            self._save(manifest)
        return result

    def _decide(
        self, rel: str, entry: dict[str, Any] | None, base: _Baseline | None, now: int
    ) -> str:
        """ "push", "remove", "skip:<reason>", "refresh" (record updated) or "same"."""
        path = self._abs(rel)
        state = _lstat(path)
        if state.kind == "other":
            return "skip:not a regular file, directory or symlink"
        if entry is None:  # the workspace has the baseline's version
            if base is not None and base.matches(rel, path, state):
                return "same"
            if state.kind == "absent":
                return "same" if base is None else "remove"
            return "push"
        if state.kind == "absent":
            return "same" if entry.get("kind") == "absent" else "remove"
        if state.kind != entry.get("kind"):
            return "push"
        if state.kind == "dir":
            return "same" if state.mode == entry.get("mode") else "push"
        if state.kind == "symlink":
            return "same" if os.readlink(path) == entry.get("target") else "push"
        if state.mode != entry.get("mode") or state.size != entry.get("size"):
            return "push"
        if _trusted(entry, state):
            return "same"
        if _sha256_file(path) != entry.get("sha256"):
            return "push"
        # Same content: vouch for the current stat from now on (racy until it settles).
        entry.update(_stat_fields(state), recorded_ns=now)
        return "refresh"

    def _remove(self, removals: list[str], entries: dict[str, Any], result: SyncResult) -> None:
        # A directory gone from the host goes as one path, with what the workspace added in it.
        top = {rel: self._removal_root(rel) for rel in removals}
        tops = set(top.values())
        outer = {rel: _outermost(root, tops) for rel, root in top.items()}
        roots = sorted(set(outer.values()))
        reply = self.client.remove_many(roots)
        failed = {e["path"]: e["error"] for e in reply["errors"]}
        for root in roots:
            if root not in failed:
                prefix = root + "/"
                for rel in [p for p in entries if p.startswith(prefix)]:
                    del entries[rel]  # the absent root speaks for everything below it
                entries[root] = {"kind": "absent"}
        for rel in removals:
            if outer[rel] in failed:
                result.skipped.append(Skipped(rel, f"workspace: {failed[outer[rel]]}"))
                continue
            entries[rel] = {"kind": "absent"}
            result.removed += 1
            result.removed_paths.append(rel)

    def _removal_root(self, rel: str) -> str:
        """The outermost directory of `rel` that is gone from the host too (or `rel`)."""
        parts = rel.split("/")
        top = rel
        for end in range(len(parts) - 1, 0, -1):
            parent = "/".join(parts[:end])
            if _lstat(self._abs(parent)).kind != "absent":
                break
            if not self.filter.wants(parent, is_dir=True):
                break  # an excluded directory stays the workspace's business
            top = parent
        return top

    def _push(
        self,
        pushes: list[str],
        entries: dict[str, Any],
        baseline: _Baseline | None,
        result: SyncResult,
    ) -> set[str]:
        """Send `pushes` in one tar stream; returns the paths the workspace now has."""
        parents = self._missing_parents(pushes, entries, baseline)
        stream = _TarStream(self.root, sorted(set(pushes) | parents))
        reply = self.client.put_tar(stream.chunks())
        failed = {e["path"]: e["error"] for e in reply["errors"]}
        for rel, reason in stream.skipped.items():
            result.skipped.append(Skipped(rel, reason))
        if stream.late_removals:  # gone from the host while this sync ran
            self._remove(sorted(stream.late_removals), entries, result)
        done = set()
        for rel, record in stream.sent.items():
            if record["kind"] == "dir":
                record["fresh"] = self._fresh_dir(rel, entries, baseline)
            if rel in failed:
                result.skipped.append(Skipped(rel, f"workspace: {failed[rel]}"))
                entries.pop(rel, None)  # unknown state there: push again next time
                continue
            entries[rel] = record
            done.add(rel)
            if rel not in parents:
                result.copied += 1
                result.copied_paths.append(rel)
        result.bytes += stream.bytes
        return done

    def _fresh_dir(self, rel: str, entries: dict[str, Any], baseline: _Baseline | None) -> bool:
        """Did putting this directory create it, rather than find one with its contents?"""
        before = _effective_entry(rel, entries)
        if before is not None:
            return before.get("kind") != "dir" or bool(before.get("fresh"))
        base = baseline.entry(rel) if baseline is not None else None
        return base is None or base.kind != "dir"

    def _missing_parents(
        self, pushes: list[str], entries: dict[str, Any], baseline: _Baseline | None
    ) -> set[str]:
        """Parent directories the workspace may not have as directories. They go first as
        directory entries, so a file or link in their place is replaced rather than written
        through, and the host's permission bits come along."""
        wanted = set(pushes)
        added: set[str] = set()
        for rel in pushes:
            parts = rel.split("/")
            for end in range(len(parts) - 1, 0, -1):
                parent = "/".join(parts[:end])
                if parent in wanted or parent in added:
                    break  # and so are its own parents
                entry = _effective_entry(parent, entries)
                if entry is not None and entry.get("kind") == "dir":
                    break
                if entry is None and baseline is not None:
                    base = baseline.entry(parent)
                    if base is not None and base.kind == "dir":
                        break
                added.add(parent)
        return added

    def _drop_baseline_matches(
        self, entries: dict[str, Any], baseline: _Baseline, clean: set[str]
    ) -> None:
        """Records of paths where the workspace holds the baseline's version again go."""
        for rel in list(entries):
            entry = entries[rel]
            kind = entry.get("kind")
            inherited = _effective_entry(rel, entries, own=False)
            if kind == "dir":
                # Only a directory that kept its contents: a fresh one's record says that
                # everything in it without a record of its own is absent.
                base = baseline.entry(rel)
                if not entry.get("fresh") and base is not None and base.kind == "dir":
                    del entries[rel]
            elif kind == "absent":
                if inherited is not None or baseline.entry(rel) is None:
                    del entries[rel]  # absent either way
            elif rel in clean and inherited is None:
                del entries[rel]  # the host equals the baseline and the workspace the host


def _effective_entry(
    rel: str, entries: dict[str, Any], *, own: bool = True
) -> dict[str, Any] | None:
    """What the manifest says the workspace holds at `rel`: its record; else nothing, below
    a directory pyro removed, replaced by a file or link, or created afresh (it holds only
    what pyro put there, each with its record); else None: the baseline's version.
    """
    if own:
        entry: dict[str, Any] | None = entries.get(rel)
        if entry is not None:
            return entry  # the record itself: a refresh updates it in place
    parts = rel.split("/")
    for end in range(len(parts) - 1, 0, -1):
        parent = entries.get("/".join(parts[:end]))
        if parent is not None and (parent.get("kind") != "dir" or parent.get("fresh")):
            return {"kind": "absent"}
    return None


def _outermost(rel: str, roots: set[str]) -> str:
    parts = rel.split("/")
    for end in range(1, len(parts)):
        ancestor = "/".join(parts[:end])
        if ancestor in roots:
            return ancestor
    return rel


def _trusted(entry: dict[str, Any], state: HostState) -> bool:
    """May the record vouch for the file without reading it? (The policy in the module doc.)"""
    if _stat_fields_of(entry) != _stat_fields(state):
        return False
    recorded = entry.get("recorded_ns")
    if not isinstance(recorded, int):
        return False
    return max(state.mtime_ns, state.ctime_ns) < recorded - RACY_NS


def _stat_fields(state: HostState) -> dict[str, int]:
    return {"mode": state.mode, "size": state.size, "mtime_ns": state.mtime_ns,
            "ctime_ns": state.ctime_ns, "ino": state.ino}  # fmt: skip


def _stat_fields_of(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry.get(k) for k in ("mode", "size", "mtime_ns", "ctime_ns", "ino")}


def _reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)


def _tree_paths(tree: Any, prefix: str = "") -> Iterator[str]:
    for obj in tree:
        path = prefix + obj.name
        yield path
        if obj.type_str == "tree":
            yield from _tree_paths(obj, path + "/")


# -- the tar stream --------------------------------------------------------------------------


class _TarStream:
    """An uncompressed tar stream of host paths, produced as the socket takes it.

    Each path is looked at again when its turn comes (it may have changed since it was
    planned). A file is read once, hashed as it is sent; its stat is checked again after,
    and a file that changed meanwhile is queued again at the end of the stream (the later
    member replaces the earlier one in the workspace), at most COPY_ATTEMPTS times.
    """

    def __init__(self, root: Path, paths: list[str]) -> None:
        self.root = root
        self.queue = [_Push(rel) for rel in paths]
        self.sent: dict[str, dict[str, Any]] = {}  # manifest records of what was sent
        self.skipped: dict[str, str] = {}
        self.late_removals: set[str] = set()
        self.bytes = 0

    def chunks(self) -> Iterator[bytes]:
        index = 0
        while index < len(self.queue):
            item = self.queue[index]
            index += 1
            yield from self._member(item)
        yield tarfile.NUL * (2 * tarfile.BLOCKSIZE)  # end of archive

    def _member(self, item: _Push) -> Iterator[bytes]:
        rel = item.rel
        path = f"{self.root}/{rel}"
        state = _lstat(path)
        self.skipped.pop(rel, None)
        if state.kind == "absent":
            self.sent.pop(rel, None)
            self.late_removals.add(rel)
            return
        self.late_removals.discard(rel)
        info = tarfile.TarInfo(rel)
        info.mtime = state.mtime_ns // 1_000_000_000
        info.mode = state.mode
        now = time.time_ns()
        if state.kind == "dir":
            info.type = tarfile.DIRTYPE
            yield _header(info)
            self.sent[rel] = {"kind": "dir", "mode": state.mode}
        elif state.kind == "symlink":
            try:
                target = os.readlink(path)
            except OSError as exc:
                self.skipped[rel] = _reason(exc)
                return
            info.type = tarfile.SYMTYPE
            info.linkname = target
            yield _header(info)
            digest = hashlib.sha256(os.fsencode(target)).hexdigest()
            self.sent[rel] = {"kind": "symlink", "target": target, "sha256": digest}
        elif state.kind == "file":
            yield from self._file(item, path, info, now)
        else:
            self.skipped[rel] = "not a regular file, directory or symlink"

    def _file(self, item: _Push, path: str, info: tarfile.TarInfo, now: int) -> Iterator[bytes]:
        rel = item.rel
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError | NotADirectoryError):
                self.late_removals.add(rel)
            elif exc.errno == 40:  # ELOOP: it became a symlink since it was looked at
                self.queue.append(_Push(rel, item.attempts + 1))
            else:
                self.skipped[rel] = _reason(exc)
            return
        with os.fdopen(fd, "rb") as f:
            before = HostState.of(os.fstat(fd))
            if before.kind != "file":
                self.skipped[rel] = "not a regular file, directory or symlink"
                return
            info.size = before.size
            info.mode = before.mode
            yield _header(info)
            digest = hashlib.sha256()
            left = before.size
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:  # shrank while being read: pad, and send it again below
                    chunk = tarfile.NUL * min(CHUNK, left)
                digest.update(chunk)
                left -= len(chunk)
                yield chunk
            padding = -before.size % tarfile.BLOCKSIZE
            if padding:
                yield tarfile.NUL * padding
            after = HostState.of(os.fstat(fd))
            grew = f.read(1) != b""
        self.bytes += before.size
        moved = _lstat(path)
        if after != before or grew or moved.ino != before.ino or moved.kind != "file":
            self.sent.pop(rel, None)
            if item.attempts + 1 < COPY_ATTEMPTS:
                self.queue.append(_Push(rel, item.attempts + 1))
            else:
                self.skipped[rel] = "kept changing while being copied; the next sync sends it"
            return
        self.sent[rel] = {"kind": "file", **_stat_fields(before), "sha256": digest.hexdigest(),
                          "recorded_ns": now}  # fmt: skip


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

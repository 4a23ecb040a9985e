"""The syncer: plans what differs between the host and the workspace and pushes it."""

from __future__ import annotations

import contextlib
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_loop import git
from pyro_loop.digest import link_digest
from pyro_loop.errors import InvalidInputError
from pyro_loop.fs.beneath import Beneath
from pyro_loop.fs.hoststate import HostState, failure_reason, lstat, sha256_file
from pyro_loop.fs.util import replace_keeping
from pyro_loop.locking import file_lock
from pyro_loop.sync.baseline import Baseline, tree_paths
from pyro_loop.sync.hostscan import GIT_BLOB
from pyro_loop.sync.manifest import (
    ManifestFile,
    effective_entry,
    manifest_digest,
    recorded_digest,
    stat_fields,
    trusted,
)
from pyro_loop.sync.paths import PathFilter
from pyro_loop.sync.result import Skipped, SyncResult
from pyro_loop.sync.tarstream import TarStream
from pyro_loop.workspace.client import AgentClient

if TYPE_CHECKING:
    import pygit2


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
        # Every host path is read through this (never through a symlinked directory); its
        # descriptors of the root and of the directories a sync went through are dropped
        # after each sync and taken again by the next.
        self.tree = Beneath(self.root, cache_dirs=True)
        self.repo = self.filter.repo
        self.client = client
        self.manifest_path = manifest_path
        self._lock_path = manifest_path.with_name(manifest_path.name + ".lock")
        self._manifest = ManifestFile(manifest_path, self.root)
        self._baseline_tree = baseline_tree
        self._base: Baseline | None = None  # kept between syncs: a baseline never changes
        # What a reconcile's look for directories found at each candidate, which the plan
        # that follows right after takes instead of asking again (one lstat a path less).
        self._looked: dict[str, HostState] = {}

    # -- public ---------------------------------------------------------------------------

    def reconcile(self) -> SyncResult:
        """Bring the workspace in line with the host: everything that differs, pushed."""
        started = time.perf_counter()
        with file_lock(self._lock_path), contextlib.closing(self.tree):
            manifest = self._manifest.load(self._baseline_tree)
            self.filter.refresh()
            if self.repo is not None:
                result = self._reconcile_repo(manifest)
            else:
                candidates = set(self._walk("")) | set(manifest["entries"])
                result = self._sync(candidates, manifest, None, clean=set())
        result.seconds = time.perf_counter() - started
        return result

    def _reconcile_repo(self, manifest: dict[str, Any]) -> SyncResult:
        """A reconcile in a git repository: the candidates are what git finds changed."""
        baseline = self._baseline(manifest)
        dirty, differs = self._git_candidates(baseline)
        dirty |= self._submodule_files()
        vouched = _vouched(differs, manifest["entries"])
        try:
            candidates = self._expand(dirty | set(manifest["entries"]), manifest, baseline,
                                      vouched)  # fmt: skip
            return self._sync(candidates, manifest, baseline, clean=candidates - dirty,
                              vouched=vouched)  # fmt: skip
        finally:
            self._looked.clear()

    def sync_paths(self, paths: Iterable[Path | str]) -> SyncResult:
        """Sync just these host paths (absolute, as a watcher reports them): files, deleted
        paths, and directories, walked: a watcher reports a directory created, moved in or
        swapped for another one by that directory's path alone, never by its contents."""
        started = time.perf_counter()
        with file_lock(self._lock_path), contextlib.closing(self.tree):
            manifest = self._manifest.load(self._baseline_tree)
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
                if lstat(self.tree, rel).kind == "dir":
                    # What it holds now, and what the workspace may hold there: the baseline's
                    # paths and pyro's own (the directory may be another one than before).
                    candidates.update(self._walk(rel))
                    if baseline is not None:
                        candidates.update(baseline.paths_under(rel))
                candidates.update(p for p in entries if p.startswith(prefix))
            result = self._sync(candidates, manifest, baseline, clean=set())
        result.seconds = time.perf_counter() - started
        return result

    def synced_paths(self) -> list[str]:
        """The paths where the workspace holds what pyro synced (the manifest's records)."""
        with file_lock(self._lock_path):
            return sorted(self._manifest.load(self._baseline_tree)["entries"])

    def replay(self, paths: Iterable[str]) -> SyncResult:
        """Sync exactly these paths (relative to the root): after a reset to the baseline,
        what `synced_paths` listed before it, so the workspace gets the host's files back
        without a look at the rest of the tree. A directory among them is one pyro made
        afresh (the manifest keeps no other): what the baseline has in it is looked at too,
        since the host may lack some of it and the workspace at its baseline has it all."""
        started = time.perf_counter()
        with file_lock(self._lock_path), contextlib.closing(self.tree):
            manifest = self._manifest.load(self._baseline_tree)
            self.filter.refresh()
            baseline = self._baseline(manifest) if self.repo is not None else None
            candidates = set(paths)
            if baseline is not None:
                for rel in list(candidates):
                    base = baseline.entry(rel)
                    if base is not None and base.kind == "dir":
                        candidates.update(baseline.paths_under(rel))
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
            self._manifest.save({"entries": {}, "baseline_tree": self._baseline_tree})

    def adopt(self, manifest: Path, *, keep: Path | None = None) -> None:
        """The workspace holds what the manifest at `manifest` says (another syncer's, which
        wrote into it while it was a standby sandbox): moved into place as this one's, the
        one it replaces kept at `keep` for the caller to delete (fs.util.replace_keeping)."""
        with file_lock(self._lock_path):
            replace_keeping(manifest, self.manifest_path, keep)

    def synced_digest(self, rel: str) -> str | None:
        """What `manifest_digest` says for `rel` in this syncer's manifest."""
        return manifest_digest(self.manifest_path, rel)

    def held_digests(self, manifest: bytes | None) -> Callable[[str], str | None]:
        """What the workspace holds at a file's path, as the host scan compares a racy file
        with (`manifest`: the manifest's text after this syncer's last sync): the sha256
        the manifest recorded where pyro put the file; where it records nothing at the path
        or above it, the workspace has the baseline's version: its git blob id (GIT_BLOB
        and the id; a link's target's sha256), so that a branch switched back to the
        baseline needs no read of the files it wrote; None when neither tells."""
        entries = self._manifest.entries_of(manifest)
        base = self._base if self.repo is not None else None

        def digest(rel: str) -> str | None:
            entry = entries.get(rel)
            if entry is not None:
                return recorded_digest(entry)
            if base is None or effective_entry(rel, entries, own=False) is not None:
                return None
            found = base.entry(rel)
            if found is None or found.kind == "dir":
                return None
            if found.kind == "symlink":
                return link_digest(found.target)
            return GIT_BLOB + found.oid

        return digest

    # -- candidates -----------------------------------------------------------------------

    @property
    def _repo(self) -> pygit2.Repository:
        """The repository, for the steps that run only in one."""
        assert self.repo is not None
        return self.repo

    def _baseline(self, manifest: dict[str, Any]) -> Baseline:
        tree = manifest.get("baseline_tree")
        if tree is None:
            tree = self._baseline_tree
        if tree is None:  # "" records an empty baseline: the repository had no commit yet
            tree = git.head_tree_id(self._repo) or ""
        manifest["baseline_tree"] = tree
        if self._base is None or self._base.tree_id != (tree or None):
            self._base = Baseline(self._repo, tree or None)
        return self._base

    def _git_candidates(self, baseline: Baseline) -> tuple[set[str], dict[str, int]]:
        """A superset of the paths where the working tree differs from the baseline: what
        differs from HEAD (git status, index and work tree, untracked but not ignored) plus
        what differs between the baseline and HEAD (after a commit or a branch switch).
        Second, the paths among them that git vouches differ from the baseline, with HEAD's
        mode there: HEAD has another file or link there than the baseline, and git status
        lists nothing for them (the work tree holds HEAD's), so no look at them needs to
        say so."""
        # Ignored entries are listed too (their directories unopened) for one case: libgit2
        # calls a symlink to a directory ignored by a directory-only pattern (`build/`),
        # where git does not; the path filter gives git's answer for those.
        status = self._repo.status(untracked_files="all", ignored=True)
        paths = {
            path
            for path, flags in status.items()
            if not flags & git.STATUS_IGNORED
            or lstat(self.tree, path.rstrip("/")).kind == "symlink"
        }
        differs: dict[str, int] = {}
        head = git.head_tree(self._repo)
        if baseline.tree is None or head is None:
            for tree in (baseline.tree, head):  # one of them empty: all of the other differs
                if tree is not None:
                    paths.update(tree_paths(tree))
        elif baseline.tree.id != head.id:
            for delta in baseline.tree.diff_to_tree(head).deltas:
                old, new = delta.old_file, delta.new_file
                paths.add(old.path)
                paths.add(new.path)
                if (old.path == new.path and old.id != new.id and new.path not in status
                        and git.MODE_SUBMODULE not in (old.mode, new.mode)):  # fmt: skip
                    differs[new.path] = new.mode
        return {p.rstrip("/") for p in paths if p}, differs

    def _submodule_files(self) -> set[str]:
        """The files of checked-out submodules: part of the checkout, though git status
        lists a submodule as one entry and the baseline holds it as an empty directory
        (its files live in another repository). Walked at each reconcile, like untracked
        files; what is unchanged since the last push is not sent again."""
        found: set[str] = set()
        for path in self._gitlinks():
            if lstat(self.tree, f"{path}/.git").kind == "absent" or not self.filter.wants(
                path, is_dir=True
            ):
                continue  # not checked out (`git submodule update` never ran), or excluded
            found.update(self._walk(path))
        return found

    def _gitlinks(self) -> list[str]:
        """The paths the index holds as submodules (gitlinks). libgit2 lists the submodules
        it knows (the index's gitlinks, HEAD's, .gitmodules') in C, in 0.2 ms where a walk
        of a 2,000-file index in Python takes 6; only the index's gitlinks count."""
        import pygit2

        index = self._repo.index
        try:
            known = self._repo.listall_submodules()
        except pygit2.GitError:  # a .gitmodules libgit2 cannot read: the index itself
            return [e.path for e in index if e.mode == git.MODE_SUBMODULE]
        paths = []
        for path in known:
            try:
                entry = index[path]
            except KeyError:
                continue
            if entry.mode == git.MODE_SUBMODULE:
                paths.append(path)
        return paths

    def _walk(self, rel: str) -> Iterator[str]:
        """Every path below `rel` ("" for the root) that takes part, directories included:
        in a directory git ignores, the files git tracks there (listed by the index: git's
        status shows them only when they differ from HEAD, so a walk alone finds them)."""
        pending = [rel]
        while pending:
            current = pending.pop()
            try:
                entries = self.tree.scandir(current)
            except OSError:
                continue  # unreadable: its own path reports it when synced
            for entry in entries:
                child = f"{current}/{entry.name}" if current else entry.name
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if self.filter.wants(child, is_dir=is_dir):
                    yield child
                    if is_dir:
                        pending.append(child)
                elif is_dir and entry.name != ".git":
                    yield from (p for p in self.filter.tracked_below(child) if self.filter.wants(p))

    def _expand(
        self,
        candidates: set[str],
        manifest: dict[str, Any],
        baseline: Baseline | None,
        vouched: dict[str, int] | None = None,
    ) -> set[str]:
        """Add the contents of candidate directories the workspace may not hold: new ones,
        and ones pyro removed or replaced before (their files may equal the baseline and so
        never show up as changed). A path git vouches for (`vouched`) is no directory."""
        expanded = set(candidates)
        entries = manifest["entries"]
        for rel in candidates:
            if vouched is not None and rel in vouched:
                continue
            state = self._looked[rel] = lstat(self.tree, rel)
            if state.kind == "dir" and not self._known_dir(rel, entries, baseline):
                expanded.update(self._walk(rel))
        return expanded

    def _known_dir(self, rel: str, entries: dict[str, Any], baseline: Baseline | None) -> bool:
        """Does the workspace hold this directory with its contents already? Not one pyro
        made afresh: that holds only what pyro put in it, and a host file there that equals
        the baseline's (which neither git nor the manifest names) must be found and put."""
        entry = effective_entry(rel, entries)
        if entry is not None:
            return bool(entry.get("kind") == "dir" and not entry.get("fresh"))
        if baseline is not None:
            base = baseline.entry(rel)
            return base is not None and base.kind == "dir"
        return False

    # -- planning and pushing -------------------------------------------------------------

    def _sync(
        self,
        candidates: set[str],
        manifest: dict[str, Any],
        baseline: Baseline | None,
        *,
        clean: set[str],
        vouched: dict[str, int] | None = None,
    ) -> SyncResult:
        """Push what differs among `candidates`. `clean` are paths known to equal the
        baseline on the host (reconcile): once the workspace matches them, their records go.
        `vouched` are paths pushed without a look of their own (`_vouched`), with HEAD's
        mode there.
        """
        result = SyncResult()
        entries: dict[str, Any] = manifest["entries"]
        pushes: list[str] = []
        files: set[str] = set()  # the pushes known to be regular files just now
        removals: list[str] = []
        settled: set[str] = set()  # the workspace holds the host's version already
        now = time.time_ns()
        for rel in sorted(candidates):
            try:
                action, is_file = self._plan(rel, entries, baseline, now, vouched)
            except OSError as exc:
                result.skipped.append(Skipped(rel, failure_reason(exc)))
                continue
            if action == "push":
                pushes.append(rel)
                if is_file:
                    files.add(rel)
            elif action == "remove":
                removals.append(rel)
            elif action == "not synced":
                entries.pop(rel, None)  # excluded or ignored since: no longer pyro's to sync
            elif action.startswith("skip:"):
                result.skipped.append(Skipped(rel, action[5:]))
            else:
                settled.add(rel)
        try:
            if removals:
                self._remove(removals, entries, result)
            if pushes:
                settled.update(self._push(pushes, files, manifest, baseline, result))
            if baseline is not None:
                self._drop_baseline_matches(entries, baseline, clean & settled)
        finally:
            self._manifest.save(manifest)
        return result

    def _plan(
        self,
        rel: str,
        entries: dict[str, Any],
        baseline: Baseline | None,
        now: int,
        vouched: dict[str, int] | None,
    ) -> tuple[str, bool]:
        """What to do with candidate `rel`: "not synced" (excluded or ignored), or what
        `_decide` says; and whether it is a regular file (a push the stream opens at once)."""
        # Whether it is a directory, from the look the reconcile just took if it found the
        # path (else the filter looks, following a symlinked parent as git does).
        looked = self._looked.get(rel)
        is_dir = None if looked is None or looked.kind == "absent" else looked.kind == "dir"
        mode = None if vouched is None else vouched.get(rel)
        if not self.filter.wants(rel, is_dir=is_dir if mode is None else False):
            return "not synced", False
        if mode is not None:  # HEAD's version is there, not the baseline's: it goes
            return "push", stat.S_ISREG(mode)
        # Absent below a symlinked directory: no repository path.
        state = self._looked.pop(rel, None) or lstat(self.tree, rel)
        action = self._decide(rel, state, effective_entry(rel, entries), baseline, now)
        return action, state.kind == "file"

    def _decide(
        self,
        rel: str,
        state: HostState,
        entry: dict[str, Any] | None,
        base: Baseline | None,
        now: int,
    ) -> str:
        """ "push", "remove", "skip:<reason>", "refresh" (record updated) or "same", for
        `rel` found as `state` on the host just now."""
        if state.kind == "other":
            return "skip:not a regular file, directory or symlink"
        if entry is None:  # the workspace has the baseline's version
            if base is not None and base.matches(rel, self.tree, state):
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
            return "same" if self.tree.readlink(rel) == entry.get("target") else "push"
        if state.mode != entry.get("mode") or state.size != entry.get("size"):
            return "push"
        if trusted(entry, state):
            return "same"
        if sha256_file(self.tree, rel) != entry.get("sha256"):
            return "push"
        # Same content: vouch for the current stat from now on (racy until it settles).
        entry.update(stat_fields(state), recorded_ns=now)
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
            if lstat(self.tree, parent).kind != "absent":
                break
            if not self.filter.wants(parent, is_dir=True):
                break  # an excluded directory stays the workspace's business
            top = parent
        return top

    def _push(
        self,
        pushes: list[str],
        files: set[str],
        manifest: dict[str, Any],
        baseline: Baseline | None,
        result: SyncResult,
    ) -> set[str]:
        """Send `pushes` in one tar stream (`files`: those known to be regular files just
        now); returns the paths the workspace now has."""
        entries: dict[str, Any] = manifest["entries"]
        put = _put_paths(manifest)
        parents = self._missing_parents(pushes, entries, baseline)
        stream = TarStream(self.tree, sorted(set(pushes) | parents), files)
        reply = self.client.put_tar(stream.chunks(), reuse=_reusable(pushes, put))
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
            if record["kind"] == "file":
                put.add(rel)
            if rel not in parents:
                result.copied += 1
                result.copied_paths.append(rel)
        result.bytes += stream.bytes
        manifest["put"] = sorted(put)
        return done

    def _fresh_dir(self, rel: str, entries: dict[str, Any], baseline: Baseline | None) -> bool:
        """Did putting this directory create it, rather than find one with its contents?"""
        before = effective_entry(rel, entries)
        if before is not None:
            return before.get("kind") != "dir" or bool(before.get("fresh"))
        base = baseline.entry(rel) if baseline is not None else None
        return base is None or base.kind != "dir"

    def _missing_parents(
        self, pushes: list[str], entries: dict[str, Any], baseline: Baseline | None
    ) -> set[str]:
        """Parent directories the workspace may not have as directories. They go first as
        directory entries, so a file or link in their place is replaced rather than written
        through, and the host's permission bits come along."""
        wanted = set(pushes)
        added: set[str] = set()
        present: set[str] = set()  # parents the workspace has: asked once, not once a push
        for rel in pushes:
            parts = rel.split("/")
            for end in range(len(parts) - 1, 0, -1):
                parent = "/".join(parts[:end])
                if parent in wanted or parent in added or parent in present:
                    break  # and so are its own parents
                entry = effective_entry(parent, entries)
                if entry is not None and entry.get("kind") == "dir":
                    present.add(parent)
                    break
                if entry is None and baseline is not None:
                    base = baseline.entry(parent)
                    if base is not None and base.kind == "dir":
                        present.add(parent)
                        break
                added.add(parent)
        return added

    def _drop_baseline_matches(
        self, entries: dict[str, Any], baseline: Baseline, clean: set[str]
    ) -> None:
        """Records of paths where the workspace holds the baseline's version again go."""
        for rel in list(entries):
            entry = entries[rel]
            kind = entry.get("kind")
            inherited = effective_entry(rel, entries, own=False)
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


REUSE_BYTES = 1024 * 1024  # of paths named in a put_tar request's `reuse` (a JSON frame)


def _put_paths(manifest: dict[str, Any]) -> set[str]:
    """The paths where pyro put a file in this workspace since its manifest started: the
    workspace's own layer holds them (until a reset, which starts a new manifest), even
    where a record went because the file is the baseline's again."""
    put = manifest.get("put")
    if not isinstance(put, list):
        return set()
    return {rel for rel in put if isinstance(rel, str)}


def _reusable(pushes: list[str], put: set[str]) -> list[str]:
    """The pushes whose file in the workspace pyro put there: the agent may write later
    files into their inodes (agent/recycle.py). Bounded, to keep the request one frame."""
    reuse: list[str] = []
    budget = REUSE_BYTES
    for rel in pushes:
        if rel in put:
            budget -= len(rel.encode("utf-8", "surrogateescape")) + 4
            if budget < 0:
                break
            reuse.append(rel)
    return reuse


def _vouched(differs: dict[str, int], entries: dict[str, Any]) -> dict[str, int]:
    """Of the paths git vouches differ from the baseline (with HEAD's mode there), those
    where the workspace still holds the baseline's version (no record at the path or above
    it): the host holds another one, HEAD's, so each is pushed without a look at it here
    (the stream looks, and sends what it finds)."""
    return {rel: mode for rel, mode in differs.items() if effective_entry(rel, entries) is None}


def _outermost(rel: str, roots: set[str]) -> str:
    parts = rel.split("/")
    for end in range(1, len(parts)):
        ancestor = "/".join(parts[:end])
        if ancestor in roots:
            return ancestor
    return rel

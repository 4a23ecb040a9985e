"""The host scan: has anything in the host's tree changed since the last sync? One pass of
lstat calls over a stored record, without git and without listing a directory.

A record holds the stat data (mode, size, mtime, ctime, inode) of every directory that takes
part in sync and every file and symlink in them (ignored directories are not entered; the
files git tracks inside them are recorded one by one), taken right BEFORE a full sync read
the host. It is bound to the sync manifest that sync left (its digest) and to the workspace
(id, generation, baseline tree, exclude rules): anything else that syncs or resets changes one
of those, and the record no longer vouches for anything.

Why equal stat data means nothing to sync: creating, deleting or renaming an entry changes its
directory's mtime; writing a file changes its mtime and ctime, and ctime cannot be set from
user space; so a path whose stat data all equal the record holds what the sync read, unless
it was written in the same timestamp tick right after its lstat (git's "racy" case). Entries
that recent are marked racy when the record is taken: their content (files) or their listing
(directories) is compared again on every check, so they vouch only for what they hold.

What the check cannot see, it does not vouch for: git's own control files (the index, info
exclude files, the repository's and the user's config and ignore files) are recorded too.

The record is two files: the stat data (large: a path per file of the tree) and, beside it in
`<name>.bind`, what it is bound to (workspace, manifest digest, rules), tied to that stat
data by a random token. A reset moves the binding to the new workspace without reading or
writing the stat data, so it costs the same whatever the repository's size. The stat data are
kept packed (the paths as one string, the numbers as arrays of machine integers): a check
reads 20,000 of them in a few milliseconds, where a dictionary of tuples took ten times as
long to load.
"""

from __future__ import annotations

import array
import contextlib
import marshal
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyro_loop.digest import file_sha256, sha256_hex
from pyro_loop.git import common_dir

RECORD_VERSION = 1
# A write in the same timestamp tick as a record's lstat keeps its mtime: files whose times are
# this close to the record are compared by content. Timestamps in whole seconds come from a
# filesystem that keeps no finer ones (FAT keeps 2 s): then the window is 2 s. Otherwise the
# tick is the kernel's coarse clock, one jiffy (at most 10 ms): 50 ms leaves a wide margin.
FINE_RACY_NS = 50_000_000
COARSE_RACY_NS = 2_000_000_000

Stat = tuple[int, int, int, int, int]  # mode, size, mtime_ns, ctime_ns, inode


def stat_of(path: str) -> Stat | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def file_digest(path: str) -> str | None:
    """sha256 of a file's content, or of a symlink's target (as the manifest records them)."""
    try:
        if os.path.islink(path):
            return sha256_hex(os.fsencode(os.readlink(path)))
        with open(path, "rb") as f:
            return file_sha256(f)
    except OSError:
        return None


def control_files(git_dir: Path | None) -> list[str]:
    """Files outside the tree that change which paths take part in sync."""
    paths: list[str] = []
    if git_dir is not None:
        for base in dict.fromkeys((git_dir, common_dir(git_dir))):
            paths += [str(base / "index"), str(base / "info" / "exclude"), str(base / "config")]
    home = os.path.expanduser("~")
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    paths += [os.path.join(home, ".gitconfig"), os.path.join(config_home, "git", "config"),
              os.path.join(config_home, "git", "ignore")]  # fmt: skip
    return paths


class HostScan:
    """The stored record of one project workspace's host tree (see the module doc)."""

    def __init__(self, path: Path, root: Path, git_dir: Path | None, *, workspace: Any,
                 rules: Any) -> None:  # fmt: skip
        self.path = path
        self.bind_path = path.with_name(path.name + ".bind")
        self.root = str(root).rstrip("/")
        self.controls = control_files(git_dir)
        # The workspace the record vouches for (id, generation), and what decides which
        # paths take part and against what (baseline tree, exclude rules).
        self.workspace = workspace
        self.identity = (RECORD_VERSION, self.root, rules)

    # -- checking ---------------------------------------------------------------------------

    def current(self, manifest: bytes | None, *, any_workspace: bool = False) -> bool:
        """Does the record vouch that the host holds what the workspace got from it?

        `manifest` is the sync manifest's text as it is now (None when there is none).
        `any_workspace`: is the host unchanged since that manifest's sync, whichever
        workspace (of the same baseline) it was for? A new one then needs only its paths.
        """
        return self.changes(manifest, any_workspace=any_workspace) == []

    def changes(self, manifest: bytes | None, *, any_workspace: bool = False) -> list[str] | None:
        """The recorded paths that changed since the record (their stat data, or a racy
        entry's content or listing); None when the record cannot tell (none was kept for
        this manifest and workspace, or git's control files changed)."""
        loaded = self._stat_data(manifest, any_workspace=any_workspace)
        if loaded is None:
            return None
        record, (paths, numbers, inos) = loaded
        prefix = self.root + "/"
        lstat = os.lstat  # the loop runs once per path in the tree: kept lean
        changed = []
        i = 0
        for rel, ino in zip(paths, inos, strict=True):
            try:
                st = lstat(prefix + rel)  # "" names the root ("root/")
            except OSError:
                changed.append(rel)
            else:
                if (st.st_ino != ino or st.st_mtime_ns != numbers[i + 2]
                        or st.st_ctime_ns != numbers[i + 3] or st.st_size != numbers[i + 1]
                        or st.st_mode != numbers[i]):  # fmt: skip
                    changed.append(rel)
            i += 4
        seen = set(changed)
        for rel, names in record["racy_dirs"].items():
            if rel not in seen and _listing(prefix + rel) != names:
                changed.append(rel)
        for rel, digest in record["racy_files"].items():
            if rel not in seen and file_digest(prefix + rel) != digest:
                changed.append(rel)
        return changed

    def _stat_data(self, manifest: bytes | None, *,
                   any_workspace: bool) -> tuple[dict[str, Any], Unpacked] | None:  # fmt: skip
        """The stored stat data, unpacked, if the record vouches for `manifest` (and this
        workspace) and git's control files are as recorded; else None."""
        bind = self._load_bind()
        if bind is None or not self.bound_to(manifest, bind):
            return None
        if not any_workspace and bind["workspace"] != self.workspace:
            return None
        record = _read_marshal(self.path, _DATA_KEYS)  # read once the binding holds
        if record is None or record["token"] != bind["token"]:
            return None
        if any(stat_of(path) != known for path, known in record["controls"].items()):
            return None
        unpacked = _unpack(record)
        return None if unpacked is None else (record, unpacked)

    def bound_to(self, manifest: bytes | None, record: dict[str, Any] | None = None) -> bool:
        """Was the record taken for this manifest (under the same rules)? Then the manifest
        lists every path where the host differed from the baseline at that sync. (Reads
        only the binding, not the stat data.)"""
        record = record or self._load_bind()
        return (record is not None and manifest is not None
                and record["identity"] == self.identity
                and record["manifest"] == _digest(manifest))  # fmt: skip

    def _load(self) -> dict[str, Any] | None:
        """The stat data and its binding, as one dict; None unless both are there and agree."""
        bind = self._load_bind()
        if bind is None:
            return None
        data = _read_marshal(self.path, _DATA_KEYS)
        if data is None or data["token"] != bind["token"]:
            return None
        unpacked = _unpack(data)
        if unpacked is None:
            return None
        paths, numbers, inos = unpacked
        rows = zip(*[iter(numbers)] * 4, strict=True)
        entries = {rel: (*row, ino) for rel, row, ino in zip(paths, rows, inos, strict=True)}
        return {**data, **bind, "entries": entries}

    def _load_bind(self) -> dict[str, Any] | None:
        return _read_marshal(self.bind_path, _BIND_KEYS)

    # -- recording --------------------------------------------------------------------------

    def take(self, wants_dir: Callable[[str], bool], tracked_under: Callable[[str], list[str]],
             excluded: Callable[[str], bool]) -> dict[str, Any]:  # fmt: skip
        """Stat the tree now, before a sync reads it. `wants_dir(rel)`: is a directory synced
        (not ignored, not excluded)? `tracked_under(rel)`: the files git tracks below an
        ignored directory. `excluded(rel)`: is a file excluded by the [sync] rules?"""
        rules = (wants_dir, tracked_under, excluded)
        recorded = _now_ns()
        controls = {path: stat_of(path) for path in self.controls}
        entries: dict[str, Stat | None] = {}
        racy_dirs: dict[str, list[str]] = {}
        self._walk([""], entries, racy_dirs, recorded, rules)
        return {"recorded": recorded, "controls": controls, "entries": entries,
                "racy_dirs": racy_dirs}  # fmt: skip

    def _walk(self, pending: list[str], entries: dict[str, Stat | None],
              racy_dirs: dict[str, list[str]], recorded: int,
              rules: tuple[Callable[[str], Any], ...]) -> None:  # fmt: skip
        """Record the directories in `pending` and everything that takes part below them."""
        while pending:
            rel = pending.pop()
            path = f"{self.root}/{rel}" if rel else self.root
            known = stat_of(path)
            if known is None:
                continue
            entries[rel] = known
            try:
                with os.scandir(path) as it:
                    listing = list(it)
            except OSError:
                continue  # unreadable: its stat is recorded, the sync reports what it cannot read
            if _racy(known, recorded):
                racy_dirs[rel] = sorted(e.name for e in listing)
            for entry in listing:
                if entry.name != ".git":
                    child = f"{rel}/{entry.name}" if rel else entry.name
                    self._visit(entry, child, entries, pending, rules)

    def _visit(self, entry: os.DirEntry[str], rel: str, entries: dict[str, Stat | None],
               pending: list[str], rules: tuple[Callable[[str], Any], ...]) -> None:  # fmt: skip
        wants_dir, tracked_under, excluded = rules
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir and wants_dir(rel):
            pending.append(rel)
        elif is_dir:  # ignored or excluded: only what git tracks in it takes part
            for tracked in tracked_under(rel):
                entries[tracked] = stat_of(f"{self.root}/{tracked}")
        elif not excluded(rel):
            found = stat_of(entry.path)
            if found is not None:
                entries[rel] = found

    # -- a few paths changed ----------------------------------------------------------------

    def delta(self, changed: list[str], wants_dir: Callable[[str], bool],
              tracked_under: Callable[[str], list[str]],
              excluded: Callable[[str], bool]) -> dict[str, Any] | None:  # fmt: skip
        """Stat what `changes` reported, now, before a sync reads it: a file's new state; a
        directory's, and its entries added (walked) or gone since the record. Returns the
        paths to sync and the record's new entries, or None when only a full sync will do
        (a directory's permissions changed)."""
        rules = (wants_dir, tracked_under, excluded)
        record = self._load()
        if record is None:
            return None
        entries: dict[str, Stat] = record["entries"]
        recorded = _now_ns()
        updates: dict[str, Stat | None] = {}
        racy_dirs: dict[str, list[str]] = {}
        drop: set[str] = set()
        paths: set[str] = set()
        children: dict[str, set[str]] | None = None
        for rel in changed:
            known = entries.get(rel)
            now = stat_of(f"{self.root}/{rel}" if rel else self.root)
            was_dir = known is not None and stat.S_ISDIR(known[0])
            is_dir = now is not None and stat.S_ISDIR(now[0])
            if was_dir and is_dir:
                assert known is not None and now is not None
                if stat.S_IMODE(known[0]) != stat.S_IMODE(now[0]):
                    return None
                if children is None:
                    children = _children(entries)
                updates[rel] = now
                names = _listing(f"{self.root}/{rel}" if rel else self.root)
                if names is None:
                    return None
                if _racy(now, recorded):
                    racy_dirs[rel] = names
                current = {n for n in names if n != ".git"}
                before = children.get(rel, set())
                for name in sorted(current - before):
                    child = f"{rel}/{name}" if rel else name
                    self._add(child, updates, racy_dirs, paths, recorded=recorded, rules=rules)
                for name in before - current:
                    child = f"{rel}/{name}" if rel else name
                    drop.add(child)
                    paths.add(child)
                continue
            drop.add(rel)
            paths.add(rel)
            if is_dir:  # was a file or link: what is there now
                self._add(rel, updates, racy_dirs, paths, recorded=recorded, rules=rules)
            elif now is not None:
                updates[rel] = now
        return {"recorded": recorded, "updates": updates, "drop": drop,
                "paths": sorted(paths), "racy_dirs": racy_dirs}  # fmt: skip

    def _add(self, rel: str, updates: dict[str, Stat | None], racy_dirs: dict[str, list[str]],
             paths: set[str], *, recorded: int,
             rules: tuple[Callable[[str], Any], ...]) -> None:  # fmt: skip
        """A path new to the record: recorded (a directory walked) if it takes part."""
        wants_dir, _tracked_under, excluded = rules
        now = stat_of(f"{self.root}/{rel}")
        if now is None:
            return
        if stat.S_ISDIR(now[0]):
            if wants_dir(rel):
                self._walk([rel], updates, racy_dirs, recorded, rules)
                paths.add(rel)
        elif not excluded(rel):
            updates[rel] = now
            paths.add(rel)

    def apply(self, delta: dict[str, Any], manifest: bytes | None,
              digests: Callable[[str], str | None],
              wanted: Callable[[str], bool]) -> None:  # fmt: skip
        """Fold a delta into the record once its paths are synced; bound to the manifest
        that sync left."""
        record = self._load()
        if record is None or manifest is None:
            return
        drop: set[str] = delta["drop"]
        if drop:
            prefixes = tuple(f"{rel}/" for rel in drop)
            for table in ("entries", "racy_files", "racy_dirs"):
                record[table] = {rel: value for rel, value in record[table].items()
                                 if rel not in drop and not rel.startswith(prefixes)}  # fmt: skip
        recorded = delta["recorded"]
        for rel, known in delta["updates"].items():
            if known is None:
                self.forget()  # a tracked file vanished while being recorded
                return
            record["entries"][rel] = known
            record["racy_files"].pop(rel, None)
            record["racy_dirs"].pop(rel, None)
            if not _racy(known, recorded):
                continue
            if stat.S_ISDIR(known[0]):
                if rel not in delta["racy_dirs"]:
                    self.forget()
                    return
                record["racy_dirs"][rel] = delta["racy_dirs"][rel]
                continue
            digest = self._racy_digest(rel, digests, wanted)
            if digest is None:
                self.forget()  # recent, and not known to match: nothing to vouch with
                return
            if digest:
                record["racy_files"][rel] = digest
            else:
                del record["entries"][rel]
        record["manifest"] = _digest(manifest)
        self._write(record)

    def save(self, taken: dict[str, Any], manifest: bytes | None,
             digests: Callable[[str], str | None],
             wanted: Callable[[str], bool]) -> None:  # fmt: skip
        """Keep what `take` found, bound to the manifest the sync left. `digests(rel)`: what
        the workspace holds at a racy file (the manifest's digest), None if unknown;
        `wanted(rel)`: does the file take part in sync (a racy file that does not is simply
        not recorded: its changes never matter, and the directory notices it go or come)."""
        if manifest is None:
            return
        recorded = taken["recorded"]
        racy_files: dict[str, str] = {}
        for rel, known in taken["entries"].items():
            if known is None:
                self.forget()  # a tracked file vanished while being recorded
                return
            if rel in taken["racy_dirs"] or not _racy(known, recorded):
                continue
            digest = self._racy_digest(rel, digests, wanted)
            if digest is None:
                self.forget()  # recent, and not known to match: nothing to vouch with
                return
            racy_files[rel] = digest
        for rel in [r for r, d in racy_files.items() if not d]:
            del racy_files[rel], taken["entries"][rel]
        data = {"identity": self.identity, "workspace": self.workspace,
                "manifest": _digest(manifest),
                "controls": taken["controls"], "entries": taken["entries"],
                "racy_files": racy_files, "racy_dirs": taken["racy_dirs"]}  # fmt: skip
        self._write(data)

    def _racy_digest(self, rel: str, digests: Callable[[str], str | None],
                     wanted: Callable[[str], bool]) -> str | None:  # fmt: skip
        """What a racy file is compared with: the manifest's digest if it matches the host's
        content; "" for a file that takes no part (not to be recorded); None: no way to tell."""
        digest = digests(rel)
        if digest is not None and digest == file_digest(f"{self.root}/{rel}"):
            return digest
        if digest is None and not wanted(rel):
            return ""
        return None

    def rebind(self, old_manifest: bytes | None, new_manifest: bytes | None) -> None:
        """The workspace was reset (or made anew) and pyro's synced files put back: a record
        that vouched for the old manifest vouches for the new one, for this workspace. Only
        the binding is rewritten: the stat data stay as they are."""
        bind = self._load_bind()
        if (bind is None or old_manifest is None or new_manifest is None
                or bind["manifest"] != _digest(old_manifest)
                or bind["identity"] != self.identity):  # fmt: skip
            self.forget()
            return
        bind["workspace"] = self.workspace
        bind["manifest"] = _digest(new_manifest)
        _write_marshal(self.bind_path, bind)

    def forget(self) -> None:
        for path in (self.bind_path, self.path):  # the binding first: without it, no record
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _write(self, data: dict[str, Any]) -> None:
        """Both files: the stat data under a new token, then the binding naming it (a reader
        between the two sees tokens that differ, which is no record)."""
        data = {**data, **_pack(data["entries"]), "token": os.urandom(16).hex()}
        _write_marshal(self.path, {key: data[key] for key in _DATA_KEYS})
        _write_marshal(self.bind_path, {key: data[key] for key in _BIND_KEYS})


_DATA_KEYS = frozenset({"token", "controls", "paths", "numbers", "inos", "racy_files",
                        "racy_dirs"})  # fmt: skip
_BIND_KEYS = frozenset({"token", "identity", "workspace", "manifest"})


def _read_marshal(path: Path, keys: frozenset[str]) -> dict[str, Any] | None:
    try:
        data = marshal.loads(path.read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    if not isinstance(data, dict) or set(data) != keys:
        return None
    return data


def _write_marshal(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Not fsynced: a record lost in a crash only costs one full sync.
    tmp.write_bytes(marshal.dumps(data))
    os.replace(tmp, path)


def _pack(entries: dict[str, Stat]) -> dict[str, bytes]:
    """The stat data as stored: paths joined by NUL (which no path holds); mode, size,
    mtime and ctime as signed 64-bit integers, four per path; inodes unsigned (overlayfs
    may set their top bit)."""
    numbers = array.array("q")
    inos = array.array("Q")
    for mode, length, mtime, ctime, ino in entries.values():
        numbers.extend((mode, length, mtime, ctime))
        inos.append(ino)
    paths = "\0".join(entries).encode("utf-8", "surrogateescape")
    return {"paths": paths, "numbers": numbers.tobytes(), "inos": inos.tobytes()}


Unpacked = tuple[list[str], "array.array[int]", "array.array[int]"]


def _unpack(data: dict[str, Any]) -> Unpacked | None:
    """(paths, numbers, inodes) of stored stat data; None when they do not fit together."""
    try:
        numbers = array.array("q")
        numbers.frombytes(data["numbers"])
        inos = array.array("Q")
        inos.frombytes(data["inos"])
        text = data["paths"].decode("utf-8", "surrogateescape")
    except (ValueError, TypeError, AttributeError):
        return None
    paths = text.split("\0") if inos else []  # one path, the root's, is "": not none
    if len(inos) != len(paths) or len(numbers) != 4 * len(paths):
        return None
    return paths, numbers, inos


def _listing(path: str) -> list[str] | None:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return None


def _children(entries: dict[str, Stat]) -> dict[str, set[str]]:
    """Each recorded directory's recorded entries, by name."""
    found: dict[str, set[str]] = {}
    for rel in entries:
        if rel:
            parent, _, name = rel.rpartition("/")
            found.setdefault(parent, set()).add(name)
    return found


def _racy(known: Stat, recorded: int) -> bool:
    _mode, _size, mtime, ctime, _ino = known
    whole = mtime % 1_000_000_000 == 0 and ctime % 1_000_000_000 == 0
    window = COARSE_RACY_NS if whole else FINE_RACY_NS
    return max(mtime, ctime) >= recorded - window


def _now_ns() -> int:
    import time

    return time.time_ns()


def _digest(manifest: bytes) -> str:
    return sha256_hex(manifest)

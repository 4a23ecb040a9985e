"""The host scan: has anything in the host's tree changed since the last sync? One pass of
lstat calls over a stored record, without git and without listing a directory; or, while the
change journal (journal.py) vouches for the record, an lstat of just the paths it names.

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
long to load; and an edit's new stat data are written into them in place.
"""

from __future__ import annotations

import array
import contextlib
import marshal
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_loop.digest import file_git_blob_id, file_sha256, link_digest, sha256_hex
from pyro_loop.git import common_dir

if TYPE_CHECKING:
    from pyro_loop.sync.journal import JournalClient, Token

RECORD_VERSION = 2
# A write in the same timestamp tick as a record's lstat keeps its mtime: files whose times are
# this close to the record are compared by content. Timestamps in whole seconds come from a
# filesystem that keeps no finer ones (FAT keeps 2 s): then the window is 2 s. Otherwise the
# tick is the kernel's coarse clock, one jiffy (at most 10 ms): 50 ms leaves a wide margin.
FINE_RACY_NS = 50_000_000
COARSE_RACY_NS = 2_000_000_000

Stat = tuple[int, int, int, int, int]  # mode, size, mtime_ns, ctime_ns, inode


def stat_data(st: os.stat_result) -> Stat:
    """What the record keeps of a stat result: what tells two versions of a path apart."""
    return (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def stat_of(path: str) -> Stat | None:
    try:
        return stat_data(os.lstat(path))
    except OSError:
        return None


# A racy file's digest given as the git blob id of the baseline's version (the workspace
# holds that), rather than as a sha256 of its content: the file is then hashed as git does.
GIT_BLOB = "git:"


def racy_file_changed(path: str, digest: str) -> bool:
    """Does the file at `path` no longer hold the content `digest` names?"""
    if digest.startswith(GIT_BLOB):
        return git_blob_digest(path) != digest[len(GIT_BLOB) :]
    return file_digest(path) != digest


def git_blob_digest(path: str) -> str | None:
    """The id git gives the content of the regular file at `path` (None: none there)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        return file_git_blob_id(f, st.st_size) if stat.S_ISREG(st.st_mode) else None


def file_digest(path: str) -> str | None:
    """sha256 of a file's content, or of a symlink's target (as the manifest records them)."""
    try:
        if os.path.islink(path):
            return link_digest(os.readlink(path))
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
                 rules: Any, journal: JournalClient | None = None) -> None:  # fmt: skip
        self.path = path
        self.bind_path = path.with_name(path.name + ".bind")
        self.root = str(root).rstrip("/")
        self.controls = control_files(git_dir)
        # The workspace the record vouches for (id, generation), and what decides which
        # paths take part and against what (baseline tree, exclude rules).
        self.workspace = workspace
        self.identity = (RECORD_VERSION, self.root, rules)
        # The change journal (journal.py), when one serves: a check then looks only at what
        # it names. `token` is where the last check left it, for the record written next.
        self.journal = journal
        self.token: Token | None = None
        self.rewatch: set[str] = set()  # directories the journal lost its watch on

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
        record, bind, numbers, inos = loaded.data, loaded.bind, loaded.numbers, loaded.inos
        now = _now_ns()  # before any racy entry is read
        answer = None
        if self.journal is not None and bind["journal"] is not None:
            answer = self.journal.since(bind["journal"])
        if answer is not None:  # only what the journal names, and what no watch sees
            named, self.token = answer
            # Directories no longer the ones watched at their paths: whatever is there now
            # is recorded afresh and watched (delta).
            self.rewatch = {rel[:-1] for rel in named if rel.endswith("/")}
            named = [rel for rel in named if not rel.endswith("/")] + sorted(self.rewatch)
            looked = _locate(record["paths"], [*named, *record["unwatched"]])
        else:  # every path, with the watches set first: from now on, the journal counts
            paths = _split(record["paths"]) if inos else []
            looked = list(enumerate(paths))
            if self.journal is not None:
                self.token = self.journal.watch(_dirs(paths, numbers))
        changed = _compare(self.root, looked, numbers, inos)
        prefix = self.root + "/"
        seen = set(changed)
        for rel, names in record["racy_dirs"].items():
            if rel not in seen and _listing(prefix + rel) != names:
                changed.append(rel)
        for rel, digest in record["racy_files"].items():
            if rel not in seen and racy_file_changed(prefix + rel, digest):
                changed.append(rel)
        if not changed:
            self._settle_racy(record, numbers, inos, now)
            if self.token is not None and self.token != bind["journal"]:
                _write_marshal(self.bind_path, {**bind, "journal": self.token})
        return changed

    def _settle_racy(self, record: dict[str, Any], numbers: array.array[int],
                     inos: array.array[int], now: int) -> None:  # fmt: skip
        """Racy entries that held what the record says (their content or listing read just
        now, after `now`), whose stat data are still the record's and no longer recent at
        `now`: from now on their stat data vouch for them, as for every other entry (any
        later change gives them a later time). Without this, every check after a branch
        switch synced at once would read all of the files it wrote, until a full sync."""
        racy = [*record["racy_files"], *record["racy_dirs"]]
        if not racy:
            return
        settled = set()
        for i, rel in _locate(record["paths"], racy):
            j = 4 * i
            known = (numbers[j], numbers[j + 1], numbers[j + 2], numbers[j + 3], inos[i])
            if not _racy(known, now) and stat_of(f"{self.root}/{rel}") == known:
                settled.add(rel)
        if settled:
            for table in ("racy_files", "racy_dirs"):
                record[table] = {k: v for k, v in record[table].items() if k not in settled}
            # The same token: the binding still names these stat data.
            _write_marshal(self.path, {key: record[key] for key in _DATA_KEYS})

    def _stat_data(self, manifest: bytes | None, *, any_workspace: bool) -> _Packed | None:
        """The stored stat data and binding, if the record vouches for `manifest` (and this
        workspace) and git's control files are as recorded; else None."""
        bind = self._load_bind()
        if bind is None or not self.bound_to(manifest, bind):
            return None
        if not any_workspace and bind["workspace"] != self.workspace:
            return None
        record = self._packed(bind)  # the stat data are read once the binding holds
        if record is None:
            return None
        if any(stat_of(path) != known for path, known in record.data["controls"].items()):
            return None
        return record

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
        record = self._packed()
        if record is None:
            return None
        paths = _split(record.data["paths"]) if record.inos else []
        rows = zip(*[iter(record.numbers)] * 4, strict=True)
        entries = {rel: (*row, ino) for rel, row, ino in zip(paths, rows, record.inos, strict=True)}
        return {**record.data, **record.bind, "entries": entries}

    def _load_bind(self) -> dict[str, Any] | None:
        return _read_marshal(self.bind_path, _BIND_KEYS)

    # -- recording --------------------------------------------------------------------------

    def take(self, wants_dir: Callable[[str], bool], tracked_under: Callable[[str], list[str]],
             excluded: Callable[[str], bool]) -> dict[str, Any]:  # fmt: skip
        """Stat the tree now, before a sync reads it. `wants_dir(rel)`: is a directory synced
        (not ignored, not excluded)? `tracked_under(rel)`: the files git tracks below an
        ignored directory. `excluded(rel)`: is a file excluded by the [sync] rules?"""
        rules = (wants_dir, tracked_under, excluded)
        # The directories the last record held are watched before the walk looks at them:
        # the new record then holds a token for them (save watches the others).
        watched: set[str] = set()
        if self.journal is not None:
            watched = set(self._recorded_dirs())
            self.token = self.journal.watch(sorted(watched))
        recorded = _now_ns()
        controls = {path: stat_of(path) for path in self.controls}
        entries: dict[str, Stat | None] = {}
        racy_dirs: dict[str, list[str]] = {}
        self._walk([""], entries, racy_dirs, recorded, rules)
        return {"recorded": recorded, "controls": controls, "entries": entries,
                "racy_dirs": racy_dirs, "watched": watched}  # fmt: skip

    def _recorded_dirs(self) -> list[str]:
        """The directories the stored stat data hold (whatever they are bound to)."""
        data = _read_marshal(self.path, _DATA_KEYS)
        unpacked = None if data is None else _unpack(data)
        return [] if unpacked is None else _dirs(unpacked[0], unpacked[1])

    def _walk(self, pending: list[str], entries: dict[str, Stat | None],
              racy_dirs: dict[str, list[str]], recorded: int,
              rules: tuple[Callable[[str], Any], ...]) -> None:  # fmt: skip
        """Record the directories in `pending` and everything that takes part below them.
        A directory is opened (never through a link) and its files looked at from its
        descriptor: no walk of their paths from the root, one file of thousands at a time."""
        while pending:
            rel = pending.pop()
            path = f"{self.root}/{rel}" if rel else self.root
            try:
                fd = os.open(path, _DIR_FLAGS)
            except OSError:  # unreadable, or no directory by now: its own stat is recorded
                found = stat_of(path)
                if found is not None:
                    entries[rel] = found
                continue
            try:
                known = entries[rel] = stat_data(os.fstat(fd))
                with os.scandir(fd) as it:
                    listing = list(it)
                if _racy(known, recorded):
                    racy_dirs[rel] = sorted(e.name for e in listing)
                self._visit(fd, rel, listing, entries=entries, pending=pending, rules=rules)
            except OSError:
                continue  # unreadable: its stat is recorded, the sync reports what it cannot read
            finally:
                os.close(fd)

    def _visit(self, fd: int, rel: str, listing: list[os.DirEntry[str]], *,
               entries: dict[str, Stat | None], pending: list[str],
               rules: tuple[Callable[[str], Any], ...]) -> None:  # fmt: skip
        """Record the entries of directory `rel` (open at `fd`) that take part, and queue its
        directories that do."""
        wants_dir, tracked_under, excluded = rules
        prefix = f"{rel}/" if rel else ""
        for entry in listing:
            name = entry.name
            if name == ".git":
                continue
            child = prefix + name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir and wants_dir(child):
                pending.append(child)
            elif is_dir:  # ignored or excluded: only what git tracks in it takes part
                for tracked in tracked_under(child):
                    entries[tracked] = stat_of(f"{self.root}/{tracked}")
            elif not excluded(child):
                try:
                    entries[child] = stat_data(os.stat(name, dir_fd=fd, follow_symlinks=False))
                except OSError:
                    continue

    # -- a few paths changed ----------------------------------------------------------------

    def delta(self, changed: list[str], wants_dir: Callable[[str], bool],
              tracked_under: Callable[[str], list[str]],
              excluded: Callable[[str], bool]) -> dict[str, Any] | None:  # fmt: skip
        """Stat what `changes` reported, now, before a sync reads it: a file's new state; a
        directory's, and its entries added (walked) or gone since the record. Returns the
        paths to sync and the record's new entries, or None when only a full sync will do
        (a directory's permissions changed)."""
        rules = (wants_dir, tracked_under, excluded)
        record = self._packed()
        if record is None:
            return None
        entries = record.stats(changed)
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
            # Another directory now has its name (`rm -rf d && mkdir d`, a tool replacing
            # it; the inode number may be the same, reused: the journal lost its watch): it
            # is gone and the new one walked, below, as a file replaced by one would be, so
            # its entries are recorded afresh and the journal watches it anew.
            replaced = was_dir and is_dir and known is not None and now is not None \
                and (known[4] != now[4] or rel in self.rewatch)  # fmt: skip
            if replaced and not rel:
                return None  # the tree's root itself: a full sync
            if was_dir and is_dir and not replaced:
                assert known is not None and now is not None
                if stat.S_IMODE(known[0]) != stat.S_IMODE(now[0]):
                    return None
                if children is None:
                    children = record.children()
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
        if manifest is None:
            return
        if self._apply_in_place(delta, manifest, digests, wanted):
            return
        record = self._load()
        if record is None:
            return
        drop: set[str] = delta["drop"]
        new_dirs = [rel for rel, known in delta["updates"].items()
                    if known is not None and stat.S_ISDIR(known[0])
                    and (rel in drop or not _is_dir(record["entries"].get(rel)))]  # fmt: skip
        if drop:
            prefixes = tuple(f"{rel}/" for rel in drop)
            for table in ("entries", "racy_files", "racy_dirs"):
                record[table] = {rel: value for rel, value in record[table].items()
                                 if rel not in drop and not rel.startswith(prefixes)}  # fmt: skip
        for rel, known in delta["updates"].items():
            if known is None:
                self.forget()  # a tracked file vanished while being recorded
                return
            record["entries"][rel] = known
            mark = self._mark(rel, known, delta, record, digests=digests, wanted=wanted)
            if mark is None:
                self.forget()
                return
            if not mark:
                del record["entries"][rel]
        record["manifest"] = _digest(manifest)
        self._write(record, journal=self._watch_new(new_dirs, delta["updates"]))

    def _apply_in_place(self, delta: dict[str, Any], manifest: bytes,
                        digests: Callable[[str], str | None],
                        wanted: Callable[[str], bool]) -> bool:  # fmt: skip
        """`apply` for the common delta, an edit: new stat data for paths the record holds,
        each the same kind as before (a file still a file, a directory still one with the
        same entries), written into the packed numbers without unpacking the rest (at
        20,000 paths that took most of a one-file sync). False when the delta is another
        kind (the caller then folds it in whole), or when there is no record."""
        updates: dict[str, Stat | None] = delta["updates"]
        # A file's path is dropped and recorded again (a file has no entries below it).
        drop: set[str] = delta["drop"]
        if not updates or not drop <= set(updates) or None in updates.values():
            return False
        record = self._packed()
        if record is None:
            return False
        positions = dict((rel, i) for i, rel in _locate(record.data["paths"], list(updates)))
        if len(positions) != len(updates):
            return False  # a path new to the record
        numbers, inos = record.numbers, record.inos
        for rel, known in updates.items():
            assert known is not None
            was_dir = stat.S_ISDIR(numbers[4 * positions[rel]])
            if stat.S_ISDIR(known[0]) != was_dir or (was_dir and rel in drop):
                return False
        data = dict(record.data)
        data["racy_files"], data["racy_dirs"] = dict(data["racy_files"]), dict(data["racy_dirs"])
        for rel, known in updates.items():
            assert known is not None
            i = positions[rel]
            numbers[4 * i : 4 * i + 4] = array.array("q", known[:4])
            inos[i] = known[4]
            mark = self._mark(rel, known, delta, data, digests=digests, wanted=wanted)
            if mark is None:
                self.forget()
                return True
            if not mark:
                return False  # a file no longer recorded: the whole fold drops it
        token = os.urandom(16).hex()
        data.update(numbers=numbers.tobytes(), inos=inos.tobytes(), token=token)
        _write_marshal(self.path, data)
        journal = None if self.journal is None else self.token  # no directory new to it
        _write_marshal(self.bind_path, {**record.bind, "token": token, "journal": journal,
                                        "manifest": _digest(manifest)})  # fmt: skip
        return True

    def _mark(self, rel: str, known: Stat, delta: dict[str, Any], tables: dict[str, Any], *,
              digests: Callable[[str], str | None],
              wanted: Callable[[str], bool]) -> bool | None:  # fmt: skip
        """Record how `rel`, now `known`, is checked: in the racy tables of `tables` when
        it is recent (a directory by its listing, a file by the workspace's digest). False:
        a file to leave out of the record (it takes no part); None: a recent entry nothing
        vouches for (the record must go)."""
        tables["racy_files"].pop(rel, None)
        tables["racy_dirs"].pop(rel, None)
        if not _racy(known, delta["recorded"]):
            return True
        if stat.S_ISDIR(known[0]):
            if rel not in delta["racy_dirs"]:
                return None
            tables["racy_dirs"][rel] = delta["racy_dirs"][rel]
            return True
        digest = self._racy_digest(rel, digests, wanted)
        if digest:
            tables["racy_files"][rel] = digest
            return True
        return None if digest is None else False

    def _packed(self, bind: dict[str, Any] | None = None) -> _Packed | None:
        """The stat data and binding as stored (paths packed); None unless both agree.
        `bind`: the binding, when the caller has read it already."""
        bind = bind or self._load_bind()
        if bind is None:
            return None
        data = _read_marshal(self.path, _DATA_KEYS)
        if data is None or data["token"] != bind["token"]:
            return None
        found = _numbers(data)
        return None if found is None else _Packed(data, bind, *found)

    def _watch_new(self, new_dirs: list[str], updates: dict[str, Stat]) -> Token | None:
        """The token a record folding in `updates` is written with. Directories new to it
        were walked before the journal watched them: they are watched now, then everything
        recorded below them looked at again. Anything changed in between, and the journal
        cannot vouch for it: no token (the next check looks at every path)."""
        if self.journal is None or self.token is None:
            return None
        if not new_dirs:
            return self.token
        if self.journal.watch(new_dirs) is None:
            return None
        below = (*new_dirs, *(f"{rel}/" for rel in new_dirs))  # (a sibling "ab" of "a" too)
        for rel, known in updates.items():
            if rel.startswith(below) and stat_of(f"{self.root}/{rel}") != known:
                return None
        return self.token

    def save(self, taken: dict[str, Any], manifest: bytes | None,
             digests: Callable[[str], str | None],
             wanted: Callable[[str], bool]) -> None:  # fmt: skip
        """Keep what `take` found, bound to the manifest the sync left. `digests(rel)`: what
        the workspace holds at a racy file (Syncer.held_digests), None if unknown;
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
        new_dirs = [rel for rel, known in taken["entries"].items()
                    if stat.S_ISDIR(known[0]) and rel not in taken["watched"]]  # fmt: skip
        self._write(data, journal=self._watch_new(new_dirs, taken["entries"]))

    def _racy_digest(self, rel: str, digests: Callable[[str], str | None],
                     wanted: Callable[[str], bool]) -> str | None:  # fmt: skip
        """What a racy file is compared with: what the workspace holds (`digests`: the
        manifest's digest, or the baseline's blob id); "" for a file that takes no part (not
        to be recorded); None: no way to tell.
        Not read here: every check reads the racy files and compares them with it, and a
        branch switch makes a thousand files racy at once."""
        digest = digests(rel)
        if digest is not None:
            return digest
        return None if wanted(rel) else ""

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
        """No record from now on: the binding goes. The stat data stay (no record without
        their binding) to name the directories the next `take` watches before its walk:
        else each would be watched after it and everything below looked at again."""
        with contextlib.suppress(FileNotFoundError):
            self.bind_path.unlink()

    def _write(self, data: dict[str, Any], *, journal: Token | None) -> None:
        """Both files: the stat data under a new token, then the binding naming it (a reader
        between the two sees tokens that differ, which is no record)."""
        entries = data["entries"]
        data = {**data, **_pack(entries), "token": os.urandom(16).hex(), "journal": journal,
                "unwatched": _unwatched(entries)}  # fmt: skip
        _write_marshal(self.path, {key: data[key] for key in _DATA_KEYS})
        _write_marshal(self.bind_path, {key: data[key] for key in _BIND_KEYS})


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DATA_KEYS = frozenset({"token", "controls", "paths", "numbers", "inos", "racy_files",
                        "racy_dirs", "unwatched"})  # fmt: skip
# "journal": the change journal's token up to which the stat data account for every event.
_BIND_KEYS = frozenset({"token", "identity", "workspace", "manifest", "journal"})


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


Numbers = tuple["array.array[int]", "array.array[int]"]
Unpacked = tuple[list[str], "array.array[int]", "array.array[int]"]


def _numbers(data: dict[str, Any]) -> Numbers | None:
    """(numbers, inodes) of stored stat data; None when they do not fit its paths."""
    try:
        numbers = array.array("q")
        numbers.frombytes(data["numbers"])
        inos = array.array("Q")
        inos.frombytes(data["inos"])
        count = data["paths"].count(b"\0") + 1 if inos else 0  # the root's path is ""
    except (ValueError, TypeError, AttributeError):
        return None
    if len(inos) != count or len(numbers) != 4 * count:
        return None
    return numbers, inos


def _split(packed: bytes) -> list[str]:
    return packed.decode("utf-8", "surrogateescape").split("\0") if packed else [""]


def _unpack(data: dict[str, Any]) -> Unpacked | None:
    """(paths, numbers, inodes) of stored stat data; None when they do not fit together."""
    found = _numbers(data)
    if found is None:
        return None
    numbers, inos = found
    return (_split(data["paths"]) if inos else []), numbers, inos


def _locate(packed: bytes, names: list[str]) -> list[tuple[int, str]]:
    """The positions of those of `names` the packed paths hold. A search of the packed
    bytes for a few; past that, one split of them (which costs about a millisecond at
    20,000 paths, where a search costs a few microseconds)."""
    if len(names) > 16:
        index = {rel: i for i, rel in enumerate(_split(packed))}
        return [(index[rel], rel) for rel in dict.fromkeys(names) if rel in index]
    wrapped = b"\0" + packed + b"\0"
    found = []
    for rel in dict.fromkeys(names):
        at = wrapped.find(b"\0" + rel.encode("utf-8", "surrogateescape") + b"\0")
        if at >= 0:
            found.append((wrapped.count(b"\0", 0, at), rel))
    return found


def _listing(path: str) -> list[str] | None:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return None


class _Packed:
    """Stored stat data read as they are: a few paths' numbers looked up, the rest left
    packed (unpacking 20,000 of them costs a one-path delta several milliseconds)."""

    def __init__(self, data: dict[str, Any], bind: dict[str, Any],
                 numbers: array.array[int], inos: array.array[int]) -> None:  # fmt: skip
        self.data, self.bind, self.numbers, self.inos = data, bind, numbers, inos

    def stats(self, names: list[str]) -> dict[str, Stat]:
        """The recorded stat data of those of `names` the record holds."""
        numbers, inos = self.numbers, self.inos
        return {rel: (numbers[4 * i], numbers[4 * i + 1], numbers[4 * i + 2],
                      numbers[4 * i + 3], inos[i])
                for i, rel in _locate(self.data["paths"], names)}  # fmt: skip

    def children(self) -> dict[str, set[str]]:
        """Each recorded directory's recorded entries, by name."""
        return _children(_split(self.data["paths"]) if self.inos else [])


def _children(paths: Iterable[str]) -> dict[str, set[str]]:
    """Each recorded directory's recorded entries, by name."""
    found: dict[str, set[str]] = {}
    for rel in paths:
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


def _is_dir(known: Stat | None) -> bool:
    return known is not None and stat.S_ISDIR(known[0])


def _dirs(paths: list[str], numbers: array.array[int]) -> list[str]:
    """The recorded directories: those the journal watches."""
    return [rel for i, rel in enumerate(paths) if stat.S_ISDIR(numbers[4 * i])]


def _unwatched(entries: dict[str, Stat]) -> list[str]:
    """The entries no watched directory holds: files git tracks below an ignored directory.
    Every check looks at them."""
    dirs = {rel for rel, known in entries.items() if stat.S_ISDIR(known[0])}
    return [rel for rel in entries if rel and rel.rpartition("/")[0] not in dirs]


def _compare(root: str, looked: Iterable[tuple[int, str]], numbers: array.array[int],
             inos: array.array[int]) -> list[str]:  # fmt: skip
    """Those of the recorded paths in `looked` (position, path) whose stat data differ from
    the record's now."""
    prefix = root + "/"
    lstat = os.lstat  # the loop may run once per path in the tree: kept lean
    changed = []
    for i, rel in looked:
        try:
            st = lstat(prefix + rel)  # "" names the root ("root/")
        except OSError:
            changed.append(rel)
            continue
        j = 4 * i
        if (st.st_ino != inos[i] or st.st_mtime_ns != numbers[j + 2]
                or st.st_ctime_ns != numbers[j + 3] or st.st_size != numbers[j + 1]
                or st.st_mode != numbers[j]):  # fmt: skip
            changed.append(rel)
    return changed

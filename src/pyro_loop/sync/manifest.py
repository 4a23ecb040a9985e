"""The manifest: what pyro pushed into a workspace over its baseline, path by path.

A JSON file per project workspace: {"version", "root", "baseline_tree", "entries"}, where
each entry records what the workspace now holds at a path (kind, mode, size, times, inode,
sha256, the moment it was recorded), or {"kind": "absent"} for a deletion pyro carried over.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pyro_loop.fs.hoststate import HostState

MANIFEST_VERSION = 1
RACY_NS = 2_000_000_000  # a record this close to a file's mtime/ctime cannot vouch for it


def manifest_digest(manifest_path: Path, rel: str) -> str | None:
    """The digest recorded for `rel` in a manifest (what the workspace holds since pyro
    pushed it); None when pyro has not pushed it (the workspace has its baseline version)
    or pushed a deletion or a directory."""
    return recorded_digest(read_manifest(manifest_path).get("entries", {}).get(rel))


def recorded_digest(entry: Any) -> str | None:
    """The digest a manifest record holds (a file's or a link's), None for any other."""
    digest = entry.get("sha256") if isinstance(entry, dict) else None
    return digest if isinstance(digest, str) else None


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        return _parse(path.read_text())
    except OSError:
        return {}


def _parse(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        return {}
    if not isinstance(data.get("entries"), dict):
        return {}
    return data


def effective_entry(
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


def trusted(entry: dict[str, Any], state: HostState) -> bool:
    """May the record vouch for the file without reading it? (The policy in the module doc.)"""
    if stat_fields_of(entry) != stat_fields(state):
        return False
    recorded = entry.get("recorded_ns")
    if not isinstance(recorded, int):
        return False
    return max(state.mtime_ns, state.ctime_ns) < recorded - RACY_NS


def stat_fields(state: HostState) -> dict[str, int]:
    return {"mode": state.mode, "size": state.size, "mtime_ns": state.mtime_ns,
            "ctime_ns": state.ctime_ns, "ino": state.ino}  # fmt: skip


def stat_fields_of(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry.get(k) for k in ("mode", "size", "mtime_ns", "ctime_ns", "ino")}


class ManifestFile:
    """One workspace's manifest on disk, and the version last read or written from it.

    A sync that changed nothing leaves the file alone: the next one only stats it.
    """

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.root = str(root)
        # (stat key, data) as last read or written: handed out by load, not shared
        self._cached: tuple[tuple[int, int, int], dict[str, Any]] | None = None
        self._written: tuple[tuple[int, int, int], str] | None = None  # (stat key, text)

    def _stat_key(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return (0, 0, 0)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self, baseline_tree: str | None) -> dict[str, Any]:
        """The manifest to sync with; a fresh one if none was kept for this root and
        `baseline_tree` (another baseline's records describe another workspace)."""
        cached, self._cached = self._cached, None  # a failed sync must not leave it edited
        key = self._stat_key()
        if cached is not None and cached[0] == key:
            data = cached[1]
        else:
            try:
                text = self.path.read_text()
            except OSError:
                text = ""
            data = _parse(text)
            if data:  # what the file holds: a save of the same text leaves it alone
                self._written = (key, text)
        recorded = data.get("baseline_tree")
        if (
            not data
            or data.get("root") != self.root
            or (baseline_tree is not None and recorded not in (None, baseline_tree))
        ):
            data = {"entries": {}, "baseline_tree": baseline_tree}
        data.setdefault("baseline_tree", None)
        return data

    def entries_of(self, text: bytes | None) -> dict[str, Any]:
        """The records in manifest text `text` (as read from the file): those this object
        last wrote, unparsed, when `text` is what it wrote; else parsed."""
        written, cached = self._written, self._cached
        if text is not None and written is not None and cached is not None \
                and written[0] == cached[0] and text == written[1].encode():  # fmt: skip
            return dict(cached[1].get("entries", {}))
        try:
            entries = json.loads(text or b"{}").get("entries", {})
        except (ValueError, AttributeError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def save(self, data: dict[str, Any]) -> None:
        data = {**data, "version": MANIFEST_VERSION, "root": self.root}
        text = json.dumps(data, separators=(",", ":"), sort_keys=True)
        key = self._stat_key()
        if self._written != (key, text):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            # Not fsynced: a manifest lost in a crash only costs hashing and re-pushing.
            tmp.write_text(text)
            os.replace(tmp, self.path)
            key = self._stat_key()
        self._written = (key, text)
        self._cached = (key, data)

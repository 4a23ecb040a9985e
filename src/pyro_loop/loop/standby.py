"""The host's synced files, written into a project workspace's standby sandbox ahead of a reset.

A reset to the baseline puts back what pyro had synced from the host (the sync manifest's
paths). The standby sandbox a reset switches to is booted in the background after the reset
before (see workspace/manager.py), and gets those paths there and then, through a syncer of
its own with a manifest of its own (`ProjectHome.standby_manifest`). That manifest describes
exactly what the standby holds; the name the workspace keeps for it is its digest, so a
standby taken over later is known to hold what the manifest file then says only if the
digests agree (written since for another standby, it is not taken: one is booted instead).

When the standby takes over, its manifest becomes the workspace's, and the reset's replay
writes only what differs from it: nothing, when the host did not change meanwhile. The
result equals a reset without a standby when every path the standby got is among the paths
the reset puts back (the manifest's records at the reset); a path outside them (a record a
full sync dropped since: the host has the baseline's version again, or the path is excluded
now) would keep the host's earlier version, so such a standby is not taken.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_loop.digest import sha256_hex
from pyro_loop.errors import PyroError
from pyro_loop.sync.manifest import read_manifest

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pyro_loop.sync import PathFilter, Syncer
    from pyro_loop.workspace.client import AgentClient
    from pyro_loop.workspace.record import WorkspaceRecord


class StandbyNotFilledError(PyroError):
    """A path could not be written into the standby: it is not used (see Workspaces)."""


class StandbyFill:
    """Fills one project workspace's standby sandboxes, and takes one over: `fill` runs in
    the thread that boots each standby (one at a time: under the workspace's lock), `accept`
    and `take` in the caller of the reset or create that promotes it."""

    def __init__(
        self,
        root: Path,
        manifest_path: Path,
        standby_path: Path,
        exclude: Sequence[str],
        baseline_tree: str | None,
    ) -> None:
        self.root = root
        self.manifest_path = manifest_path  # the workspace's own: which paths to write
        self.standby_path = standby_path
        self.exclude = list(exclude)
        self.baseline_tree = baseline_tree
        self._syncer: Syncer | None = None  # the fill thread's own, kept for its caches
        self._filter: PathFilter | None = None  # the caller's, for `acceptor`
        # The standby manifest accepted last (parsed, and its text).
        self._accepted: tuple[dict[str, Any], bytes] | None = None

    def fill(self, client: AgentClient) -> str:
        """Write the paths the workspace's manifest records into a fresh standby (what a
        reset's replay writes into a sandbox at its baseline); the standby manifest's digest."""
        from pyro_loop.sync import Syncer

        for old in self.standby_path.parent.glob(f".{self.standby_path.name}.*.old"):
            old.unlink(missing_ok=True)  # what `take` replaced, deleted here off its path
        syncer = self._syncer
        if syncer is None:
            syncer = self._syncer = Syncer(self.root, client, self.standby_path, self.exclude,
                                           baseline_tree=self.baseline_tree)  # fmt: skip
        syncer.client = client
        syncer.forget()  # the standby holds its baseline
        paths = sorted(read_manifest(self.manifest_path).get("entries", {}))
        result = syncer.replay(paths)
        if result.skipped:  # what it holds there is not known for sure
            first = result.skipped[0]
            raise StandbyNotFilledError(f"{first.path}: {first.reason}")
        with self.standby_path.open("rb") as f:
            text = f.read()
            # Written back now, off the reset's path: moving a file whose data is not yet
            # on disk over another one makes ext4 write it back first (its auto_da_alloc).
            os.fsync(f.fileno())
        return _digest(text)

    def synced_paths(self) -> list[str]:
        """The paths the project's manifest records (Syncer.synced_paths, before the
        workspace it describes exists again)."""
        data = read_manifest(self.manifest_path)
        if data.get("root") != str(self._paths().root) or (
            self.baseline_tree is not None
            and data.get("baseline_tree") not in (None, self.baseline_tree)
        ):
            return []  # another root's or another baseline's: a syncer starts afresh
        return sorted(data.get("entries", {}))

    def acceptor(self, synced: Sequence[str]) -> Callable[[str], bool]:
        """For the reset or create about to take a standby over: does the standby manifest
        on disk describe the standby `fill` named so, and would a replay of `synced` (the
        workspace's manifest's paths) then give what it gives a sandbox at its baseline?"""

        def accept(name: str) -> bool:
            try:
                text = self.standby_path.read_bytes()
            except OSError:
                return False
            if _digest(text) != name:
                return False  # written since for another standby
            try:
                data = json.loads(text)
            except ValueError:
                return False
            entries = data.get("entries") if isinstance(data, dict) else None
            if not isinstance(entries, dict) or not set(entries) <= set(synced):
                return False
            tree = self.baseline_tree
            if tree is None:  # each syncer took HEAD's tree: the same one?
                tree = read_manifest(self.manifest_path).get("baseline_tree")
            if data.get("baseline_tree") != tree:
                return False
            if entries:  # a path excluded or ignored since stays the baseline's
                paths = self._paths()
                paths.refresh()
                if not all(paths.wants(rel) for rel in entries):
                    return False
            self._accepted = (data, text)
            return True

        return accept

    def _paths(self) -> PathFilter:
        if self._filter is None:
            from pyro_loop.sync import PathFilter

            self._filter = PathFilter.for_root(self.root, self.exclude)
        return self._filter

    def take(
        self, record: WorkspaceRecord, syncer: Syncer, synced: Sequence[str], current: bytes | None
    ) -> bool:
        """Start the workspace's manifest afresh after a reset or create (`current`: its
        text until then): from the standby manifest when its sandbox is a standby filled
        ahead and accepted (`record.filled`), else empty. True when a replay of `synced` then
        gives what it gives a sandbox at its baseline (always, without a standby filled
        ahead)."""
        accepted, self._accepted = self._accepted, None
        if record.filled is None or accepted is None:
            syncer.forget()
            return True
        data, text = accepted
        if text != current:  # (the same text: the manifest says so already)
            # Accepted under the workspace's lock, which no fill has held since: it names
            # this sandbox still.
            name = f".{self.standby_path.name}.{os.urandom(6).hex()}.old"
            syncer.adopt(self.standby_path, keep=self.standby_path.with_name(name))
        return set(data["entries"]) <= set(synced)


def _digest(text: bytes) -> str:
    return sha256_hex(text)[:32]

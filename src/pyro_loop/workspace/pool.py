"""Standby sandboxes kept for the next create: the standby of a deleted workspace.

Every workspace keeps a standby sandbox booted for its next reset: its baseline layers, an
empty upper dir, an agent answering. When the workspace is deleted, that sandbox is exactly
what the next workspace created from the same layers (and environment, network and limits)
needs, so instead of being killed it moves to `<home>/pool/<key>.<nonce>/` (renames, O(1));
a create with the same key takes it (one rename: two creates never get the same one) rather
than boot one and wait for its agent. At most POOL_LIMIT are kept, the oldest stopped first,
and each for KEEP_SECONDS (`PYRO_POOL_SECONDS`; 0 keeps none): a small process started with
it stops it then unless a create took it first. `pyro cache gc` and `prune` stop them all
(they hold layers mounted).

The sandbox does not mind the moves: its overlay and its listening socket were bound before,
and its files are reached through descriptors. A standby its workspace's caller wrote into
ahead of a reset (`WorkspaceRecord.spare_filled`) keeps that name here, and only a create
that accepts that name takes it; one left half written is never kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_loop.digest import sha256_hex
from pyro_loop.fs.util import move_to_trash
from pyro_loop.procutil import remove_in_background, spawn_detached
from pyro_loop.records import dataclass
from pyro_loop.runtime import Runtime, SandboxHandle, SandboxSpec
from pyro_loop.workspace.record import FILLING, WorkspaceDir

if TYPE_CHECKING:
    from pyro_loop.workspace.record import WorkspaceRecord

POOL_LIMIT = 2
KEEP_SECONDS = 600.0
ENTRY_FILE = "pool.json"


def keep_seconds() -> float:
    """How long a pooled sandbox waits for a create: `PYRO_POOL_SECONDS`, else KEEP_SECONDS."""
    try:
        return max(0.0, float(os.environ.get("PYRO_POOL_SECONDS", KEEP_SECONDS)))
    except ValueError:
        return KEEP_SECONDS


def pool_key(record: WorkspaceRecord) -> str:
    """What a workspace's baseline sandbox is made of, as far as a workspace created from it
    could tell."""
    data = [record.environment, record.environment_layer, record.base_layers, record.network,
            record.limits.describe(), [m.to_json() for m in record.mounts],
            sorted(record.env.items())]  # fmt: skip
    return sha256_hex(json.dumps(data, sort_keys=True).encode())[:24]


@dataclass(frozen=True)
class Pooled:
    """A pooled sandbox, as its workspace's record had it."""

    handle: SandboxHandle
    generation: int
    uid: int | None  # when pyro runs as root, see identity.py
    filled: str | None = None  # the record's spare_filled
    ready: bool = False  # its agent has answered


class Pool:
    def __init__(self, home: Path, runtime: Runtime) -> None:
        self.home = home
        self.root = home / "pool"
        self.runtime = runtime

    def keep(self, wdir: WorkspaceDir, record: WorkspaceRecord) -> bool:
        """Move the standby of a workspace being deleted into the pool; False if it has none
        running (the caller's lock on the workspace keeps it from changing meanwhile)."""
        spare = record.spare
        seconds = keep_seconds()
        if (spare is None or seconds <= 0 or record.spare_filled == FILLING
                or not self.runtime.is_running(spare)):  # fmt: skip
            return False
        generation = record.generation + 1
        key = pool_key(record)
        self.root.mkdir(parents=True, exist_ok=True)
        entry = WorkspaceDir(self.root / f".{key}.{os.urandom(6).hex()}")  # hidden until whole
        entry.root.mkdir(mode=0o700)
        with contextlib.suppress(OSError):
            entry.root.chmod(wdir.root.stat().st_mode & 0o777)  # the sandbox uid's access
        for old, new in (
            (wdir.upper(generation), entry.upper(generation)),
            (wdir.work(generation), entry.work(generation)),
            (wdir.spare_socket, entry.socket),
            (wdir.spare_info, entry.info),
        ):
            os.rename(old, new)  # fmt: skip
        data = {"key": key, "handle": spare.to_json(), "generation": generation, "uid": record.uid,
                "filled": record.spare_filled, "ready": record.spare_ready}  # fmt: skip
        (entry.root / ENTRY_FILE).write_text(json.dumps(data))
        kept = self.root / entry.root.name[1:]
        os.rename(entry.root, kept)
        record.spare, record.spare_filled, record.spare_ready = None, None, False
        wdir.save(record)
        self._trim()
        # Its end, unless a create takes it first (then the rename that claims it fails): a
        # shell sleeps (no Python held in memory meanwhile), then Python stops it.
        expire = 'sleep "$1" && exec "$2" -m pyro_loop.workspace.pool "$3" "$4"'
        spawn_detached(["/bin/sh", "-c", expire,
                        "pyro-pool", f"{seconds:.3f}", sys.executable, str(self.home),
                        kept.name], env={**os.environ})  # fmt: skip
        return True

    def take(
        self, key: str, dest: Path, accept: Callable[[str], bool] | None = None
    ) -> Pooled | None:
        """Move a running pooled sandbox made for `key` to `dest` (a workspace directory not
        yet existing), or None when the pool has none. One that was written into is taken
        only if `accept` accepts the name its writer gave it."""
        if not self.root.is_dir():
            return None
        for entry in sorted(self.root.glob(f"{key}.*")):
            seen = _entry(entry)  # an entry never changes once published
            if (seen is not None and seen.filled is not None
                    and (accept is None or not accept(seen.filled))):  # fmt: skip
                continue  # another's files: left for its own creator, or its end
            try:
                os.rename(entry, dest)
            except OSError:
                continue  # taken by another create meanwhile
            data = _entry(dest)
            if data is not None and data == seen and self.runtime.is_running(data.handle):
                return data
            self._stop(dest)  # dead or damaged: gone, and try the next
        return None

    def uids(self) -> set[int]:
        """The uids of the pooled sandboxes (taken by the workspaces that adopt them)."""
        found = (_entry(entry) for entry in self._entries())
        return {data.uid for data in found if data is not None and data.uid is not None}

    def drain(self) -> int:
        """Stop every pooled sandbox; how many there were."""
        entries = self._entries()
        for entry in entries:
            self._stop(entry)
        return len(entries)

    def _entries(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if not p.name.startswith(".")]
        return sorted(found, key=_mtime)

    def _trim(self) -> None:
        entries = self._entries()
        for entry in entries[: max(0, len(entries) - POOL_LIMIT)]:
            self._stop(entry)

    def _stop(self, entry: Path) -> None:
        try:  # claimed first, so no create takes it while it is being stopped
            gone = move_to_trash(entry, self.home / "trash")
        except OSError:
            return
        data = _entry(gone)
        if data is not None:
            handle, generation = data.handle, data.generation
            wdir = WorkspaceDir(gone)
            spec = SandboxSpec(store_root=self.home, lowers=[], upper=wdir.upper(generation),
                               work=wdir.work(generation), socket_path=wdir.socket,
                               info_path=wdir.info, log_path=wdir.log)  # fmt: skip
            with contextlib.suppress(Exception):
                self.runtime.stop(handle, spec)
        remove_in_background([gone])


def _entry(root: Path) -> Pooled | None:
    try:
        data: dict[str, Any] = json.loads((root / ENTRY_FILE).read_text())
        uid = None if data.get("uid") is None else int(data["uid"])
        filled = data.get("filled")
        if filled is not None and (not isinstance(filled, str) or filled == FILLING):
            return None  # half written: never used
        return Pooled(SandboxHandle.from_json(data["handle"]), int(data["generation"]), uid,
                      filled, data.get("ready") is True)  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _expire(home: Path, name: str) -> None:
    """Stop the pooled sandbox `name`, if no create took it meanwhile."""
    from pyro_loop.runtime.bwrap import BwrapRuntime

    pool = Pool(home, BwrapRuntime())
    entry = pool.root / name
    if entry.exists():
        pool._stop(entry)


if __name__ == "__main__":
    _expire(Path(sys.argv[1]), sys.argv[2])

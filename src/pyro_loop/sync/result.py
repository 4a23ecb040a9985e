"""What one sync did (kept apart from the engine: a sync that finds nothing to do needs
no more than this)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyro_loop.records import dataclass, field

if TYPE_CHECKING:
    from pyro_loop.shapes import SkippedJSON, SyncJSON


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str

    def to_json(self) -> SkippedJSON:
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

    def to_json(self) -> SyncJSON:
        return {
            "copied": self.copied,
            "removed": self.removed,
            "bytes": self.bytes,
            "skipped": [s.to_json() for s in self.skipped],
            "duration_ms": round(self.seconds * 1000, 1),
            "copied_paths": self.copied_paths,
            "removed_paths": self.removed_paths,
        }

"""Per-workspace resource limits: what a workspace may use, and the defaults.

Apart from the runtime so that the configuration can declare its defaults from here without
loading the sandbox machinery (the MCP server answers `initialize` before it needs any).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyro_loop.records import dataclass

if TYPE_CHECKING:
    from pyro_loop.shapes import LimitsJSON, LimitsShownJSON


@dataclass(frozen=True)
class Limits:
    """Per-workspace resource limits, enforced with rlimits (available on every host)."""

    processes: int = 4096
    open_files: int = 65536
    # The largest single file a command may write: far above any source tree's or build's
    # files, low enough that one runaway write cannot fill a disk by itself.
    file_size_mib: int | None = 16384
    address_space_mib: int | None = None  # off by default: it breaks runtimes that reserve VA

    def to_json(self) -> LimitsJSON:
        return {
            "processes": self.processes,
            "open_files": self.open_files,
            "file_size_mib": self.file_size_mib,
            "address_space_mib": self.address_space_mib,
        }

    def describe(self) -> LimitsShownJSON:
        return {
            **self.to_json(),
            "enforced_by": "rlimit",
            "cgroups": "not used (no delegated cgroup v2 subtree required)",
        }


DEFAULT_LIMITS = Limits()

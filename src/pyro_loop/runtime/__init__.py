"""The runtime seam: how a workspace's sandbox is started, checked and stopped.

`Runtime` is deliberately narrow. Today's implementation is `BwrapRuntime` (user namespaces,
an overlay mount, bubblewrap); a microVM backend would implement the same three calls and
serve the same agent protocol over vsock instead of a Unix socket.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pyro_loop.agent.protocol import HOME_DIR as _HOME_DIR
from pyro_loop.records import dataclass, field
from pyro_loop.runtime.limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from pyro_loop.shapes import MountJSON, SandboxHandleJSON

__all__ = [
    "DEFAULT_LIMITS",
    "HOME_DIR",
    "SANDBOX_HOME",
    "Limits",
    "Mount",
    "Runtime",
    "SandboxHandle",
    "SandboxSpec",
]


# The sandbox's home directory lives in the workspace's overlay, under this name at the top of
# the tree, and is bound at HOME (and hidden under /workspace): what a command installs in
# its home (poetry's virtualenvs, cargo's registry, Go's module cache) is in the same upper
# dir as the workspace's files, so a prepare keeps it in the layer it freezes and a reset
# throws it away like any other change.
HOME_DIR = _HOME_DIR
SANDBOX_HOME = "/home/pyro"  # HOME in every sandbox
# The system PATH every runtime gives commands (loop/activation.py puts the project's
# environments and tools before it).
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Mount:
    """A host path made visible in the sandbox at `target` (absolute): a tool layer, a
    toolchain the user exposed, a download cache, a certificate bundle.

    `source` is absolute, or relative to the store (a layer's tree). Read-only unless asked;
    a file is handed over as a copy.
    """

    source: str
    target: str
    writable: bool = False

    def to_json(self) -> MountJSON:
        return {"source": self.source, "target": self.target, "writable": self.writable}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Mount:
        return cls(str(data["source"]), str(data["target"]), bool(data.get("writable", False)))


@dataclass(frozen=True)
class SandboxSpec:
    """Everything the runtime needs to start one workspace's sandbox."""

    store_root: Path  # lower layers may be given relative to this directory
    lowers: list[str]  # /workspace lower layers, topmost first
    upper: Path
    work: Path
    socket_path: Path
    info_path: Path
    log_path: Path
    environment: str = "host"
    # The root filesystem's layer (relative to store_root), bound read-only at /; None: the
    # host's /usr, /etc and /opt on an empty root (the `host` environment).
    root_layer: str | None = None
    network: bool = False
    hostname: str = "pyro"
    limits: Limits = field(default_factory=Limits)
    mounts: tuple[Mount, ...] = ()
    # Variables every process in the sandbox starts with, over the defaults (PATH, HOME, ...).
    env: tuple[tuple[str, str], ...] = ()
    # When pyro runs as root: the host uid the sandbox runs as, if not the layer owner's.
    uid: int | None = None


@dataclass(frozen=True)
class SandboxHandle:
    """Enough to find a running sandbox again from another process."""

    keeper_pid: int
    keeper_start: int  # start time in clock ticks, so a recycled pid is never mistaken

    def to_json(self) -> SandboxHandleJSON:
        return {"keeper_pid": self.keeper_pid, "keeper_start": self.keeper_start}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxHandle:
        return cls(int(data["keeper_pid"]), int(data["keeper_start"]))


class Runtime(Protocol):
    name: str

    def start(self, spec: SandboxSpec) -> SandboxHandle:
        """Start the sandbox and its agent; returns at once (the agent may still be starting)."""
        ...

    def is_running(self, handle: SandboxHandle) -> bool: ...

    def stop(self, handle: SandboxHandle, spec: SandboxSpec, *, wait: bool = True) -> list[int]:
        """Kill everything in the sandbox; return once it is all gone.

        With `wait=False`, return at once with the host pids whose exit marks the end of the
        teardown (everything is already killed, the kernel is only finishing the job).
        """
        ...

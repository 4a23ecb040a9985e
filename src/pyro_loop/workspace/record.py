"""A workspace's record on disk: what it is made of, and how to find its sandbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_loop.fs.util import write_json_atomic
from pyro_loop.records import dataclass, field
from pyro_loop.runtime import Limits, Mount, SandboxHandle

if TYPE_CHECKING:
    from pyro_loop.shapes import WorkspaceRecordJSON

RECORD_VERSION = 1
FILLING = ""  # a standby being written into (spare_filled): not known to hold anything


@dataclass
class Snapshot:
    name: str
    layers: list[str]  # the complete lower stack to reset to, topmost first
    created: float


@dataclass
class WorkspaceRecord:
    id: str
    name: str | None
    environment: str  # canonical name: "host", "debian:12"
    network: bool
    labels: dict[str, str]
    base_layers: list[str]  # the create-time baseline, topmost first
    layers: list[str]  # the current lower stack (baseline, or a snapshot's), topmost first
    created: float
    limits: Limits = field(default_factory=Limits)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    handle: SandboxHandle | None = None  # None when stopped on purpose
    generation: int = 0  # bumped on every reset, names the current upper dir
    standby: bool = True  # keep the next generation's sandbox booted, for instant resets
    spare: SandboxHandle | None = None  # that standby sandbox (generation + 1, baseline layers)
    packages: list[str] = field(default_factory=list)  # extra packages of the environment
    environment_layer: str | None = None  # the root filesystem's layer; None for host
    mounts: list[Mount] = field(default_factory=list)  # tool layers, host toolchains, caches
    env: dict[str, str] = field(default_factory=dict)  # over the sandbox's defaults (PATH)
    # The host uid its processes run as when pyro runs as root (identity.py); None: the
    # layer owner's (or, for an ordinary user, that user).
    uid: int | None = None
    # What the caller wrote into the standby ahead of its use, in the caller's own name for
    # it (see Workspaces.reset); None: it holds its layers only; FILLING: being written, or
    # left half written (never used).
    spare_filled: str | None = None
    spare_ready: bool = False  # the standby's agent has answered: no need to wait for it
    filled: str | None = None  # spare_filled of the standby that became the running sandbox

    def to_json(self) -> WorkspaceRecordJSON:
        return {
            "id": self.id,
            "name": self.name,
            "environment": self.environment,
            "network": self.network,
            "labels": dict(self.labels),
            "base_layers": list(self.base_layers),
            "layers": list(self.layers),
            "created": self.created,
            "limits": self.limits.to_json(),
            "snapshots": {
                k: {"name": v.name, "layers": list(v.layers), "created": v.created}
                for k, v in self.snapshots.items()
            },
            "handle": self.handle.to_json() if self.handle else None,
            "generation": self.generation,
            "standby": self.standby,
            "spare": self.spare.to_json() if self.spare else None,
            "packages": list(self.packages),
            "environment_layer": self.environment_layer,
            "mounts": [m.to_json() for m in self.mounts],
            "env": dict(self.env),
            "uid": self.uid,
            "spare_filled": self.spare_filled,
            "spare_ready": self.spare_ready,
            "filled": self.filled,
            "version": RECORD_VERSION,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkspaceRecord:
        return cls(
            id=data["id"],
            name=data.get("name"),
            environment=data["environment"],
            network=bool(data["network"]),
            labels=dict(data.get("labels", {})),
            base_layers=list(data["base_layers"]),
            layers=list(data["layers"]),
            created=float(data["created"]),
            limits=Limits(**data.get("limits", {})),
            snapshots={k: Snapshot(**v) for k, v in data.get("snapshots", {}).items()},
            handle=SandboxHandle.from_json(data["handle"]) if data.get("handle") else None,
            generation=int(data.get("generation", 0)),
            standby=bool(data.get("standby", True)),
            spare=SandboxHandle.from_json(data["spare"]) if data.get("spare") else None,
            packages=list(data.get("packages", [])),
            environment_layer=data.get("environment_layer"),
            mounts=[Mount.from_json(m) for m in data.get("mounts", [])],
            env={str(k): str(v) for k, v in data.get("env", {}).items()},
            uid=int(data["uid"]) if data.get("uid") is not None else None,
            spare_filled=_optional_str(data.get("spare_filled")),
            spare_ready=bool(data.get("spare_ready", False)),
            filled=_optional_str(data.get("filled")),
        )


class WorkspaceDir:
    """The files of one workspace under `<home>/workspaces/<id>/`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def record_path(self) -> Path:
        return self.root / "workspace.json"

    @property
    def lock_path(self) -> Path:
        return self.root / "lock"

    def upper(self, generation: int) -> Path:
        return self.root / f"upper.{generation}"

    def work(self, generation: int) -> Path:
        return self.root / f"work.{generation}"

    @property
    def socket(self) -> Path:
        return self.root / "agent.sock"

    @property
    def info(self) -> Path:
        return self.root / "sandbox-info.json"

    @property
    def spare_socket(self) -> Path:
        return self.root / "agent-standby.sock"

    @property
    def spare_info(self) -> Path:
        return self.root / "sandbox-info-standby.json"

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    @property
    def history(self) -> Path:
        return self.root / "history.jsonl"

    @property
    def trash(self) -> Path:
        return self.root / "trash"

    def load(self) -> WorkspaceRecord:
        return WorkspaceRecord.from_json(json.loads(self.record_path.read_text()))

    def save(self, record: WorkspaceRecord, *, keep: Path | None = None) -> None:
        """`keep`: where the record it replaces stays, for the caller to delete (see
        fs.util.replace_keeping)."""
        # Atomic but not fsynced: it is rewritten on every reset, and after a power loss the
        # sandbox it describes is gone anyway (status then says "dead").
        write_json_atomic(self.record_path, record.to_json(), durable=False, keep=keep)


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) else None

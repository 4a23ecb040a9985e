"""Which `.pyro.toml` files the user has approved: `pyro trust`, as with `direnv allow`.

A cloned repository's `.pyro.toml` is someone else's input. The settings in it that run
commands or widen the sandbox (project/config.py marks them: prepare commands, passed-through
variables, the network, raised limits, the check commands) take effect only after the user
has approved this file's exact contents. An approval is a record in the pyro home (never in
the repository, which the file's author controls), keyed by the file's path and holding the
sha256 of its bytes: any change to the file asks again. A file that sets none of those
settings needs no approval.

The check is against the digest of the bytes the configuration was parsed from (project/config.py
keeps it), so what runs is exactly what was approved. A configuration built in code (no
file) is the caller's own and needs none.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_loop.digest import sha256_hex
from pyro_loop.errors import PyroError
from pyro_loop.fs.util import write_json_atomic
from pyro_loop.project.config import ProjectConfig, display_path
from pyro_loop.records import dataclass

if TYPE_CHECKING:
    from pyro_loop.shapes import TrustJSON

TRUST_DIR = "trust"


class UntrustedConfigError(PyroError):
    """The project's `.pyro.toml` sets what needs approval, and the user has not given it."""


@dataclass(frozen=True)
class TrustState:
    """Where one configuration stands: "not needed", "trusted", "untrusted" or "changed"."""

    path: Path | None
    state: str
    widening: tuple[str, ...]  # the settings that need approval, as "[table] key"

    @property
    def ok(self) -> bool:
        return self.state in ("not needed", "trusted")

    def describe(self) -> str:
        """One line for `pyro status`."""
        if self.state == "not needed":
            return "not needed (no settings that run commands or widen the sandbox)"
        if self.state == "trusted":
            return f"trusted ({', '.join(self.widening)})"
        return f"{self.message()}: it sets {', '.join(self.widening)}"

    def message(self) -> str:
        name = display_path(self.path) if self.path else ".pyro.toml"
        if self.state == "changed":
            return f"{name} changed since it was trusted: review it, then run `pyro trust`"
        return f"{name} is not trusted: review it, then run `pyro trust`"

    def error(self) -> UntrustedConfigError:
        return UntrustedConfigError(
            self.message(),
            hint=f"it sets {', '.join(self.widening)}, which take effect only once you trust "
            "this version of the file",
        )

    def to_json(self) -> TrustJSON:
        return {
            "state": self.state,
            "trusted": self.ok,
            "path": str(self.path) if self.path else None,
            "needs_trust": list(self.widening),
        }


def trust_state(home: Path, config: ProjectConfig) -> TrustState:
    widening = tuple(config.widening())
    if config.path is None or config.digest is None:
        return TrustState(config.path, "not needed" if not widening else "trusted", widening)
    if not widening:
        return TrustState(config.path, "not needed", widening)
    record = _read(_record_path(home, config.path))
    if record.get("path") != _key_path(config.path):
        return TrustState(config.path, "untrusted", widening)
    if record.get("sha256") != config.digest:
        return TrustState(config.path, "changed", widening)
    return TrustState(config.path, "trusted", widening)


def require_trust(home: Path, config: ProjectConfig) -> None:
    """Raise UntrustedConfigError unless the settings of `config` may take effect."""
    state = trust_state(home, config)
    if not state.ok:
        raise state.error()


def allow(home: Path, config: ProjectConfig) -> TrustState:
    """Approve exactly the contents `config` was loaded from (its path and digest)."""
    if config.path is None or config.digest is None:
        return trust_state(home, config)
    allow_digest(home, config.path, config.digest)
    return trust_state(home, config)


def allow_content(home: Path, path: Path, content: bytes) -> None:
    """Approve `content` as the file at `path` (`pyro init` trusts the file it wrote)."""
    allow_digest(home, path, sha256_hex(content))


def allow_digest(home: Path, path: Path, digest: str) -> None:
    record = _record_path(home, path)
    # Only this user may write approvals: a workspace, or another user, never reaches them.
    record.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_json_atomic(
        record, {"path": _key_path(path), "sha256": digest, "trusted_at": time.time()}
    )


def revoke(home: Path, path: Path) -> bool:
    """Withdraw the approval of the file at `path`; False if there was none."""
    try:
        _record_path(home, path).unlink()
    except FileNotFoundError:
        return False
    return True


def _key_path(path: Path) -> str:
    # The directory resolved (one file, however it is reached), the file's own name kept: a
    # `.pyro.toml` that is a symlink is approved as what it is, not as its target.
    return os.path.join(os.path.realpath(path.absolute().parent), path.name)


def _record_path(home: Path, path: Path) -> Path:
    name = sha256_hex(_key_path(path).encode())[:32]
    return home / TRUST_DIR / f"{name}.json"


def _read(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}

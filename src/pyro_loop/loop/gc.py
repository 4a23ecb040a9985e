"""`pyro cache`: what the store holds, and removing what nothing needs any more.

A layer is *referenced* when a workspace uses it (its layers, its baseline, its snapshots),
when it is a project's last prepared dependency snapshot or baseline, or when a known
project's current configuration needs it (its environment, the snapshot of its current
lockfiles: `warmth.judge`). Referenced layers
are never removed; gc removes every unreferenced layer, prune only old or excess ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_loop.errors import DamagedFileError, NotFoundError, PyroError
from pyro_loop.locking import file_lock
from pyro_loop.loop.projecthome import prepared_projects
from pyro_loop.records import dataclass, field
from pyro_loop.store.layers import COMPLETE_MARKER, Layer, LayerMeta, layer_of
from pyro_loop.workspace.manager import Workspaces

if TYPE_CHECKING:
    from pyro_loop.shapes import DamageJSON, LayerJSON


@dataclass(frozen=True)
class LayerInfo:
    key: str
    kind: str
    size: int
    created: float
    last_used: float
    users: list[str]

    def to_json(self) -> LayerJSON:
        return {"key": self.key, "kind": self.kind, "size": self.size, "created": self.created,
                "last_used": self.last_used, "users": list(self.users)}  # fmt: skip


def gc_lock(home: Path) -> Path:
    """Held exclusively by gc and prune, shared by whoever is about to use layers."""
    return home / "locks" / "gc.lock"


def list_layers(ws: Workspaces) -> list[LayerInfo]:
    users = _references(ws)
    infos = []
    for layer in ws.store.list():
        meta = _meta(layer)
        infos.append(
            LayerInfo(
                key=layer.key,
                kind=meta["kind"] if meta else "?",
                size=meta["size"] if meta else 0,
                created=meta["created"] if meta else 0.0,
                last_used=_last_used(layer),
                users=sorted(users.get(layer.key, [])),
            )
        )
    return sorted(infos, key=lambda i: i.last_used, reverse=True)


OnWait = Callable[[], None] | None  # told once when a prepare or create holds the store


def gc(ws: Workspaces, *, on_wait: OnWait = None) -> list[LayerInfo]:
    """Remove every layer nothing references; returns what was removed."""
    return _remove(ws, lambda unused: unused, on_wait)


def prune(
    ws: Workspaces,
    *,
    older_than_days: float | None = None,
    max_bytes: int | None = None,
    on_wait: OnWait = None,
) -> list[LayerInfo]:
    """Remove unreferenced layers unused for `older_than_days`, then least recently used
    ones until the store holds at most `max_bytes`."""

    def choose(unused: list[LayerInfo]) -> list[LayerInfo]:
        chosen: list[LayerInfo] = []
        if older_than_days is not None:
            cutoff = _now() - older_than_days * 86400
            chosen = [i for i in unused if i.last_used < cutoff]
        if max_bytes is not None:
            total = sum(i.size for i in list_layers(ws)) - sum(i.size for i in chosen)
            for info in sorted(unused, key=lambda i: i.last_used):
                if total <= max_bytes:
                    break
                if info not in chosen:
                    chosen.append(info)
                    total -= info.size
        return chosen

    return _remove(ws, choose, on_wait)


@dataclass
class Damage:
    """One layer `verify` found wrong: damaged itself, or built on top of one that is."""

    key: str
    kind: str
    problem: str  # what is wrong with it, or which damaged layer it was built on
    users: list[str]
    built_on: str | None = None  # the damaged layer below it, for a dependent
    # What --repair did: "deleted" (nothing used it), "quarantined" (in use), or None.
    action: str | None = None
    stopped: list[str] = field(default_factory=list)  # running workspaces stopped for it
    error: str | None = None  # why repairing it failed

    def to_json(self) -> DamageJSON:
        return {
            "key": self.key,
            "kind": self.kind,
            "problem": self.problem,
            "users": list(self.users),
            "built_on": self.built_on,
            "action": self.action,
            "stopped": list(self.stopped),
            "error": self.error,
            # The older shape, kept for scripts that read it.
            "deleted": self.action == "deleted",
            "quarantined": self.action == "quarantined",
        }


def verify(ws: Workspaces, *, repair: bool = False, on_wait: OnWait = None) -> list[Damage]:
    """Check every layer's content against its recorded digest; with `repair`, take the
    damaged ones out, and every layer built on top of one of them.

    Without `repair` nothing changes. With it, a layer nothing uses is deleted; one in use is
    quarantined (moved out of the store, kept for a look until `gc`), so that every warm
    judgment sees it missing and the next prepare rebuilds it, and the running workspaces on
    it are stopped: their next start mounts the rebuilt layer, never the damaged one. A
    layer built over a damaged one (a project snapshot over its dependencies, dependencies
    over their environment) was made from what may already have been damaged, so it goes
    the same way. Returns one entry per layer found wrong, the damaged ones first.
    """
    with file_lock(gc_lock(ws.home), shared=not repair, on_wait=on_wait):
        found: list[Damage] = []
        kinds: dict[str, str] = {}
        below: dict[str, set[str]] = {}
        for layer in ws.store.list():
            meta = _meta(layer)
            kinds[layer.key] = meta["kind"] if meta else "?"
            below[layer.key] = _built_on(meta["inputs"]) if meta else set()
            try:
                problem = ws.store.verify(layer.key)
            except NotFoundError:
                continue  # removed meanwhile (a delete does not need the gc lock)
            if problem is not None:
                found.append(Damage(layer.key, kinds[layer.key], problem, []))
        found += _dependents(found, kinds, below)
        if not found:
            return []
        if repair:
            ws.pool.drain()
        users = _references(ws)
        for item in found:
            item.users = sorted(users.get(item.key, []))
            if repair:
                _take_out(ws, item)
    return found


def _built_on(inputs: dict[str, Any]) -> set[str]:
    """The layers a layer was built over, as its metadata's inputs name them."""
    named = inputs.get("built_on")
    keys = {k for k in named if isinstance(k, str)} if isinstance(named, list) else set()
    if isinstance(inputs.get("dependencies"), str):  # a project snapshot, before built_on
        keys.add(inputs["dependencies"])
    return keys


def _dependents(
    damaged: list[Damage], kinds: dict[str, str], below: dict[str, set[str]]
) -> list[Damage]:
    """Every layer built, directly or not, on top of a damaged one."""
    out: list[Damage] = []
    bad = {d.key for d in damaged}
    queue = [d.key for d in damaged]
    while queue:
        key = queue.pop(0)
        for other, under in sorted(below.items()):
            if key in under and other not in bad:
                bad.add(other)
                queue.append(other)
                problem = f"built on damaged layer {key[:12]}"
                out.append(Damage(other, kinds[other], problem, [], built_on=key))
    return out


def _take_out(ws: Workspaces, item: Damage) -> None:
    try:
        if item.users:
            item.stopped = _stop_users(ws, item.key)
            ws.store.quarantine(item.key, item.problem)
            item.action = "quarantined"
        else:
            ws.store.delete(item.key)
            item.action = "deleted"
    except (PyroError, OSError) as exc:
        item.error = str(exc)


def _stop_users(ws: Workspaces, key: str) -> list[str]:
    """Stop the running workspaces whose mounts include layer `key`; their names."""
    stopped = []
    for status in ws.list():
        record = status.record
        if status.state not in ("running", "unresponsive") or key not in {
            *record.layers,
            *record.base_layers,
            getattr(record, "environment_layer", None),
        }:
            continue
        ws.stop(record.id)
        stopped.append(record.name or record.id)
    return stopped


def _remove(ws: Workspaces, choose: Any, on_wait: OnWait) -> list[LayerInfo]:
    with file_lock(gc_lock(ws.home), on_wait=on_wait):
        ws.pool.drain()  # pooled sandboxes hold their layers mounted; they are only a cache
        unused = [i for i in list_layers(ws) if not i.users]
        removed = choose(unused)
        for info in removed:
            ws.store.delete(info.key)
        ws.store.clean_leftovers()
        ws.store.empty_quarantine()
        ws.store.empty_trash()
    return list(removed)


def _references(ws: Workspaces) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}

    def add(key: str | None, user: str) -> None:
        if key and user not in (users := refs.setdefault(key, [])):
            users.append(user)  # once: a project names its layers in several ways

    for status in ws.list():
        record = status.record
        user = f"workspace {record.name or record.id}"
        for key in {*record.layers, *record.base_layers}:
            add(key, user)
        for snap in record.snapshots.values():
            for key in snap.layers:
                add(key, user)
        add(getattr(record, "environment_layer", None), user)
        for mount in record.mounts:
            add(layer_of(mount.source), user)
    for state in prepared_projects(ws.home):
        if not Path(state.root).is_dir():
            continue  # the project is gone: its layers are no longer anyone's
        user = f"project {state.root}"
        add(state.dependencies_layer, user)
        add(state.project_layer, user)
        add(state.baseline_layer, user)
        for key in _needed_now(Path(state.root), ws.home):
            add(key, user)
        for key in state.tool_layers.values():
            add(key, user)
    return refs


def _needed_now(root: Path, home: Path) -> set[str]:
    """What the project's current configuration needs (its environment, the snapshot of its
    current lockfiles), which may differ from its last prepare: a base switched back, a
    lockfile restored. A project whose configuration no longer loads keeps its last prepare's."""
    from pyro_loop.loop.warmth import judge
    from pyro_loop.project.config import load_project_config
    from pyro_loop.project.discovery import find_project

    try:
        project = find_project(root)
        if project.root != root or not project.config_path.is_file():
            return set()
        return judge(project, load_project_config(root).config, home).needed_layers()
    except (PyroError, OSError):
        return set()


def _meta(layer: Layer) -> LayerMeta | None:
    """The layer's metadata; None when damaged (`verify` names it, `gc` still judges the
    layer by its users)."""
    try:
        return layer.meta()
    except DamagedFileError:
        return None


def _last_used(layer: Layer) -> float:
    try:
        return os.stat(layer.root / COMPLETE_MARKER).st_mtime
    except OSError:
        return 0.0


def _now() -> float:
    import time

    return time.time()

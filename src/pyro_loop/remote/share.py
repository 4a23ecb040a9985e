"""Push and pull the layers of one snapshot key through a registry (docs/cache.md).

The mapping: one manifest per snapshot key, tagged `<key>-<platform>`, whose layers are the
environment layer (none for `host`), the declared tools' layers and the dependency layer,
each one blob (archive.py) with pyro's media type and annotations naming its layer key, kind
and tree digest. The
manifest's config blob and annotations say what it was built from: the keying files'
digests, the environment, the commands, pyro's version, the architecture. A workspace's own
files (baselines, snapshots) are never pushed.

Pulling trusts nothing it has not checked: the manifest must name exactly the layer keys
this project computes; each blob is checked against its digest and length while it
downloads, unpacked by the untrusted-archive rules into the store's staging directory, and
only then published (atomically, marker last). A refused or interrupted pull leaves nothing
a later run uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
from pathlib import Path
from typing import Any, Literal

from pyro_loop import __version__
from pyro_loop.errors import PyroError
from pyro_loop.fs.util import FREE_SPACE_KEPT
from pyro_loop.progress import OnProgress, Phase
from pyro_loop.records import dataclass, field
from pyro_loop.remote.address import Remote
from pyro_loop.shapes import TransferJSON, TransferLayerJSON
from pyro_loop.store.layers import Layer, LayerStore, check_key

ARTIFACT_TYPE = "application/vnd.pyro.snapshot.v1"
CONFIG_MEDIA_TYPE = "application/vnd.pyro.snapshot.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
A = "dev.pyro."  # annotation prefix
# A layer's uncompressed tar length, in bytes: a pull stops decompressing past it (a small
# blob must not expand to fill the disk) and checks the disk has room for it first.
TAR_SIZE = f"{A}layer.tar.size"
SHARED_KINDS = ("environment", "tool", "dependencies")


@dataclass(frozen=True)
class Snapshot:
    """What one snapshot key needs: its layers, bottom first, and what it was built from."""

    key: str
    environment: str  # "host", "debian:12"
    layers: list[tuple[str, str]]  # (kind, layer key), environment first
    inputs: dict[str, Any] = field(default_factory=dict)  # the key's inputs (loop/prepare.py)

    @property
    def tag(self) -> str:
        return f"{self.key}-{platform_tag(self.environment)}"


@dataclass
class Transfer:
    """What a push or pull did, per layer: "sent", "present" or "pulled", with sizes."""

    remote: str
    tag: str
    layers: list[TransferLayerJSON] = field(default_factory=list)
    found: bool = True  # False: the registry has no manifest for the key (pull only)

    def to_json(self) -> TransferJSON:
        return {"remote": self.remote, "tag": self.tag, "found": self.found,
                "layers": self.layers, "bytes": self.moved_bytes}  # fmt: skip

    @property
    def moved_bytes(self) -> int:
        return sum(item["blob_size"] for item in self.layers if item["action"] != "present")


def platform_tag(environment: str) -> str:
    """What else a layer depends on: the architecture, and for `host` the host's release
    (its /usr is the layer's toolchain); a Debian environment carries its own."""
    machine = platform.machine().lower()
    if environment != "host":
        return machine
    release = _os_release()
    name = re.sub(r"[^a-z0-9.]", "", f"{release.get('ID', 'linux')}{release.get('VERSION_ID', '')}")
    return f"{machine}-{name or 'linux'}"


def _os_release() -> dict[str, str]:
    values: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep:
                values[name.strip()] = value.strip().strip('"')
    return values


# -- push ------------------------------------------------------------------------------------


def push(
    store: LayerStore, remote: Remote, snapshot: Snapshot, *, on_progress: OnProgress | None = None
) -> Transfer:
    """Upload the snapshot's layers (each blob once: one the registry holds is not sent
    again), then its manifest, tagged with the key; `on_progress` gets "push" events."""
    from pyro_loop.remote.registry import RegistryClient

    progress = Phase("push", on_progress)
    client = RegistryClient(remote)
    transfer = Transfer(str(remote), snapshot.tag)
    descriptors = []
    for kind, key in snapshot.layers:
        layer = store.get(key)
        if layer is None:
            raise PyroError(
                f"the {kind} layer {key[:12]} is not in the store", hint="run `pyro prepare`"
            )
        descriptor, action = _push_layer(store, client, layer, kind, progress)
        descriptors.append(descriptor)
        transfer.layers.append(
            {"kind": kind, "key": key, "action": action, "blob_size": int(descriptor["size"])}
        )
    config = json.dumps(_config(snapshot), sort_keys=True, indent=1).encode()
    config_descriptor = _push_bytes(store, client, config, CONFIG_MEDIA_TYPE)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": config_descriptor,
        "layers": descriptors,
        "annotations": _annotations(snapshot),
    }
    client.put_manifest(manifest, snapshot.tag)
    progress(f"pushed snapshot {snapshot.key[:12]} to {remote} (tag {snapshot.tag[:20]}...)")
    return transfer


def _push_layer(
    store: LayerStore, client: Any, layer: Layer, kind: str, progress: Phase
) -> tuple[dict[str, Any], Literal["sent", "present"]]:
    from pyro_loop.remote import archive

    meta = layer.meta()
    annotations = {
        f"{A}layer.key": layer.key,
        f"{A}layer.kind": kind,
        f"{A}layer.digest": str(meta.get("digest") or ""),
        f"{A}layer.size": str(meta.get("size") or 0),
    }
    known = _read_blob_index(store, layer.key)
    if known is not None and client.has_blob(known["digest"]):
        progress(f"{kind} layer {layer.key[:12]}: already in the registry")
        annotations[TAR_SIZE] = str(known["tar_size"])
        descriptor = {
            "mediaType": archive.MEDIA_TYPE,
            "digest": known["digest"],
            "size": known["size"],
            "annotations": annotations,
        }
        return descriptor, "present"
    with store.staging() as staging:
        blob = staging / "blob"
        progress(f"{kind} layer {layer.key[:12]}: packing")
        with blob.open("wb") as out:
            tar_size = archive.pack(layer.tree, out)
        annotations[TAR_SIZE] = str(tar_size)
        digest, size = _file_digest(blob), blob.stat().st_size
        _write_blob_index(store, layer.key, digest, size, tar_size)
        action: Literal["sent", "present"] = "sent"
        if client.has_blob(digest):
            action = "present"
            progress(f"{kind} layer {layer.key[:12]}: already in the registry")
        else:
            progress(f"{kind} layer {layer.key[:12]}: uploading {_mb(size)}")
            client.push_blob(str(blob), digest=digest, size=size, media_type=archive.MEDIA_TYPE)
    descriptor = {
        "mediaType": archive.MEDIA_TYPE,
        "digest": digest,
        "size": size,
        "annotations": annotations,
    }
    return descriptor, action


def _push_bytes(store: LayerStore, client: Any, data: bytes, media_type: str) -> dict[str, Any]:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    if not client.has_blob(digest):
        with store.staging() as staging:
            (staging / "blob").write_bytes(data)
            client.push_blob(str(staging / "blob"), digest=digest, size=len(data),
                             media_type=media_type)  # fmt: skip
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _config(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "key": snapshot.key,
        "environment": snapshot.environment,
        "inputs": snapshot.inputs,
        "layers": [{"kind": kind, "key": key} for kind, key in snapshot.layers],
        "pyro_version": __version__,
        "architecture": platform.machine(),
        "platform": platform_tag(snapshot.environment),
    }


def _annotations(snapshot: Snapshot) -> dict[str, str]:
    keys = snapshot.inputs.get("keys") or {}
    return {
        f"{A}snapshot.key": snapshot.key,
        f"{A}environment": snapshot.environment,
        f"{A}lockfiles": json.dumps(keys, sort_keys=True, separators=(",", ":")),
        f"{A}commands": json.dumps(snapshot.inputs.get("run") or [], separators=(",", ":")),
        f"{A}tools": json.dumps(_tool_versions(snapshot.environment), separators=(",", ":")),
        f"{A}version": __version__,
        f"{A}architecture": platform.machine(),
        "org.opencontainers.image.title": f"pyro snapshot {snapshot.key[:12]}",
    }


def _tool_versions(environment: str) -> dict[str, str]:
    """What built the layers besides their inputs: the host's release for `host`."""
    release = _os_release()
    tools = {"pyro": __version__}
    if environment == "host":
        tools["os"] = f"{release.get('ID', '?')} {release.get('VERSION_ID', '?')}"
        with contextlib.suppress(OSError):
            tools["python3"] = os.path.basename(os.path.realpath("/usr/bin/python3"))
    return tools


# -- pull ------------------------------------------------------------------------------------


def pull(
    store: LayerStore, remote: Remote, snapshot: Snapshot, *, on_progress: OnProgress | None = None
) -> Transfer:
    """Download the snapshot's layers the store lacks and publish them under their keys.

    `transfer.found` is False when the registry has no manifest for the key. Raises
    RemoteError (unreachable, refused, a blob that does not match) and PyroError (a
    manifest or archive pyro refuses); nothing is published from a refused layer.
    `on_progress` gets "pull" events, a download's with its bytes received.
    """
    from pyro_loop.remote.registry import RegistryClient

    progress = Phase("pull", on_progress)
    client = RegistryClient(remote)
    transfer = Transfer(str(remote), snapshot.tag)
    manifest = client.get_manifest(snapshot.tag)
    if manifest is None:
        transfer.found = False
        return transfer
    for kind, key, descriptor in _check_manifest(manifest, snapshot, remote):
        size = int(descriptor["size"])
        if store.get(key) is not None:
            transfer.layers.append(
                {"kind": kind, "key": key, "action": "present", "blob_size": size}
            )
            continue
        progress(f"pulling the {kind} layer {key[:12]} ({_mb(size)}) from {remote}")
        _pull_layer(
            store, client, kind=kind, key=key, descriptor=descriptor, remote=remote,
            progress=progress,
        )  # fmt: skip
        transfer.layers.append({"kind": kind, "key": key, "action": "pulled", "blob_size": size})
    return transfer


def _pull_layer(
    store: LayerStore,
    client: Any,
    *,
    kind: str,
    key: str,
    descriptor: dict[str, Any],
    remote: Remote,
    progress: Phase,
) -> Layer:
    """Download, check and unpack in one stream (no copy of the blob on disk): the blob's
    digest is known only at its end, so the tree is unpacked into staging by the rules of
    an untrusted archive and published only once the digest checks out."""
    from pyro_loop.identity import sandbox_owner
    from pyro_loop.remote import archive
    from pyro_loop.remote.registry import RemoteError

    size, tar_size = int(descriptor["size"]), int(descriptor["annotations"][TAR_SIZE])
    with store.staging() as staging:
        _check_room(staging, kind, key, tar_size)
        tree = staging / "tree"
        tree.mkdir()
        with client.open_blob(str(descriptor["digest"]), size) as blob:
            reported = [0]  # the last tenth reported

            def on_chunk() -> None:
                tenth = blob.received * 10 // max(size, 1)
                if reported[0] < tenth < 10:
                    reported[0] = tenth
                    progress(
                        f"{kind} layer {key[:12]}: {tenth * 10}% of {_mb(size)}",
                        done=blob.received, total=size, unit="bytes",
                    )  # fmt: skip

            try:
                unpacked = archive.unpack(
                    blob, tree, tar_size=tar_size, keep_free=FREE_SPACE_KEPT,
                    owner=sandbox_owner(), on_chunk=on_chunk,
                    tree_digest=_published_digest(descriptor),
                )  # fmt: skip
            except RemoteError:
                raise
            except PyroError:
                # A blob other than the one the manifest names says so, rather than
                # what its damage broke in the archive.
                blob.verify()
                raise
            blob.verify()
        progress(f"{kind} layer {key[:12]}: verified")
        return store.publish(
            tree,
            kind=kind,
            key=key,
            digest=unpacked.digest,
            inputs={"pulled_from": str(remote), "blob": descriptor["digest"]},
            size=unpacked.size,
            handed_over=True,
        )


def _published_digest(descriptor: dict[str, Any]) -> str | None:
    """The tree digest the layer's publisher recorded (for `verify`), if it gave one."""
    claimed = descriptor["annotations"].get(f"{A}layer.digest")
    return claimed if isinstance(claimed, str) and _SHA256_HEX.fullmatch(claimed) else None


_SHA256_HEX = re.compile("[0-9a-f]{64}")


def _check_room(staging: Path, kind: str, key: str, tar_size: int) -> None:
    """Refuse, before anything is downloaded, a layer that would not fit on the store's
    disk with FREE_SPACE_KEPT to spare."""
    from pyro_loop.units import size as show

    room = shutil.disk_usage(staging).free - FREE_SPACE_KEPT
    if tar_size > room:
        raise PyroError(
            f"the {kind} layer {key[:12]} unpacks to {show(tar_size)}, more than the "
            f"{show(max(room, 0))} the store's disk can spare ({show(FREE_SPACE_KEPT)} "
            "are kept free): not pulled",
            hint="free some space there, or move PYRO_HOME to a larger disk",
        )


def _check_manifest(
    manifest: dict[str, Any], snapshot: Snapshot, remote: Remote
) -> list[tuple[str, str, dict[str, Any]]]:
    """The manifest's layers as (kind, key, descriptor), if they are exactly the ones this
    snapshot needs, in pyro's format; otherwise PyroError."""
    from pyro_loop.remote import archive

    def refuse(why: str) -> PyroError:
        return PyroError(f"{remote}: refusing the manifest for {snapshot.key[:12]}: {why}")

    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, list):
        raise refuse("it has no layer list")
    found: list[tuple[str, str, dict[str, Any]]] = []
    for descriptor in layers:
        if not isinstance(descriptor, dict) or descriptor.get("mediaType") != archive.MEDIA_TYPE:
            raise refuse("a layer is not a pyro layer (unknown media type)")
        notes = descriptor.get("annotations") or {}
        kind, key = notes.get(f"{A}layer.kind"), notes.get(f"{A}layer.key")
        size, digest = descriptor.get("size"), descriptor.get("digest")
        if not isinstance(size, int) or size < 0 or not isinstance(digest, str):
            raise refuse("a layer has no valid size or digest")
        if kind not in SHARED_KINDS or not isinstance(key, str):
            raise refuse("a layer does not say which layer it is")
        tar_size = notes.get(TAR_SIZE)
        if not isinstance(tar_size, str) or not tar_size.isdigit():
            raise refuse(
                "a layer does not record its unpacked size (pushed by an older pyro: push it again)"
            )
        found.append((kind, check_key(key), descriptor))
    wanted = [(kind, key) for kind, key in snapshot.layers]
    if [(kind, key) for kind, key, _d in found] != wanted:
        raise refuse("its layers are not the ones this project's inputs name")
    return found


# -- small helpers -----------------------------------------------------------------------------


def _file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return f"sha256:{hashlib.file_digest(f, 'sha256').hexdigest()}"


def _blob_index(store: LayerStore, key: str) -> Path:
    return store.home / "remote" / "blobs" / f"{key}.json"


def _read_blob_index(store: LayerStore, key: str) -> dict[str, Any] | None:
    """The packed blob's digest and size, remembered from an earlier push of the layer (so a
    push of a layer the registry holds does not pack it again)."""
    try:
        data = json.loads(_blob_index(store, key).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("digest"), str):
        return None
    if not isinstance(data.get("tar_size"), int):
        return None  # remembered by an older pyro: packed again
    return {"digest": data["digest"], "size": int(data["size"]), "tar_size": data["tar_size"]}


def _write_blob_index(store: LayerStore, key: str, digest: str, size: int, tar_size: int) -> None:
    from pyro_loop.fs.util import write_json_atomic

    path = _blob_index(store, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"digest": digest, "size": size, "tar_size": tar_size},
                      durable=False)  # fmt: skip


def _mb(size: int) -> str:
    from pyro_loop import units

    return units.size(size)

"""The layer store: read-only directory trees, published atomically, shared by workspaces.

A layer lives at `layers/<key>/tree`. It is usable only once `layers/<key>/COMPLETE` exists
and holds the key; the marker is written after the tree and its metadata, in a staging
directory that one atomic rename moves into place, so a build that is killed at any point
leaves nothing a later run trusts, and a complete layer is never replaced by another.
`meta.json` (`LayerMeta`) records the tree's content digest, so `verify` detects a corrupted
tree (a flipped byte); once it is deleted or quarantined, the next build or publish of that key
makes it again. Keys are either the content digest of the tree (seeds, workspace snapshots) or
a digest of the inputs that produced it (environments, dependency snapshots), chosen by the
caller.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict

from pyro_loop.errors import DamagedFileError, InvalidInputError, NotFoundError
from pyro_loop.fs.util import (
    dir_size,
    empty_trash,
    move_to_trash,
    read_json_object,
    remove_tree,
    write_json_atomic,
)
from pyro_loop.identity import hand_over
from pyro_loop.locking import file_lock
from pyro_loop.procutil import pid_alive, remove_in_background
from pyro_loop.records import dataclass
from pyro_loop.store.treehash import tree_digest

_KEY_RE = re.compile(r"^[0-9a-f]{16,64}$")
COMPLETE_MARKER = "COMPLETE"
META_LIMIT = 1024 * 1024  # bytes of a meta.json read: pyro's own are a few hundred


# A layer's `meta.json`: what it is and was made from, written once as it is published.
# Declared with real types, not as a class: under `from __future__ import annotations` a
# TypedDict below Python 3.12 compiles each field's string annotation, on every command's start.
LayerMeta = TypedDict(  # noqa: UP013 (the class form compiles, see above)
    "LayerMeta",
    {
        "key": str,
        "digest": str | None,  # of the tree as published, what `verify` checks; None: not readable
        "kind": str,  # seed, snapshot, empty, environment, dependencies, baseline, tool, ...
        "inputs": dict[str, Any],  # what made it, as its kind records it
        "size": int,  # bytes in its regular files
        "created": float,  # seconds since the epoch
    },
)


def load_meta(path: Path) -> LayerMeta:
    """`path` read as a layer's metadata and checked field by field; a file that is not
    what `_publish_locked` writes raises DamagedFileError, saying in one line what is wrong."""
    try:
        data = read_json_object(path, META_LIMIT)
        meta: LayerMeta = {
            "key": _field(data, "key", str),
            "digest": _field(data, "digest", str, optional=True),
            "kind": _field(data, "kind", str),
            "inputs": _field(data, "inputs", dict),
            "size": _field(data, "size", int),
            "created": float(_field(data, "created", float)),
        }
        if not _KEY_RE.match(meta["key"]):
            raise ValueError(f"key {meta['key'][:80]!r} is not a layer key")
        if meta["size"] < 0 or not math.isfinite(meta["created"]):
            raise ValueError("size or created out of range")
    except (ValueError, RecursionError) as exc:
        raise DamagedFileError(
            f"damaged layer metadata {path}: {exc}",
            hint="`pyro cache verify --repair` takes damaged layers out of the store",
        ) from None
    return meta


def _field(data: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    value = data.get(name)
    if value is None and optional:
        return None
    numeric = isinstance(value, int | float) if kind is float else isinstance(value, kind)
    if not numeric or isinstance(value, bool):
        raise ValueError(f"{name} is not {'a number' if kind is float else kind.__name__}")
    return value


@dataclass(frozen=True)
class Layer:
    key: str
    root: Path  # layers/<key>

    @property
    def tree(self) -> Path:
        return self.root / "tree"

    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    def meta(self) -> LayerMeta:
        """Its metadata, checked (DamagedFileError when it is not what pyro wrote)."""
        return load_meta(self.meta_path)


def layer_path(key: str) -> str:
    """A layer's tree relative to the store: how mounts and overlay options name it."""
    return f"layers/{check_key(key)}/tree"


def layer_of(path: str) -> str | None:
    """The key of the layer whose tree `path` (relative to the store) is, or None."""
    match = re.fullmatch(r"layers/([0-9a-f]{16,64})/tree", path)
    return match[1] if match else None


def check_key(key: str) -> str:
    if not _KEY_RE.fullmatch(key):  # fullmatch: `$` would allow a final newline
        raise InvalidInputError(f"not a layer key: {key!r} (expected 16-64 lowercase hex digits)")
    return key


class LayerStore:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.layers_dir = home / "layers"
        self.tmp_dir = home / "tmp"
        self.locks_dir = home / "locks"
        self.trash_dir = home / "trash"
        self.quarantine_dir = home / "quarantine"

    # -- lookup -----------------------------------------------------------------------------

    def get(self, key: str) -> Layer | None:
        """The complete layer for `key`, or None; an incomplete directory is never returned.

        The marker must hold the key: a torn or damaged marker means "not built" (cheap, on
        every lookup; the tree itself is checked by `verify`).
        """
        root = self.layers_dir / check_key(key)
        try:
            marker = (root / COMPLETE_MARKER).read_bytes()
        except OSError:
            return None
        return Layer(key, root) if marker == f"{key}\n".encode() else None

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Held (shared) from looking up or publishing layers until they are referenced.

        Garbage collection holds the same lock exclusively while it decides what is
        unreferenced and removes it, so it never removes a layer a workspace is being
        created from.
        """
        with file_lock(self.gc_lock_path, shared=True):
            yield

    @property
    def gc_lock_path(self) -> Path:
        return self.locks_dir / "gc.lock"

    def verify(self, key: str) -> str | None:
        """Check a layer's tree against the digest recorded when it was published.

        Returns None if it matches, otherwise why not (`delete` it, and the next build or
        publish of the key makes it again; `pyro cache verify` does that).
        """
        layer = self.require(key)
        try:
            meta: LayerMeta | None = layer.meta()
        except DamagedFileError:
            meta = None
        try:
            actual = tree_digest(layer.tree)
        except PermissionError:
            return None  # files this user cannot read (see _digest_or_none): not checkable
        if meta is None or meta["key"] != key:
            problem: str | None = "its metadata is missing or damaged"
        elif meta["digest"]:
            expected = meta["digest"]
            problem = None if actual == expected else f"content {actual[:12]} != {expected[:12]}"
        else:
            # No digest recorded (holding files the publisher could not read): content-keyed
            # layers still check out against their key; others cannot be checked (and are
            # left alone).
            content_keyed = meta["kind"] in ("seed", "snapshot", "empty")
            mismatch = content_keyed and actual != key
            problem = f"content {actual[:12]} != its key" if mismatch else None
        return problem

    def require(self, key: str) -> Layer:
        layer = self.get(key)
        if layer is None:
            raise NotFoundError(f"layer {key[:12]} is not in the store")
        return layer

    def list(self) -> list[Layer]:
        if not self.layers_dir.is_dir():
            return []
        keys = sorted(p.name for p in self.layers_dir.iterdir() if _KEY_RE.fullmatch(p.name))
        return [layer for key in keys if (layer := self.get(key)) is not None]

    def touch(self, layer: Layer) -> None:
        """Record a use, for pruning by age (the marker's mtime is the last use)."""
        with contextlib.suppress(OSError):
            os.utime(layer.root / COMPLETE_MARKER)

    # -- building and publishing ---------------------------------------------------------------

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh, empty directory inside the store to build a tree in; removed on failure."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        path = self.tmp_dir / f"{os.getpid()}-{os.urandom(6).hex()}"
        path.mkdir()
        try:
            yield path
        finally:
            # On success `publish` has moved it away; on failure it goes.
            if path.exists():
                remove_tree(path)

    def publish(
        self,
        staged_tree: Path,
        *,
        kind: str,
        key: str | None = None,
        digest: str | None = None,
        inputs: dict[str, Any] | None = None,
        on_wait: Callable[[], None] | None = None,
        size: int | None = None,
        handed_over: bool = False,
    ) -> Layer:
        """Move `staged_tree` (a directory from `staging()`) into the store as a layer.

        With no `key`, the tree's content digest is the key. `digest`: the tree's digest if
        the caller computed it already (a copy may hold files only its copier could read).
        `size` (bytes in its regular files) and `handed_over` (every entry is the sandbox
        owner's already) spare a writer that knew them two more walks of the tree.
        If a complete layer with that key exists already, it wins and the staged tree is
        discarded.
        """
        digest = digest or (
            tree_digest(staged_tree) if key is None else _digest_or_none(staged_tree)
        )
        key = check_key(key or digest or "")
        with file_lock(self.locks_dir / f"{key}.lock", on_wait=on_wait):
            existing = self.get(key)
            if existing is not None:
                remove_tree(staged_tree)
                return existing
            return self._publish_locked(
                staged_tree, key=key, digest=digest, kind=kind, inputs=inputs or {},
                size=size, handed_over=handed_over,
            )  # fmt: skip

    def build(
        self,
        key: str,
        builder: Callable[[Path], None],
        *,
        kind: str,
        inputs: dict[str, Any] | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> Layer:
        """Return the layer for `key`, building it with `builder(tree_dir)` if it is missing.

        Double-checked: look up, take the key's lock, look up again, then build. Two processes
        asking for the same key at once build it once; the second waits and reuses it.
        """
        check_key(key)
        existing = self.get(key)
        if existing is not None:
            return existing
        with file_lock(self.locks_dir / f"{key}.lock", on_wait=on_wait):
            existing = self.get(key)
            if existing is not None:
                return existing
            with self.staging() as staging:
                tree = staging / "tree"
                tree.mkdir()
                builder(tree)
                return self._publish_locked(
                    tree, key=key, digest=_digest_or_none(tree), kind=kind, inputs=inputs or {}
                )

    def _publish_locked(
        self,
        staged_tree: Path,
        *,
        key: str,
        digest: str | None,
        kind: str,
        inputs: dict[str, Any],
        size: int | None = None,
        handed_over: bool = False,
    ) -> Layer:
        root = self.layers_dir / key
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        incoming = self.tmp_dir / f"{os.getpid()}-incoming-{os.urandom(6).hex()}"
        incoming.mkdir(parents=True)
        os.rename(staged_tree, incoming / "tree")
        # Overlayfs reads lower layers with the sandbox user's credentials.
        if not handed_over:
            hand_over(incoming / "tree", recursive=True)
        meta: LayerMeta = {
            "key": key,
            "digest": digest,  # of the tree as published: what `verify` checks
            "kind": kind,
            "inputs": inputs,
            "size": dir_size(incoming / "tree") if size is None else size,
            "created": time.time(),
        }
        write_json_atomic(incoming / "meta.json", meta)
        # The marker is written before the directory is renamed into place, and the rename
        # is atomic: a layer appears complete or not at all, and a publish killed before the
        # rename leaves only staging, which `clean_leftovers` removes.
        with (incoming / COMPLETE_MARKER).open("w") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        while True:
            try:
                os.rename(incoming, root)
                return Layer(key, root)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            existing = self.get(key)
            if existing is not None:
                # Someone else's complete layer (a builder that held the lock file before it
                # was deleted, say): workspaces may have it mounted, so it stays, and this
                # copy goes.
                remove_in_background([move_to_trash(incoming, self.trash_dir)])
                return existing
            # No marker: an incomplete directory of an older pyro, or one damaged: never
            # trusted, cleared away.
            with contextlib.suppress(FileNotFoundError):
                remove_in_background([move_to_trash(root, self.trash_dir)])

    # -- removal ------------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        root = self.layers_dir / check_key(key)
        with file_lock(self.locks_dir / f"{key}.lock"):
            if root.exists():
                (root / COMPLETE_MARKER).unlink(missing_ok=True)
                move_to_trash(root, self.trash_dir)
        empty_trash(self.trash_dir)

    def quarantine(self, key: str, problem: str) -> Path | None:
        """Take a damaged layer out of the store, keeping its files for a look.

        From then on the key is missing: every warm judgment (prepare, up, status, the
        hooks) sees it as not built, and the next prepare or publish makes it again. Nothing
        mounts a quarantined tree: workspaces name layers by their place in the store.
        Returns where it went (None if it was gone already); `cache gc` removes it.
        """
        root = self.layers_dir / check_key(key)
        with file_lock(self.locks_dir / f"{key}.lock"):
            if not root.exists():
                return None
            (root / COMPLETE_MARKER).unlink(missing_ok=True)
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            target = self.quarantine_dir / f"{key}.{int(time.time())}.{os.getpid()}"
            os.rename(root, target)
            with contextlib.suppress(OSError):
                (target / "DAMAGED").write_text(problem + "\n")
            return target

    def empty_quarantine(self) -> None:
        if self.quarantine_dir.is_dir():
            for entry in self.quarantine_dir.iterdir():
                remove_tree(entry)

    def empty_trash(self) -> None:
        """Delete what earlier operations moved aside (synchronously: for gc and tests)."""
        empty_trash(self.trash_dir)

    def clean_leftovers(self) -> None:
        """Remove staging dirs of processes that died mid-build.

        The trash is not emptied here: whoever moved something into it has started its
        removal in the background, and this runs on the path of every create.
        """
        if self.tmp_dir.is_dir():
            for entry in self.tmp_dir.iterdir():
                owner = entry.name.split("-", 1)[0]
                if owner.isdigit() and pid_alive(int(owner)):
                    continue
                remove_tree(entry)

    def empty_layer(self) -> Layer:
        """The layer with no files: the bottom of a workspace that has no seed."""
        with self.staging() as staging:
            tree = staging / "tree"
            tree.mkdir()
            return self.publish(tree, kind="empty")


def _digest_or_none(tree: Path) -> str | None:
    """The tree's digest for `verify`, or None when this user cannot read all of it (an
    unprivileged pyro copies a workspace's mode-000 files inside a user namespace)."""
    try:
        return tree_digest(tree)
    except PermissionError:
        return None

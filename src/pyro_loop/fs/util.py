"""Small filesystem helpers shared by the store and the workspaces."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyro_loop.errors import DamagedFileError, PyroError

# Host-side walks of trees a workspace wrote (diff, snapshot copy, digest) go at most this many
# directories deep. A workspace can nest directories without end; deeper trees are refused
# with a clear error rather than exhausting Python's recursion limit (the walks recurse once
# per level) or the process's descriptors (an fd-based walk holds one per level). Real
# projects stay far below it. The agent bounds `export` the same way (agent/tarexport.py).
MAX_TREE_DEPTH = 256


# The errors of a full disk or an exhausted quota.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# What pyro never takes of a disk's last free space: an export or a pulled layer that would
# leave less is refused.
FREE_SPACE_KEPT = 512 * 1000**2


@contextlib.contextmanager
def unless_disk_full() -> Iterator[None]:
    """Skip the rest of the block if it fails for want of space (and only then): for the
    writes that are bookkeeping, never the point of the operation."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise


def check_tree_depth(rel: str) -> None:
    """Refuse a path (relative to the root of a walk) more than MAX_TREE_DEPTH levels down."""
    if rel not in ("", ".") and rel.count("/") >= MAX_TREE_DEPTH:
        raise PyroError(
            f"the tree is nested more than {MAX_TREE_DEPTH} directories deep "
            f"(at {rel[:60]}...): pyro does not walk it",
            hint="flatten or remove the deep directories, then try again",
        )


def write_json_atomic(
    path: Path, data: Any, *, durable: bool = True, keep: Path | None = None
) -> None:
    """Replace `path` with `data` as JSON so readers never see a half-written file.

    `durable` also flushes it to disk before the rename, so it survives a power loss.
    `keep`: see `replace_keeping`.
    """
    tmp = path.with_name(f".{path.name}.{os.urandom(16).hex()}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        if durable:
            f.flush()
            os.fsync(f.fileno())
    replace_keeping(tmp, path, keep)


def replace_keeping(src: Path, dst: Path, keep: Path | None) -> None:
    """`os.replace(src, dst)`, with what `dst` was kept at `keep` (a new name, not existing)
    for the caller to delete later, off its path: on ext4 the rename that frees the file it
    replaces frees its blocks there and then, a discard each on a disk mounted so, which
    took 0.1 to 2 ms a file on a busy machine, where a rename that frees nothing takes
    about 20 us."""
    if keep is not None:
        with contextlib.suppress(FileNotFoundError):
            os.link(dst, keep)
    os.replace(src, dst)


def read_json_object(path: Path, limit: int) -> dict[str, Any]:
    """The JSON object in the file at `path`, read up to `limit` bytes: what
    `write_json_atomic` wrote. DamagedFileError when the file cannot be read; ValueError
    when it is larger, not JSON or not an object (the caller names the file's role)."""
    try:
        with path.open("rb") as f:
            text = f.read(limit + 1)
    except OSError as exc:
        raise DamagedFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(text) > limit:
        raise ValueError(f"larger than {limit} bytes")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def remove_tree(path: Path) -> None:
    """Delete a directory tree, including the mode-000 dirs overlayfs leaves in its workdir,
    at any depth (a workspace's upper dir may be nested without end: see fs/treewalk.py)."""
    from pyro_loop.fs.treewalk import remove_contents

    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    with contextlib.suppress(OSError):
        os.chmod(path, stat.S_IRWXU)
    with contextlib.suppress(OSError):
        remove_contents(path)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def move_to_trash(path: Path, trash_dir: Path) -> Path:
    """Rename `path` into `trash_dir` (O(1)); delete it later with `empty_trash`."""
    trash_dir.mkdir(parents=True, exist_ok=True)
    target = trash_dir / f"{path.name}.{os.urandom(6).hex()}"
    os.rename(path, target)
    return target


def empty_trash(trash_dir: Path) -> None:
    if not trash_dir.is_dir():
        return
    for entry in trash_dir.iterdir():
        remove_tree(entry)


def dir_size(path: Path) -> int:
    """Bytes used by the regular files below `path`, without following symlinks."""
    from pyro_loop.fs.treewalk import tree_bytes

    return tree_bytes(path)

"""A content digest of a directory tree, as overlayfs will present it.

Two trees with the same digest present the same files to a workspace: same paths, types,
permission bits, contents, symlink targets, overlay whiteouts and opaque directories.
Ownership and timestamps are deliberately left out: they do not survive a copy into the store.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from pyro_loop.digest import file_sha256
from pyro_loop.fs.util import check_tree_depth
from pyro_loop.store.overlay import is_opaque_dir, is_whiteout

if TYPE_CHECKING:
    import hashlib

DIGEST_VERSION = b"pyro-tree-v1\0"


def tree_digest(root: Path) -> str:
    """Return the sha256 hex digest of the tree below `root` (not following symlinks)."""
    import hashlib  # when a tree is hashed: the daily commands never do (digest.py)

    h = hashlib.sha256(DIGEST_VERSION)
    _hash_dir(h, str(root), "")
    return h.hexdigest()


def digest_of_records(records: dict[str, bytes]) -> str:
    """The digest of a tree described entry by entry (relative path -> its record, from the
    functions below) by a writer that knew each entry as it made it: the same value
    `tree_digest` computes by reading the tree back. The walk visits a directory's entries
    by name, each directory's contents right after it: the order of path components."""
    import hashlib

    h = hashlib.sha256(DIGEST_VERSION)
    for rel in sorted(records, key=lambda p: p.split("/")):
        h.update(records[rel])
    return h.hexdigest()


def _name(rel: str) -> bytes:
    return rel.encode("utf-8", "surrogateescape")


def dir_record(rel: str, perms: int, opaque: bool) -> bytes:
    return b"d%s\0%o\0%s\0" % (_name(rel), perms, b"o" if opaque else b"-")


def link_record(rel: str, target: str) -> bytes:
    return b"l%s\0%s\0" % (_name(rel), target.encode("utf-8", "surrogateescape"))


def file_record(rel: str, perms: int, sha256_hex: str) -> bytes:
    return b"f%s\0%o\0%s\0" % (_name(rel), perms, sha256_hex.encode())


def whiteout_record(rel: str) -> bytes:
    return b"w%s\0" % _name(rel)


def _hash_dir(h: hashlib._Hash, path: str, rel: str) -> None:
    with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        child_rel = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        perms = stat.S_IMODE(st.st_mode)
        name = _name(child_rel)
        if stat.S_ISDIR(st.st_mode):
            check_tree_depth(child_rel)
            h.update(dir_record(child_rel, perms, is_opaque_dir(entry.path)))
            _hash_dir(h, entry.path, child_rel)
        elif stat.S_ISLNK(st.st_mode):
            h.update(link_record(child_rel, os.readlink(entry.path)))
        elif stat.S_ISREG(st.st_mode):
            with open(entry.path, "rb") as f:
                content = file_sha256(f)
            h.update(file_record(child_rel, perms, content))
        elif is_whiteout(st):
            h.update(whiteout_record(child_rel))
        else:
            # FIFOs, sockets and devices other than whiteouts never belong in a layer.
            h.update(b"?%s\0%o\0" % (name, st.st_mode))

"""A content digest of a directory tree, as overlayfs will present it.

Two trees with the same digest present the same files to a workspace: same paths, types,
permission bits, contents, symlink targets, overlay whiteouts and opaque directories.
Ownership and timestamps are deliberately left out: they do not survive a copy into the store.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from pyro_loop.fsutil import check_tree_depth
from pyro_loop.overlay import is_opaque_dir, is_whiteout

DIGEST_VERSION = b"pyro-tree-v1\0"


def tree_digest(root: Path) -> str:
    """Return the sha256 hex digest of the tree below `root` (not following symlinks)."""
    h = hashlib.sha256(DIGEST_VERSION)
    _hash_dir(h, str(root), "")
    return h.hexdigest()


def _hash_dir(h: hashlib._Hash, path: str, rel: str) -> None:
    with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        child_rel = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        perms = stat.S_IMODE(st.st_mode)
        name = child_rel.encode("utf-8", "surrogateescape")
        if stat.S_ISDIR(st.st_mode):
            check_tree_depth(child_rel)
            opaque = b"o" if is_opaque_dir(entry.path) else b"-"
            h.update(b"d%s\0%o\0%s\0" % (name, perms, opaque))
            _hash_dir(h, entry.path, child_rel)
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(entry.path).encode("utf-8", "surrogateescape")
            h.update(b"l%s\0%s\0" % (name, target))
        elif stat.S_ISREG(st.st_mode):
            with open(entry.path, "rb") as f:
                content = hashlib.file_digest(f, "sha256").hexdigest().encode()
            h.update(b"f%s\0%o\0%s\0" % (name, perms, content))
        elif is_whiteout(st):
            h.update(b"w%s\0" % name)
        else:
            # FIFOs, sockets and devices other than whiteouts never belong in a layer.
            h.update(b"?%s\0%o\0" % (name, st.st_mode))

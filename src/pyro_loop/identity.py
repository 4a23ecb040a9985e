"""Who a workspace runs as on the host.

As an ordinary user, a workspace's processes are that user (mapped to uid 0 inside, without
capabilities). When pyro itself runs as root, they must not be the host's real root: the
kernel grants uid 0 things no namespace takes away (writing /proc/sys, reading
/etc/shadow, ignoring the process limit). So a root pyro runs workspaces as dedicated,
otherwise unused uids: the layers (shared, read-only) belong to one, the layer owner, and
each workspace runs as a uid of its own, recorded in its record and owning its upper dir,
so no workspace's process can write another's files even if it reached them. A workspace
sees the layers as its own through idmapped mounts (runtime/idmap.py); where the kernel or
the store's filesystem has none, every workspace runs as the layer owner.
"""

from __future__ import annotations

import os
from pathlib import Path

# Far above the ranges distributions give to users and to /etc/subuid allocations.
SANDBOX_UID_FOR_ROOT = 0x70000000
# Workspaces' own uids: the WORKSPACE_UIDS uids right above the layer owner's.
WORKSPACE_UIDS = 1 << 24


def sandbox_owner() -> int | None:
    """The uid (also used as gid) that owns workspace files, or None: the caller's own."""
    if os.geteuid() != 0 or not _in_initial_user_namespace():
        return None  # an ordinary user, or root only inside some container's user namespace
    configured = os.environ.get("PYRO_SANDBOX_UID")
    return int(configured) if configured else SANDBOX_UID_FOR_ROOT


def hand_over(path: Path, *, recursive: bool = False, uid: int | None = None) -> None:
    """Give `path` (and, with `recursive`, everything below it) to the sandbox owner, if any
    (or to `uid`, a workspace's own, when pyro runs as root)."""
    owner = sandbox_owner()
    if owner is None:
        return
    owner = uid if uid is not None else owner
    os.chown(path, owner, owner, follow_symlinks=False)
    if recursive:
        from pyro_loop.fs.treewalk import walk

        for here in walk(path):
            for name in here.dirs + here.others:
                os.chown(name, owner, owner, dir_fd=here.fd, follow_symlinks=False)


def _in_initial_user_namespace() -> bool:
    """True for the host's own user namespace, where uid 0 is the real root."""
    try:
        with open("/proc/self/uid_map") as f:
            first = f.readline().split()
    except OSError:
        return True
    return first == ["0", "0", "4294967295"]

"""Facts about overlayfs trees: whiteouts, opaque directories, mount option safety.

pyro always mounts with `userxattr` (the only mode an unprivileged user namespace allows), so
overlay metadata lives in `user.overlay.*` extended attributes, and every layer pyro writes must
use the same convention.
"""

from __future__ import annotations

import os
import stat

OPAQUE_XATTR = "user.overlay.opaque"

# Characters that would let a path inject or split overlay mount options.
_UNSAFE_IN_MOUNT_OPTIONS = frozenset(",:\\\n\0")


def is_whiteout(st: os.stat_result) -> bool:
    """A whiteout is a character device 0:0: it hides the same path in lower layers."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque_dir(path: str) -> bool:
    """An opaque directory hides the contents of the same directory in lower layers."""
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def check_mount_path(path: str) -> str:
    """Return `path` if it is safe inside an overlay option string, else raise ValueError."""
    if set(path) & _UNSAFE_IN_MOUNT_OPTIONS or not path:
        raise ValueError(f"path not usable in an overlay mount: {path!r}")
    return path


def overlay_options(lowers: list[str], upper: str, work: str) -> str:
    """The option string for `mount -t overlay`; `lowers` is topmost first.

    Paths may be relative to the mount's working directory, which keeps the string short:
    the kernel reads at most one page of mount options.
    """
    for p in [*lowers, upper, work]:
        check_mount_path(p)
    return f"userxattr,lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"

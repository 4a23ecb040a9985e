"""Copy an overlay upper dir into a new layer tree: whiteouts, opaque dirs and all.

Nothing is followed: symlinks are copied as links, and anything that is not a file,
directory, link or whiteout is left out. Run as `python -m pyro_loop.store.layercopy SRC DST`
inside `unshare --user --map-root-user` when pyro is not root: there, the caller's own
files are readable even when their mode says otherwise (a workspace may `chmod 000`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from pyro_loop.errors import PyroError
from pyro_loop.fs.util import check_tree_depth
from pyro_loop.store.overlay import OPAQUE_XATTR, is_whiteout
from pyro_loop.store.treehash import tree_digest


def copy_layer_tree(source: Path, target: Path) -> None:
    target.mkdir()
    if not source.is_dir():
        return
    _copy_opaque(str(source), target)
    dir_modes: list[tuple[Path, int]] = []
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(source):
        rel = os.path.relpath(dirpath, source)
        check_tree_depth(rel)  # before fwalk descends further
        out_dir = target if rel == "." else target / rel
        for name in dirnames + filenames:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            dest = out_dir / name
            if stat.S_ISDIR(st.st_mode):
                dest.mkdir(mode=0o700)  # final mode set last, so children can be written
                dir_modes.append((dest, stat.S_IMODE(st.st_mode)))
                _copy_opaque(f"/proc/self/fd/{dir_fd}/{name}", dest)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=dir_fd), dest)
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                with os.fdopen(fd, "rb") as src, dest.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1024 * 1024)
                dest.chmod(stat.S_IMODE(st.st_mode))
            elif is_whiteout(st):
                os.mknod(dest, stat.S_IFCHR | 0o600, os.makedev(0, 0))
    for path, mode in reversed(dir_modes):
        path.chmod(mode)


def _copy_opaque(source: str, dest: Path) -> None:
    with contextlib.suppress(OSError):
        if os.getxattr(source, OPAQUE_XATTR, follow_symlinks=False) == b"y":
            os.setxattr(dest, OPAQUE_XATTR, b"y")


def copy_and_digest(source: Path, target: Path) -> str:
    """Copy `source` to `target` and return the copy's digest, with the rights it takes."""
    if os.geteuid() == 0:
        copy_layer_tree(source, target)
        return tree_digest(target)
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-m", "pyro_loop.store.layercopy",
         str(source), str(target)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["failed"])[-1]
        raise PyroError(f"cannot copy the workspace's changes into a layer: {reason}")
    return result.stdout.strip()


def adopt_upper(source: Path, target: Path) -> bool:
    """Move a stopped workspace's upper dir `source` to `target` as a layer tree, instead of
    copying it: O(entries) metadata work where a copy writes every byte again. False (and
    nothing moved) when they are on different filesystems: the caller copies instead.

    What a copy would leave out goes: anything but files, directories, links and whiteouts,
    and every overlay attribute but the opaque mark. Set-id bits go too: a layer's files are
    never anyone's privilege on the host.
    """
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return False
        raise
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(target):
        check_tree_depth(os.path.relpath(dirpath, target))
        for name in dirnames + filenames:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            kind = stat.S_IFMT(st.st_mode)
            if kind not in (stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK) and not is_whiteout(st):
                os.unlink(name, dir_fd=dir_fd)
                continue
            if kind == stat.S_IFLNK:
                continue
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(name, stat.S_IMODE(st.st_mode) & ~0o6000, dir_fd=dir_fd)
            _strip_overlay_attributes(f"/proc/self/fd/{dir_fd}/{name}")
    return True


def _strip_overlay_attributes(path: str) -> None:
    with contextlib.suppress(OSError):
        for attribute in os.listxattr(path, follow_symlinks=False):
            if attribute.startswith("user.overlay.") and attribute != OPAQUE_XATTR:
                os.removexattr(path, attribute, follow_symlinks=False)


def main(argv: list[str]) -> int:
    source, target = Path(argv[1]), Path(argv[2])
    copy_layer_tree(source, target)
    sys.stdout.write(tree_digest(target) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

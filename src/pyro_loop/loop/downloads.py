"""Installers' download caches, kept across prepares on this machine, outside every layer.

A cold prepare downloads what the lockfiles pin; the next one (another project with the
same dependencies, or a relock that changes one package) should not download it all again.
Each installer's cache directory in the sandbox's home is a directory of the pyro home,
bound read-write into prepare sandboxes only (as BuildKit's cache mounts are into a build):
what it holds never enters a layer's key or contents, and workspaces never see it.

Only caches that an installed result does not need are shared this way: cargo's registry
and Go's module cache are what a build reads later, offline, so they stay in the sandbox's
home and are frozen into the layer with the rest (see runtime.HOME_DIR).
"""

from __future__ import annotations

import os
from pathlib import Path

from pyro_loop.identity import hand_over
from pyro_loop.runtime import HOME_DIR, Mount

DOWNLOADS_DIR = "downloads"
# name in the pyro home -> the installer's default cache directory, relative to HOME.
CACHES = {
    "uv": ".cache/uv",
    "pip": ".cache/pip",
    "npm": ".npm",
    "pnpm": ".local/share/pnpm/store",
    "yarn": ".cache/yarn",
    "yarn-berry": ".yarn/berry/cache",
    "poetry": ".cache/pypoetry/cache",
    "poetry-artifacts": ".cache/pypoetry/artifacts",
}
README = """\
Download caches of the installers pyro's prepare runs (uv, pip, npm, pnpm, yarn, poetry),
shared by every prepare of this user and bound into prepare sandboxes only. They are never
part of a layer. Safe to delete at any time: the next prepare downloads again.
"""


def cache_root(home: Path) -> Path:
    return home / DOWNLOADS_DIR


def download_mounts(home: Path, sandbox_home: str) -> list[Mount]:
    """The cache directories (created if missing) as mounts for a prepare sandbox."""
    root = cache_root(home)
    root.mkdir(parents=True, exist_ok=True)
    readme = root / "README"
    if not readme.exists():
        readme.write_text(README)
    # The sandbox uid (not root, when pyro runs as root) writes these: only it and pyro may.
    os.chmod(root, 0o711)
    mounts = []
    for name, rel in CACHES.items():
        path = root / name
        if not path.is_dir():
            path.mkdir(mode=0o700)
            hand_over(path)
        mounts.append(Mount(source=str(path), target=f"{sandbox_home}/{rel}", writable=True))
    return mounts


def prune_mount_points(tree: Path) -> None:
    """Remove the empty directories the cache mounts left in a captured home (`tree` is a
    layer's tree): they were mount points, not something a command installed."""
    home = tree / HOME_DIR
    for rel in CACHES.values():
        path = home / rel
        while path != home:
            try:
                path.rmdir()  # only an empty directory; a symlink or a file stays
            except OSError:
                break
            path = path.parent

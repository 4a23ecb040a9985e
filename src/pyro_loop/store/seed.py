"""Turn a seed (a directory or a tar archive) into a content-addressed layer."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path

from pyro_loop.errors import InvalidInputError
from pyro_loop.store.layers import Layer, LayerStore

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")


def import_seed(store: LayerStore, source: Path) -> Layer:
    """Copy `source` into the store as a layer; identical content reuses the existing layer."""
    if not source.exists():
        raise InvalidInputError(f"seed path does not exist: {source}")
    with store.staging() as staging:
        tree = staging / "tree"
        if source.is_dir():
            _copy_dir(source, tree)
        elif source.name.endswith(ARCHIVE_SUFFIXES):
            tree.mkdir()
            _extract_archive(source, tree)
        else:
            raise InvalidInputError(
                f"seed path is neither a directory nor a tar archive: {source}",
                hint="pass a directory, or a .tar/.tar.gz/.tar.xz/.tar.bz2 archive",
            )
        return store.publish(tree, kind="seed", inputs={"source": str(source)})


def _copy_dir(source: Path, target: Path) -> None:
    def skip_special_files(directory: str, names: list[str]) -> list[str]:
        # Sockets, FIFOs and devices have no place in a layer (and a FIFO would block a copy).
        skipped = []
        for name in names:
            mode = os.lstat(os.path.join(directory, name)).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                skipped.append(name)
        return skipped

    try:
        shutil.copytree(source, target, symlinks=True, ignore=skip_special_files)
    except shutil.Error as exc:
        first = exc.args[0][0] if exc.args and exc.args[0] else exc
        raise InvalidInputError(f"cannot copy seed {source}: {first}") from exc
    except OSError as exc:
        raise InvalidInputError(f"cannot copy seed {source}: {exc}") from exc


def _extract_archive(source: Path, target: Path) -> None:
    from pyro_loop.fs import safetar

    try:
        with tarfile.open(source) as tar:
            safetar.extract(tar, target, safetar.Rules(f"seed archive {source}"))
    except (tarfile.TarError, OSError) as exc:
        raise InvalidInputError(f"cannot extract seed archive {source}: {exc}") from exc

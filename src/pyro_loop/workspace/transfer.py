"""Moving files between a workspace and the host: export (workspace -> host) and patches.

Both go through the agent, so every workspace path is resolved inside the sandbox and
confined to /workspace there; the host side only ever writes where the user pointed it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from pyro_loop.errors import ConflictError, InvalidInputError, NotFoundError, PyroError
from pyro_loop.fs import safetar
from pyro_loop.fs.beneath import Beneath
from pyro_loop.fs.hoststate import lstat
from pyro_loop.fs.util import FREE_SPACE_KEPT
from pyro_loop.git import GitMissingError, run_git
from pyro_loop.units import size
from pyro_loop.workspace.client import AgentClient

if TYPE_CHECKING:
    from pyro_loop.shapes import ExportedJSON, PatchFilesJSON

MAX_PATCHED_FILE = 64 * 1024 * 1024
DEFAULT_MAX_EXPORT = 8 * 1000**3  # bytes of archive; `--max-size` allows more


def export_path(
    client: AgentClient,
    path: str,
    output: Path,
    *,
    force: bool = False,
    max_bytes: int | None = None,
) -> ExportedJSON:
    """Copy `path` (a file or directory in the workspace) to `output` on the host.

    The archive is unpacked by `safetar` (no absolute paths, no `..`, no links out of the
    tree, no device files, no set-id bits) into a temporary directory beside `output`, then
    renamed into place: `output` is either the complete export or untouched. The workspace
    decides how much it sends, so the archive is cut off at `max_bytes` (default
    DEFAULT_MAX_EXPORT), or earlier where the archive and its unpacked copy would fill the
    host's disk.
    """
    if max_bytes is None:
        max_bytes = DEFAULT_MAX_EXPORT
    if max_bytes <= 0:
        raise InvalidInputError(f"the export size limit must be positive, not {max_bytes}")
    output = output.absolute()
    if (output.exists() or output.is_symlink()) and not force:
        raise ConflictError(f"{output} exists already", hint="pass --force to replace it")
    if not output.parent.is_dir():
        raise InvalidInputError(f"output directory does not exist: {output.parent}")
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".pyro-export-") as tmp, \
            (Path(tmp) / ".archive").open("w+b") as spool:  # fmt: skip
        reply = client.tar(path, _bounded_writer(spool, path, output.parent, max_bytes))
        arcname = reply.get("arcname")
        if not isinstance(arcname, str) or arcname in ("", ".", "..") or "/" in arcname:
            raise PyroError(f"the workspace's agent sent an invalid archive name: {arcname!r}")
        spool.seek(0)
        try:
            with tarfile.open(fileobj=spool, mode="r:") as tar:
                rules = safetar.Rules(f"to export {path}", links_within=arcname)
                safetar.extract(tar, Path(tmp), rules)
        except (tarfile.TarError, OSError) as exc:
            raise PyroError(f"cannot unpack the export of {path}: {exc}") from exc
        extracted = Path(tmp) / arcname
        if not extracted.exists() and not extracted.is_symlink():
            raise PyroError(f"the export of {path} came back empty")
        if output.exists() or output.is_symlink():
            os.rename(output, Path(tmp) / ".replaced")  # removed with the temporary directory
        os.rename(extracted, output)
    exported = reply.get("path")  # the agent's word for it: shown, never used
    return {"path": exported if isinstance(exported, str) else None, "output": str(output)}


def _bounded_writer(
    spool: BinaryIO, path: str, where: Path, max_bytes: int
) -> Callable[[bytes], None]:
    """`spool.write`, refusing to go past `max_bytes`, or past half the free space on
    `where` less FREE_SPACE_KEPT (the archive, then as much again unpacked)."""
    room = (shutil.disk_usage(where).free - FREE_SPACE_KEPT) // 2
    limit = min(max_bytes, max(room, 0))
    written = 0

    def write(chunk: bytes) -> None:
        nonlocal written
        written += len(chunk)
        if written > limit:
            if max_bytes <= room:
                raise InvalidInputError(
                    f"the export of {path} is larger than {size(max_bytes)}; nothing was written",
                    hint="export a part of it, or allow more (--max-size; max_bytes in MCP)",
                )
            raise InvalidInputError(
                f"the export of {path} does not fit in the free space on {where} "
                f"({size(room)} usable); nothing was written",
                hint="free some space there or export elsewhere",
            )
        spool.write(chunk)

    return write


def apply_patch(client: AgentClient, patch: str, *, strip: int = 1) -> PatchFilesJSON:
    """Apply a unified diff to the workspace, all or nothing.

    The touched files are read from the workspace into a scratch directory, `git apply`
    patches them there (it checks every hunk before writing any), and only a fully applied
    result is written back. A patch that does not apply leaves the workspace unchanged.
    What the workspace reports is hostile: its symlinks are recreated in the scratch
    directory as links, never followed, and a touched path below one is refused.
    """
    with tempfile.TemporaryDirectory(prefix="pyro-patch-") as tmp, \
            Beneath(Path(tmp) / "tree", create=True) as scratch:  # fmt: skip
        patch_file = Path(tmp) / "change.patch"
        patch_file.write_text(patch)
        paths = _touched_paths(patch_file, Path(scratch.root), strip)
        if not paths:
            raise InvalidInputError("the patch changes no files (is it a unified diff?)")
        for rel in paths:
            _fetch(client, rel, scratch)
        for rel in paths:  # also those the workspace does not have: git would create them
            _refuse_below_link(scratch, rel)
        result = _git(["apply", f"-p{strip}", "--whitespace=nowarn", str(patch_file)],
                      Path(scratch.root))  # fmt: skip
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["rejected"])[0]
            raise InvalidInputError(f"patch does not apply (nothing was changed): {reason}")
        changed = []
        for rel in paths:
            _refuse_below_link(scratch, rel)
            kind = lstat(scratch, rel)
            if kind.kind == "symlink":
                client.symlink(rel, scratch.readlink(rel))
            elif kind.kind == "file":
                client.write(rel, scratch.read(rel), mode=kind.mode)
            elif kind.kind == "absent":
                client.remove(rel, missing_ok=True)
            else:
                raise InvalidInputError(f"the patch made {rel} something other than a file")
            changed.append(rel)
    return {"files": changed}


def _touched_paths(patch_file: Path, scratch: Path, strip: int) -> list[str]:
    result = _git(["apply", f"-p{strip}", "--numstat", "-z", str(patch_file)], scratch)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["malformed"])[0]
        raise InvalidInputError(f"not a patch git can read: {reason}")
    paths: list[str] = []
    fields = result.stdout.split("\0")
    i = 0
    while i < len(fields) and fields[i]:
        _added, _deleted, path = fields[i].split("\t", 2)
        if path:
            paths.append(path)
            i += 1
        else:  # a rename: "a\td\t" then the old and the new path
            paths += [fields[i + 1], fields[i + 2]]
            i += 3
    for path in paths:
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts:
            raise InvalidInputError(f"patch touches a path outside the workspace: {path}")
    return sorted(set(paths))


def _fetch(client: AgentClient, rel: str, scratch: Beneath) -> None:
    try:
        entry = client.stat(rel)["entry"]
    except NotFoundError:
        return  # a file the patch creates
    _refuse_below_link(scratch, rel)
    parent = rel.rpartition("/")[0]
    if parent:
        scratch.makedirs(parent)
    if entry["type"] == "symlink":
        scratch.symlink(rel, str(entry["target"]))
        return
    if entry["type"] != "file":
        raise InvalidInputError(f"patch touches {rel}, which is a {entry['type']} in the workspace")
    content, reply = client.read(rel, max_bytes=MAX_PATCHED_FILE)
    if reply["truncated"]:
        raise InvalidInputError(f"{rel} is too large to patch (over {MAX_PATCHED_FILE} bytes)")
    scratch.write(rel, content, int(entry["mode"]) & 0o777)


def _refuse_below_link(scratch: Beneath, rel: str) -> None:
    """A path below a symlink is the link's business, never the host's to write through."""
    link = scratch.link_above(rel)
    if link is not None:
        raise InvalidInputError(
            f"the patch touches {rel}, below the symbolic link {link}: nothing was changed",
            hint="patch the link's target by its own path instead",
        )


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        # Never pick up an enclosing repository: the scratch directory is in none.
        return run_git(args, cwd=cwd, extra={"GIT_CEILING_DIRECTORIES": str(cwd.parent)})
    except GitMissingError as exc:
        raise GitMissingError("applying patches needs git on the host", hint=exc.hint) from None

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
from typing import Any, BinaryIO

from pyro_loop import safetar
from pyro_loop.client import AgentClient
from pyro_loop.errors import ConflictError, InvalidInputError, NotFoundError, PyroError
from pyro_loop.units import size

MAX_PATCHED_FILE = 64 * 1024 * 1024
DEFAULT_MAX_EXPORT = 8 * 1000**3  # bytes of archive; `--max-size` allows more
FREE_SPACE_KEPT = 512 * 1000**2  # an export never leaves the host's disk with less than this


def export_path(
    client: AgentClient,
    path: str,
    output: Path,
    *,
    force: bool = False,
    max_bytes: int | None = None,
) -> dict[str, Any]:
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
                safetar.extract(tar, Path(tmp), safetar.Rules(f"to export {path}"))
        except (tarfile.TarError, OSError) as exc:
            raise PyroError(f"cannot unpack the export of {path}: {exc}") from exc
        extracted = Path(tmp) / arcname
        if not extracted.exists() and not extracted.is_symlink():
            raise PyroError(f"the export of {path} came back empty")
        if output.exists() or output.is_symlink():
            os.rename(output, Path(tmp) / ".replaced")  # removed with the temporary directory
        os.rename(extracted, output)
    return {"path": reply.get("path"), "output": str(output)}


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


def apply_patch(client: AgentClient, patch: str, *, strip: int = 1) -> dict[str, Any]:
    """Apply a unified diff to the workspace, all or nothing.

    The touched files are read from the workspace into a scratch directory, `git apply`
    patches them there (it checks every hunk before writing any), and only a fully applied
    result is written back. A patch that does not apply leaves the workspace unchanged.
    """
    git = shutil.which("git")
    if git is None:
        raise PyroError("applying patches needs git on the host", hint="apt-get install git")
    with tempfile.TemporaryDirectory(prefix="pyro-patch-") as tmp:
        scratch = Path(tmp) / "tree"
        scratch.mkdir()
        patch_file = Path(tmp) / "change.patch"
        patch_file.write_text(patch)
        paths = _touched_paths(git, patch_file, scratch, strip)
        if not paths:
            raise InvalidInputError("the patch changes no files (is it a unified diff?)")
        for rel in paths:
            _fetch(client, rel, scratch / rel)
        result = _git(git, ["apply", f"-p{strip}", "--whitespace=nowarn", str(patch_file)], scratch)
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["rejected"])[0]
            raise InvalidInputError(f"patch does not apply (nothing was changed): {reason}")
        changed = []
        for rel in paths:
            local = scratch / rel
            if local.is_symlink():
                client.symlink(rel, os.readlink(local))
            elif local.exists():
                client.write(rel, local.read_bytes(), mode=local.stat().st_mode & 0o7777)
            else:
                client.remove(rel, missing_ok=True)
            changed.append(rel)
    return {"files": changed}


def _touched_paths(git: str, patch_file: Path, scratch: Path, strip: int) -> list[str]:
    result = _git(git, ["apply", f"-p{strip}", "--numstat", "-z", str(patch_file)], scratch)
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


def _fetch(client: AgentClient, rel: str, local: Path) -> None:
    try:
        entry = client.stat(rel)["entry"]
    except NotFoundError:
        return  # a file the patch creates
    local.parent.mkdir(parents=True, exist_ok=True)
    if entry["type"] == "symlink":
        local.symlink_to(entry["target"])
        return
    if entry["type"] != "file":
        raise InvalidInputError(f"patch touches {rel}, which is a {entry['type']} in the workspace")
    content, reply = client.read(rel, max_bytes=MAX_PATCHED_FILE)
    if reply.get("truncated"):
        raise InvalidInputError(f"{rel} is too large to patch (over {MAX_PATCHED_FILE} bytes)")
    local.write_bytes(content)
    local.chmod(int(entry["mode"]) & 0o7777)


def _git(git: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_CEILING_DIRECTORIES"] = str(cwd.parent)  # never pick up an enclosing repository
    return subprocess.run(
        [git, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )

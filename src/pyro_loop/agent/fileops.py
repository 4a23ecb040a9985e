"""File operations on one path each: stat, list, read, write, remove, mkdir, symlink, chmod,
and `tar`, which streams a tree out of the workspace (what `export` unpacks on the host).

Trusts nothing in the request: every path goes through `confine` first, and a symlink is
reported, removed or exported as the link itself, never as what it points to. Files are
written to a temporary name beside the target and renamed over it.
"""

from __future__ import annotations

import os

import protocol as p
from confine import WORKSPACE, RequestError, confine

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` is not imported at run time (agent start-up)
    import tarfile
    from _socket import socket
    from typing import Any

MAX_TREE_DEPTH = 256  # export walks at most this deep (fsutil.MAX_TREE_DEPTH on the host)
HOME_COVER = WORKSPACE + "/" + p.HOME_DIR  # the empty directory over the home's place


def _entry(path: str, st: os.stat_result) -> dict[str, Any]:
    mode = st.st_mode
    if mode & 0o170000 == 0o040000:
        kind = "dir"
    elif mode & 0o170000 == 0o100000:
        kind = "file"
    elif mode & 0o170000 == 0o120000:
        kind = "symlink"
    else:
        kind = "other"
    entry: dict[str, Any] = {
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": mode & 0o7777,
        "mtime": st.st_mtime,
    }
    if kind == "symlink":
        entry["target"] = os.readlink(path)
    return entry


def op_stat(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    path = confine(req.get("path"), follow=False)
    try:
        return {"entry": _entry(path, os.lstat(path))}
    except FileNotFoundError:
        raise RequestError("not_found", "no such file in the workspace: " + path) from None


def op_list(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    root = confine(req.get("path", WORKSPACE))
    recursive = bool(req.get("recursive", False))
    limit = int(req.get("max_entries", 10000))
    if not os.path.isdir(root):
        raise RequestError("not_a_directory", "not a directory in the workspace: " + root)
    entries: list[dict[str, Any]] = []
    pending = [root]
    truncated = False
    while pending and not truncated:
        current = pending.pop()
        with os.scandir(current) as it:
            for item in sorted(it, key=lambda e: e.name):
                if item.path == HOME_COVER:
                    continue
                if len(entries) >= limit:
                    truncated = True
                    break
                st = item.stat(follow_symlinks=False)
                entries.append(_entry(item.path, st))
                if recursive and item.is_dir(follow_symlinks=False):
                    pending.append(item.path)
    entries.sort(key=lambda e: e["path"])
    return {"path": root, "entries": entries, "truncated": truncated}


def op_read(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    path = confine(req.get("path"))
    max_bytes = int(req.get("max_bytes", 65536))
    offset = int(req.get("offset", 0))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise RequestError("not_found", "no such file in the workspace: " + path) from None
    except IsADirectoryError:
        raise RequestError("is_a_directory", "is a directory, not a file: " + path) from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o170000 != 0o100000:
            raise RequestError("not_a_file", "not a regular file: " + path)
        os.lseek(fd, offset, 0)
        remaining = max_bytes
        while remaining > 0:
            chunk = os.read(fd, min(remaining, p.MAX_CHUNK))
            if not chunk:
                break
            p.send_frame(conn, p.KIND_DATA, chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    sent = min(max(st.st_size - offset, 0), max_bytes)
    return {
        "path": path,
        "size": st.st_size,
        "offset": offset,
        "truncated": offset + sent < st.st_size,
    }


def temp_name(op: str) -> str:
    # Random, not pid-based: a sandbox killed mid-write leaves its temp file behind (the host
    # sweeps those on the next start), and a later agent with the same pid must not collide.
    return "%s%s-%s" % (p.TEMP_PREFIX, op, os.urandom(8).hex())


def _recv_data(conn: socket, out_fd: int | None) -> int:
    total = 0
    while True:
        kind, payload = p.recv_frame(conn)
        if kind != p.KIND_DATA:
            raise p.ProtocolError("expected a data frame")
        if not payload:
            return total
        if out_fd is not None:
            os.write(out_fd, payload)
        total += len(payload)


def op_write(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    path = confine(req.get("path"))
    mode = req.get("mode")
    parent = os.path.dirname(path)
    if req.get("mkdirs", True):
        os.makedirs(parent, exist_ok=True)
    if os.path.isdir(path):
        _recv_data(conn, None)
        raise RequestError("is_a_directory", "is a directory, not a file: " + path)
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    tmp = "%s/%s" % (parent, temp_name("write"))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        written = _recv_data(conn, fd)
        os.fchmod(fd, int(mode))
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    return {"path": path, "written": written}


def op_remove(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    path = confine(req.get("path"), follow=False)
    if path == WORKSPACE:
        raise RequestError("invalid_path", "refusing to remove /workspace itself")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if req.get("missing_ok"):
            return {"path": path, "removed": False}
        raise RequestError("not_found", "no such file in the workspace: " + path) from None
    if st.st_mode & 0o170000 == 0o040000:
        if not req.get("recursive"):
            raise RequestError("is_a_directory", "is a directory (pass recursive): " + path)
        import shutil

        shutil.rmtree(path)
    else:
        os.unlink(path)
    return {"path": path, "removed": True}


def op_mkdir(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    path = confine(req.get("path"))
    os.makedirs(path, exist_ok=True)
    return {"path": path}


def op_symlink(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    path = confine(req.get("path"), follow=False)
    target = req.get("target")
    if not isinstance(target, str) or not target or "\0" in target:
        raise RequestError("invalid_path", "symlink target must be a non-empty string")
    if os.path.lexists(path):
        os.unlink(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(target, path)
    return {"path": path}


def op_chmod(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    path = confine(req.get("path"))
    mode = req.get("mode")
    if not isinstance(mode, int) or isinstance(mode, bool):
        raise RequestError("invalid_request", "mode must be a number")
    os.chmod(path, mode & 0o7777)
    return {"path": path}


def op_tar(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    """Stream `path` as an uncompressed tar archive in D frames (symlinks stay symlinks)."""
    import tarfile

    # A symlink is exported as the link itself, never as what it points to; and only if
    # what it points to is inside the workspace.
    path = confine(req.get("path"), follow=False)
    if not os.path.lexists(path):
        raise RequestError("not_found", "no such file in the workspace: " + path)
    if os.path.islink(path):
        confine(path, follow=True)

    class FrameWriter:
        """The file object a streaming tarfile ("w|") writes to: it only calls `write`; the
        rest is the file interface tarfile's type declares."""

        def write(self, data: bytes, /) -> int:
            p.send_data(conn, p.KIND_DATA, data)
            return len(data)

        def read(self, size: int, /) -> bytes:
            raise OSError("the archive stream is write-only")

        def seek(self, pos: int, /) -> int:
            raise OSError("the archive stream cannot seek")

        def tell(self) -> int:
            raise OSError("the archive stream cannot seek")

        def close(self) -> None:
            pass

    arcname = os.path.basename(path) if path != WORKSPACE else "workspace"

    def no_specials(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        # tarfile recurses once per directory level: refuse a workspace's endless nesting
        # cleanly (same bound as fsutil.MAX_TREE_DEPTH on the host) before Python's
        # recursion limit ends this handler mid-archive.
        if info.isdir() and info.name.count("/") >= MAX_TREE_DEPTH:
            raise RequestError(
                "too_deep",
                "nested more than %d directories deep: %s..." % (MAX_TREE_DEPTH, info.name[:60]),
            )
        if info.name == "workspace/" + p.HOME_DIR:
            return None
        return info if (info.isfile() or info.isdir() or info.issym()) else None

    with tarfile.open(fileobj=FrameWriter(), mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(path, arcname=arcname, filter=no_specials)
    return {"path": path, "arcname": arcname}

"""File operations on one path each: stat, list, read, write, remove, mkdir, symlink, chmod.

Trusts nothing in the request: every path goes through `confine` first, and a symlink is
reported, removed or exported as the link itself, never as what it points to. Files are
written to a temporary name beside the target and renamed over it.
"""

from __future__ import annotations

import os

import deeptree
import protocol as p
import treewalk
from confine import WORKSPACE, RequestError, confine

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` is not imported at run time (agent start-up)
    from _socket import socket
    from typing import Any


def _entry(path: str, st: os.stat_result, dir_fd: int | None = None) -> dict[str, Any]:
    """An entry of a listing; with `dir_fd`, `path` ends in the name it has in that
    directory, by which it is read (a full path can be longer than the kernel takes)."""
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
        name = path if dir_fd is None else path[path.rfind("/") + 1 :]
        entry["target"] = os.readlink(name, dir_fd=dir_fd)
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
    # The reply is one JSON frame: past this many bytes of entries it is truncated, as past
    # `max_entries` (the paths of a deep tree are long).
    budget = p.MAX_JSON // 2
    truncated = False
    for here in treewalk.walk(root):
        base = root + "/" + here.rel if here.rel else root
        if base == WORKSPACE and p.HOME_DIR in here.dirs:
            here.dirs.remove(p.HOME_DIR)
        for name in sorted(here.dirs + here.others):
            if len(entries) >= limit or budget <= 0:
                truncated = True
                break
            try:
                st = os.stat(name, dir_fd=here.fd, follow_symlinks=False)
                entry = _entry(base + "/" + name, st, here.fd)
            except FileNotFoundError:  # removed since the directory was read
                continue
            entries.append(entry)
            budget -= len(p.dumps(entry)) + 1
        if truncated or not recursive:
            break
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
        deeptree.makedirs(parent)
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
        deeptree.remove_tree(path)
    else:
        os.unlink(path)
    return {"path": path, "removed": True}


def op_mkdir(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    path = confine(req.get("path"))
    deeptree.makedirs(path)
    return {"path": path}


def op_symlink(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    path = confine(req.get("path"), follow=False)
    target = req.get("target")
    if not isinstance(target, str) or not target or "\0" in target:
        raise RequestError("invalid_path", "symlink target must be a non-empty string")
    if os.path.lexists(path):
        os.unlink(path)
    deeptree.makedirs(os.path.dirname(path))
    os.symlink(target, path)
    return {"path": path}


def op_chmod(conn: socket, req: dict[str, Any]) -> dict[str, Any]:
    path = confine(req.get("path"))
    mode = req.get("mode")
    if not isinstance(mode, int) or isinstance(mode, bool):
        raise RequestError("invalid_request", "mode must be a number")
    os.chmod(path, mode & 0o7777)
    return {"path": path}

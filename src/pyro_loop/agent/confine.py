"""Path confinement: which paths a request may name, and the error a refused request raises.

Every path a request names goes through `confine` before any file is touched: a path that
is, or resolves through a symlink to, anything outside /workspace is refused. Trusts
nothing in the request; trusts only the filesystem as it resolves at the moment of the call
(the workspace's own processes may change it right after). The sandbox around the agent is
the security boundary; this confinement keeps the file tools' behaviour predictable.
"""

from __future__ import annotations

import errno
import os

WORKSPACE = "/workspace"


class RequestError(Exception):
    """A request refused or failed for a reason its reply names (`kind`, then the message)."""

    def __init__(self, kind: str, message: str) -> None:
        Exception.__init__(self, message)
        self.kind = kind


def confine(path: object, follow: bool = True) -> str:
    """Map a request path to an absolute path inside /workspace, or raise RequestError."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise RequestError("invalid_path", "path must be a non-empty string")
    absolute = path if path.startswith("/") else WORKSPACE + "/" + path
    lexical = os.path.normpath(absolute)
    if not inside(lexical):
        raise RequestError("outside_workspace", "path is outside /workspace: " + path)
    resolved = (
        realpath(lexical)
        if follow
        else os.path.join(realpath(os.path.dirname(lexical)), os.path.basename(lexical))
    )
    if not inside(resolved):
        raise RequestError(
            "outside_workspace", "path resolves outside /workspace through a symlink: " + path
        )
    return resolved


def realpath(path: str) -> str:
    """os.path.realpath, where a chain of symlinks longer than Python's recursion limit
    (followed one call per link before Python 3.13) is the ELOOP the kernel would give."""
    try:
        return os.path.realpath(path)
    except RecursionError:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path) from None


def inside(path: str) -> bool:
    """Whether an absolute, normalized path is /workspace or below it."""
    return path == WORKSPACE or path.startswith(WORKSPACE + "/")

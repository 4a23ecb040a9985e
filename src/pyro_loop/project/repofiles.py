"""A repository's own files as detection reads them: hostile input, read forgivingly.

Every read goes beneath the repository's root (a link that leaves it, or enters `.git`,
reads as nothing: reading the keying files for a prepare refuses it in one line instead),
takes at most MAX_READ bytes, and never fails: a missing, unreadable or malformed file reads
as empty, and a TOML or JSON value that is not the table asked for reads as an empty table,
since a repository may put any value anywhere (`tool = 3`, a package.json that is a list).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pyro_loop.fs.beneath import Beneath

MAX_READ = 4 << 20  # bytes: more than any manifest or the head of a lockfile needs


def read_bytes(root: Path, rel: str, limit: int = MAX_READ) -> bytes:
    """The first `limit` bytes of regular file root/rel, or b""."""
    try:
        with Beneath(root) as tree, os.fdopen(tree.open_following(rel), "rb") as f:
            return f.read(limit)
    except OSError:
        return b""


def is_file(root: Path, rel: str) -> bool:
    """Is root/rel a regular file (reached without leaving the repository)?"""
    try:
        with Beneath(root) as tree:
            os.close(tree.open_following(rel))
    except OSError:
        return False
    return True


def read_text(root: Path, rel: str, limit: int = MAX_READ) -> str:
    return read_bytes(root, rel, limit).decode("utf-8", errors="replace")


def read_toml(root: Path, rel: str) -> dict[str, Any]:
    """root/rel parsed as TOML, or {}."""
    import tomllib  # here: the daily commands read no TOML of the repository's

    try:
        return tomllib.loads(read_text(root, rel))
    except tomllib.TOMLDecodeError:
        return {}


def read_json(root: Path, rel: str) -> dict[str, Any]:
    """root/rel parsed as a JSON object, or {}."""
    import json

    try:
        data = json.loads(read_text(root, rel) or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def table(data: object, *keys: str) -> dict[str, Any]:
    """`data[k1][k2]...` when each is a table (a dict), else an empty one."""
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}

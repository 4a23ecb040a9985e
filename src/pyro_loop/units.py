"""Durations and sizes as people read them, the same in every command's output."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """ "31 ms" below ten seconds, "74.2 s" above."""
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def size(nbytes: float) -> str:
    """ "512 B", "21.7 MB": decimal units, as disk tools print them."""
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} GB"

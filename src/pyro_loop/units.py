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


_SIZE_SUFFIXES = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_size(text: str) -> int:
    """ "500M", "8G", "1024": a size in bytes, in the decimal units `size` prints (a trailing
    "B" is allowed: "8GB"). Raises ValueError with what was expected."""
    raw = text.strip().lower().removesuffix("b")
    number, suffix = (raw[:-1], raw[-1]) if raw[-1:].isalpha() else (raw, "")
    if suffix not in _SIZE_SUFFIXES or not number.replace(".", "", 1).isdigit():
        raise ValueError(f"not a size: {text!r} (expected a number with K, M, G or T, like 8G)")
    return int(float(number) * _SIZE_SUFFIXES[suffix])

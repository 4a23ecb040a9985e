"""Tar members built by hand, for archives a test crafts member by member."""

from __future__ import annotations

import tarfile


def member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    """A member `name` of type `kind`, with the given TarInfo attributes set."""
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info

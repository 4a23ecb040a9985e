"""Unpacking tar archives pyro does not trust, the same way on every Python it supports.

tarfile's extraction filters (`filter="data"`) arrived in Python 3.11.4, and Debian 12's own
python3 is 3.11.2, so the checks are pyro's: each member is vetted before tarfile writes it.
No member may leave the tree (no absolute names, no `..`), none is written through a link
or below a file (a member's parents are directories unpacked before it, or made for it),
names are unique, hard links point at regular files already unpacked, device nodes and
FIFOs are refused, set-id bits and group and other write permissions are dropped, and every
file is owned by the caller whatever the archive says. Symbolic links must resolve inside
the tree, unless the archive is a root filesystem (`absolute_links`), where links such as
/etc/alternatives/awk -> /usr/bin/mawk are read inside the sandbox, not on the host.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyro_loop.errors import InvalidInputError
from pyro_loop.records import dataclass


class UnsafeArchiveError(InvalidInputError):
    """A member of an archive would land outside its tree, or is a kind pyro never unpacks."""


@dataclass(frozen=True)
class Rules:
    what: str  # named in the error: "the root filesystem", "seed archive x.tar", ...
    absolute_links: bool = False  # a root filesystem keeps links that point anywhere
    implicit_parents: bool = True  # make missing parent directories (else refuse the member)
    skip_devices_below: str | None = None  # "dev/": skip special files there, not refuse
    # Links must stay inside this top directory of the archive: an export's, which leaves
    # the temporary directory (a link out of it would name whatever sits beside the output).
    links_within: str | None = None


def extract(tar: tarfile.TarFile, dest: Path, rules: Rules) -> None:
    """Unpack `tar` (opened for reading, as a stream or not) into the directory `dest`.

    Raises UnsafeArchiveError for the first member that breaks a rule; what was unpacked
    before it stays in `dest`, which the caller discards.
    """
    vetting = Vetting(rules)
    # Python 3.12+ applies a filter of its own by default (3.14), or warns that it will; the
    # members are checked here instead, identically on every version.
    trusted: dict[str, Any] = (
        {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    )
    tar.extractall(dest, members=vetting.members(tar), numeric_owner=True, **trusted)
    if not rules.absolute_links:
        vetting.check_links(dest)


class Vetting:
    """The rules applied to one archive's members in turn (each judged against those before
    it), for `extract` and for a caller that reads and writes members itself: `member` says
    what to write, or raises. Links are checked lexically only: use `absolute_links`, or
    `check_links` on the unpacked tree."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.uid, self.gid = os.getuid(), os.getgid()
        self.directories = {"."}
        self.regular: dict[str, int] = {}  # name: mode
        self.seen: set[str] = set()
        self.links: list[str] = []

    def refuse(self, reason: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"refusing {self.rules.what}: {reason}")

    def members(self, tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
        for member in tar:
            vetted = self.member(member.name, member.type, member.mode, member.linkname)
            if vetted is None:
                continue
            member.name, member.mode, member.linkname = vetted
            member.uid, member.gid, member.uname, member.gname = self.uid, self.gid, "", ""
            yield member

    def member(
        self, raw: str, kind: bytes, mode: int, linkname: str
    ) -> tuple[str, int, str] | None:
        """The member named `raw` of tar type `kind` as it may be written: its name
        normalised, its mode stripped of what is never kept, a hard link's target normalised
        (and its mode the file's); None to leave it out. UnsafeArchiveError if it breaks a
        rule."""
        name = self.name(raw)
        skip = self.rules.skip_devices_below
        if name == "." or (skip and name.startswith(skip) and kind != tarfile.DIRTYPE):
            return None
        if name in self.seen:
            raise self.refuse(f"{name!r} appears twice")
        if name in self.directories and kind != tarfile.DIRTYPE:
            raise self.refuse(f"{name!r} is both a directory and a file")
        self.parents(name)
        self.seen.add(name)
        return self.attributes(name, kind, mode, linkname)

    def name(self, raw: str) -> str:
        normal = posixpath.normpath(raw) if raw else ""
        if not normal or normal.startswith("/") or ".." in normal.split("/"):
            raise self.refuse(f"member {raw!r} escapes the tree")
        if "\0" in normal:  # no file has such a name: each reader would cut it elsewhere
            raise self.refuse(f"member {raw!r} has a NUL in its name")
        return normal

    def parents(self, name: str) -> None:
        """Every parent of `name` is a directory of the archive (or, where allowed, one that
        tarfile makes for it): nothing is ever written through a link or below a file."""
        parent = posixpath.dirname(name) or "."
        if parent in self.directories:
            return
        if not self.rules.implicit_parents:
            raise self.refuse(f"{name!r} is not in a directory")
        chain = []
        while parent not in self.directories:
            if parent in self.seen:
                raise self.refuse(f"{name!r} would be written through {parent!r}, not a directory")
            chain.append(parent)
            parent = posixpath.dirname(parent) or "."
        self.directories.update(chain)

    def attributes(self, name: str, kind: bytes, mode: int, linkname: str) -> tuple[str, int, str]:
        if kind == tarfile.DIRTYPE:
            self.directories.add(name)
            mode = (mode & 0o1755) | 0o700
        elif kind in tarfile.REGULAR_TYPES:
            mode = (mode & 0o755) | 0o400
            self.regular[name] = mode
        elif kind == tarfile.LNKTYPE:
            target = self.name(linkname)
            if target not in self.regular:
                raise self.refuse(f"hard link {name!r} to {target!r}, not a file unpacked before")
            # The link shares the file's inode: its attributes are the file's.
            linkname, mode = target, self.regular[target]
        elif kind == tarfile.SYMTYPE:
            if "\0" in linkname:
                raise self.refuse(f"link {name!r} has a NUL in its target")
            if not self.rules.absolute_links:
                inside = posixpath.normpath(posixpath.join(posixpath.dirname(name), linkname))
                top = self.rules.links_within
                if (
                    not linkname
                    or linkname.startswith("/")
                    or inside.split("/")[0] == ".."
                    or (top and inside != top and not inside.startswith(top + "/"))
                ):
                    raise self.refuse(f"link {name!r} points outside the tree ({linkname!r})")
                self.links.append(name)
        else:
            raise self.refuse(f"{name!r} is a device or FIFO")
        return name, mode, linkname

    def check_links(self, dest: Path) -> None:
        """Each link, resolved through the links it passes (which the lexical check above
        cannot see: `a -> b/..` with `b -> ..`), still lands inside `dest`."""
        root = os.path.realpath(dest / (self.rules.links_within or ""))
        for name in self.links:
            resolved = os.path.realpath(os.path.join(dest, name))
            if resolved != root and not resolved.startswith(root + os.sep):
                raise self.refuse(f"link {name!r} points outside the tree")

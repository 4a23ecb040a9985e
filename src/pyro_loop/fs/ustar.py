"""A lean reader of the tar archives pyro writes: POSIX ustar headers and pax records; and
the header block pyro's own tar streams write (`header_block`).

pyro's layer blobs (remote/archive.py) are written by tarfile in its PAX format: one ustar
header a member, preceded by a pax header ('x') when a name or link target does not fit its
field (or is not ASCII) or a number does not fit. tarfile reads a member in some 40 us of
Python (a header goes through a dozen calls into a TarInfo, a body through two file
objects), which for a virtualenv's 4,000 files was most of what the thread feeding a pull's
writers did; this reader takes a header in a few us, and hands a body over as the bytes it
arrived in. It reads that subset and refuses anything else with FormatError: GNU and
pre-POSIX headers, global or unknown pax records (sparse files, extended attributes),
numbers in base-256. Every other archive pyro unpacks (seeds, root filesystems, exports) is
read by tarfile.

It only parses. What a member may be (its name, its kind, its mode) is for safetar's rules to
judge; devices and FIFOs are read as members (with no body) for those rules to refuse.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

BLOCK = 512
REGULAR = b"0"
HARD_LINK = b"1"
SYMLINK = b"2"
DIRECTORY = b"5"
_PAX = b"x"
_KINDS = frozenset((REGULAR, HARD_LINK, SYMLINK, b"3", b"4", DIRECTORY, b"6"))
POSIX_MAGIC = b"ustar\x0000"  # POSIX ustar, with its version
GNU_MAGIC = b"ustar  \0"  # GNU tar's (its long-name records and base-256 numbers)
_ZEROS = bytes(BLOCK)
# What tarfile may write in a pax header for a member of pyro's (long or non-ASCII names,
# numbers that do not fit), and what is read here: the rest are ignored.
_PAX_USED = frozenset((b"path", b"linkpath", b"size", b"mtime"))
_PAX_IGNORED = frozenset(
    (b"uid", b"gid", b"uname", b"gname", b"atime", b"ctime", b"hdrcharset", b"charset", b"comment")
)


class FormatError(ValueError):
    """Not a whole tar archive of the kind pyro writes."""


class Member(NamedTuple):
    name: str  # as the archive spells it (decoded as UTF-8, undecodable bytes kept)
    kind: bytes  # tar's type flag: REGULAR, DIRECTORY, SYMLINK, HARD_LINK, or a device's
    mode: int
    mtime: int
    size: int  # of the body, which only a regular file has
    linkname: str


class Reader:
    """The members of a tar stream, whose bytes `next_chunk` returns piece by piece (b"" at
    its end). Iterate for the members; while a regular file is the current member, `read`
    or `chunks` give its body (what is left unread is skipped). The stream is read up to the
    archive's end-of-archive block, not past it.

    A piece may be a view of a buffer its source reuses once it has handed over the next few:
    nothing is kept of a piece once the next one is asked for (a header that straddles two
    is copied first), and a body handed out as a view must be used before the reader is."""

    def __init__(self, next_chunk: Callable[[], bytes | memoryview]) -> None:
        self._next_chunk = next_chunk
        self._buf: bytes | memoryview = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        self._left = 0  # body bytes of the current member not yet read
        self._pad = 0  # zeros after the body, to the next block

    def __iter__(self) -> Iterator[Member]:
        pax: dict[bytes, bytes] | None = None
        while True:
            self._skip(self._left + self._pad)
            self._left = self._pad = 0
            header = self._take(BLOCK)
            if header == _ZEROS:
                if pax is not None:
                    raise FormatError("the archive ends after a pax header")
                return
            _check_sum(header)
            if header[257:265] != POSIX_MAGIC:
                raise FormatError("a header is not a POSIX ustar header")
            kind = header[156:157]
            if kind == _PAX:
                if pax is not None:
                    raise FormatError("two pax headers in a row")
                size = _number(header, 124, 136)
                pax = _pax_records(self._take(size))
                self._skip(-size % BLOCK)
                continue
            member = _member(header, kind, pax)
            pax = None
            if kind == REGULAR:
                self._left, self._pad = member.size, -member.size % BLOCK
            yield member

    def read(self) -> bytes | memoryview:
        """The rest of the current member's body, whole: a view of the piece it arrived in
        when it lies in one, so a layer's bytes are not copied once more on their way to
        the disk."""
        end = self._pos + self._left
        data: bytes | memoryview
        if end <= len(self._buf):
            data = self._view[self._pos : end]
            self._pos = end
        else:
            data = self._take(self._left)
        self._left = 0
        return data

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The rest of the current member's body, in the pieces it arrives in (views)."""
        while self._left:
            if self._pos == len(self._buf):
                self._fill()
            piece = self._view[self._pos : self._pos + self._left]
            self._pos += len(piece)
            self._left -= len(piece)
            yield piece

    def _fill(self) -> None:
        self._buf, self._pos = self._next_chunk(), 0
        self._view = memoryview(self._buf)
        if not self._buf:
            raise FormatError("the archive is cut short")

    def _take(self, count: int) -> bytes:
        end = self._pos + count
        if end <= len(self._buf):
            data = bytes(self._view[self._pos : end])
            self._pos = end
            return data
        parts: list[bytes | memoryview] = [bytes(self._view[self._pos :])]  # may be reused
        count -= len(parts[0])
        while True:
            self._fill()
            if count <= len(self._buf):
                parts.append(self._view[:count])
                self._pos = count
                return b"".join(parts)
            parts.append(bytes(self._view))
            count -= len(self._buf)

    def _skip(self, count: int) -> None:
        while count > len(self._buf) - self._pos:
            count -= len(self._buf) - self._pos
            self._fill()
        self._pos += count


def _check_sum(header: bytes) -> None:
    """The header's checksum: the sum of its bytes, the checksum field counted as spaces.
    Adler-32's first half is that sum plus one, modulo 65521, in a fraction of what
    Python's sum() takes over 512 bytes (3 us, a tenth of a header's parsing): a header
    whose checksum is off by a multiple of 65521 passes, which is no weaker as a guard
    against reading something that is not a tar (the blob's digest is what is trusted)."""
    recorded = _number(header, 148, 156)
    field = sum(header[148:156])
    if ((zlib.adler32(header) & 0xFFFF) - 1 - field + 256 - recorded) % 65521:
        raise FormatError("a header's checksum does not match")


def _member(header: bytes, kind: bytes, pax: dict[bytes, bytes] | None) -> Member:
    if kind not in _KINDS:
        raise FormatError(f"a header of type {kind!r}, which pyro does not write")
    name = _text(header, 0, 100)
    if header[345]:  # the prefix (ustar's way to spell long names; tarfile's PAX uses pax)
        name = f"{_text(header, 345, 500)}/{name}"
    linkname = _text(header, 157, 257) if header[157] else ""
    size = _number(header, 124, 136)
    mtime = _number(header, 136, 148)
    if pax is not None:
        name, linkname, size, mtime = _apply(pax, name, linkname, size, mtime)
    if kind != REGULAR:
        size = 0  # as tarfile reads them: only a regular file's body follows its header
        if kind == DIRECTORY:
            name = name.rstrip("/")  # tarfile writes "d/", and reads "d"
    return Member(name, kind, _number(header, 100, 108), mtime, size, linkname)


def _text(header: bytes, start: int, end: int) -> str:
    return header[start:end].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(header: bytes, start: int, end: int) -> int:
    field = header[start : end - 1]
    if header[end - 1] == 0 and field.isdigit():  # as tarfile writes it: digits, then NUL
        try:
            return int(field, 8)
        except ValueError:
            raise FormatError(f"a header's number field holds {field!r}") from None
    field = header[start:end].split(b"\0", 1)[0].strip()
    if not field.isdigit():  # octal digits only: no sign, no base-256 (GNU)
        if not field:
            return 0
        raise FormatError(f"a header's number field holds {field!r}")
    try:
        return int(field, 8)
    except ValueError:
        raise FormatError(f"a header's number field holds {field!r}") from None


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """A pax header's body: records `<length> <key>=<value>\\n`."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        length = data[pos:space]
        end = pos + int(length) if space > pos and length.isdigit() else 0
        if end <= space or end > len(data) or data[end - 1] != 0x0A:
            raise FormatError("a pax header is damaged")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq or (key not in _PAX_USED and key not in _PAX_IGNORED):
            raise FormatError(f"a pax record {key!r}, which pyro does not write")
        records[key] = value
        pos = end
    return records


def _apply(
    pax: dict[bytes, bytes], name: str, linkname: str, size: int, mtime: int
) -> tuple[str, str, int, int]:
    try:
        if b"path" in pax:
            name = pax[b"path"].decode("utf-8", "surrogateescape")
        if b"linkpath" in pax:
            linkname = pax[b"linkpath"].decode("utf-8", "surrogateescape")
        if b"size" in pax:
            size = int(pax[b"size"]) if pax[b"size"].isdigit() else -1
        if b"mtime" in pax:
            mtime = int(float(pax[b"mtime"]))
    except (ValueError, OverflowError):
        raise FormatError("a pax record holds no number") from None
    if size < 0:
        raise FormatError("a pax record holds no size")
    return name, linkname, size, mtime


IDS = b"0000000\0" * 2  # uid and gid 0: pyro writes every member so
# Each magic's tail of a header block (the magic, then no user or group names, no device
# numbers, no prefix), and what it and the checksum's field (counted as spaces) add to the sum.
_TAILS = {magic: (magic + bytes(BLOCK - 257 - len(magic)), 8 * ord(" ") + sum(magic))
          for magic in (POSIX_MAGIC, GNU_MAGIC)}  # fmt: skip


def header_block(name: bytes, numbers: bytes, kind: bytes, link: bytes, magic: bytes) -> bytes:
    """One 512-byte header: `name` and `link` of up to 100 bytes; `numbers` the 48 bytes of
    the mode, uid, gid, size and mtime fields; `magic` POSIX_MAGIC or GNU_MAGIC. The
    checksum sums only what varies (a header per file of a branch switch, or of a layer)."""
    tail, fixed = _TAILS[magic]
    check = fixed + sum(name) + sum(numbers) + kind[0] + sum(link)
    return b"".join((name.ljust(100, b"\0"), numbers, b"%06o\0 " % check, kind,
                     link.ljust(100, b"\0"), tail))  # fmt: skip

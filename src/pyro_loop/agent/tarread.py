"""Reading a tar stream from a request's D frames: headers parsed, member data handed out.

Parses only: it touches no file. Trusts nothing in the stream: a header with a bad
checksum, a malformed number or pax record length, an extended header over MAX_TAR_HEADER
and a stream that ends mid-member are refused, and nothing buffers more than one frame of
member data. Which names and types may be written is decided by tarput.py, not here.
"""

from __future__ import annotations

import protocol as p
from confine import RequestError

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` is not imported at run time (agent start-up)
    from _socket import socket


class FrameReader:
    """Reads the D frames of a request as one byte stream."""

    def __init__(self, conn: socket) -> None:
        self.conn = conn
        self.chunk = b""
        self.pos = 0
        self.eof = False

    def read(self, size: int) -> bytes:
        """Up to `size` bytes (fewer at a frame boundary); b"" once the stream has ended."""
        # Hands out slices of the current frame: no buffer grows with the stream's size.
        while self.pos >= len(self.chunk):
            if self.eof:
                return b""
            kind, payload = p.recv_frame(self.conn)
            if kind != p.KIND_DATA:
                raise p.ProtocolError("expected a data frame")
            if not payload:
                self.eof = True
            self.chunk, self.pos = payload, 0
        data = self.chunk[self.pos : self.pos + size]
        self.pos += len(data)
        return data

    def read_exact(self, size: int) -> bytes:
        parts = []
        while size > 0:
            data = self.read(size)
            if not data:
                raise RequestError("invalid_request", "the tar stream ends in the middle")
            parts.append(data)
            size -= len(data)
        return b"".join(parts)

    def drain(self) -> None:
        while not self.eof:
            self.pos = len(self.chunk)
            self.read(1)


MAX_TAR_HEADER = 1024 * 1024  # an extended header (long names, pax records) larger is refused


class TarMember:
    def __init__(self, name: str, kind: str, mode: int, size: int, linkname: str) -> None:
        self.name = name
        self.kind = kind  # "file", "dir", "symlink", or the raw type flag of anything else
        self.mode = mode
        self.size = size
        self.linkname = linkname


class TarReader:
    """Reads ustar/pax/GNU tar headers from a stream, with nothing but the standard types.

    Not tarfile: importing it (and the modules it pulls in) costs each request several
    milliseconds in a freshly forked handler, which is most of a one-file sync.
    """

    def __init__(self, stream: FrameReader) -> None:
        self.stream = stream
        self.left = 0  # unread bytes of the current member's data
        self.padding = 0

    def next(self) -> TarMember | None:
        """The next member, or None at the end of the archive."""
        self.skip()
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        while True:
            block = self.stream.read(512)
            if block:
                block += self.stream.read_exact(512 - len(block))
            if not block.strip(b"\0"):
                return None  # end-of-archive marker (or the stream's end)
            _check_header(block)
            flag = block[156:157]
            size = _tar_number(block[124:136])
            if flag in (b"x", b"g", b"L", b"K"):
                if size > MAX_TAR_HEADER:
                    raise RequestError("invalid_request", "tar extended header too large")
                data = self.stream.read_exact(size)
                self.stream.read_exact(-size % 512)
                if flag == b"x":
                    pax.update(_pax_records(data))
                elif flag == b"L":
                    long_name = _tar_text(data)
                elif flag == b"K":
                    long_link = _tar_text(data)
                continue  # a global header (g) changes nothing pyro uses
            break
        name = _tar_text(block[0:100])
        if block[257:265] == b"ustar\x0000" and block[345:500].strip(b"\0"):  # POSIX prefix
            name = _tar_text(block[345:500]) + "/" + name
        name = pax.get("path", long_name or name)
        linkname = pax.get("linkpath", long_link or _tar_text(block[157:257]))
        if "size" in pax:
            size = int(pax["size"])
        kind = {b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"2": "symlink"}.get(
            flag, flag.decode("latin-1")
        )
        if kind == "dir":
            name = name.rstrip("/")
        if kind == "file":
            self.left, self.padding = size, -size % 512
        return TarMember(name, kind, _tar_number(block[100:108]), size, linkname)

    def read(self, size: int) -> bytes:
        """Up to `size` bytes of the current member's data; b"" at its end."""
        if self.left <= 0:
            return b""
        data = self.stream.read(min(size, self.left))
        if not data:
            raise RequestError("invalid_request", "the tar stream ends in the middle")
        self.left -= len(data)
        return data

    def skip(self) -> None:
        while self.left > 0:
            self.read(p.MAX_CHUNK)
        if self.padding:
            self.stream.read_exact(self.padding)
            self.padding = 0


def _check_header(block: bytes) -> None:
    stored = _tar_number(block[148:156])
    # Summed without its NULs (most of a header): a header per file of a branch switch.
    unsigned = sum(block.translate(None, b"\0")) - sum(block[148:156]) + 256
    if stored == unsigned:
        return
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    if stored != signed:
        raise RequestError("invalid_request", "not a tar stream (bad header checksum)")


def _tar_number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # base-256, for values beyond the octal field
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise RequestError("invalid_request", "malformed number in a tar header") from None


def _tar_text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, str]:
    """The key=value records of a pax extended header ("<length> <key>=<value>\\n" each)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise RequestError("invalid_request", "malformed pax header") from None
        if length <= 0:
            raise RequestError("invalid_request", "malformed pax header")
        record = data[space + 1 : pos + length - 1]  # without the trailing newline
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records

"""fs/ustar.py reads what tarfile writes in its PAX format, as tarfile reads it, and refuses
what pyro never writes. Archives are made by tarfile (and one by GNU tar), never by hand,
except where a test damages one on purpose."""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyro_loop.fs import ustar
from tests.helpers.tarmembers import member


def _archive(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return raw.getvalue()


def _pieces(data: bytes, size: int) -> Callable[[], bytes]:
    """`next_chunk` over `data` cut into pieces of `size` bytes."""
    chunks: Iterator[bytes] = (data[at : at + size] for at in range(0, len(data), size))
    return lambda: next(chunks, b"")


def _read(data: bytes, piece: int = 1 << 20) -> list[tuple[ustar.Member, bytes]]:
    reader = ustar.Reader(_pieces(data, piece))
    return [(entry, b"".join(reader.chunks())) for entry in reader]


def _tarfile_read(data: bytes) -> list[tuple[str, bytes, int, int, int, str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        out = []
        for info in tar:
            body = tar.extractfile(info).read() if info.isreg() else b""  # type: ignore[union-attr]
            out.append(
                (info.name, info.type, info.mode, int(info.mtime), len(body), info.linkname, body)
            )
        return out


MEMBERS = [
    (member("d", tarfile.DIRTYPE, mode=0o755, mtime=1_700_000_000), b""),
    (member("d/empty", mode=0o644, mtime=1), b""),
    (member("d/run.sh", mode=0o755, size=10), b"#!/bin/sh\n"),
    # A name and a link target longer than their fields: pax records.
    (member("d/" + "n" * 150, size=3), b"abc"),
    (member("d/link", tarfile.SYMTYPE, linkname="/usr/" + "t" * 120), b""),
    (member("d/hard", tarfile.LNKTYPE, linkname="d/run.sh"), b""),
    # Not ASCII, not UTF-8 (kept as the file system's bytes), a time before 1970.
    (member("d/caf\u00e9", size=1), b"x"),
    (member("d/raw-\udcff", size=1), b"y"),
    (member("d/old", mtime=-5, size=1), b"z"),
    # Larger than a piece: several pieces, and a body that ends inside one.
    (member("d/big", size=1_100_001), bytes(range(256)) * 4296 + b"x" * 225),
]


@pytest.mark.parametrize("piece", [7, 512, 4096, 1 << 20])
def test_reads_what_tarfile_writes_as_tarfile_reads_it(piece: int) -> None:
    data = _archive(MEMBERS)
    read = _read(data, piece)
    got = [(m.name, m.kind, m.mode, m.mtime, m.size, m.linkname, body) for m, body in read]
    assert got == _tarfile_read(data)
    assert [m.name for m, _ in read] == [info.name for info, _ in MEMBERS]


def test_bodies_left_unread_are_skipped_and_read_whole_when_asked() -> None:
    data = _archive(MEMBERS)
    reader = ustar.Reader(_pieces(data, 1000))
    bodies = {m.name: reader.read() for m in reader if m.name in ("d/run.sh", "d/old")}
    assert bodies == {"d/run.sh": b"#!/bin/sh\n", "d/old": b"z"}


def test_ustar_prefix_names_are_joined() -> None:
    # USTAR_FORMAT puts a long name's directories in the prefix field.
    name = "p" * 90 + "/" + "q" * 90
    data = _archive([(member(name, size=1), b"q")], fmt=tarfile.USTAR_FORMAT)
    assert [m.name for m, _ in _read(data)] == [name]


def test_an_empty_archive_has_no_members() -> None:
    assert _read(_archive([])) == []


def test_gnu_tar_archives_are_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    data = subprocess.run(
        ["tar", "--format=gnu", "-C", str(tmp_path), "-cf", "-", "f"],
        capture_output=True,
        check=True,
    ).stdout
    with pytest.raises(ustar.FormatError, match="not a POSIX ustar header"):
        _read(data)


def test_gnu_long_names_are_refused() -> None:
    data = _archive([(member("x" * 200, size=1), b"x")], fmt=tarfile.GNU_FORMAT)
    with pytest.raises(ustar.FormatError):
        _read(data)


def test_global_and_unknown_pax_records_are_refused() -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", pax_headers={"comment": "global"}) as tar:
        tar.addfile(member("f"))
    with pytest.raises(ustar.FormatError, match="type b'g'"):
        _read(raw.getvalue())
    info = member("f")
    info.pax_headers = {"SCHILY.xattr.security.capability": "x"}
    with pytest.raises(ustar.FormatError, match=r"pax record b'SCHILY\.xattr"):
        _read(_archive([(info, b"")]))


def test_a_damaged_header_is_refused() -> None:
    data = bytearray(_archive([(member("f", size=1), b"x")]))
    data[0] = ord("g")  # the name, under the checksum
    with pytest.raises(ustar.FormatError, match="checksum"):
        _read(bytes(data))


def test_numbers_other_than_octal_are_refused() -> None:
    # GNU's base-256 for a size, with a checksum that matches it.
    data = bytearray(_archive([(member("f", size=1), b"x")]))
    data[124:136] = b"\x80" + bytes(10) + b"\x01"
    data[148:156] = b"        "
    data[148:156] = b"%06o\0 " % sum(data[:512])
    with pytest.raises(ustar.FormatError, match="number field"):
        _read(bytes(data))


@pytest.mark.parametrize(
    "cut",
    [
        100,  # in a header
        600,  # in a body
        1300,  # in the padding after a body
        2048,  # before the end-of-archive block
    ],
)
def test_a_truncated_stream_is_refused(cut: int) -> None:
    data = _archive([(member("f", size=700), b"x" * 700), (member("g"), b"")])
    with pytest.raises(ustar.FormatError, match="cut short"):
        _read(data[:cut])

"""fs/gnutar.py: a real GNU tar writes what it is handed, and only that. Each header it reads
is one this module built; tarfile reads them back to the same fields; misuse that could let
tar read a body as a header is refused before anything reaches it."""

from __future__ import annotations

import io
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from pyro_loop.fs import gnutar

NOBODY = 65534


def _untar(
    dest: Path, *members: tuple[str, bytes, dict[str, object], bytes], owner: int | None = None
) -> None:
    """(name, kind, header fields, body) handed to a real tar writing below `dest`."""
    with gnutar.Untar(str(dest), owner=owner) as tar:
        for name, kind, fields, body in members:
            tar.add(name, kind, size=len(body), **fields)  # type: ignore[arg-type]
            if body:
                tar.write(body[:1])
                tar.write(memoryview(body)[1:])
        tar.close()


LONG = "d/" + "n" * 150
MEMBERS = [
    ("d", gnutar.DIRECTORY, {"mode": 0o755, "mtime": 1_700_000_000}, b""),
    ("d/run.sh", gnutar.REGULAR, {"mode": 0o755, "mtime": 7}, b"#!/bin/sh\n"),
    ("d/empty", gnutar.REGULAR, {"mode": 0o400}, b""),
    ("d/" + "x" * 98, gnutar.REGULAR, {"mode": 0o644}, b"99"),  # 100 bytes: a GNU long name
    (LONG, gnutar.REGULAR, {"mode": 0o644}, b"abc" * 700),
    ("d/link", gnutar.SYMLINK, {"mtime": 5, "linkname": "/usr/" + "t" * 120}, b""),
    ("d/rel", gnutar.SYMLINK, {"linkname": "run.sh"}, b""),
    ("d/hard", gnutar.HARD_LINK, {"linkname": LONG}, b""),
    ("d/caf\u00e9", gnutar.REGULAR, {"mode": 0o600}, b"x"),
    ("d/raw-\udcff", gnutar.REGULAR, {"mode": 0o600}, b"y"),  # not UTF-8: the bytes kept
    ("d/old", gnutar.REGULAR, {"mode": 0o644, "mtime": -5}, b"z"),  # GNU base-256
    ("d/far", gnutar.REGULAR, {"mode": 0o644, "mtime": 8**11 + 3}, b"z"),
    ("d/sticky", gnutar.DIRECTORY, {"mode": 0o1777, "mtime": 3}, b""),
]


def test_what_tar_is_handed_is_written_exactly(tmp_path: Path) -> None:
    old = os.umask(0o077)  # tar is told to keep the modes as they are, whatever the umask
    try:
        _untar(tmp_path, *MEMBERS)
    finally:
        os.umask(old)
    for name, kind, fields, body in MEMBERS:
        path = tmp_path / name
        st = path.lstat()
        if kind == gnutar.SYMLINK:
            assert os.readlink(path) == fields["linkname"]
        elif kind == gnutar.HARD_LINK:
            assert st.st_ino == (tmp_path / str(fields["linkname"])).stat().st_ino
        else:
            assert stat.S_IMODE(st.st_mode) == fields["mode"], name
            if kind == gnutar.REGULAR:
                assert path.read_bytes() == body
        if kind != gnutar.HARD_LINK:
            assert st.st_mtime == fields.get("mtime", 0), name
    assert (tmp_path / "d" / "raw-\udcff").exists()


def test_headers_read_back_by_tarfile_to_the_same_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stream exactly as tar would read it (a stand-in keeps it), read by a second parser.
    stream = tmp_path / "stream.tar"
    keeper = tmp_path / "keeper"
    keeper.write_text(f"#!/bin/sh\ncat > {stream}\n")
    keeper.chmod(0o755)
    monkeypatch.setattr(gnutar, "_found", [str(keeper), gnutar.programs()[1]])
    (tmp_path / "out").mkdir()
    _untar(tmp_path / "out", *MEMBERS)
    assert stream.stat().st_size % gnutar.RECORD == 0
    with tarfile.open(stream, mode="r:", errorlevel=2) as read:
        seen = read.getmembers()
        bodies = [read.extractfile(m).read() if m.isreg() else b"" for m in seen]  # type: ignore[union-attr]
    assert [m.name for m in seen] == [name for name, *_ in MEMBERS]
    for info, body, (_name, kind, fields, data) in zip(seen, bodies, MEMBERS, strict=True):
        assert (info.type, info.linkname, body) == (kind, fields.get("linkname", ""), data)
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
        if kind in (gnutar.REGULAR, gnutar.DIRECTORY):
            assert (info.mode, info.mtime) == (fields["mode"], fields.get("mtime", 0))


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([("add", "f", gnutar.REGULAR, 2), ("write", b"abc")], "longer than its header"),
        ([("add", "f", gnutar.REGULAR, 2), ("add", "g", gnutar.REGULAR, 0)], "not complete"),
        ([("add", "f", gnutar.REGULAR, 2), ("write", b"a"), ("close",)], "not complete"),
        ([("add", "dev", b"3", 0)], "never handed a member of type"),
        ([("add", "fifo", b"6", 0)], "never handed a member of type"),
        ([("add", "d", gnutar.DIRECTORY, 5)], "only a regular file has a body"),
        ([("add", "a\0b", gnutar.REGULAR, 0)], "no member is named"),
        ([("add", "", gnutar.REGULAR, 0)], "no member is named"),
        ([("add", "s", gnutar.SYMLINK, 0)], "only a link, has a target"),
    ],
)
def test_misuse_is_refused_before_tar_reads_it(
    tmp_path: Path, steps: list[tuple[object, ...]], message: str
) -> None:
    # Each would let tar read a body as a header, or a member pyro never writes.
    with gnutar.Untar(str(tmp_path)) as tar, pytest.raises(ValueError, match=message):
        for step in steps:
            if step[0] == "add":
                tar.add(str(step[1]), step[2], size=int(step[3]))  # type: ignore[arg-type]
            elif step[0] == "write":
                tar.write(step[1])  # type: ignore[arg-type]
            else:
                tar.close()
    assert not any(tmp_path.iterdir())


def test_an_existing_name_is_an_error_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("mine")
    with pytest.raises(
        gnutar.UntarError, match=r"tar could not write it: f: Cannot open: File exists"
    ):
        _untar(tmp_path, ("f", gnutar.REGULAR, {"mode": 0o644}, b"theirs"))
    assert (tmp_path / "f").read_text() == "mine"


def test_tar_options_from_the_environment_are_not_passed_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GNU tar reads TAR_OPTIONS as options: these would send the files to stdout, and
    # replace what exists.
    monkeypatch.setenv("TAR_OPTIONS", "--to-stdout --overwrite")
    (tmp_path / "old").write_text("mine")
    _untar(tmp_path, ("f", gnutar.REGULAR, {"mode": 0o644}, b"on disk"))
    assert (tmp_path / "f").read_text() == "on disk"
    with pytest.raises(gnutar.UntarError, match="File exists"):
        _untar(tmp_path, ("old", gnutar.REGULAR, {"mode": 0o644}, b"theirs"))


def test_leaving_without_closing_stops_tar(tmp_path: Path) -> None:
    with gnutar.Untar(str(tmp_path)) as tar:
        tar.add("f", gnutar.REGULAR, mode=0o644, size=1 << 30)
        tar.write(bytes(3 << 20))
        child = tar._child
    assert child.poll() is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="running tar as another user needs root")
def test_as_root_tar_runs_as_the_owner_with_no_privilege(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    os.chown(mine, NOBODY, NOBODY)
    _untar(mine, ("d", gnutar.DIRECTORY, {"mode": 0o755}, b""),
           ("d/f", gnutar.REGULAR, {"mode": 0o644}, b"x"),
           ("d/s", gnutar.SYMLINK, {"linkname": "/etc/shadow"}, b""), owner=NOBODY)  # fmt: skip
    owners = {p.lstat().st_uid for p in [mine / "d", mine / "d" / "f", mine / "d" / "s"]}
    assert owners == {NOBODY}
    # Where that user may not write, neither may tar, though pyro is root.
    theirs = tmp_path / "root-only"
    theirs.mkdir(mode=0o755)
    with (
        pytest.raises(gnutar.UntarError, match="Permission denied"),
        gnutar.Untar(str(theirs), owner=NOBODY) as tar,
    ):
        tar.add("f", gnutar.REGULAR, mode=0o644)
        tar.close()
    assert not any(theirs.iterdir())


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_tar_can_gain_no_privilege(tmp_path: Path) -> None:
    owner = NOBODY if os.geteuid() == 0 else None
    if owner is not None:
        os.chown(tmp_path, owner, owner)
    with gnutar.Untar(str(tmp_path), owner=owner) as tar:
        tar.add("f", gnutar.REGULAR, mode=0o644, size=1)
        deadline = time.monotonic() + 10
        while (status := _status(tar._child.pid))["Name"] != "tar":  # setpriv, until it execs
            assert time.monotonic() < deadline
            time.sleep(0.01)
        tar.write(b"x")
        tar.close()
    assert status["NoNewPrivs"] == "1"  # nothing it runs may be set-id
    if owner is not None:  # root's tar is nobody's, with no capability and no group
        assert status["Uid"].split() == [str(NOBODY)] * 4
        assert status["Gid"].split() == [str(NOBODY)] * 4
        assert status["Groups"].strip() == ""
        assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0
    assert (tmp_path / "f").read_text() == "x"


def test_a_default_acl_is_not_what_decides_the_modes(tmp_path: Path) -> None:
    # A default ACL granting group and others nothing: it stands in for the umask, and tar
    # skips its chmod for a file whose mode it passed to open().
    acl = struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perms, 0xFFFFFFFF) for tag, perms in ((1, 7), (4, 0), (0x20, 0))
    )
    try:
        os.setxattr(tmp_path, "system.posix_acl_default", acl)
    except OSError:
        pytest.skip("no ACLs on this file system")
    from pyro_loop.remote import archive

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_text("x")
    (tree / "f").chmod(0o644)
    blob = io.BytesIO()
    tar_size = archive.pack(tree, blob)
    blob.seek(0)
    out = tmp_path / "out"
    out.mkdir()
    assert os.getxattr(out, "system.posix_acl_default")  # inherited
    archive.unpack(blob, out, tar_size=tar_size)
    assert stat.S_IMODE((out / "f").stat().st_mode) == 0o644


def test_no_gnu_tar_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    monkeypatch.setattr(gnutar, "_found", [])
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(gnutar.UntarError, match="`tar` not found on PATH"):
        gnutar.programs()
    fake = tmp_path / "tar"
    fake.write_text("#!/bin/sh\necho 'bsdtar 3.6.2 - libarchive 3.6.2'\n")
    fake.chmod(0o755)
    with pytest.raises(gnutar.UntarError, match="`setpriv` not found on PATH"):
        gnutar.programs()
    os.symlink(setpriv, tmp_path / "setpriv")
    with pytest.raises(gnutar.UntarError, match="is not GNU tar"):
        gnutar.programs()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_full_disk_is_told_apart(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "pyro-test", str(mount)],
                   check=True)  # fmt: skip
    try:
        with pytest.raises(gnutar.UntarError) as full:
            _untar(mount, ("big", gnutar.REGULAR, {"mode": 0o644}, bytes(2 << 20)))
        assert full.value.disk_full
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)

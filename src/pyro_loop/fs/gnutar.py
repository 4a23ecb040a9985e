"""Writing vetted members to disk through a `tar -x` child that reads only headers built here.

A layer is thousands of small files, each a handful of system calls. Made from Python, each
call gives up the GIL and waits for it on its way back while other threads parse and hash:
a pull of a virtualenv's 4,165 entries took 1.5x what `cp -a` of the same tree takes. GNU
tar makes them in C, on the other core, while Python parses, vets and hashes the stream.

tar never reads the archive it was given. The caller parses and vets every member (safetar's
rules) and hands over only what they let through: its normalised name, its kind (a directory,
a regular file, a symbolic link or a hard link; never a device, a FIFO or anything else), its
vetted mode and its time; a header is serialised here from those fields alone, with GNU
long-name records for long names (raw bytes: no character set conversion). A file's body is
exactly as long as its header says, padded to the block as tar expects: nothing in a body can
be read as a header. So what tar parses is what the caller vetted, byte for byte, and no
difference between two tar parsers can be exploited.

Flags that refuse or neutralise what the vetting might still miss are passed all the same
(see `_FLAGS`). tar runs with an environment of its own (TAR_OPTIONS, which tar reads as
options, is not passed through), through setpriv: it can gain no privilege (no_new_privs),
dies with pyro, and when pyro is root runs as the owner of the files it writes, with no
capability and no group: it cannot give a file away, make a device or write where that
user cannot.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from typing import IO

from pyro_loop.errors import PyroError
from pyro_loop.fs.ustar import GNU_MAGIC, IDS, header_block
from pyro_loop.fs.util import DISK_FULL_ERRNOS

BLOCK = 512
REGULAR = b"0"
HARD_LINK = b"1"
SYMLINK = b"2"
DIRECTORY = b"5"
_KINDS = frozenset((REGULAR, HARD_LINK, SYMLINK, DIRECTORY))
# tar reads its input in records of this many blocks (the pipe's reads are put together into
# whole records): 128 KiB, a few hundred reads for a layer instead of thousands.
_BLOCKING = 256
RECORD = _BLOCKING * BLOCK
_FLUSH = 1 << 20  # bytes gathered before they are written to tar at once
_PIPE = 1 << 20  # the pipe's capacity, asked for (the kernel's default limit)
IN_FLIGHT = _FLUSH + _PIPE + RECORD  # handed to tar, at most, and not on disk yet

_FLAGS = (
    "--extract",
    "--file=-",
    # Reads from a pipe come in whatever sizes it has: put them together into whole records.
    "--read-full-records",
    f"--blocking-factor={_BLOCKING}",
    # Never the header's owner (the headers name root): files belong to tar's own user.
    "--no-same-owner",
    "--numeric-owner",  # and no user database is looked up for names
    # Exactly the vetted mode (tar clears its umask): set-id bits were dropped by the vetting.
    "--same-permissions",
    # An existing name is an error, never replaced: the names are unique (vetted), so tar
    # never removes or follows anything already in the tree.
    "--keep-old-files",
    # Directories' modes and times set at the end, whatever the order of their members.
    "--delay-directory-restore",
    # No metadata beyond mode and times, whatever this tar was built to do by default.
    "--no-acls",
    "--no-selinux",
    "--no-xattrs",
    # Not given, on purpose: --absolute-names. tar strips a leading "/" and skips a name
    # with "..", a second guard behind the vetting; and it makes a symbolic link whose
    # target is absolute or climbs with ".." last, after every other member (a placeholder
    # file until then), so nothing is ever written through one.
)


class UntarError(PyroError):
    """tar failed or would not start; `disk_full` when the disk filled up."""

    def __init__(self, message: str, *, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


_found: list[str] = []  # GNU tar and setpriv, found once a process


def programs() -> tuple[str, str]:
    """The paths of GNU tar and of setpriv (util-linux), checked once a process;
    UntarError if either is missing."""
    if _found:
        return _found[0], _found[1]
    import shutil

    tar, setpriv = shutil.which("tar"), shutil.which("setpriv")
    if tar is None:
        raise UntarError("`tar` not found on PATH (pulling a layer needs GNU tar)")
    if setpriv is None:
        raise UntarError("`setpriv` not found on PATH (pulling a layer needs util-linux)")
    out = subprocess.run([tar, "--version"], capture_output=True, env={"LC_ALL": "C"},
                         stdin=subprocess.DEVNULL, timeout=20, check=False)  # fmt: skip
    if not out.stdout.startswith(b"tar (GNU tar)"):
        raise UntarError(f"{tar} is not GNU tar (pulling a layer needs it)")
    _found[:] = [tar, setpriv]
    return tar, setpriv


class Untar:
    """A `tar -x` child writing below the directory `dest`, run as `owner` when one is named
    (pyro being root; `dest` must be that user's), else as the caller.

    `add` a member's header, then for a regular file `write` its body, exactly `size` bytes
    in pieces; `close` ends the archive and waits for tar (UntarError if it failed). Use as a
    context manager: leaving it otherwise kills tar and waits for it, so no process still
    writes into a tree the caller is about to remove.
    """

    def __init__(self, dest: str, *, owner: int | None = None) -> None:
        import fcntl

        self._tar, setpriv = programs()
        # tar's messages, read once it has exited (a pipe could fill up and stop it); closed
        # with the child, in __exit__.
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115
        # setpriv rather than Popen's user=: Python forks for that (a copy of its page tables,
        # 6-15 ms for pyro in a prepare) where it can otherwise use vfork. tar may gain no
        # privilege (no set-id program it could run), and dies with pyro.
        drop = [setpriv, "--no-new-privs", "--pdeathsig=KILL"]
        if owner is not None:
            drop += [f"--reuid={owner}", f"--regid={owner}", "--clear-groups"]
        self._child = subprocess.Popen(
            [*drop, "--", self._tar, *_FLAGS], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=self._errors, cwd=dest, env={"LC_ALL": "C"},
        )  # fmt: skip
        stdin = self._child.stdin
        assert stdin is not None
        self._stdin: IO[bytes] = stdin
        self._fd = stdin.fileno()
        with contextlib.suppress(OSError):  # else a smaller pipe: more, shorter writes
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, _PIPE)
        # One buffer, kept: memory taken afresh for each megabyte costs a page fault per 4 kB.
        self._buf = bytearray(_FLUSH)
        self._view = memoryview(self._buf)
        self._used = 0  # bytes of it gathered
        self._left = 0  # body bytes the current member still needs
        self._pad = b""
        self._written = 0  # bytes of the archive so far
        self._closed = False
        self._broken = False  # tar stopped reading before the end of the archive

    def __enter__(self) -> Untar:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed:
            self._child.kill()
            self._end()
        self._errors.close()

    def add(
        self, name: str, kind: bytes, *, mode: int = 0, mtime: int = 0, size: int = 0,
        linkname: str = "",
    ) -> None:  # fmt: skip
        """A member's header: `name` (normalised, relative), `kind` one of REGULAR,
        DIRECTORY, SYMLINK, HARD_LINK; `size` bytes of body follow a regular file."""
        if self._left:
            raise ValueError("the previous member's body is not complete")
        if kind not in _KINDS:
            raise ValueError(f"tar is never handed a member of type {kind!r}")
        if kind != REGULAR and size:
            raise ValueError("only a regular file has a body")
        if (kind in (SYMLINK, HARD_LINK)) != bool(linkname):
            raise ValueError("a link, and only a link, has a target")
        raw, target = os.fsencode(name), os.fsencode(linkname)
        if not raw or b"\0" in raw or b"\0" in target:
            raise ValueError(f"no member is named {name!r} -> {linkname!r}")
        if len(raw) >= 100:
            self._long(b"L", raw)
            raw = raw[:99]
        if len(target) >= 100:
            self._long(b"K", target)
            target = target[:99]
        self._put(_header(raw, kind, mode=mode, size=size, mtime=mtime, linkname=target))
        self._left = size
        self._pad = bytes(-size % BLOCK)

    def write(self, piece: bytes | memoryview) -> None:
        """Part of the current file's body (kept by reference until it is written)."""
        if len(piece) > self._left:
            raise ValueError("a body longer than its header says")
        self._left -= len(piece)
        self._put(piece)
        if not self._left and self._pad:
            self._put(self._pad)
            self._pad = b""

    def close(self) -> None:
        """The end of the archive, then tar's exit: UntarError with its message if it
        failed."""
        self.end()
        self.wait()

    def end(self) -> None:
        """The end of the archive, handed over: tar finishes on its own meanwhile."""
        if self._left:
            raise ValueError("the last member's body is not complete")
        end = 2 * BLOCK
        self._put(bytes(end + (-(self._written + self._used + end) % RECORD)))
        try:
            self._flush()
            self._stdin.close()
        except BrokenPipeError:
            self._broken = True
        self._closed = True

    def wait(self) -> None:
        """tar's exit, once the archive has ended: UntarError with its message if it
        failed."""
        code = self._end()
        if code or self._broken:  # (tar reads whole records, to the end of the archive)
            raise self._failure(code)

    def _long(self, kind: bytes, value: bytes) -> None:
        """GNU's record of a name or link target too long for its field."""
        value += b"\0"
        self._put(_header(b"././@LongLink", kind, mode=0, size=len(value), mtime=0, linkname=b""))
        self._put(value + bytes(-len(value) % BLOCK))

    def _put(self, data: bytes | memoryview) -> None:
        """Gathered into one buffer (small files are most of a layer: one write each would
        cost more than the copy); a piece that does not fit is written as it is."""
        try:
            size = len(data)
            if self._used + size <= _FLUSH:
                self._view[self._used : self._used + size] = data
                self._used += size
                if self._used == _FLUSH:
                    self._flush()
            else:
                self._flush()
                if size < _FLUSH:
                    self._view[:size] = data
                    self._used = size
                else:
                    self._write(data)
        except BrokenPipeError:  # tar stopped early: what it said
            self._closed = True
            raise self._failure(self._end()) from None

    def _flush(self) -> None:
        if self._used:
            self._write(self._view[: self._used])
            self._used = 0

    def _write(self, data: bytes | memoryview) -> None:
        self._written += len(data)
        with memoryview(data) as whole:
            done = os.write(self._fd, whole)
            while done < len(whole):
                with whole[done:] as rest:
                    done += os.write(self._fd, rest)

    def _end(self) -> int:
        with contextlib.suppress(BrokenPipeError):
            self._stdin.close()
        return self._child.wait()

    def _failure(self, code: int) -> UntarError:
        self._errors.seek(0)
        said = self._errors.read(4096).decode("utf-8", "replace").splitlines()
        lines = [line.removeprefix(f"{self._tar}: ") for line in said if line.strip()]
        # A full disk shows first as a short write ("Wrote only 512 of 131072 bytes").
        full = any(
            "Wrote only" in line or any(os.strerror(errno) in line for errno in DISK_FULL_ERRNOS)
            for line in lines
        )
        what = lines[0] if lines else f"tar exited with status {code}"
        return UntarError(f"tar could not write it: {what}", disk_full=full)


def _header(
    name: bytes, kind: bytes, *, mode: int, size: int, mtime: int, linkname: bytes
) -> bytes:
    # The checksum must be exact: tar skips a header whose checksum is wrong and looks for
    # the next one in what follows.
    numbers = b"%07o\0" % mode + IDS + _number(size) + _number(mtime)
    return header_block(name, numbers, kind, linkname, GNU_MAGIC)


def _number(value: int) -> bytes:
    """A 12-byte number field: octal digits, else GNU's base-256 (negative times too)."""
    if 0 <= value < 8**11:
        return b"%011o\0" % value
    return (value % 256**12 if value < 0 else value | 1 << 95).to_bytes(12, "big")

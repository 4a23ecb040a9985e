"""Command output for a model: bounded inline, complete on disk.

A model's context is small and a build log is not. `OutputCapture` receives a command's
output as it streams and keeps, per stream, the head and the tail that fit the inline limit;
once a stream outgrows that limit, the whole stream also goes to a file beside the workspace
(up to `SAVED_LIMIT`), which `read_saved` serves back in slices. A command that prints little
costs no file at all.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

from pyro_loop.errors import InvalidInputError, NotFoundError
from pyro_loop.shapes import CapturedJSON, SavedOutputJSON

INLINE_LIMIT = 32 * 1024  # bytes of each stream returned inline
HEAD_SHARE = 0.25  # of the inline limit, kept from the start; the rest from the end
SAVED_LIMIT = 256 * 1024 * 1024  # bytes of each stream kept on disk
KEEP_SAVED = 20  # commands whose full output is kept per workspace (oldest removed first)
STREAMS = ("stdout", "stderr")
_EXEC_ID = re.compile(r"^[0-9a-f]{12}$")


class _Stream:
    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.head_limit = int(limit * HEAD_SHARE)
        self.head = bytearray()  # the first bytes; while under the limit, everything
        self.tail = bytearray()  # the last bytes, once over the limit
        self.total = 0
        self.over = False  # outgrew the limit: head and tail from now on
        self.file: IO[bytes] | None = None  # the whole stream, when kept
        self.saved = 0

    def add(self, data: bytes, open_file: Callable[[str], IO[bytes] | None]) -> None:
        self.total += len(data)
        if not self.over and self.total <= self.limit:
            self.head += data
            return
        if not self.over:  # just outgrew the inline limit: everything so far goes to disk
            self.over = True
            self.file = open_file(self.name)
            data = bytes(self.head) + data
            self.head = bytearray(data[: self.head_limit])
            self.tail = bytearray(data[self.head_limit :])
        else:
            self.tail += data
        self._save(data)
        keep = self.limit - self.head_limit
        if len(self.tail) > keep:
            del self.tail[: len(self.tail) - keep]

    def _save(self, data: bytes) -> None:
        room = SAVED_LIMIT - self.saved
        if self.file is not None and room > 0:
            self.file.write(data[:room])
            self.saved += min(room, len(data))

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self, exec_id: str) -> str:
        if not self.truncated:
            return self.head.decode("utf-8", "replace")
        omitted = self.total - len(self.head) - len(self.tail)
        if self.file is not None:
            how = (
                f'read them with workspace_logs(exec_id="{exec_id}", stream="{self.name}", '
                f"offset={len(self.head)})"
            )
        else:
            how = "not kept: to keep a long output, run it with workspace_exec"
        marker = (
            f"\n[... {omitted} bytes of {self.name} omitted ({self.total} in all); {how} ...]\n"
        )
        # Cut at the byte level, then decode leniently: a split character shows as U+FFFD.
        return self.head.decode("utf-8", "replace") + marker + self.tail.decode("utf-8", "replace")


class OutputCapture:
    """An output sink (`(stream, data)`) for one command.

    A stream over the limit is kept whole in `directory` (None: not kept, only cut).
    """

    def __init__(self, directory: Path | None, *, limit: int = INLINE_LIMIT) -> None:
        self.directory = directory
        self.exec_id = secrets.token_hex(6)
        self.streams = {name: _Stream(name, limit) for name in STREAMS}

    def __call__(self, stream: str, data: bytes) -> None:
        self.streams[stream].add(data, self._open)

    def _open(self, stream: str) -> IO[bytes] | None:
        if self.directory is None:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        _prune(self.directory)
        return (self.directory / f"{self.exec_id}.{stream}").open("wb")

    def close(self) -> None:
        for stream in self.streams.values():
            if stream.file is not None:
                stream.file.close()

    def to_json(self) -> CapturedJSON:
        """The streams' inline text, sizes and truncation flags (`exec_id` names the files)."""
        out, err = self.streams["stdout"], self.streams["stderr"]
        saved = out.file is not None or err.file is not None
        return {
            "stdout": out.text(self.exec_id),
            "stdout_bytes": out.total,
            "stdout_truncated": out.truncated,
            "stderr": err.text(self.exec_id),
            "stderr_bytes": err.total,
            "stderr_truncated": err.truncated,
            "exec_id": self.exec_id if saved else None,
        }


def read_saved(
    directory: Path, exec_id: str, stream: str, *, offset: int = 0, max_bytes: int = 65536
) -> SavedOutputJSON:
    """A slice of a command's saved output, with where the next slice starts."""
    if not _EXEC_ID.match(exec_id):
        raise InvalidInputError(f"invalid exec_id {exec_id!r}: use the one a result gave")
    if stream not in STREAMS:
        raise InvalidInputError(f"stream must be stdout or stderr, not {stream!r}")
    if offset < 0 or max_bytes <= 0:
        raise InvalidInputError("offset must be >= 0 and max_bytes > 0")
    path = directory / f"{exec_id}.{stream}"
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(offset)
            data = f.read(max_bytes)
    except FileNotFoundError:
        raise NotFoundError(
            f"no saved {stream} for exec {exec_id}",
            hint="only output over the inline limit is saved, and only for the last "
            f"{KEEP_SAVED} such commands of a workspace",
        ) from None
    end = offset + len(data)
    return {
        "exec_id": exec_id,
        "stream": stream,
        "offset": offset,
        "content": data.decode("utf-8", "replace"),
        "bytes": len(data),
        "total_bytes": size,
        "next_offset": end if end < size else None,
    }


def _prune(directory: Path) -> None:
    """Make room for one more command's output: keep the last KEEP_SAVED - 1 others."""
    dated = []
    for path in directory.glob("*.std*"):
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile by another call
            dated.append((path.stat().st_mtime, path.name.split(".", 1)[0]))
    ids = list(dict.fromkeys(exec_id for _mtime, exec_id in sorted(dated)))
    for old in ids[: max(0, len(ids) - KEEP_SAVED + 1)]:
        for name in STREAMS:
            with contextlib.suppress(FileNotFoundError):
                (directory / f"{old}.{name}").unlink()

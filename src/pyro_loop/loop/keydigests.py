"""The keying files' digests, remembered while the files are unchanged.

Every daily command asks whether the project's dependency snapshot is still the right one,
which needs the sha256 of each lockfile: a megabyte of package-lock.json costs milliseconds
to hash each time. A file whose device, inode, size, mtime and ctime are what they were when
it was hashed keeps its digest. As in git's index, a file modified in the same clock tick as
it was hashed could keep its times, so a digest is remembered only for a file whose mtime was
already a second old when it was read.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

from pyro_loop.digest import file_sha256
from pyro_loop.fs.util import write_json_atomic

_SETTLED_NS = 1_000_000_000


class KeyDigests:
    """Digests of one project's keying files, kept in a small JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, list[Any]] = {}
        self._changed = False
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("files"), dict):
                self._entries = data["files"]

    def digest(self, rel: str, f: io.BufferedReader) -> str:
        """The sha256 of open file `f` (keying file `rel`): remembered, or read now."""
        st = os.fstat(f.fileno())
        identity = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        entry = self._entries.get(rel)
        if isinstance(entry, list) and entry[:5] == identity and isinstance(entry[5], str):
            return entry[5]
        digest = file_sha256(f)
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _SETTLED_NS:
            self._entries[rel] = [*identity, digest]
            self._changed = True
        elif rel in self._entries:
            del self._entries[rel]
            self._changed = True
        return digest

    def save(self) -> None:
        """Write what changed (a lost write only costs a hash next time)."""
        if not self._changed:
            return
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, {"files": self._entries}, durable=False)
        self._changed = False

"""sha256 of small inputs without loading OpenSSL.

`hashlib` loads OpenSSL's libcrypto when imported (about 2.5 ms on a 2-core machine), and
every daily command hashes a few short strings: the project's path, its `.pyro.toml`, the
keys of its layers. CPython's own sha256 module loads in a tenth of that, gives the same
digest, and is as fast on a few kilobytes; on megabytes OpenSSL's is several times faster,
so larger inputs (and file digests) still go to `hashlib`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from io import BufferedReader

SMALL = 64 * 1024  # bytes: at or below this, the builtin module (measured: equal speed)


def _builtin() -> Callable[[bytes], Any] | None:
    for name in ("_sha256", "_sha2") if sys.version_info < (3, 12) else ("_sha2",):
        try:
            module = __import__(name)
        except ImportError:
            continue
        return module.sha256  # type: ignore[no-any-return]
    return None


_SHA256 = _builtin()


def sha256_hex(data: bytes) -> str:
    """The hex sha256 of `data`, as `hashlib.sha256(data).hexdigest()`."""
    if _SHA256 is not None and len(data) <= SMALL:
        return str(_SHA256(data).hexdigest())
    import hashlib

    return hashlib.sha256(data).hexdigest()


def link_digest(target: str) -> str:
    """What stands for a symlink's content where a file's sha256 would (the manifest's
    records, the host scan's racy entries): the sha256 of its target's bytes."""
    return sha256_hex(os.fsencode(target))


def file_sha256(f: BufferedReader) -> str:
    """The hex sha256 of what is left to read of the open binary file `f` (OpenSSL's)."""
    import hashlib

    return hashlib.file_digest(f, "sha256").hexdigest()


def file_git_blob_id(f: BufferedReader, size: int) -> str:
    """The id git gives the `size` bytes left to read of the open binary file `f` as a blob
    (what `git hash-object` prints)."""
    import hashlib

    digest = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
    return hashlib.file_digest(f, lambda: digest).hexdigest()

"""Masking secret values in a stream of output: shared by the agent (a service's log is
written masked) and the host (exec output, shells, logs). Runs under any python3 (3.9+)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` is not imported at run time (agent start-up)
    from collections.abc import Iterable

MASK = b"[REDACTED]"


class Redactor:
    """Masks secret values in a stream of chunks, also where a value spans two chunks: the
    end of a chunk that could begin a value is held back until the next one (or `flush`)."""

    def __init__(self, values: Iterable[str]) -> None:
        self.values = sorted({v.encode() for v in values if v}, key=len, reverse=True)
        self.held = b""

    def __bool__(self) -> bool:
        return bool(self.values)

    def feed(self, chunk: bytes) -> bytes:
        data = self.held + chunk
        for value in self.values:
            data = data.replace(value, MASK)
        keep = self._partial_tail(data)
        self.held = data[len(data) - keep :] if keep else b""
        return data[: len(data) - keep]

    def flush(self) -> bytes:
        data, self.held = self.held, b""
        return data

    def _partial_tail(self, data: bytes) -> int:
        """The length of the longest end of `data` that is the start of some value."""
        longest = 0
        for value in self.values:
            for n in range(min(len(value) - 1, len(data)), longest, -1):
                if data.endswith(value[:n]):
                    longest = n
                    break
        return longest

"""pyro's agent protocol, version 1: framed messages over any reliable byte stream.

Transport-neutral: a Unix socket today, a vsock connection to a microVM tomorrow.

A frame is a 1-byte kind, a 4-byte big-endian payload length, then the payload:
  J  a JSON object (requests, replies, final results)
  O  bytes the command wrote to stdout      E  bytes it wrote to stderr
  D  a chunk of file or archive data; an empty D frame ends a data stream
  I  bytes for the command's stdin; an empty I frame closes it

Each connection carries one request: the client sends a J frame {"v": 1, "op": ..., ...}
(plus D frames where the op takes data), and the agent answers with stream frames and
ends with a J frame {"ok": true, ...} or {"ok": false, "error": "...", "kind": "..."}.
Frames are bounded so that neither side can be made to allocate without limit.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` is not imported at run time: it slows the agent's start-up
    from typing import Any, Protocol

    class Stream(Protocol):
        def sendall(self, data: bytes, /) -> None: ...
        def recv_into(self, buffer: memoryview, nbytes: int, /) -> int: ...


try:  # The C scanner and encoder avoid importing `re` (about 6 ms at agent start-up).
    import _json

    class _DecodeContext:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        memo: "dict[str, str]" = {}  # noqa: RUF012 - the C scanner wants a plain dict

        @staticmethod
        def parse_constant(name: str) -> Any:
            raise ValueError("JSON constant not allowed: " + name)

    # typeshed declares the context as a scanner; the C code reads only these attributes.
    _scan = _json.make_scanner(_DecodeContext())  # type: ignore[arg-type]

    def _unserializable(obj: Any) -> Any:
        raise TypeError("not JSON serializable: %s" % type(obj).__name__)

    _encode = _json.make_encoder(
        None, _unserializable, _json.encode_basestring_ascii, None, ":", ",", True, False, False
    )

    def dumps(obj: Any) -> str:
        return "".join(_encode(obj, 0))

    def loads(text: str) -> Any:
        obj, end = _scan(text, 0)
        if end != len(text):
            raise ValueError("trailing data after JSON value")
        return obj

except (ImportError, AttributeError, TypeError):  # pragma: no cover - other Pythons
    import json

    def dumps(obj: Any) -> str:
        return json.dumps(obj, separators=(",", ":"), sort_keys=True)

    def loads(text: str) -> Any:
        return json.loads(text)


VERSION = 1
KIND_JSON = b"J"
KIND_STDOUT = b"O"
KIND_STDERR = b"E"
KIND_DATA = b"D"
KIND_STDIN = b"I"
KINDS = frozenset((KIND_JSON, KIND_STDOUT, KIND_STDERR, KIND_DATA, KIND_STDIN))
HEADER_SIZE = 5
MAX_JSON = 4 * 1024 * 1024
MAX_CHUNK = 1024 * 1024
# The agent writes each file beside its target under a name starting so, then renames it into
# place; what a killed sandbox leaves behind under it is swept by the host at the next start.
TEMP_PREFIX = ".pyro-tmp-"
# The sandbox's home lives in the workspace's overlay under this top-level name, bound at
# HOME and covered by an empty directory in /workspace (see runtime.HOME_DIR): listings and
# exports of the workspace leave it out.
HOME_DIR = ".pyro-home"


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame: the connection is unusable."""


class Closed(ProtocolError):
    """The peer closed the connection."""


def encode_frame(kind: bytes, payload: bytes) -> bytes:
    if len(payload) > (MAX_JSON if kind == KIND_JSON else MAX_CHUNK):
        raise ProtocolError("frame too large: %d bytes" % len(payload))
    return kind + len(payload).to_bytes(4, "big") + payload


def send_frame(sock: Stream, kind: bytes, payload: bytes) -> None:
    sock.sendall(encode_frame(kind, payload))


def send_json(sock: Stream, obj: dict[str, Any]) -> None:
    send_frame(sock, KIND_JSON, dumps(obj).encode("utf-8"))


def send_data(sock: Stream, kind: bytes, data: bytes) -> None:
    """Send `data` as as many frames of `kind` as it needs (none if it is empty)."""
    view = memoryview(data)
    for start in range(0, len(view), MAX_CHUNK):
        send_frame(sock, kind, bytes(view[start : start + MAX_CHUNK]))


def recv_exact(sock: Stream, size: int) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise Closed("connection closed mid-frame" if got else "connection closed")
        got += n
    return bytes(buf)


def recv_frame(sock: Stream) -> tuple[bytes, bytes]:
    """Read one frame; returns (kind, payload). Raises ProtocolError on anything malformed."""
    header = recv_exact(sock, HEADER_SIZE)
    kind = header[:1]
    if kind not in KINDS:
        raise ProtocolError("unknown frame kind %r" % kind)
    size = int.from_bytes(header[1:], "big")
    if size > (MAX_JSON if kind == KIND_JSON else MAX_CHUNK):
        raise ProtocolError("frame too large: %d bytes" % size)
    return kind, recv_exact(sock, size) if size else b""


def decode_json(payload: bytes) -> dict[str, Any]:
    try:
        obj = loads(payload.decode("utf-8"))
    # The C scanner signals "no value here" with StopIteration, and deep nesting with
    # RecursionError: both are just malformed input from the peer's point of view.
    except (UnicodeDecodeError, ValueError, StopIteration, RecursionError) as exc:
        raise ProtocolError("malformed JSON frame: %s" % (exc or type(exc).__name__)) from None
    if not isinstance(obj, dict):
        raise ProtocolError("a JSON frame must hold an object")
    return obj


def recv_json(sock: Stream) -> dict[str, Any]:
    kind, payload = recv_frame(sock)
    if kind != KIND_JSON:
        raise ProtocolError("expected a JSON frame, got %r" % kind)
    return decode_json(payload)

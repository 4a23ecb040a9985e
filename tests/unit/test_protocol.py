"""The agent protocol's framing, and the host client's distrust of what an agent sends back.

The client tests talk to a fake agent: a thread on a Unix socket that answers one request with
hand-made (malformed, hostile) bytes. The real agent is exercised in test_workspace.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyro_loop.agent import protocol as p
from pyro_loop.errors import (
    AgentError,
    AgentUnavailableError,
    CommandNotExecutableError,
    CommandNotFoundError,
    InvalidInputError,
    NotFoundError,
    PyroError,
)
from pyro_loop.workspace.client import AgentClient
from pyro_loop.workspace.services import ServiceClient
from tests.helpers.fakeagent import FakeAgent


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def _frame(kind: bytes, payload: bytes) -> bytes:
    return kind + len(payload).to_bytes(4, "big") + payload


def _json_frame(obj: Any) -> bytes:
    return _frame(b"J", json.dumps(obj).encode())


# -- framing ---------------------------------------------------------------------------------


def test_json_round_trip(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    message = {"v": 1, "op": "exec", "argv": ["echo", "héllo ✓"], "n": 3, "f": 1.5, "x": None}
    p.send_json(a, message)
    p.send_json(a, {})
    assert p.recv_json(b) == message
    assert p.recv_json(b) == {}


def test_data_frames_round_trip_in_bounded_chunks(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    data = bytes(range(256)) * (10 * 1024)  # 2.5 MiB: three frames
    sender = threading.Thread(target=p.send_data, args=(a, p.KIND_STDOUT, data))
    sender.start()
    frames: list[tuple[bytes, bytes]] = []
    received = 0
    while received < len(data):
        kind, payload = p.recv_frame(b)
        frames.append((kind, payload))
        received += len(payload)
    sender.join(timeout=5)
    assert not sender.is_alive()
    assert all(kind == p.KIND_STDOUT for kind, _ in frames)
    assert all(0 < len(payload) <= p.MAX_CHUNK for _, payload in frames)
    assert len(frames) == 3
    assert b"".join(payload for _, payload in frames) == data

    p.send_data(a, p.KIND_DATA, b"")  # nothing at all for empty data
    p.send_frame(a, p.KIND_DATA, b"")  # the explicit end-of-stream marker
    p.send_frame(a, p.KIND_STDIN, b"in")
    assert p.recv_frame(b) == (p.KIND_DATA, b"")
    assert p.recv_frame(b) == (p.KIND_STDIN, b"in")


def test_encode_refuses_oversized_payloads() -> None:
    with pytest.raises(p.ProtocolError, match="too large"):
        p.encode_frame(p.KIND_DATA, b"x" * (p.MAX_CHUNK + 1))
    with pytest.raises(p.ProtocolError, match="too large"):
        p.encode_frame(p.KIND_JSON, b" " * (p.MAX_JSON + 1))
    assert len(p.encode_frame(p.KIND_DATA, b"x" * p.MAX_CHUNK)) == p.MAX_CHUNK + p.HEADER_SIZE


@pytest.mark.parametrize(
    ("kind", "size"),
    [
        (b"J", p.MAX_JSON + 1),
        (b"D", p.MAX_CHUNK + 1),
        (b"O", 0xFFFFFFFF),
        (b"J", 0xFFFFFFFF),
    ],
)
def test_oversized_frame_header_is_refused_without_allocating(
    pair: tuple[socket.socket, socket.socket], kind: bytes, size: int
) -> None:
    a, b = pair
    a.sendall(kind + size.to_bytes(4, "big"))  # a header only: no payload ever follows
    tracemalloc.start()
    try:
        started = time.monotonic()
        with pytest.raises(p.ProtocolError, match="too large") as info:
            p.recv_frame(b)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not isinstance(info.value, p.Closed)
    assert time.monotonic() - started < 1, "it did not wait for a payload"
    assert peak < 256 * 1024, f"{peak} bytes allocated for a refused frame"


@pytest.mark.parametrize("kind", [b"X", b"j", b"\x00", b"{"])
def test_unknown_frame_kind_is_refused(
    pair: tuple[socket.socket, socket.socket], kind: bytes
) -> None:
    a, b = pair
    a.sendall(kind + (2).to_bytes(4, "big") + b"{}")
    with pytest.raises(p.ProtocolError, match="unknown frame kind"):
        p.recv_frame(b)


@pytest.mark.parametrize(
    "payload",
    [
        b"{",
        b"{'single': 'quotes'}",
        b"\xff\xfe{}",
        b'{"a": 1} {"b": 2}',
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b"",
    ],
    ids=["truncated", "quotes", "not-utf8", "trailing", "nan", "infinity", "empty"],
)
def test_malformed_json_is_refused(
    pair: tuple[socket.socket, socket.socket], payload: bytes
) -> None:
    a, b = pair
    a.sendall(_frame(b"J", payload))
    with pytest.raises(p.ProtocolError, match="malformed JSON"):
        p.recv_json(b)


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_non_object_json_is_refused(
    pair: tuple[socket.socket, socket.socket], payload: bytes
) -> None:
    a, b = pair
    a.sendall(_frame(b"J", payload))
    with pytest.raises(p.ProtocolError, match="must hold an object"):
        p.recv_json(b)


def test_deeply_nested_json_is_refused_as_a_protocol_error() -> None:
    # Well under MAX_JSON, but deeper than the decoder can recurse: still just a bad frame.
    depth = 100_000
    payload = b'{"a": ' + b"[" * depth + b"]" * depth + b"}"
    assert len(payload) < p.MAX_JSON
    with pytest.raises(p.ProtocolError):
        p.decode_json(payload)


def test_a_stream_frame_where_json_is_expected_is_refused(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    p.send_frame(a, p.KIND_STDERR, b"{}")
    with pytest.raises(p.ProtocolError, match="expected a JSON frame"):
        p.recv_json(b)


@pytest.mark.parametrize(
    ("sent", "message"),
    [
        (b'J\x00\x00\x00\x0a{"a"', "mid-frame"),  # payload cut short
        (b"J\x00\x00", "mid-frame"),  # header cut short
        (b"", "connection closed"),  # closed between frames
    ],
    ids=["payload", "header", "boundary"],
)
def test_peer_closing_raises_closed(
    pair: tuple[socket.socket, socket.socket], sent: bytes, message: str
) -> None:
    a, b = pair
    a.sendall(sent)
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(p.Closed, match=message):
        p.recv_frame(b)


# -- the client against a hostile agent ------------------------------------------------------


@pytest.fixture
def fake_agent(tmp_path: Path) -> Iterator[Callable[..., AgentClient]]:
    agents: list[FakeAgent] = []

    def start(reply: bytes, *, close: bool = False) -> AgentClient:
        path = tmp_path / f"agent-{len(agents)}.sock"
        agents.append(FakeAgent(path, reply, close=close))
        return AgentClient(path, connect_timeout=2.0)

    yield start
    for agent in agents:
        agent.stop()


def _call_briefly(call: Callable[[], object], limit: float = 5.0) -> BaseException | None:
    """Run `call` in a thread; fail the test if it has not returned within `limit` seconds."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"the client hung for over {limit} s"
    return outcome[0]


_DEPTH = 100_000
_READ = {"ok": True, "path": "/workspace/f", "size": 4, "offset": 0, "truncated": False}
_LIST = {"ok": True, "path": "/workspace", "entries": [], "truncated": False}
_ENTRY = {"path": "/workspace/a", "type": "file", "size": 1, "mode": 0o644, "mtime": 1.5}

MALFORMED_REPLIES: dict[str, tuple[str, bytes]] = {
    "ok-false-without-error": ("ping", _json_frame({"ok": False})),
    "ok-false-error-not-a-string": ("ping", _json_frame({"ok": False, "error": 42})),
    "ok-not-a-bool": ("ping", _json_frame({"ok": "true"})),
    "garbage-bytes": ("ping", b"HTTP/1.1 200 OK\r\n\r\n"),
    "too-large-header": ("ping", b"J\xff\xff\xff\xff"),
    "not-utf8": ("ping", _frame(b"J", b'{"ok": \xff}')),
    "json-array": ("ping", _json_frame([{"ok": True}])),
    "empty-json-frame": ("ping", b"J\x00\x00\x00\x00"),
    "stream-frame-for-ping": ("ping", _frame(b"O", b"surprise")),
    "deeply-nested": ("ping", _frame(b"J", b'{"ok": ' + b"[" * _DEPTH + b"]" * _DEPTH + b"}")),
    "exec-no-exit-code": ("exec", _json_frame({"ok": True})),
    "exec-exit-code-string": ("exec", _json_frame({"ok": True, "exit_code": "0"})),
    "exec-exit-code-bool": ("exec", _json_frame({"ok": True, "exit_code": True})),
    "exec-exit-code-float": ("exec", _json_frame({"ok": True, "exit_code": 0.5})),
    "exec-duration-string": ("exec", _json_frame({"ok": True, "exit_code": 0, "duration": "x"})),
    "exec-duration-null": ("exec", _json_frame({"ok": True, "exit_code": 0, "duration": None})),
    "exec-data-frame": ("exec", _frame(b"D", b"not output")),
    "read-more-than-asked": ("read", _frame(b"D", b"x" * 100)),
    "read-stdout-frame": ("read", _frame(b"O", b"x")),
    "tar-stderr-frame": ("tar", _frame(b"E", b"x")),
    # The replies pyro passes on as JSON (--json, the MCP tools' results) are checked field
    # by field: a planted field never reaches a model as pyro's word.
    "read-size-string": ("read", _json_frame({**_READ, "size": "4"})),
    "read-truncated-missing": (
        "read",
        _json_frame({k: v for k, v in _READ.items() if k != "truncated"}),
    ),
    "write-written-bool": (
        "write",
        _json_frame({"ok": True, "path": "/workspace/f", "written": True}),
    ),
    "write-path-number": ("write", _json_frame({"ok": True, "path": 7, "written": 1})),
    "list-entries-object": ("list", _json_frame({**_LIST, "entries": {"a": 1}})),
    "list-entry-not-object": ("list", _json_frame({**_LIST, "entries": ["a"]})),
    "list-entry-mode-string": (
        "list",
        _json_frame({**_LIST, "entries": [{**_ENTRY, "mode": "755"}]}),
    ),
    "list-entry-mtime-string": (
        "list",
        _json_frame({**_LIST, "entries": [{**_ENTRY, "mtime": "x"}]}),
    ),
    "list-entry-target-number": (
        "list",
        _json_frame({**_LIST, "entries": [{**_ENTRY, "target": 1}]}),
    ),
    "list-truncated-string": ("list", _json_frame({**_LIST, "truncated": "no"})),
    "ps-ppid-missing": (
        "ps",
        _json_frame({"ok": True, "processes": [{"pid": 2, "state": "S", "argv": ["sh"]}]}),
    ),
    "ps-argv-numbers": (
        "ps",
        _json_frame({"ok": True, "processes": [{"pid": 2, "ppid": 1, "state": "S", "argv": [1]}]}),
    ),
    "freeze-garbage": ("freeze", b"garbage!"),
    "freeze-ok-false-without-error": ("freeze", _json_frame({"ok": False})),
}


def _invoke(client: AgentClient, op: str) -> None:
    if op == "ping":
        client.ping(timeout=2.0)
    elif op == "exec":
        client.exec(["true"])
    elif op == "read":
        client.read("f", max_bytes=4)
    elif op == "write":
        client.write("f", b"x")
    elif op == "list":
        client.list("/workspace")
    elif op == "ps":
        ServiceClient(client).ps()
    elif op == "tar":
        client.tar("d", lambda data: None)
    elif op == "freeze":
        with client.frozen():
            pass
    else:  # pragma: no cover
        raise AssertionError(op)


@pytest.mark.parametrize("case", sorted(MALFORMED_REPLIES))
def test_client_rejects_malformed_replies(
    fake_agent: Callable[..., AgentClient], case: str
) -> None:
    op, reply = MALFORMED_REPLIES[case]
    client = fake_agent(reply)
    started = time.monotonic()
    error = _call_briefly(lambda: _invoke(client, op))
    assert isinstance(error, AgentError), f"{type(error).__name__}: {error}"
    assert "malformed" in str(error) or "unexpected" in str(error) or "more data" in str(error)
    assert time.monotonic() - started < 1.5, "a malformed reply is refused at once"


def test_client_passes_well_formed_replies_on_as_they_came(
    fake_agent: Callable[..., AgentClient],
) -> None:
    link = {**_ENTRY, "path": "/workspace/l", "type": "symlink", "target": "a"}
    listing = {"path": "/workspace", "entries": [_ENTRY, link], "truncated": True, "ok": True}
    assert fake_agent(_json_frame(listing)).list("/workspace") == listing
    written = {"path": "/workspace/f", "written": 1, "ok": True}
    assert fake_agent(_json_frame(written)).write("f", b"x") == written
    assert fake_agent(_json_frame(_READ)).read("f") == (b"", _READ)


def test_client_reports_a_connection_closed_mid_frame(
    fake_agent: Callable[..., AgentClient],
) -> None:
    client = fake_agent(b'J\x00\x00\x00\x40{"ok": tr', close=True)
    error = _call_briefly(lambda: client.ping(timeout=2.0))
    assert isinstance(error, AgentUnavailableError)


def test_client_times_out_on_a_silent_agent(fake_agent: Callable[..., AgentClient]) -> None:
    client = fake_agent(b"")
    started = time.monotonic()
    error = _call_briefly(lambda: client.ping(timeout=0.3))
    assert isinstance(error, AgentUnavailableError)
    assert 0.25 <= time.monotonic() - started < 2


def test_client_times_out_on_a_silent_agent_during_freeze(
    fake_agent: Callable[..., AgentClient],
) -> None:
    client = fake_agent(b"")
    client.connect_timeout = 0.3

    def freeze() -> None:
        with client.frozen():
            pass

    error = _call_briefly(freeze)
    assert isinstance(error, PyroError), f"{type(error).__name__}: {error}"


def test_client_times_out_on_an_agent_that_stops_reading(
    fake_agent: Callable[..., AgentClient],
) -> None:
    client = fake_agent(b"")  # reads the request frame, then never reads the data frames
    client.connect_timeout = 0.3
    error = _call_briefly(lambda: client.write("big.bin", b"x" * (16 * 1024 * 1024)))
    assert isinstance(error, PyroError), f"{type(error).__name__}: {error}"


def test_client_fails_cleanly_when_no_agent_listens(tmp_path: Path) -> None:
    client = AgentClient(tmp_path / "nobody.sock", connect_timeout=1.0)
    with pytest.raises(AgentUnavailableError, match="not running"):
        client.ping()


@pytest.mark.parametrize(
    ("kind", "error_class"),
    [
        ("exec_failed", CommandNotFoundError),
        ("not_executable", CommandNotExecutableError),
        ("outside_workspace", InvalidInputError),
        ("invalid_path", InvalidInputError),
        ("not_found", NotFoundError),
        ("something_new", AgentError),
    ],
)
def test_client_maps_agent_error_kinds(
    fake_agent: Callable[..., AgentClient], kind: str, error_class: type[PyroError]
) -> None:
    client = fake_agent(_json_frame({"ok": False, "error": f"refused: {kind}", "kind": kind}))
    error = _call_briefly(lambda: client.ping(timeout=2.0))
    assert type(error) is error_class
    assert str(error) == f"refused: {kind}"
    if isinstance(error, AgentError):
        assert error.kind == kind
    if error_class is CommandNotFoundError:
        assert error.exit_code == 127
    if error_class is CommandNotExecutableError:
        assert error.exit_code == 126


def test_client_accepts_a_well_formed_exec_reply(fake_agent: Callable[..., AgentClient]) -> None:
    reply = (
        _frame(b"O", b"out")
        + _frame(b"E", b"err")
        + _json_frame({"ok": True, "exit_code": 3, "duration": 0.25, "signal": None})
    )
    client = fake_agent(reply)
    seen: list[tuple[str, bytes]] = []
    result = client.exec(["x"], timeout=1.0, on_output=lambda s, d: seen.append((s, d)))
    assert seen == [("stdout", b"out"), ("stderr", b"err")]
    assert result.exit_code == 3
    assert result.duration == 0.25
    assert not result.timed_out

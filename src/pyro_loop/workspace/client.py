"""The host side of the agent protocol: one connection per request."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pyro_loop.agent import protocol as p
from pyro_loop.errors import (
    AgentError,
    AgentUnavailableError,
    CancelledError,
    CommandNotExecutableError,
    CommandNotFoundError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PyroError,
)
from pyro_loop.fs.socketpath import socket_address
from pyro_loop.records import dataclass, replace

if TYPE_CHECKING:
    from pyro_loop.shapes import (
        ExecResultJSON,
        FileEntryJSON,
        FileListingJSON,
        ReadReplyJSON,
        WriteReplyJSON,
    )
    from pyro_loop.workspace.secrets import Redactor

OutputSink = Callable[[str, bytes], None]  # ("stdout" | "stderr", data)
DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024


class _Unset:
    """The default of a request's silence bound: the client's `connect_timeout`. A request
    passes None instead to wait as long as it takes (an exec without a timeout)."""


_CONNECT_TIMEOUT = _Unset()

# How the agent's error kinds map onto pyro's errors (anything else is an AgentError).
_ERRORS_BY_KIND: dict[str, type[PyroError]] = {
    "not_found": NotFoundError,
    "outside_workspace": InvalidInputError,
    "invalid_path": InvalidInputError,
    "exec_failed": CommandNotFoundError,
    "not_executable": CommandNotExecutableError,
    "conflict": ConflictError,
}


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    duration: float
    timed_out: bool
    signal: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False  # collected output beyond `max_output` was dropped
    stderr_truncated: bool = False

    def to_json(self) -> ExecResultJSON:
        return {
            "exit_code": self.exit_code,
            "duration_ms": round(self.duration * 1000, 3),
            "timed_out": self.timed_out,
            "signal": self.signal,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
        }


class Cancellation:
    """Lets another thread stop a running exec (a chat host cancelled the call, say).

    `cancel()` shuts the exec's connection down; the agent kills the command's process tree
    when its connection goes, and the exec raises CancelledError. Cancelling before the exec
    starts makes it raise at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    @contextlib.contextmanager
    def watching(self, sock: socket.socket) -> Iterator[None]:
        with self._lock:
            if self.cancelled:
                raise CancelledError("cancelled before it started")
            self._sock = sock
        try:
            yield
        finally:
            with self._lock:
                self._sock = None


class AgentClient:
    """Talks to one workspace's agent over its Unix socket."""

    def __init__(self, socket_path: Path, *, connect_timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.connect_timeout = connect_timeout

    @contextlib.contextmanager
    def _connect(self) -> Iterator[socket.socket]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            try:
                sock.connect(socket_address(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise AgentUnavailableError("the workspace's agent is not running") from exc
            yield sock
        finally:
            sock.close()

    def _request(
        self,
        request: dict[str, Any],
        *,
        data: bytes | Iterable[bytes] | None = None,
        on_frame: Callable[[bytes, bytes], None] | None = None,
        timeout: float | _Unset | None = _CONNECT_TIMEOUT,
        cancel: Cancellation | None = None,
    ) -> dict[str, Any]:
        """Send one request (plus data frames) and collect stream frames until the reply.

        `data` is sent as D frames: bytes at once, or an iterable's chunks as they come (a
        stream larger than memory), then the empty frame that ends it. `timeout` bounds the
        agent's silence (the client's `connect_timeout` unless given; None: no bound).
        """
        silence = self.connect_timeout if isinstance(timeout, _Unset) else timeout
        with self._connect() as sock, cancel.watching(sock) if cancel else contextlib.nullcontext():
            try:
                return self._exchange(sock, request, data, on_frame, silence)
            except AgentError:
                if cancel is not None and cancel.cancelled:
                    raise CancelledError(
                        "cancelled: the command's process tree was killed"
                    ) from None
                raise

    def _exchange(
        self,
        sock: socket.socket,
        request: dict[str, Any],
        data: bytes | Iterable[bytes] | None,
        on_frame: Callable[[bytes, bytes], None] | None,
        timeout: float | None,
    ) -> dict[str, Any]:
        sock.settimeout(timeout)
        try:
            p.send_json(sock, {"v": p.VERSION, **request})
            if data is not None:
                for chunk in [data] if isinstance(data, bytes) else data:
                    p.send_data(sock, p.KIND_DATA, chunk)  # an empty chunk sends nothing
                p.send_frame(sock, p.KIND_DATA, b"")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent refused early; its reply (if any) says why
        except TimeoutError as exc:
            raise AgentUnavailableError("the workspace's agent stopped reading") from exc
        try:
            while True:
                kind, payload = p.recv_frame(sock)
                if kind == p.KIND_JSON:
                    return _check_reply(p.decode_json(payload))
                if on_frame is None:
                    raise p.ProtocolError(f"unexpected {kind!r} frame for {request['op']}")
                on_frame(kind, payload)
        except (p.Closed, ConnectionResetError) as exc:
            raise AgentUnavailableError(
                "the workspace's agent closed the connection (it stopped or crashed)"
            ) from exc
        except TimeoutError as exc:
            raise AgentUnavailableError("the workspace's agent did not answer in time") from exc
        except p.ProtocolError as exc:
            raise AgentError(f"malformed reply from the workspace's agent: {exc}") from exc

    # -- operations ---------------------------------------------------------------------------

    def ping(self, *, timeout: float | None = None) -> dict[str, Any]:
        return self._request(
            {"op": "ping"}, timeout=self.connect_timeout if timeout is None else timeout
        )

    def wait_ready(self, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for a just-started agent: connections queue until it accepts."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.ping(timeout=max(0.05, deadline - time.monotonic()))
            except AgentUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.002)

    def exec(
        self,
        argv: list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        on_output: OutputSink | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
        cancel: Cancellation | None = None,
        stdin: BinaryIO | None = None,
    ) -> ExecResult:
        """Run `argv` in the workspace; output goes to `on_output` as it comes, or is collected.

        Collected output is capped at `max_output` bytes per stream (the rest is counted as
        truncated, not kept), so a command printing without end cannot exhaust host memory.
        `stdin`, when given, is read (in a thread) and passed to the command until its end;
        without it the command's stdin is /dev/null.
        """
        with self.open_exec(
            argv, cwd=cwd, env=env, timeout=timeout, stdin=stdin is not None, cancel=cancel
        ) as channel:
            return channel.run(stdin=stdin, on_output=on_output, max_output=max_output)

    @contextlib.contextmanager
    def open_exec(
        self,
        argv: list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: bool = False,
        tty: tuple[int, int] | None = None,
        cancel: Cancellation | None = None,
    ) -> Iterator[ExecChannel]:
        """Start `argv` and hand back its channel: input, resizes and signals go in, output
        and the result come out. `tty` (rows, cols) runs it on a pseudo-terminal (its
        output then all arrives as stdout). Leaving the block ends the command if it still
        runs (the agent kills its tree when the connection goes)."""
        request: dict[str, Any] = {
            "op": "exec", "argv": argv, "cwd": cwd, "env": env or {}, "timeout": timeout,
        }  # fmt: skip
        if stdin:
            request["stdin"] = True
        if tty is not None:
            request["tty"] = [tty[0], tty[1]]
        with self._connect() as sock, cancel.watching(sock) if cancel else contextlib.nullcontext():
            # The socket timeout bounds silence, not the command: allow the command's own
            # timeout plus a margin, or wait indefinitely when it has none.
            sock.settimeout((timeout + 10.0) if timeout is not None else None)
            try:
                p.send_json(sock, {"v": p.VERSION, **request})
            except OSError as exc:
                raise AgentUnavailableError("the workspace's agent stopped reading") from exc
            yield ExecChannel(sock, cancel)

    def read(
        self, path: str, *, max_bytes: int = 65536, offset: int = 0
    ) -> tuple[bytes, ReadReplyJSON]:
        chunks: list[bytes] = []
        reply = self._request(
            {"op": "read", "path": path, "max_bytes": max_bytes, "offset": offset},
            on_frame=_data_collector(chunks, limit=max_bytes),
        )
        truncated = reply.get("truncated")
        if not isinstance(truncated, bool):
            raise AgentError("malformed reply from the workspace's agent: truncated is not a bool")
        return b"".join(chunks), {"path": _str(reply, "path"), "size": _int(reply, "size"),
                                  "offset": _int(reply, "offset"), "truncated": truncated,
                                  "ok": True}  # fmt: skip

    def write(self, path: str, content: bytes, *, mode: int | None = None) -> WriteReplyJSON:
        reply = self._request({"op": "write", "path": path, "mode": mode}, data=content)
        return {"path": _str(reply, "path"), "written": _int(reply, "written"), "ok": True}

    def list(
        self, path: str, *, recursive: bool = False, max_entries: int = 10000
    ) -> FileListingJSON:
        reply = self._request(
            {"op": "list", "path": path, "recursive": recursive, "max_entries": max_entries}
        )
        entries = reply.get("entries")
        if not isinstance(entries, list):
            raise AgentError("malformed reply from the workspace's agent: entries is not a list")
        truncated = reply.get("truncated")
        if not isinstance(truncated, bool):
            raise AgentError("malformed reply from the workspace's agent: truncated is not a bool")
        return {"path": _str(reply, "path"), "entries": [_entry(e) for e in entries],
                "truncated": truncated, "ok": True}  # fmt: skip

    def stat(self, path: str) -> dict[str, Any]:
        return self._request({"op": "stat", "path": path})

    def remove(
        self, path: str, *, recursive: bool = False, missing_ok: bool = False
    ) -> dict[str, Any]:
        return self._request(
            {"op": "remove", "path": path, "recursive": recursive, "missing_ok": missing_ok}
        )

    def mkdir(self, path: str) -> dict[str, Any]:
        return self._request({"op": "mkdir", "path": path})

    def symlink(self, path: str, target: str) -> dict[str, Any]:
        return self._request({"op": "symlink", "path": path, "target": target})

    def chmod(self, path: str, mode: int) -> dict[str, Any]:
        return self._request({"op": "chmod", "path": path, "mode": mode})

    def tar(self, path: str, sink: Callable[[bytes], object]) -> dict[str, Any]:
        def on_frame(kind: bytes, payload: bytes) -> None:
            if kind != p.KIND_DATA:
                raise p.ProtocolError(f"unexpected {kind!r} frame during tar")
            sink(payload)

        return self._request({"op": "tar", "path": path}, on_frame=on_frame, timeout=600.0)

    def put_tar(
        self,
        source: BinaryIO | Iterable[bytes],
        *,
        reuse: Sequence[str] = (),
        timeout: float | None = 600.0,
    ) -> dict[str, Any]:
        """Unpack an uncompressed tar stream into /workspace (files, directories, symlinks).

        `source` is a file object or an iterable of chunks, streamed as it is read. The reply
        counts what was written (`files`, `dirs`, `symlinks`, `bytes`) and lists the members
        that could not be (`errors`: `path`, `kind`, `error`); a member with an absolute path,
        `..` or an unsupported type ends the request with InvalidInputError or AgentError.
        `reuse` names members whose present file in the workspace this client put there: the
        agent writes them again in place while nothing in the workspace could see it
        (agent/quiet.py), else may write later members into their old inodes
        (agent/recycle.py); the reply counts each (`rewritten`, `reused`).
        """
        chunks: Iterable[bytes]
        if isinstance(source, bytes | bytearray):
            chunks = [bytes(source)]
        elif hasattr(source, "read"):
            reader = source
            chunks = iter(lambda: reader.read(p.MAX_CHUNK), b"")
        else:
            chunks = source
        request: dict[str, Any] = {"op": "put_tar"}
        if reuse:
            request["reuse"] = list(reuse)
        reply = self._request(request, data=_coalesced(chunks, PUT_FRAME), timeout=timeout)
        for key in ("files", "dirs", "symlinks", "bytes"):
            _int(reply, key)
        _errors(reply)
        return reply

    def remove_many(self, paths: Sequence[str], *, timeout: float | None = 600.0) -> dict[str, Any]:
        """Remove each path from the workspace, directories with their contents.

        Missing paths are counted (`missing`), not errors; a path outside /workspace or one
        that cannot be removed is listed in `errors` and the others are still removed. Long
        lists go as several requests, each well within the JSON frame bound.
        """
        total: dict[str, Any] = {"removed": 0, "missing": 0, "errors": []}
        for batch in _batches(list(paths), budget=p.MAX_JSON // 2):
            reply = self._request({"op": "remove_many", "paths": batch}, timeout=timeout)
            total["removed"] += _int(reply, "removed")
            total["missing"] += _int(reply, "missing")
            total["errors"].extend(_errors(reply))
        return total

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Stop every process in the workspace for the duration of the block.

        The agent keeps them stopped until this connection sends a frame or closes, so a
        crash of the caller thaws the workspace too.
        """
        with self._connect() as sock:
            sock.settimeout(self.connect_timeout)
            try:
                p.send_json(sock, {"v": p.VERSION, "op": "freeze"})
                _check_reply(p.recv_json(sock))
            except (p.Closed, ConnectionResetError, TimeoutError) as exc:
                raise AgentUnavailableError("the workspace's agent did not freeze it") from exc
            except p.ProtocolError as exc:
                raise AgentError(f"malformed reply from the workspace's agent: {exc}") from exc
            try:
                yield
            finally:
                with contextlib.suppress(OSError, p.ProtocolError):
                    p.send_json(sock, {"thaw": True})
                    p.recv_json(sock)


class ExecChannel:
    """One running command's connection (see `AgentClient.open_exec`).

    `write`, `close_stdin`, `resize` and `signal` may be called from any thread while
    another reads with `next_event` or `wait`: sends are serialised by a lock.
    """

    def __init__(self, sock: socket.socket, cancel: Cancellation | None = None) -> None:
        self.sock = sock
        self.cancel = cancel
        self._send_lock = threading.Lock()
        self.result: ExecResult | None = None
        self._redactors: dict[str, Redactor] = {}
        self._queued: list[tuple[str, bytes] | ExecResult] = []

    def redact(self, values: Iterable[str]) -> None:
        """Mask these values (secrets) in the command's output from now on."""
        from pyro_loop.workspace.secrets import Redactor

        values = list(values)
        if values:
            self._redactors = {"stdout": Redactor(values), "stderr": Redactor(values)}

    def _send(self, kind: bytes, payload: bytes) -> None:
        # Failing means the command is over or the agent gone: the reader learns which.
        with self._send_lock, contextlib.suppress(OSError):
            p.send_frame(self.sock, kind, payload)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), p.MAX_CHUNK):
            self._send(p.KIND_STDIN, bytes(view[start : start + p.MAX_CHUNK]))

    def close_stdin(self) -> None:
        self._send(p.KIND_STDIN, b"")

    def resize(self, rows: int, cols: int) -> None:
        self._send(p.KIND_JSON, p.dumps({"resize": [rows, cols]}).encode())

    def signal(self, name: str) -> None:
        self._send(p.KIND_JSON, p.dumps({"signal": name}).encode())

    def feed_from(self, source: BinaryIO) -> threading.Thread:
        """Pass `source` to the command's stdin from a daemon thread, then close it."""

        # A descriptor is read directly: a thread blocked inside a buffered reader holds its
        # lock, and the interpreter aborts at exit when a daemon thread holds stdin's.
        try:
            fd: int | None = source.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None
        read = getattr(source, "read1", source.read) if fd is None else partial(os.read, fd)

        def pump() -> None:
            while True:
                try:
                    data = read(65536)
                except (OSError, ValueError):
                    data = b""
                if not data:
                    self.close_stdin()
                    return
                self.write(data)

        thread = threading.Thread(target=pump, name="pyro-stdin", daemon=True)
        thread.start()
        return thread

    def next_event(self) -> tuple[str, bytes] | ExecResult:
        """The next piece of output ("stdout" | "stderr", bytes), or the command's result."""
        if self._queued:
            return self._queued.pop(0)
        event = self._next_frame()
        if not self._redactors:
            return event
        if isinstance(event, ExecResult):  # what was held back for a possible secret
            held = [(which, r.flush()) for which, r in self._redactors.items()]
            self._queued = [*[(w, data) for w, data in held if data], event]
            return self._queued.pop(0)
        which, data = event
        return which, self._redactors[which].feed(data)

    def _next_frame(self) -> tuple[str, bytes] | ExecResult:
        try:
            kind, payload = p.recv_frame(self.sock)
            if kind == p.KIND_JSON:
                self.result = _exec_result(_check_reply(p.decode_json(payload)))
                return self.result
            if kind == p.KIND_STDOUT:
                return "stdout", payload
            if kind == p.KIND_STDERR:
                return "stderr", payload
            raise p.ProtocolError(f"unexpected {kind!r} frame during exec")
        except (p.Closed, ConnectionResetError, OSError, p.ProtocolError) as exc:
            if self.cancel is not None and self.cancel.cancelled:
                raise CancelledError("cancelled: the command's process tree was killed") from None
            if isinstance(exc, TimeoutError):
                raise AgentUnavailableError("the workspace's agent did not answer in time") from exc
            if isinstance(exc, p.Closed | ConnectionResetError | OSError):
                raise AgentUnavailableError(
                    "the workspace's agent closed the connection (it stopped or crashed)"
                ) from exc
            raise AgentError(f"malformed reply from the workspace's agent: {exc}") from exc

    def run(
        self,
        *,
        stdin: BinaryIO | None = None,
        on_output: OutputSink | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> ExecResult:
        """The rest of a plain exec: `stdin` passed to the command (when the channel was
        opened with stdin), then `wait`."""
        if stdin is not None:
            self.feed_from(stdin)
        return self.wait(on_output=on_output, max_output=max_output)

    def wait(
        self, *, on_output: OutputSink | None = None, max_output: int = DEFAULT_MAX_OUTPUT
    ) -> ExecResult:
        """Read until the command ends; output to `on_output`, or collected (capped)."""
        collected = {"stdout": _Capped(max_output), "stderr": _Capped(max_output)}
        while True:
            event = self.next_event()
            if isinstance(event, ExecResult):
                out, err = collected["stdout"], collected["stderr"]
                return replace(
                    event, stdout=out.value(), stderr=err.value(),
                    stdout_truncated=out.truncated, stderr_truncated=err.truncated,
                )  # fmt: skip
            which, data = event
            if on_output is not None:
                on_output(which, data)
            else:
                collected[which].add(data)


def _exec_result(reply: dict[str, Any]) -> ExecResult:
    duration = reply.get("duration", 0.0)
    if not isinstance(duration, int | float) or isinstance(duration, bool):
        raise AgentError("malformed reply from the workspace's agent: duration is not a number")
    return ExecResult(
        exit_code=_int(reply, "exit_code"),
        duration=float(duration),
        timed_out=bool(reply.get("timed_out", False)),
        signal=reply.get("signal") if isinstance(reply.get("signal"), int) else None,
    )


class _Capped:
    """Collects at most `limit` bytes and remembers whether more arrived."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False

    def add(self, data: bytes) -> None:
        room = self.limit - self.size
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        if data:
            self.chunks.append(data)
            self.size += len(data)

    def value(self) -> bytes:
        return b"".join(self.chunks)


def _check_reply(reply: dict[str, Any]) -> dict[str, Any]:
    if reply.get("ok") is True:
        return reply
    message = reply.get("error")
    if not isinstance(message, str):
        raise AgentError("malformed reply from the workspace's agent: no error message")
    kind = str(reply.get("kind", "agent_error"))
    error_class = _ERRORS_BY_KIND.get(kind, AgentError)
    if issubclass(error_class, AgentError):
        raise error_class(message, kind=kind)
    raise error_class(message)


def _int(reply: dict[str, Any], key: str) -> int:
    value = reply.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise AgentError(f"malformed reply from the workspace's agent: {key} is not an integer")
    return value


def _str(reply: dict[str, Any], key: str) -> str:
    value = reply.get(key)
    if not isinstance(value, str):
        raise AgentError(f"malformed reply from the workspace's agent: {key} is not a string")
    return value


def _entry(raw: object) -> FileEntryJSON:
    """An entry of a listing, type-checked (the agent is not trusted)."""
    if not isinstance(raw, dict):
        raise AgentError("malformed reply from the workspace's agent: an entry is not an object")
    mtime = raw.get("mtime")
    if not isinstance(mtime, int | float) or isinstance(mtime, bool):
        raise AgentError("malformed reply from the workspace's agent: mtime is not a number")
    entry: FileEntryJSON = {"path": _str(raw, "path"), "type": _str(raw, "type"),
                            "size": _int(raw, "size"), "mode": _int(raw, "mode"),
                            "mtime": mtime}  # fmt: skip
    if "target" in raw:
        entry["target"] = _str(raw, "target")
    return entry


def _errors(reply: dict[str, Any]) -> list[dict[str, str]]:
    """The per-path errors of a batch reply, type-checked (the agent is not trusted)."""
    errors = reply.get("errors", [])
    if not isinstance(errors, list) or not all(
        isinstance(e, dict) and all(isinstance(e.get(k), str) for k in ("path", "kind", "error"))
        for e in errors
    ):
        raise AgentError("malformed reply from the workspace's agent: errors is not a list")
    return [{"path": e["path"], "kind": e["kind"], "error": e["error"]} for e in errors]


# A put_tar stream goes in frames of this size: the agent writes the first files while the
# host still reads the next ones (a 1,000-file switch is about 1 MB, one frame of MAX_CHUNK).
PUT_FRAME = 64 * 1024


def _coalesced(chunks: Iterable[bytes], size: int = p.MAX_CHUNK) -> Iterator[bytes]:
    """Join small chunks (a tar stream of many small files is mostly 512-byte pieces) into
    frames of up to `size`: one frame per chunk would cost both sides a syscall or two each."""
    buffer = bytearray()
    for chunk in chunks:
        if buffer and len(buffer) + len(chunk) > size:
            yield bytes(buffer)
            buffer.clear()
        if len(chunk) >= size:
            yield chunk
        else:
            buffer += chunk
    if buffer:
        yield bytes(buffer)


def _batches(paths: list[str], *, budget: int) -> Iterator[list[str]]:
    """Split `paths` into lists whose JSON encoding stays under `budget` bytes."""
    batch: list[str] = []
    size = 0
    for path in paths:
        cost = len(p.dumps(path)) + 1
        if batch and size + cost > budget:
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += cost
    if batch:
        yield batch


def _data_collector(chunks: list[bytes], *, limit: int) -> Callable[[bytes, bytes], None]:
    received = [0]

    def on_frame(kind: bytes, payload: bytes) -> None:
        if kind != p.KIND_DATA:
            raise p.ProtocolError(f"unexpected {kind!r} frame during read")
        received[0] += len(payload)
        if received[0] > limit:
            raise p.ProtocolError("the agent sent more data than was asked for")
        chunks.append(payload)

    return on_frame

"""Shell sessions for the command line: `pyro workspace shell open|read|write|signal|close`.

A shell must outlive the `pyro` process that opened it, and each later command is a new
process. So `open` starts a keeper: a small detached process (`python -m
pyro_loop.workspace.shellkeeper`) that holds one session of shells.py (the MCP server's own,
in its process) and answers the later commands over a Unix socket at
`<workspace>/shells/<shell id>.sock`, one JSON request and reply per connection. The socket's
directory is its owner's only (0700).

A keeper ends with its shell's `close`, with the workspace (`stop` and `delete` close every
shell of it; a keeper whose socket is gone exits by itself), or, once its shell has ended,
after KEEP_ENDED seconds in which nobody asked about it. The spec it starts from (secrets
included) comes on its stdin, never on its command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pyro_loop import errors
from pyro_loop.errors import InvalidInputError, NotFoundError, PyroError
from pyro_loop.fs.socketpath import socket_address
from pyro_loop.procutil import spawn_detached
from pyro_loop.workspace.shells import IDLE_CAP, SIGNALS, TERMINAL

if TYPE_CHECKING:
    from pyro_loop.shapes import (
        KeptShellClosedJSON,
        KeptShellOpenedJSON,
        KeptShellReadJSON,
        KeptShellSignalledJSON,
        KeptShellWrittenJSON,
    )
    from pyro_loop.workspace.manager import Workspaces
    from pyro_loop.workspace.shells import ShellSession

KEEP_ENDED = 600.0  # seconds a keeper waits, after its shell ended, for someone to read it
WATCH_INTERVAL = 1.0  # seconds between looks at whether the socket (the workspace) is there
OPEN_TIMEOUT = 30.0  # seconds a keeper may take to open its shell
REPLY_LIMIT = 16 * 1024 * 1024  # bytes: 1 MiB of output, as JSON, is at most 6 MiB


def shells_dir(workspace_dir: Path) -> Path:
    return workspace_dir / "shells"


def _check_id(shell_id: str) -> str:
    if not shell_id or not all(c in "0123456789abcdef" for c in shell_id) or len(shell_id) > 32:
        raise InvalidInputError(f"{shell_id!r} is not a shell id (shell open prints one)")
    return shell_id


def signal_name(name: str) -> str:
    """`INT`, `SIGINT` or `int` -> `INT`; one line naming the choices otherwise."""
    short = name.upper().removeprefix("SIG")
    if short not in SIGNALS:
        raise InvalidInputError(
            f"cannot send {name!r} to a shell", hint="one of " + ", ".join(SIGNALS)
        )
    return short


class KeptShells:
    """The shells of one workspace that keeper processes hold."""

    def __init__(self, ws: Workspaces, ref: str) -> None:
        self.ws = ws
        self.wdir = ws.resolve(ref)
        self.workspace_id = self.wdir.root.name

    def open(
        self,
        *,
        cwd: str | None = None,
        size: tuple[int, int] = TERMINAL,
        secrets: dict[str, str] | None = None,
    ) -> KeptShellOpenedJSON:
        """Start a keeper holding a new shell; returns once the shell runs."""
        self.ws.client(self.workspace_id)  # running, or one line saying how to start it
        directory = shells_dir(self.wdir.root)
        directory.mkdir(mode=0o700, exist_ok=True)
        spec = {"home": str(self.ws.home), "workspace_id": self.workspace_id, "cwd": cwd,
                "size": list(size), "secrets": dict(secrets or {})}  # fmt: skip
        # The host variables named by --secret-env reach the shell through the spec only.
        env = {k: v for k, v in os.environ.items() if k not in (secrets or {})}
        with (directory / "keeper.log").open("ab") as log:
            proc = spawn_detached([sys.executable, "-m", "pyro_loop.workspace.shellkeeper"],
                                  log=log, env=env, cwd=Path("/"), pipes=True)  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        with proc.stdin:
            proc.stdin.write(json.dumps(spec).encode() + b"\n")
        with proc.stdout:
            ready, _, _ = select.select([proc.stdout], [], [], OPEN_TIMEOUT)
            line = proc.stdout.readline() if ready else b""
        if not ready:
            proc.kill()
        try:
            reply = _decode(line, what="the shell did not start (its keeper's log: "
                            f"{directory / 'keeper.log'})")  # fmt: skip
        finally:
            if not line or b'"refused"' in line:
                proc.wait()
        # The keeper is pyro's own process (`main`): its answer has the shape it writes.
        return cast("KeptShellOpenedJSON", reply | {"workspace_id": self.workspace_id})

    def request(self, shell_id: str, request: dict[str, Any], *, wait: float = 0) -> dict[str, Any]:
        """Send `request` to the keeper of `shell_id`; its reply (errors raised as such), in
        the shape `_Keeper.answer` gives that request, plus the workspace's id."""
        path = shells_dir(self.wdir.root) / f"{_check_id(shell_id)}.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(wait + 30.0)
            try:
                sock.connect(socket_address(path))
                sock.sendall(json.dumps(request).encode() + b"\n")
                data = _read_line(sock)
            except (FileNotFoundError, ConnectionRefusedError):
                raise NotFoundError(
                    f"no open shell {shell_id} in workspace {self.workspace_id}",
                    hint=f"`pyro workspace shell open {self.workspace_id}` starts one; a shell "
                    "ends with close, and when its workspace stops",
                ) from None
            except OSError as exc:
                raise PyroError(f"shell {shell_id} did not answer: {exc}") from None
        return _decode(data, what=f"shell {shell_id}'s keeper went away") | {
            "workspace_id": self.workspace_id
        }

    def read(
        self,
        shell_id: str,
        *,
        cursor: int,
        max_bytes: int,
        wait: float,
        idle: float | None = None,
        plain: bool = False,
    ) -> KeptShellReadJSON:
        """ShellSession.read, in the keeper."""
        request = {"op": "read", "cursor": cursor, "max_bytes": max_bytes, "wait": wait,
                   "idle": idle, "plain": plain}  # fmt: skip
        reply = self.request(shell_id, request, wait=wait + (IDLE_CAP if idle else 0))
        return cast("KeptShellReadJSON", reply)

    def write(self, shell_id: str, text: str) -> KeptShellWrittenJSON:
        reply = self.request(shell_id, {"op": "write", "input": text})
        return cast("KeptShellWrittenJSON", reply)

    def signal(self, shell_id: str, name: str) -> KeptShellSignalledJSON:
        reply = self.request(shell_id, {"op": "signal", "signal": signal_name(name)})
        return cast("KeptShellSignalledJSON", reply)

    def close(self, shell_id: str) -> KeptShellClosedJSON:
        return cast("KeptShellClosedJSON", self.request(shell_id, {"op": "close"}))


def close_all(workspace_dir: Path) -> None:
    """End every shell of a workspace (it stops): each keeper is asked to close, and one
    that does not answer exits on its own once its socket is gone."""
    directory = shells_dir(workspace_dir)
    if not directory.is_dir():
        return
    for path in directory.glob("*.sock"):
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5.0)
            sock.connect(socket_address(path))
            sock.sendall(b'{"op": "close"}\n')
            _read_line(sock)
        with contextlib.suppress(OSError):
            path.unlink()


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < REPLY_LIMIT:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _decode(line: bytes, *, what: str) -> dict[str, Any]:
    """A keeper's reply; an error in it raised as the PyroError it was."""
    try:
        reply = json.loads(line)
    except ValueError:
        raise PyroError(what) from None
    if not isinstance(reply, dict):
        raise PyroError(what)
    if "refused" in reply:  # ("error" is a lost shell's reason, in a reply that succeeded)
        kind = getattr(errors, str(reply.get("kind")), PyroError)
        if not (isinstance(kind, type) and issubclass(kind, PyroError)):
            kind = PyroError
        raise kind(str(reply["refused"]), hint=reply.get("hint"))
    return reply


# -- the keeper process -------------------------------------------------------------------


class _Keeper:
    def __init__(self, session: ShellSession, path: Path, close: Any) -> None:
        self.session, self.path, self._close = session, path, close
        self.done = threading.Event()
        self.closing = False
        self.last_asked = time.monotonic()

    def answer(self, request: dict[str, Any]) -> Mapping[str, object]:
        self.last_asked = time.monotonic()
        session, op = self.session, request.get("op")
        if op == "read":
            wait = min(max(float(request.get("wait", 0)), 0.0), 30.0)
            size = min(max(int(request.get("max_bytes", 65536)), 1), 1024 * 1024)
            idle = request.get("idle")
            return session.read(
                max(int(request.get("cursor", 0)), 0), size, wait,
                idle=None if idle is None else min(max(float(idle), 0.0), 30.0),
                plain=bool(request.get("plain")),
            )  # fmt: skip
        if op == "write":
            data = str(request.get("input", "")).encode()
            self._live().channel.write(data)
            return {"shell_id": session.id, "written": len(data), **session.state()}
        if op == "signal":
            name = signal_name(str(request.get("signal")))
            self._live().channel.signal(name)
            return {"shell_id": session.id, "signal": name, **session.state()}
        if op == "close":
            state = session.state()
            self._close(session.id)
            self.closing = True  # the keeper ends once this reply is sent
            return {"shell_id": session.id, "closed": True, **state}
        raise InvalidInputError(f"unknown request {op!r}")

    def _live(self) -> ShellSession:
        if self.session.state()["state"] != "running":
            raise InvalidInputError(
                f"shell {self.session.id} has ended ({self._ended()})",
                hint="read what it printed, then close it",
            )
        return self.session

    def _ended(self) -> str:
        state = self.session.state()
        if state["state"] == "exited":
            return f"exit code {state['exit_code']}"
        return f"{state['state']}: {state.get('error')}"

    def serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(30.0)  # to send the request; answering may take longer
                request = json.loads(_read_line(conn))
                if not isinstance(request, dict):
                    raise InvalidInputError("a request is a JSON object")
                reply: Mapping[str, object] = self.answer(request)
            except PyroError as exc:
                reply = {"refused": exc.message, "hint": exc.hint, "kind": type(exc).__name__}
            except (OSError, ValueError, TypeError) as exc:
                reply = {"refused": f"bad request: {exc}", "kind": "InvalidInputError"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")
        if self.closing:
            self.done.set()

    def should_end(self) -> bool:
        if self.done.is_set() or not self.path.exists():
            return True
        ended = self.session.state()["state"] != "running"
        return ended and time.monotonic() - self.last_asked > KEEP_ENDED


def main() -> int:
    from pyro_loop.workspace.manager import Workspaces
    from pyro_loop.workspace.shellcmd import SHELL_ARGV
    from pyro_loop.workspace.shells import ENV, Shells

    def say(reply: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()

    spec = json.loads(sys.stdin.readline())
    ws = Workspaces(home=Path(spec["home"]))
    workspace_id, cwd, secrets = spec["workspace_id"], spec["cwd"], spec["secrets"]
    shells = Shells()

    def opener(size: tuple[int, int]) -> Any:
        return ws.open_exec(
            workspace_id, SHELL_ARGV, cwd=cwd, env=dict(ENV), stdin=True, tty=size,
            secrets=secrets,
        )  # fmt: skip

    try:
        session = shells.open(workspace_id, opener, size=(spec["size"][0], spec["size"][1]))
        path = shells_dir(ws.resolve(workspace_id).root) / f"{session.id}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(socket_address(path))
        listener.listen(16)
    except (PyroError, OSError) as exc:
        shells.close_all()
        message = exc.message if isinstance(exc, PyroError) else f"cannot hold the shell: {exc}"
        hint = exc.hint if isinstance(exc, PyroError) else None
        say({"refused": message, "hint": hint, "kind": type(exc).__name__})
        return 1
    keeper = _Keeper(session, path, shells.close)
    say({"shell_id": session.id, "cwd": cwd or "/workspace", "rows": spec["size"][0],
         "cols": spec["size"][1], **session.state()})  # fmt: skip
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # the opener has its answer: nothing else goes its way

    def accept() -> None:
        while True:
            try:
                conn, _addr = listener.accept()
            except OSError:
                time.sleep(0.05)
                continue
            threading.Thread(target=keeper.serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        while not keeper.should_end():
            keeper.done.wait(WATCH_INTERVAL)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        shells.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())

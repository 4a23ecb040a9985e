"""Published ports: a port a server in the workspace listens on, reachable from the host at
127.0.0.1 (and only there), while the workspace itself keeps no network.

How: the host side listens on 127.0.0.1:HOST_PORT and a forwarder process (workspace/forwarder.py)
relays each connection to the port inside, over a socket of the workspace's network
namespace that the workspace's agent made for it (agent `sockets`). Nothing is added to the
workspace's network namespace and none of the host's sockets enters it, so publishing a
port gives the workspace no way out. Who keeps it alive: the forwarder, one small process per
published port, detached from the command that published it, recorded in the workspace's
`ports.json` and stopped with the workspace (`stop`, `delete`, `pyro down`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_loop.errors import ConflictError, InvalidInputError
from pyro_loop.fs.util import write_json_atomic
from pyro_loop.procutil import spawn_detached
from pyro_loop.records import dataclass

if TYPE_CHECKING:
    import socket

    from pyro_loop.shapes import PortJSON

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Mapping:
    host_port: int  # on 127.0.0.1 on the host
    port: int  # in the workspace

    def __str__(self) -> str:
        same = self.host_port == self.port
        return str(self.port) if same else f"{self.host_port}:{self.port}"

    def to_json(self) -> PortJSON:
        return {"host_port": self.host_port, "port": self.port, "url": self.url}

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.host_port}/"


def parse_publish(value: str | int) -> Mapping:
    """`5173` (the same port on both sides) or `8080:80` (host port 8080 -> 80 inside)."""
    text = str(value).strip()
    parts = text.split(":")
    if len(parts) > 2 or not all(part.isdigit() for part in parts):
        raise InvalidInputError(
            f"cannot read the port {text!r}", hint="give PORT (5173) or HOST_PORT:PORT (8080:80)"
        )
    numbers = [int(part) for part in parts]
    for number in numbers:
        if not 0 < number <= 65535:
            raise InvalidInputError(f"port {number} is out of range: ports are 1-65535")
    return Mapping(numbers[0], numbers[-1])


def _unprivileged_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def bind(mapping: Mapping) -> socket.socket:
    """Listen on 127.0.0.1:host_port, or say in one line why that cannot be."""
    import socket  # here: `status` and the daily commands only read what is published

    port = mapping.host_port
    if port < _unprivileged_start() and os.geteuid() != 0:
        raise InvalidInputError(
            f"port {port} is privileged (below {_unprivileged_start()}): an ordinary user "
            "cannot listen on it",
            hint=f"publish it on a higher host port: --publish {port + 8000}:{mapping.port}",
        )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConflictError(
                f"port {port} on {LOOPBACK} is already in use{_holder(port)}",
                hint=f"stop that, or publish on another host port: --publish "
                f"{port + 1}:{mapping.port}",
            ) from None
        raise InvalidInputError(f"cannot listen on {LOOPBACK}:{port}: {exc.strerror}") from None
    return sock


def _holder(port: int) -> str:
    """ " (by pid 123: node)" for the process listening on `port`, as far as /proc tells."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(fields[9])
    if not inodes:
        return " (by a process this user cannot see, or in another network namespace)"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    return f" (by pid {pid}: {name})"
    return " (by a process of another user)"


# -- the forwarders of one workspace ---------------------------------------------------------


def _state_path(workspace_dir: Path) -> Path:
    return workspace_dir / "ports.json"


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def _load(workspace_dir: Path) -> list[dict[str, Any]]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(_state_path(workspace_dir).read_text())
        if isinstance(data, list):
            return [e for e in data if isinstance(e, dict)]
    return []


def _alive(entry: dict[str, Any]) -> bool:
    pid, start = entry.get("pid"), entry.get("start")
    return isinstance(pid, int) and start is not None and _start_time(pid) == start


def published(workspace_dir: Path) -> list[Mapping]:
    """The workspace's published ports whose forwarder runs."""
    return [Mapping(e["host_port"], e["port"]) for e in _load(workspace_dir) if _alive(e)]


def publish(workspace_dir: Path, agent_socket: Path, mappings: list[Mapping]) -> list[Mapping]:
    """Publish each mapping not published yet; the caller holds the workspace's lock.

    Every host port is bound before any forwarder starts, so a taken one fails the call
    with nothing half done. A host port this workspace already forwards elsewhere is a
    conflict; the same mapping again is kept as it is.
    """
    entries = [e for e in _load(workspace_dir) if _alive(e)]
    current = {e["host_port"]: e["port"] for e in entries}
    wanted: list[Mapping] = []
    for mapping in dict.fromkeys(mappings):
        if current.get(mapping.host_port) == mapping.port:
            continue
        if mapping.host_port in current:
            raise ConflictError(
                f"host port {mapping.host_port} already forwards to port "
                f"{current[mapping.host_port]} of this workspace"
            )
        wanted.append(mapping)
    listeners: list[socket.socket] = []
    try:
        for mapping in wanted:
            listeners.append(bind(mapping))
        for mapping, listener in zip(wanted, listeners, strict=True):
            fd = listener.fileno()
            proc = spawn_detached(
                [sys.executable, "-m", "pyro_loop.workspace.forwarder", str(agent_socket),
                 str(workspace_dir), f"{fd}:{mapping.port}"],
                pass_fds=[fd], env=_child_env(),
            )  # fmt: skip
            entries.append({"host_port": mapping.host_port, "port": mapping.port,
                            "pid": proc.pid, "start": _start_time(proc.pid)})  # fmt: skip
    finally:
        for listener in listeners:  # the forwarders hold them now
            listener.close()
        write_json_atomic(_state_path(workspace_dir), entries, durable=False)
    return [Mapping(e["host_port"], e["port"]) for e in entries]


def _child_env() -> dict[str, str]:
    # The forwarder imports pyro from wherever this process does.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def close_all(workspace_dir: Path) -> list[Mapping]:
    """Stop every forwarder of the workspace; returns what was published."""
    import signal

    entries = _load(workspace_dir)
    closed = []
    for entry in entries:
        if _alive(entry):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(entry["pid"], signal.SIGKILL)
            closed.append(Mapping(entry["host_port"], entry["port"]))
    with contextlib.suppress(FileNotFoundError):
        _state_path(workspace_dir).unlink()
    return closed

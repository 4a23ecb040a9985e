"""Published ports: a server in a workspace reached from the host at 127.0.0.1 only, through
the agent's socket, while the workspace keeps no network; closed when the workspace stops."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from pyro_loop.agent import protocol as p
from pyro_loop.errors import ConflictError, InvalidInputError
from pyro_loop.fs.socketpath import socket_address
from pyro_loop.workspace.forwarder import BATCH
from pyro_loop.workspace.manager import Workspaces
from pyro_loop.workspace.ports import Mapping, parse_publish
from pyro_loop.workspace.services import ServiceClient
from tests.helpers.nobody import _as_nobody
from tests.helpers.project import commit_project, run_pyro


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/")
    except OSError:
        return False


def fetch(port: int, path: str = "/") -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        data: bytes = response.read()
        return data


def serve(ws: Workspaces, ref: str, port: int, bind: str = "127.0.0.1") -> None:
    """A Python web server in the workspace, started as a service; returns once it listens."""
    services = ServiceClient(ws.client(ref))
    services.service_start("web", ["python3", "-m", "http.server", str(port), "--bind", bind])
    probe = f"import socket; socket.create_connection(('{bind}', {port}), timeout=1)"
    for _ in range(200):
        if ws.exec(ref, ["python3", "-c", probe]).exit_code == 0:
            return
    raise AssertionError(f"the server did not listen: {services.service_logs('web')}")


# An echo server: what a connection sends comes back, and its end of data ends the reply.
# With "abort" it answers the first bytes with a reset instead (SO_LINGER 0, then close).
ECHO = """\
import socket, struct, sys, threading
def echo(conn):
    with conn:
        if sys.argv[3:] == ["abort"]:
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
server = socket.socket(family)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(64)
while True:
    threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
"""


def echo_workspace(
    ws: Workspaces,
    seed_dir: Path,
    bind: str = "127.0.0.1",
    *,
    publish: bool = True,
    mode: tuple[str, ...] = (),
) -> tuple[str, int]:
    """A workspace running ECHO on `bind` (in `mode`), published on the same port unless
    told not; returns its id and the port once the server listens."""
    (seed_dir / "echo.py").write_text(ECHO)
    ref = ws.create(seed=seed_dir).id
    port = free_port()
    services = ServiceClient(ws.client(ref))
    services.service_start("echo", ["python3", "echo.py", bind, str(port), *mode])
    family = "AF_INET6" if ":" in bind else "AF_INET"
    probe = (f"import socket; s = socket.socket(socket.{family}); s.settimeout(1); "
             f"s.connect(('{bind}', {port}))")  # fmt: skip
    while ws.exec(ref, ["python3", "-c", probe]).exit_code != 0:
        assert services.service_status("echo")["state"] == "running", services.service_logs("echo")
    if publish:
        ws.publish(ref, [Mapping(port, port)])
    return ref, port


def echo_through(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """Send `data` and end it, reading the echo meanwhile (neither side waits on the
    other's buffers); returns what came back before the end."""
    with socket.create_connection((host, port), timeout=30) as sock:

        def send() -> None:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        got = bytearray()
        while chunk := sock.recv(1 << 20):
            got += chunk
        sender.join()
    return bytes(got)


def test_a_published_port_reaches_the_server_and_closes_with_the_workspace(
    seed_dir: Path, workspaces: Workspaces
) -> None:
    big = bytes(range(256)) * 4096 * 3  # 3 MiB
    (seed_dir / "big.bin").write_bytes(big)
    record = workspaces.create(seed=seed_dir)
    port, host_port = free_port(), free_port()
    # Bound to every address inside: still unreachable from the host without --publish.
    serve(workspaces, record.id, port, bind="0.0.0.0")
    assert not reachable("127.0.0.1", port)

    published = workspaces.publish(record.id, [Mapping(port, port), Mapping(host_port, port)])
    assert set(published) == {Mapping(port, port), Mapping(host_port, port)}
    assert b"README.md" in fetch(port)
    assert hashlib.sha256(fetch(host_port, "/big.bin")).digest() == hashlib.sha256(big).digest()
    status = workspaces.status(record.id).to_json()
    assert {p["host_port"] for p in status["ports"]} == {port, host_port}
    # The same mapping again is kept; the host port for another one is a conflict.
    assert len(workspaces.publish(record.id, [Mapping(port, port)])) == 2
    with pytest.raises(ConflictError, match=f"already forwards to port {port}"):
        workspaces.publish(record.id, [Mapping(host_port, port + 1)])

    # A reset keeps them (the server is gone with the old sandbox; a new one is reached).
    workspaces.reset(record.id)
    assert not reachable("127.0.0.1", port)
    serve(workspaces, record.id, port)
    assert b"README.md" in fetch(port)

    workspaces.stop(record.id)
    assert not reachable("127.0.0.1", port) and not reachable("127.0.0.1", host_port)
    assert workspaces.status(record.id).to_json()["ports"] == []


def test_only_loopback_on_the_host_can_reach_it(seed_dir: Path, workspaces: Workspaces) -> None:
    record = workspaces.create(seed=seed_dir)
    port = free_port()
    serve(workspaces, record.id, port)
    workspaces.publish(record.id, [Mapping(port, port)])
    assert reachable("127.0.0.1", port)
    # Another network namespace (its own loopback) cannot reach the forwarder.
    probe = (
        "import socket\ntry:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=5); print('reached')\n"
        "except OSError as exc:\n    print('refused', exc)\n"
    )
    other = subprocess.run(["unshare", "--user", "--map-root-user", "--net", sys.executable,
                            "-c", probe], capture_output=True, text=True, check=False)  # fmt: skip
    assert other.stdout.startswith("refused"), other.stdout + other.stderr
    # Nor does any other address of this host lead to it.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route's address
        address = udp.getsockname()[0]
    if address != "127.0.0.1":
        assert not reachable(address, port)
    listening = Path("/proc/net/tcp").read_text()
    assert f"0100007F:{port:04X} 00000000:0000 0A" in listening  # 127.0.0.1, LISTEN
    # And the workspace got no network from it: no way out to the host.
    out = workspaces.exec(
        record.id, ["python3", "-c", "import socket; print(socket.if_nameindex())"]
    )
    assert "lo" in out.stdout.decode() and "eth" not in out.stdout.decode()


def test_bad_ports_are_refused_in_one_line(workspaces: Workspaces, seed_dir: Path) -> None:
    record = workspaces.create(seed=seed_dir)
    for bad, message in (("70000", "out of range"), ("0", "out of range"), ("http", "cannot read"),
                         ("1:2:3", "cannot read")):  # fmt: skip
        with pytest.raises(InvalidInputError, match=message):
            parse_publish(bad)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ConflictError, match=rf"port {port} on 127.0.0.1 is already in use "
                                                rf"\(by pid \d+: "):  # fmt: skip
            workspaces.publish(record.id, [Mapping(port, 8000)])
        result = run_pyro("workspace", "exec", record.id, "-p", str(port), "--", "true")
        assert result.returncode == 1
        assert result.stderr.startswith(f"pyro: error: port {port} on 127.0.0.1 is already in use")
    finally:
        taken.close()
    assert run_pyro("workspace", "exec", record.id, "-p", "99999", "--", "true").stderr == (
        "pyro: error: port 99999 is out of range: ports are 1-65535\n"
    )


def test_project_ports_from_config_and_publish(tmp_path: Path, workspaces: Workspaces) -> None:
    port, extra = free_port(), free_port()
    repo = commit_project(tmp_path / "repo", f"[workspace]\nports = [{port}]\n",
                          {"index.html": "hello from the workspace\n"})  # fmt: skip
    c = ("-C", str(repo))
    started = run_pyro("exec", *c, "--detach", "--publish", f"{extra}:{port}", "--", "python3",
                       "-m", "http.server", str(port), "--bind", "127.0.0.1")  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert f"http://127.0.0.1:{extra}/ -> port {port}" in started.stderr
    wait = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)"
    while run_pyro("exec", *c, "--", "python3", "-c", wait).returncode != 0:
        pass
    assert (
        fetch(port, "/index.html") == fetch(extra, "/index.html") == b"hello from the workspace\n"
    )
    status = json.loads(run_pyro("status", *c, "--json").stdout)
    assert {p["host_port"] for p in status["workspaces"][0]["ports"]} == {port, extra}
    human = run_pyro("status", *c).stdout
    assert f"port          http://127.0.0.1:{port}/ -> {port} in the workspace" in human
    down = run_pyro("down", *c)
    assert down.returncode == 0 and "closed http://127.0.0.1:" in down.stdout
    assert not reachable("127.0.0.1", port) and not reachable("127.0.0.1", extra)


def test_config_ports_are_checked(tmp_path: Path) -> None:
    repo = commit_project(tmp_path / "repo", "[workspace]\nports = [5173, 70000]\n", {})
    result = run_pyro("status", "-C", str(repo))
    assert result.returncode == 1
    assert ".pyro.toml:2: [workspace] ports: item 2: expected a port 1-65535" in result.stderr


AS_NOBODY = """
import json, socket, sys, urllib.request
from pathlib import Path
from pyro_loop.errors import InvalidInputError
from pyro_loop.workspace.ports import Mapping
from pyro_loop.workspace.services import ServiceClient
from pyro_loop.workspace.manager import Workspaces

ws = Workspaces()
record = ws.create(seed=Path(sys.argv[1]))
seen = {}
try:
    ws.publish(record.id, [Mapping(80, 8000)])
    seen["privileged"] = "published"
except InvalidInputError as exc:
    seen["privileged"] = exc.message + " / " + str(exc.hint)
with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
ServiceClient(ws.client(record.id)).service_start(
    "web", ["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"])
probe = "import socket; socket.create_connection(('127.0.0.1', %d), timeout=1)" % port
while ws.exec(record.id, ["python3", "-c", probe]).exit_code:
    pass
ws.publish(record.id, [Mapping(port, port)])
with urllib.request.urlopen("http://127.0.0.1:%d/README.md" % port, timeout=30) as response:
    seen["fetched"] = response.read().decode()
ws.delete(record.id)
print(json.dumps(seen))
"""


def test_as_an_ordinary_user(nobody_env: dict[str, Path]) -> None:
    """An ordinary user may not listen on a privileged port (one line with the fix), and a
    service's published port works as theirs."""
    script = nobody_env["base"] / "ports.py"
    script.write_text(AS_NOBODY)
    script.chmod(0o644)
    result = _as_nobody([str(script), str(nobody_env["seed"])], lib=nobody_env["lib"],
                        home=nobody_env["home"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["privileged"] == (
        "port 80 is privileged (below 1024): an ordinary user cannot listen on it"
        " / publish it on a higher host port: --publish 8080:8000"
    )
    assert seen["fetched"] == "hello\n"


def test_the_relay_carries_both_ways_with_half_close_many_clients_at_once(
    seed_dir: Path, workspaces: Workspaces
) -> None:
    _ref, port = echo_workspace(workspaces, seed_dir)
    # Larger than any socket buffer, from several clients at once: the relay must hold back
    # what a slow side has not taken, and pass each end of data on as a half-close.
    payloads = [os.urandom(6 * 1024 * 1024 + i) for i in range(4)]
    results: dict[int, bytes] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(
        i, echo_through(port, payloads[i]))) for i in range(4)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [hashlib.sha256(results[i]).hexdigest() for i in range(4)] == [
        hashlib.sha256(data).hexdigest() for data in payloads
    ]
    # More connections than one batch of the workspace's sockets, one after another.
    for i in range(BATCH + 5):
        assert echo_through(port, b"ping %d" % i) == b"ping %d" % i


def test_a_reset_from_the_server_reaches_the_client_as_a_reset(
    seed_dir: Path, workspaces: Workspaces
) -> None:
    """As natively: a server that aborts its connection is not mistaken by the client for
    one that ended its reply (which would make a cut-off response look whole)."""
    _ref, port = echo_workspace(workspaces, seed_dir, mode=("abort",))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(b"anything")
        with pytest.raises(ConnectionResetError):
            while client.recv(65536):
                pass


def test_a_server_on_the_ipv6_loopback_only_is_reached(
    seed_dir: Path, workspaces: Workspaces
) -> None:
    _ref, port = echo_workspace(workspaces, seed_dir, "::1")
    assert echo_through(port, b"over ::1") == b"over ::1"


def _socket_inodes(pid: str) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            found.add(link[8:-1])
    return found


def test_no_socket_of_the_hosts_network_enters_the_workspace(
    seed_dir: Path, workspaces: Workspaces
) -> None:
    """The host's sockets stay on the host: a process in the workspace holding one (an
    accepted client connection, say) could turn it into a connection anywhere on the host."""
    ref, port = echo_workspace(workspaces, seed_dir)
    inside = workspaces.exec(
        ref, ["python3", "-c", "import os; print(os.readlink('/proc/self/ns/net'))"]
    )
    netns = inside.stdout.decode().strip()
    assert netns.startswith("net:[") and netns != os.readlink("/proc/self/ns/net")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(b"held open")
        assert client.recv(64) == b"held open"  # relayed: the connection is up end to end
        host_sockets = set()
        for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
            host_sockets |= {line.split()[9] for line in Path(table).read_text().splitlines()[1:]}
        in_workspace = [pid for pid in os.listdir("/proc") if pid.isdigit()
                        and _readlink(f"/proc/{pid}/ns/net") == netns]  # fmt: skip
        assert in_workspace  # the agent and the echo server, at least
        leaked = {pid: _socket_inodes(pid) & host_sockets for pid in in_workspace}
        assert not any(leaked.values()), leaked


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def test_the_agents_connect_carries_a_stream_over_its_own_connection(
    seed_dir: Path, workspaces: Workspaces
) -> None:
    """`connect`, for transports that cannot pass descriptors: the request's connection
    becomes the TCP stream, half-closes passed on."""
    ref, port = echo_workspace(workspaces, seed_dir, publish=False)
    agent = socket.socket(socket.AF_UNIX)
    with agent:
        agent.settimeout(30)
        agent.connect(socket_address(workspaces.resolve(ref).socket))
        p.send_json(agent, {"v": p.VERSION, "op": "connect", "port": port})
        assert p.recv_json(agent) == {"ok": True, "connected": True}
        agent.sendall(b"through the agent")
        agent.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := agent.recv(4096):
            got += chunk
    assert got == b"through the agent"

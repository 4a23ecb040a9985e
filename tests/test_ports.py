"""Published ports: a server in a workspace reached from the host at 127.0.0.1 only, through
the agent's socket, while the workspace keeps no network; closed when the workspace stops."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pyro_loop.errors import ConflictError, InvalidInputError
from pyro_loop.ports import Mapping, parse_publish
from pyro_loop.services import ServiceClient
from pyro_loop.workspace import Workspaces
from tests.conftest import commit_project, run_pyro
from tests.test_unprivileged import _as_nobody, nobody_env  # noqa: F401 - a fixture


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
from pyro_loop.ports import Mapping
from pyro_loop.services import ServiceClient
from pyro_loop.workspace import Workspaces

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


def test_as_an_ordinary_user(nobody_env: dict[str, Path]) -> None:  # noqa: F811
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

"""The agent runs on its floor: Debian 11's python3 (3.9), the oldest a workspace can have.

tests/test_quality.py checks the agent's code against 3.9 statically; this runs it there: a
`debian:11` workspace, built with mmdebstrap once for this module, and every kind of request
the agent serves.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyro_loop.runtime.doctor import mmdebstrap_mode
from pyro_loop.workspace.manager import Workspaces
from pyro_loop.workspace.ports import Mapping
from tests.helpers.oci_registry import free_port
from tests.helpers.project import delete_all_workspaces, write_seed_tree
from tests.helpers.sandbox import NEST

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def floor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspaces, str]]:
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (apt-get install mmdebstrap uidmap)")
    if mmdebstrap_mode() is None:
        pytest.skip("mmdebstrap cannot run for this user: no /etc/subuid range, no fakechroot")
    base = tmp_path_factory.mktemp("floor")
    ws = Workspaces(home=base / "home")
    record = ws.create(environment="debian:11", seed=write_seed_tree(base / "seed"))
    try:
        yield ws, record.id
    finally:
        delete_all_workspaces(ws)


def test_the_agent_runs_on_python_3_9(floor: tuple[Workspaces, str]) -> None:
    ws, ref = floor
    client = ws.client(ref)
    assert client.ping()["python"].startswith("3.9.")
    # exec: output and exit code, input, a terminal
    ran = ws.exec(ref, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (ran.exit_code, ran.stdout, ran.stderr) == (3, b"out\n", b"err\n")
    assert client.exec(["cat"], stdin=io.BytesIO(b"piped")).stdout == b"piped"
    with client.open_exec(["stty", "size"], tty=(24, 80)) as channel:
        assert channel.wait().stdout == b"24 80\r\n"


def test_the_file_tools_and_sync_work_on_python_3_9(
    floor: tuple[Workspaces, str], tmp_path: Path
) -> None:
    ws, ref = floor
    client = ws.client(ref)
    client.write("dir/f.txt", b"hello")
    assert client.read("dir/f.txt")[0] == b"hello"
    client.chmod("dir/f.txt", 0o600)
    assert client.stat("dir/f.txt")["entry"]["mode"] == 0o600
    client.symlink("dir/link", "f.txt")
    client.mkdir("dir/made/deeper")
    listed = {entry["path"] for entry in client.list("dir", recursive=True)["entries"]}
    assert listed == {f"/workspace/dir/{name}" for name in ("f.txt", "link", "made", "made/deeper")}
    # Sync in (put_tar) and out (tar, unpacked on the host by export).
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("dir/synced.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"synced"))
    assert client.put_tar(archive.getvalue())["files"] == 1
    ws.export(ref, "/workspace/dir", tmp_path / "out")
    assert (tmp_path / "out" / "synced.txt").read_bytes() == b"synced"
    assert (tmp_path / "out" / "link").readlink() == Path("f.txt")
    # A tree deeper than the recursion limit goes, with what else is removed.
    assert ws.exec(ref, ["python3", "-c", NEST, "deep", "1200"]).exit_code == 0
    assert client.remove_many(["deep", "gone"]) == {"removed": 1, "missing": 1, "errors": []}
    client.remove("dir", recursive=True)
    assert sorted(e["path"] for e in client.list("/workspace")["entries"]) == [
        "/workspace/README.md", "/workspace/run.sh", "/workspace/src",
    ]  # fmt: skip
    ws.snapshot_create(ref, "floor")  # the agent freezes the workspace for it


def test_services_and_a_published_port_work_on_python_3_9(floor: tuple[Workspaces, str]) -> None:
    ws, ref = floor
    services = ws.services(ref)
    port = free_port()
    services.service_start(
        "web", ["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    )
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)"
    while ws.exec(ref, ["python3", "-c", probe]).exit_code != 0:
        assert services.service_status("web")["state"] == "running", services.service_logs("web")
    assert any("http.server" in process["argv"] for process in services.ps())
    ws.publish(ref, [Mapping(port, port)])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/README.md", timeout=30) as reply:
        assert reply.read() == b"hello\n"
    assert b"GET /README.md" in services.service_logs("web")[0]
    assert services.service_stop("web")["state"] == "exited"

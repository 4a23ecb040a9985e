"""A real OCI registry on the loopback address: Debian's `docker-registry` (CNCF distribution).

Started with its own config and storage in a temporary directory, on a free port, optionally
with htpasswd basic auth; stopped (and its storage removed) afterwards. Used by the tests and
by bench/bench_cache.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BINARY = "docker-registry"
INSTALL = "apt-get install docker-registry apache2-utils"


@dataclass
class RegistryServer:
    port: int
    root: Path  # config, storage, htpasswd
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    def blob_files(self) -> list[Path]:
        """The files holding blob contents in the registry's storage."""
        return sorted(self.storage.rglob("blobs/sha256/*/*/data"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def running_registry(
    *, user: str | None = None, password: str | None = None
) -> Iterator[RegistryServer]:
    """A registry serving plain HTTP on 127.0.0.1; with `user`, it requires that login."""
    binary = shutil.which(BINARY)
    if binary is None:
        raise RuntimeError(f"{BINARY} is not installed ({INSTALL})")
    root = Path(tempfile.mkdtemp(prefix="pyro-registry-"))
    port = free_port()
    auth = ""
    if user is not None:
        # distribution accepts only bcrypt entries; htpasswd -B writes them.
        entry = subprocess.run(
            ["htpasswd", "-nbB", user, password or ""], capture_output=True, text=True, check=True
        ).stdout.strip()
        (root / "htpasswd").write_text(entry + "\n")
        auth = f"auth:\n  htpasswd:\n    realm: pyro-test\n    path: {root / 'htpasswd'}\n"
    (root / "config.yml").write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'storage'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth
    )
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen(
        [binary, "serve", str(root / "config.yml")], stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
    )  # fmt: skip
    server = RegistryServer(port, root, process)
    try:
        _wait_ready(server)
        yield server
    finally:
        server.stop()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: RegistryServer, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the registry exited: {(server.root / 'registry.log').read_text()[-500:]}"
            )
        try:
            with urllib.request.urlopen(f"http://{server.address}/v2/", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # 401 with auth on: it is serving
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the registry did not start serving in time")

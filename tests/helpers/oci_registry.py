"""A real OCI registry on the loopback address: Debian's `docker-registry` (CNCF distribution).

Started with its own config and storage in a temporary directory, on a free port, optionally
with htpasswd basic auth or with token auth from a small OAuth2 token service; stopped (and
its storage removed) afterwards. Used by the tests and
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
INSTALL = "apt-get install docker-registry apache2-utils openssl"


@dataclass
class RegistryServer:
    port: int
    root: Path  # config, storage, htpasswd
    process: subprocess.Popen[bytes]
    tokens: TokenService | None = None

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
    *, user: str | None = None, password: str | None = None, identity_token: str | None = None
) -> Iterator[RegistryServer]:
    """A registry serving plain HTTP on 127.0.0.1; with `user`, it requires that login; with
    `identity_token`, it requires access tokens from a TokenService that trades that one
    (the server's `tokens`)."""
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
    tokens = TokenService(root, identity_token) if identity_token is not None else None
    if tokens is not None:
        auth = tokens.registry_config()
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
    server = RegistryServer(port, root, process, tokens)
    try:
        _wait_ready(server)
        yield server
    finally:
        server.stop()
        if tokens is not None:
            tokens.stop()
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


class TokenService:
    """A registry's token service on loopback that speaks OAuth2's refresh-token grant (the
    distribution spec's `POST /token`): it trades `identity_token` for an access token, a
    JWT signed (RS256, by openssl) with a certificate the registry trusts, granting pull and
    push on the repository asked for. Anything else (a GET, another token) gets a 401.
    `posts` keeps the forms it was sent."""

    ISSUER, SERVICE = "pyro-test-tokens", "pyro-test-registry"

    def __init__(self, root: Path, identity_token: str) -> None:
        import http.server
        import threading

        self.root, self.identity_token = root, identity_token
        self.posts: list[dict[str, str]] = []
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=pyro-test-tokens", "-keyout", str(root / "token.key"),
             "-out", str(root / "token.pem")],
            check=True, capture_output=True,
        )  # fmt: skip
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                import urllib.parse

                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                service.posts.append(form)
                granted = form.get("grant_type") == "refresh_token" and (
                    form.get("refresh_token") == service.identity_token
                )
                self._answer(200 if granted else 401, service.access_token(form) if granted else "")

            def do_GET(self) -> None:
                self._answer(401, "")

            def _answer(self, status: int, token: str) -> None:
                import json

                body = json.dumps({"access_token": token, "expires_in": 300}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def registry_config(self) -> str:
        return (
            f"auth:\n  token:\n    realm: {self.realm}\n    service: {self.SERVICE}\n"
            f"    issuer: {self.ISSUER}\n    rootcertbundle: {self.root / 'token.pem'}\n"
        )

    def access_token(self, form: dict[str, str]) -> str:
        import base64
        import json

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.root / "token.pem"), "-outform", "DER"],
            check=True, capture_output=True,
        ).stdout  # fmt: skip
        access = []
        for scope in form.get("scope", "").split():
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        claims = {"iss": self.ISSUER, "sub": "ci", "aud": self.SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(),
                  "access": access}  # fmt: skip
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.root / "token.key")],
            input=signing_input.encode(), check=True, capture_output=True,
        ).stdout  # fmt: skip
        return f"{signing_input}.{b64(signature)}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""Sharing prepared layers through a real OCI registry (Debian's docker-registry) on loopback.

Two pyro homes stand for two machines: one prepares and pushes, the other pulls on its
prepare's miss. The registry's own storage is tampered with, cut short and stopped mid-pull.
"""

from __future__ import annotations

import base64
import importlib.metadata as md
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyro_loop.errors import InvalidInputError, PyroError
from pyro_loop.fs.util import dir_size
from pyro_loop.loop.prepare import PrepareResult, compute_inputs, prepare
from pyro_loop.loop.teamcache import project_snapshot
from pyro_loop.progress import Progress
from pyro_loop.project.config import load_project_config
from pyro_loop.project.discovery import find_project
from pyro_loop.project.trust import allow
from pyro_loop.remote import archive, inflate, share
from pyro_loop.remote.address import parse_remote
from pyro_loop.remote.credentials import find_credentials
from pyro_loop.remote.registry import RegistryClient
from pyro_loop.store.layers import LayerStore
from pyro_loop.store.treehash import tree_digest
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.oci_registry import RegistryServer, running_registry
from tests.helpers.project import DEPS_CONFIG, commit_project, git, run_pyro
from tests.helpers.tarmembers import member

SECRET = "s3cret-Pa55"
# More than the registry and the kernel buffer between them: a pull is still running when
# the registry stops.
BIG = 48 << 20


@pytest.fixture(scope="module")
def registry() -> Iterator[RegistryServer]:
    with running_registry() as server:
        yield server


@pytest.fixture(scope="module")
def auth_registry() -> Iterator[RegistryServer]:
    with running_registry(user="ci", password=SECRET) as server:
        yield server


def _project(tmp_path: Path, name: str, run: str | None = None) -> Path:
    config = DEPS_CONFIG if run is None else DEPS_CONFIG.replace(
        'run = ["mkdir -p .deps && cp requirements.txt .deps/installed.txt"]', f"run = [{run!r}]"
    )  # fmt: skip
    return commit_project(tmp_path / name, config, {"requirements.txt": f"{name}==1.0\n"})


def _snapshot(root: Path) -> share.Snapshot:
    project = find_project(root)
    config = load_project_config(project.root).config
    return project_snapshot(config, compute_inputs(project, config))


def _prepare(
    root: Path, home: Path, remote: str, *, push: bool = False
) -> tuple[PrepareResult, list[str]]:
    """`prepare` with its own home (a machine) and the cache remote; its progress lines."""
    lines: list[str] = []
    project = find_project(root)
    config = load_project_config(project.root).config
    mp = pytest.MonkeyPatch()
    mp.setenv("PYRO_CACHE_REMOTE", remote)
    try:
        ws = Workspaces(home=home)
        allow(home, config)  # each machine's user has read the file
        result = prepare(
            project, config, workspaces=ws,
            on_progress=lambda event: lines.append(event.text()), push=push,
        )  # fmt: skip
        for status in ws.list():
            ws.delete(status.record.id)
    finally:
        mp.undo()
    return result, lines


def test_push_then_a_second_machine_pulls_instead_of_building(
    tmp_path: Path, registry: RegistryServer
) -> None:
    root = _project(tmp_path, "shared")
    remote = f"{registry.address}/team/cache"
    first, _ = _prepare(root, tmp_path / "machine-a", remote, push=True)
    assert first.built == ["baseline", "dependencies"]
    assert first.pushed is not None
    assert first.pushed["layers"][0]["action"] == "sent"

    second, lines = _prepare(root, tmp_path / "machine-b", remote)
    assert second.pulled == ["dependencies"]
    assert "dependencies" not in second.built
    assert any("pulling the dependencies layer" in line for line in lines)
    key = second.key
    a, b = LayerStore(tmp_path / "machine-a"), LayerStore(tmp_path / "machine-b")
    assert tree_digest(b.require(key).tree) == tree_digest(a.require(key).tree)
    assert b.require(key).meta()["inputs"]["pulled_from"] == remote
    # The digest `verify` checks is the publisher's (no file was hashed), and holds.
    assert b.require(key).meta()["digest"] == a.require(key).meta()["digest"]
    assert b.verify(key) is None
    # The pulled layer is what workspaces stand on: the installed file is there.
    ws = Workspaces(home=tmp_path / "machine-b")
    record = ws.create(layers=[key])
    try:
        out = ws.exec(record.id, ["cat", "/workspace/.deps/installed.txt"])
        assert out.stdout == b"shared==1.0\n"
    finally:
        ws.delete(record.id)


def test_the_project_layer_is_built_by_each_machine_not_shared(
    tmp_path: Path, registry: RegistryServer
) -> None:
    """docs/cache.md: the project's own install is built over the sources but keyed by its
    metadata, so a shared copy would be another checkout's build; each machine builds it over
    the dependencies it pulled, from its own sources."""
    config = DEPS_CONFIG + 'project = ["mkdir -p .deps && cat src.txt > .deps/project.txt"]\n'
    files = {"requirements.txt": "p==1\n", "pyproject.toml": "", "src.txt": "a\n"}
    root = commit_project(tmp_path / "proj", config, files)
    remote = f"{registry.address}/team/proj"
    first, _ = _prepare(root, tmp_path / "machine-a", remote, push=True)
    assert first.built == ["baseline", "dependencies", "project"]
    assert first.pushed is not None
    assert [layer["kind"] for layer in first.pushed["layers"]] == ["dependencies"]
    (root / "src.txt").write_text("b\n")  # another checkout: same metadata, other sources
    git(root, "commit", "-qam", "b")
    second, _ = _prepare(root, tmp_path / "machine-b", remote)
    assert second.pulled == ["dependencies"]
    assert "project" in second.built
    project_key = compute_inputs(find_project(root), load_project_config(root).config).project_key
    assert project_key is not None
    tree = LayerStore(tmp_path / "machine-b").require(project_key).tree
    assert (tree / ".deps" / "project.txt").read_text() == "b\n"


def test_each_blob_is_sent_once(tmp_path: Path, registry: RegistryServer) -> None:
    root = _project(tmp_path, "once")
    remote = parse_remote(f"{registry.address}/team/once")
    _prepare(root, tmp_path / "home", str(remote))
    store, snapshot = LayerStore(tmp_path / "home"), _snapshot(root)
    assert share.push(store, remote, snapshot).layers[0]["action"] == "sent"
    blobs = registry.blob_files()
    again = share.push(store, remote, snapshot)
    assert again.layers[0]["action"] == "present"
    assert again.moved_bytes == 0
    assert registry.blob_files() == blobs
    # Another repository of the same registry has its own blobs: sent there.
    other = parse_remote(f"{registry.address}/team/other")
    assert share.push(store, other, snapshot).layers[0]["action"] in ("sent", "present")


def test_cli_push_pull_and_json(tmp_path: Path, registry: RegistryServer) -> None:
    root = _project(tmp_path, "cli")
    env = {"PYRO_CACHE_REMOTE": f"{registry.address}/team/cli"}
    assert run_pyro("prepare", "-C", str(root), env=env).returncode == 0
    pushed = run_pyro("cache", "push", "-C", str(root), "--json", env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["layers"][0]["action"] == "sent"
    fresh = {**env, "PYRO_HOME": str(tmp_path / "fresh")}
    assert run_pyro("trust", "-C", str(root), env=fresh).returncode == 0  # another machine
    pulled = run_pyro("cache", "pull", "-C", str(root), "--json", env=fresh)
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["layers"][0]["action"] == "pulled"
    warm = run_pyro("prepare", "-C", str(root), "--json", env=fresh)
    data = json.loads(warm.stdout)
    assert "dependencies" not in data["built"] and data["pulled"] == []
    missing = run_pyro(
        "cache",
        "pull",
        "-C",
        str(root),
        env={"PYRO_CACHE_REMOTE": f"{registry.address}/team/empty"},
    )
    assert missing.returncode == 1
    assert "has no snapshot" in missing.stderr


def test_prepare_push_with_json(tmp_path: Path, registry: RegistryServer) -> None:
    root = _project(tmp_path, "ci")
    env = {"PYRO_CACHE_REMOTE": f"{registry.address}/team/ci"}
    result = run_pyro("prepare", "--push", "-C", str(root), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pushed"]["layers"][0]["kind"] == "dependencies"


def test_remote_in_pyro_toml(tmp_path: Path, registry: RegistryServer) -> None:
    config = DEPS_CONFIG + f'\n[cache]\nremote = "{registry.address}/team/toml"\n'
    root = commit_project(tmp_path / "toml", config, {"requirements.txt": "toml==1\n"})
    pushed = run_pyro("prepare", "--push", "-C", str(root))
    assert pushed.returncode == 0, pushed.stderr
    for machine in ("b", "c"):  # each machine's user trusts the file
        trusted = run_pyro("trust", "-C", str(root), env={"PYRO_HOME": str(tmp_path / machine)})
        assert trusted.returncode == 0, trusted.stderr
    pulled = run_pyro("prepare", "-C", str(root), env={"PYRO_HOME": str(tmp_path / "b")})
    assert "pulled dependencies" in pulled.stdout
    # An empty PYRO_CACHE_REMOTE turns the project's remote off.
    off = run_pyro("prepare", "-C", str(root), env={"PYRO_HOME": str(tmp_path / "c"),
                                                     "PYRO_CACHE_REMOTE": ""})  # fmt: skip
    assert "built baseline, dependencies" in off.stdout and "remote" not in off.stderr


# -- authentication ------------------------------------------------------------------------


def _auth_config(path: Path, registry: str, password: str) -> Path:
    token = base64.b64encode(f"ci:{password}".encode()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": {registry: {"auth": token}}}))
    return path


def test_basic_auth_from_docker_config_and_podman_auth_file(
    tmp_path: Path, auth_registry: RegistryServer
) -> None:
    root = _project(tmp_path, "auth")
    remote = f"{auth_registry.address}/team/auth"
    docker = _auth_config(tmp_path / "docker" / "config.json", auth_registry.address, SECRET)
    env = {"PYRO_CACHE_REMOTE": remote, "DOCKER_CONFIG": str(docker.parent)}
    pushed = run_pyro("prepare", "--push", "-C", str(root), env=env)
    assert pushed.returncode == 0, pushed.stderr
    podman = _auth_config(tmp_path / "auth.json", auth_registry.address, SECRET)
    assert (
        run_pyro("trust", "-C", str(root), env={"PYRO_HOME": str(tmp_path / "b")}).returncode == 0
    )
    pulled = run_pyro("prepare", "-C", str(root), env={
        "PYRO_CACHE_REMOTE": remote, "REGISTRY_AUTH_FILE": str(podman),
        "PYRO_HOME": str(tmp_path / "b")})  # fmt: skip
    assert "pulled dependencies" in pulled.stdout, pulled.stderr
    for result in (pushed, pulled):
        assert SECRET not in result.stdout + result.stderr


def test_wrong_or_missing_login_is_one_line_and_a_local_build(
    tmp_path: Path, auth_registry: RegistryServer
) -> None:
    root = _project(tmp_path, "denied")
    remote = f"{auth_registry.address}/team/denied"
    wrong = run_pyro("prepare", "-C", str(root), env={
        "PYRO_CACHE_REMOTE": remote, "PYRO_CACHE_USERNAME": "ci",
        "PYRO_CACHE_PASSWORD": "not-" + SECRET})  # fmt: skip
    assert wrong.returncode == 0
    assert "refused the login from PYRO_CACHE_USERNAME" in wrong.stderr
    assert "built baseline, dependencies" in wrong.stdout
    assert SECRET not in wrong.stdout + wrong.stderr
    anonymous = run_pyro("cache", "push", "-C", str(root), env={"PYRO_CACHE_REMOTE": remote})
    assert anonymous.returncode == 1
    errors = [line for line in anonymous.stderr.splitlines() if "error" in line]
    assert len(errors) == 1
    assert "refused anonymous access" in anonymous.stderr


IDENTITY_TOKEN = "idt-0f1e2d3c4b5a"


def test_identity_token_is_exchanged_for_access_with_oauth2(tmp_path: Path) -> None:
    """`identitytoken` in docker's config.json (as `az acr login` writes it), and a
    credential helper answering the user `<token>`: pyro trades the token at the registry's
    token service with OAuth2's refresh-token grant, and never shows it."""
    with running_registry(identity_token=IDENTITY_TOKEN) as server:
        assert server.tokens is not None
        root = _project(tmp_path, "idtoken")
        remote = f"{server.address}/team/idtoken"
        docker = tmp_path / "docker" / "config.json"
        docker.parent.mkdir()
        entry = {"identitytoken": IDENTITY_TOKEN}
        docker.write_text(json.dumps({"auths": {server.address: entry}}))
        env = {"PYRO_CACHE_REMOTE": remote, "DOCKER_CONFIG": str(docker.parent)}
        pushed = run_pyro("prepare", "--push", "-C", str(root), env=env)
        assert pushed.returncode == 0, pushed.stderr
        assert server.tokens.posts and all(
            form["grant_type"] == "refresh_token" and form["refresh_token"] == IDENTITY_TOKEN
            for form in server.tokens.posts
        )
        # The registry names the actions in either order: compare them as a set.
        scopes = {(s.rpartition(":")[0], frozenset(s.rpartition(":")[2].split(",")))
                  for f in server.tokens.posts for s in f.get("scope", "").split()}  # fmt: skip
        assert ("repository:team/idtoken", frozenset({"pull", "push"})) in scopes

        # Another machine: the login comes from a credential helper (docker's protocol).
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        helper = bin_dir / "docker-credential-pyrotest"
        answer = json.dumps({"Username": "<token>", "Secret": IDENTITY_TOKEN})
        helper.write_text(f"#!/bin/sh\nread registry\necho '{answer}'\n")
        helper.chmod(0o755)
        (tmp_path / "helper" / "config.json").parent.mkdir()
        (tmp_path / "helper" / "config.json").write_text(json.dumps({"credsStore": "pyrotest"}))
        other = {"PYRO_CACHE_REMOTE": remote, "DOCKER_CONFIG": str(tmp_path / "helper"),
                 "PYRO_HOME": str(tmp_path / "b"),
                 "PATH": f"{bin_dir}:{os.environ['PATH']}"}  # fmt: skip
        assert run_pyro("trust", "-C", str(root), env=other).returncode == 0
        pulled = run_pyro("prepare", "-C", str(root), env=other)
        assert "pulled dependencies" in pulled.stdout, pulled.stderr

        # A token the service does not know: one line naming where it came from, and a
        # local build.
        docker.write_text(json.dumps({"auths": {server.address: {"identitytoken": "revoked"}}}))
        third = {**env, "PYRO_HOME": str(tmp_path / "c")}
        assert run_pyro("trust", "-C", str(root), env=third).returncode == 0
        refused = run_pyro("prepare", "-C", str(root), env=third)
        assert refused.returncode == 0, refused.stderr
        assert f"refused the login from {docker}" in refused.stderr
        assert "built baseline, dependencies" in refused.stdout
        for result in (pushed, pulled, refused):
            assert IDENTITY_TOKEN not in result.stdout + result.stderr


def test_credentials_order_and_secrecy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docker = _auth_config(tmp_path / "docker" / "config.json", "reg.example", "from-docker")
    monkeypatch.setenv("DOCKER_CONFIG", str(docker.parent))
    assert base64.b64decode(find_credentials("reg.example").basic).endswith(b"from-docker")
    podman = _auth_config(tmp_path / "auth.json", "reg.example", "from-podman")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(podman))
    found = find_credentials("reg.example")
    assert found is not None and base64.b64decode(found.basic).endswith(b"from-podman")
    assert "from-podman" not in repr(found) and found.basic not in repr(found)
    monkeypatch.setenv("PYRO_CACHE_USERNAME", "ci")
    monkeypatch.setenv("PYRO_CACHE_PASSWORD", "from-env")
    assert find_credentials("reg.example").source == "PYRO_CACHE_USERNAME"
    assert find_credentials("other.example").source == "PYRO_CACHE_USERNAME"
    monkeypatch.delenv("PYRO_CACHE_USERNAME")
    assert find_credentials("other.example") is None


def test_remote_addresses() -> None:
    assert parse_remote("127.0.0.1:5000/pyro").scheme == "http"
    assert parse_remote("localhost:5000/a/b").scheme == "http"
    assert parse_remote("[::1]:5000/pyro").scheme == "http"
    assert parse_remote("ghcr.io/acme/pyro-cache").scheme == "https"
    assert parse_remote("registry.lan:5000/pyro").scheme == "https"
    assert parse_remote("http://registry.lan:5000/pyro").scheme == "http"
    assert parse_remote("https://127.0.0.1:5000/pyro").scheme == "https"
    for bad in ("ghcr.io", "ghcr.io/UPPER", "ftp://x.io/a", "x.io/a b", "/a/b"):
        with pytest.raises(InvalidInputError):
            parse_remote(bad)


def test_https_is_required_unless_the_address_says_http(
    tmp_path: Path, registry: RegistryServer
) -> None:
    """The registry speaks plain HTTP: named with https:// (as any non-loopback registry is
    by default), pyro does not fall back to plain HTTP; it says what to do."""
    root = _project(tmp_path, "tls")
    with pytest.raises(PyroError, match="TLS failed") as refused:
        share.pull(LayerStore(tmp_path / "h"), parse_remote(f"https://{registry.address}/t/x"),
                   _snapshot(root))  # fmt: skip
    assert "http://" in (refused.value.hint or "")


def test_push_without_a_remote_fails_before_building(tmp_path: Path) -> None:
    root = _project(tmp_path, "noremote")
    result = run_pyro("prepare", "--push", "-C", str(root), env={"PYRO_CACHE_REMOTE": ""})
    assert result.returncode == 1
    assert "no cache remote is set" in result.stderr
    assert "running:" not in result.stderr  # nothing was built


def test_bad_remote_in_pyro_toml_names_the_line(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / ".pyro.toml").write_text('[cache]\nremote = "no repository"\n')
    result = run_pyro("prepare", "-C", str(root))
    assert result.returncode == 1
    assert ".pyro.toml:2: [cache] remote" in result.stderr


# -- trust ---------------------------------------------------------------------------------


def _pushed(
    tmp_path: Path, server: RegistryServer, name: str, run: str | None = None
) -> tuple[Path, share.Snapshot]:
    root = _project(tmp_path, name, run)
    _prepare(root, tmp_path / f"{name}-builder", f"{server.address}/team/{name}", push=True)
    return root, _snapshot(root)


def _blob_file(server: RegistryServer, snapshot: share.Snapshot, name: str) -> Path:
    client = RegistryClient(parse_remote(f"{server.address}/team/{name}"))
    manifest = client.get_manifest(snapshot.tag)
    assert manifest is not None
    digest = manifest["layers"][-1]["digest"].removeprefix("sha256:")
    return next(p for p in server.blob_files() if p.parent.name == digest)


def _nothing_left(home: Path, key: str) -> None:
    store = LayerStore(home)
    assert store.get(key) is None
    store.clean_leftovers()
    assert not store.tmp_dir.exists() or not any(store.tmp_dir.iterdir())


def test_tampered_blob_is_refused_and_leaves_nothing(
    tmp_path: Path, registry: RegistryServer
) -> None:
    root, snapshot = _pushed(tmp_path, registry, "tamper")
    blob = _blob_file(registry, snapshot, "tamper")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same length, one byte changed
    blob.write_bytes(bytes(data))
    home = tmp_path / "victim"
    remote = parse_remote(f"{registry.address}/team/tamper")
    with pytest.raises(PyroError, match="does not match its digest: refused"):
        share.pull(LayerStore(home), remote, snapshot)
    _nothing_left(home, snapshot.key)
    # prepare says so in one line and builds the layer itself.
    result, lines = _prepare(root, home, str(remote))
    assert "dependencies" in result.built
    assert any("does not match its digest" in line and "building locally" in line
               for line in lines)  # fmt: skip


def test_truncated_blob_is_refused(tmp_path: Path, registry: RegistryServer) -> None:
    _root, snapshot = _pushed(tmp_path, registry, "cut")
    blob = _blob_file(registry, snapshot, "cut")
    blob.write_bytes(blob.read_bytes()[:-7])
    home = tmp_path / "victim"
    with pytest.raises(PyroError, match="refused"):
        share.pull(LayerStore(home), parse_remote(f"{registry.address}/team/cut"), snapshot)
    _nothing_left(home, snapshot.key)


def _big_layer_command() -> str:
    # Incompressible, so the blob stays big: the registry is still sending when it stops.
    return f"mkdir -p .deps && head -c {BIG} /dev/urandom > .deps/big.bin"


def test_registry_stopped_mid_pull(tmp_path: Path) -> None:
    with running_registry() as server:
        root, snapshot = _pushed(tmp_path, server, "stop", _big_layer_command())
        home = tmp_path / "victim"

        def stop_at_first_progress(event: Progress) -> None:
            if event.done:  # the download has begun
                server.process.kill()

        remote = parse_remote(f"{server.address}/team/stop")
        with pytest.raises(PyroError) as refused:
            share.pull(LayerStore(home), remote, snapshot, on_progress=stop_at_first_progress)
        assert server.process.poll() is not None
        assert str(remote) in str(refused.value)
        _nothing_left(home, snapshot.key)
        # The registry gone: prepare says so in one line and builds locally.
        result, lines = _prepare(root, home, str(remote))
        assert "dependencies" in result.built
        assert any("unreachable" in line and "building locally" in line for line in lines)


KILLED_PULL = """
import os, signal, sys
from pathlib import Path
from pyro_loop.remote import share
from pyro_loop.remote.address import parse_remote
from pyro_loop.store.layers import LayerStore
from pyro_loop.project.trust import allow
snapshot = share.Snapshot(**__import__("json").loads(sys.argv[3]))
def die(event):
    if event.done:  # the download has begun
        os.kill(os.getpid(), signal.SIGKILL)
share.pull(LayerStore(Path(sys.argv[1])), parse_remote(sys.argv[2]), snapshot, on_progress=die)
"""


def test_a_pull_killed_half_way_leaves_nothing_trusted(
    tmp_path: Path, registry: RegistryServer
) -> None:
    _root, snapshot = _pushed(tmp_path, registry, "killed", _big_layer_command())
    home, remote = tmp_path / "victim", f"{registry.address}/team/killed"
    spec = json.dumps(snapshot.__dict__)
    killed = subprocess.run([sys.executable, "-c", KILLED_PULL, str(home), remote, spec],
                            capture_output=True, timeout=120, check=False)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    store = LayerStore(home)
    assert store.get(snapshot.key) is None
    assert any(store.tmp_dir.iterdir())  # the dead pull's download, never published
    # The next pull cleans up after it and succeeds.
    store.clean_leftovers()
    assert share.pull(store, parse_remote(remote), snapshot).layers[0]["action"] == "pulled"
    assert (store.require(snapshot.key).tree / ".deps" / "big.bin").stat().st_size == BIG


def test_manifest_naming_other_layers_is_refused(tmp_path: Path, registry: RegistryServer) -> None:
    _root, snapshot = _pushed(tmp_path, registry, "swap")
    other = share.Snapshot(key="ab" * 32, environment="host", layers=[("dependencies", "ab" * 32)])
    remote = parse_remote(f"{registry.address}/team/swap")
    client = RegistryClient(remote)
    manifest = client.get_manifest(snapshot.tag)
    assert manifest is not None
    client.put_manifest(manifest, other.tag)  # another key's tag, pointing at these layers
    with pytest.raises(PyroError, match="not the ones this project's inputs name"):
        share.pull(LayerStore(tmp_path / "victim"), remote, other)
    _nothing_left(tmp_path / "victim", "ab" * 32)


def test_a_false_tree_digest_in_the_manifest_is_what_verify_catches(
    tmp_path: Path, registry: RegistryServer
) -> None:
    """The pull takes the publisher's tree digest instead of hashing every file: one that
    does not describe the (checked) blob's tree fails `verify`, which makes the layer again."""
    _root, snapshot = _pushed(tmp_path, registry, "claim")
    remote = parse_remote(f"{registry.address}/team/claim")
    client = RegistryClient(remote)
    manifest = client.get_manifest(snapshot.tag)
    assert manifest is not None
    manifest["layers"][-1]["annotations"]["dev.pyro.layer.digest"] = "0" * 64
    client.put_manifest(manifest, snapshot.tag)
    store = LayerStore(tmp_path / "puller")
    share.pull(store, remote, snapshot)
    problem = store.verify(snapshot.key)
    assert problem is not None and problem.endswith("!= 000000000000"), problem


# -- what a pulled layer may take -------------------------------------------------------------


def _push_crafted(
    server: RegistryServer, name: str, snapshot: share.Snapshot, blob: bytes, tar_size: str | None
) -> share.Snapshot:
    """Push `blob` to the real registry as the snapshot's one layer, its manifest recording
    `tar_size` as the layer's unpacked size (None: not at all), as a hostile or broken
    pusher would."""
    import hashlib

    client = RegistryClient(parse_remote(f"{server.address}/team/{name}"))
    descriptors = []
    for data, media_type in ((blob, archive.MEDIA_TYPE), (b"{}", share.CONFIG_MEDIA_TYPE)):
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        staged = Path(tempfile.mkdtemp()) / "blob"
        staged.write_bytes(data)
        client.push_blob(str(staged), digest=digest, size=len(data), media_type=media_type)
        shutil.rmtree(staged.parent)
        descriptors.append({"mediaType": media_type, "digest": digest, "size": len(data)})
    layer, config = descriptors
    kind, key = snapshot.layers[-1]
    layer["annotations"] = {"dev.pyro.layer.kind": kind, "dev.pyro.layer.key": key}
    if tar_size is not None:
        layer["annotations"][share.TAR_SIZE] = tar_size
    client.put_manifest({"schemaVersion": 2, "mediaType": share.MANIFEST_MEDIA_TYPE,
                         "artifactType": share.ARTIFACT_TYPE, "config": config,
                         "layers": [layer]}, snapshot.tag)  # fmt: skip
    return snapshot


def _bomb(expands_to: int) -> tuple[bytes, int]:
    """A zstd blob of a tar holding one file of `expands_to` zero bytes: a few kilobytes
    that unpack to `expands_to`. Returns the blob and the tar's true length."""
    import zstandard

    out = io.BytesIO()
    info = tarfile.TarInfo("bomb.bin")
    info.size = expands_to
    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as stream:
        stream.write(info.tobuf(tarfile.PAX_FORMAT))
        zeros = bytes(1 << 20)
        for _ in range(expands_to >> 20):
            stream.write(zeros)
        stream.write(bytes(2 * tarfile.BLOCKSIZE))  # the end of the archive
    return out.getvalue(), tarfile.BLOCKSIZE * 3 + expands_to


def test_a_decompression_bomb_is_stopped_at_its_recorded_size(
    tmp_path: Path, registry: RegistryServer
) -> None:
    """A blob of a few kilobytes whose manifest says its layer is small, expanding to
    256 MiB: the pull stops as soon as it passes the recorded size, and keeps nothing."""
    root = _project(tmp_path, "bomb")
    blob, real_size = _bomb(256 << 20)
    assert len(blob) < 64 << 10 < real_size
    snapshot = _push_crafted(registry, "bomb", _snapshot(root), blob, tar_size="10240")
    home = tmp_path / "victim"
    remote = parse_remote(f"{registry.address}/team/bomb")
    written: list[int] = []

    def watch(_event: Progress) -> None:
        written.append(dir_size(LayerStore(home).tmp_dir))

    with pytest.raises(PyroError, match="unpacks to more than the 10240 bytes its manifest "
                       "records") as refused:  # fmt: skip
        share.pull(LayerStore(home), remote, snapshot, on_progress=watch)
    assert "\n" not in str(refused.value)
    _nothing_left(home, snapshot.key)
    # prepare says so in one line and builds the layer itself.
    result, lines = _prepare(root, home, str(remote))
    assert "dependencies" in result.built
    assert any("decompression bomb" in line and "building locally" in line for line in lines)
    # Its honest twin (the true size recorded) unpacks: the bound is the record, not a guess.
    honest = _push_crafted(registry, "bomb-honest", _snapshot(root), blob, str(real_size))
    fresh = LayerStore(tmp_path / "fresh")
    share.pull(fresh, parse_remote(f"{registry.address}/team/bomb-honest"), honest)
    assert (fresh.require(snapshot.key).tree / "bomb.bin").stat().st_size == 256 << 20


def test_a_layer_larger_than_the_free_disk_is_not_downloaded(
    tmp_path: Path, registry: RegistryServer
) -> None:
    root = _project(tmp_path, "huge")
    blob, _size = _bomb(1 << 20)
    snapshot = _push_crafted(registry, "huge", _snapshot(root), blob, tar_size=str(1 << 60))
    home = tmp_path / "victim"
    lines: list[Progress] = []
    with pytest.raises(PyroError, match=r"unpacks to .*, more than the .* the store's disk can "
                       r"spare \(512\.0 MB are kept free\): not pulled"):  # fmt: skip
        share.pull(LayerStore(home), parse_remote(f"{registry.address}/team/huge"), snapshot,
                   on_progress=lines.append)  # fmt: skip
    assert not any(event.done for event in lines)  # refused before the download
    _nothing_left(home, snapshot.key)


def test_a_layer_without_a_recorded_size_is_refused(
    tmp_path: Path, registry: RegistryServer
) -> None:
    root = _project(tmp_path, "unsized")
    blob, _size = _bomb(1 << 20)
    snapshot = _push_crafted(registry, "unsized", _snapshot(root), blob, tar_size=None)
    with pytest.raises(PyroError, match="does not record its unpacked size"):
        share.pull(LayerStore(tmp_path / "victim"),
                   parse_remote(f"{registry.address}/team/unsized"), snapshot)  # fmt: skip
    _nothing_left(tmp_path / "victim", snapshot.key)


def test_many_small_files_stop_before_the_disk_is_full(
    tmp_path: Path, registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer's tar undercounts what small files take on disk (a block each): the free
    space is watched while unpacking, on a real 32 MB file system, with 8 MB kept free."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited file system needs root")
    # 12,000 one-byte files: a 12 MB tar, 48 MB on disk.
    run = "mkdir -p .deps && seq 12000 | split -a 4 -l 1 - .deps/f"
    _root, snapshot = _pushed(tmp_path, registry, "small-files", run)
    monkeypatch.setattr(share, "FREE_SPACE_KEPT", 8 * 1000**2)
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "pyro-test", str(mount)],
                   check=True)  # fmt: skip
    try:
        home = mount / "home"
        remote = parse_remote(f"{registry.address}/team/small-files")
        with pytest.raises(PyroError, match=r"does not fit: unpacking it would leave less than "
                           r"8\.0 MB or 1000 files free"):  # fmt: skip
            share.pull(LayerStore(home), remote, snapshot)
        _nothing_left(home, snapshot.key)
        assert shutil.disk_usage(mount).free > 8 * 1000**2
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_an_archive_shorter_than_its_recorded_size_is_refused(tmp_path: Path) -> None:
    blob, tar_size = _zstd_tar((member("a", size=2), b"hi"))
    with pytest.raises(PyroError, match=f"unpacks to {tar_size} bytes, its manifest records"):
        archive.unpack(blob, tmp_path, tar_size=tar_size + 512)


def test_unreachable_registry_does_not_hang(tmp_path: Path) -> None:
    root = _project(tmp_path, "offline")
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        remote = f"127.0.0.1:{silent.getsockname()[1]}/team/offline"
        result = run_pyro("prepare", "-C", str(root), env={
            "PYRO_CACHE_REMOTE": remote, "PYRO_CACHE_READ_TIMEOUT": "1"}, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    remote_lines = [line for line in result.stderr.splitlines() if "unreachable" in line]
    assert len(remote_lines) == 1 and "building locally" in remote_lines[0]
    assert "built baseline, dependencies" in result.stdout


# -- the archive -----------------------------------------------------------------------------


def test_archive_round_trip_keeps_whiteouts_opaque_dirs_links_and_modes(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "opaque" / "sub").mkdir(parents=True)
    os.setxattr(tree / "opaque", "user.overlay.opaque", b"y")
    (tree / "run.sh").write_text("#!/bin/sh\n")
    (tree / "run.sh").chmod(0o755)
    (tree / "link").symlink_to("/usr/bin/python3")
    os.mknod(tree / "deleted", 0o20600, os.makedev(0, 0))
    unpacked, out = _round_trip(tree, tmp_path / "out")
    assert unpacked.size == dir_size(out) == len("#!/bin/sh\n")
    assert (out / "run.sh").stat().st_mtime == int((tree / "run.sh").stat().st_mtime)


def _round_trip(tree: Path, out: Path) -> tuple[archive.Unpacked, Path]:
    """`tree` packed as a layer blob and unpacked into `out`; the digest the unpacking
    computes as it writes is the one read back from either tree."""
    blob = io.BytesIO()
    tar_size = archive.pack(tree, blob)
    blob.seek(0)
    out.mkdir()
    unpacked = archive.unpack(blob, out, tar_size=tar_size)
    assert unpacked.digest == tree_digest(out) == tree_digest(tree)
    return unpacked, out


def test_archive_round_trip_of_a_deep_tree_with_long_and_odd_names(tmp_path: Path) -> None:
    # Many entries (the writing threads take them in batches, directories included), names
    # and link targets longer than a tar header's fields, names not in UTF-8, a file larger
    # than a decompressed chunk, an empty one, a time before 1970.
    tree = tmp_path / "tree"
    deep = tree / "/".join(f"level-{n}-" + "x" * 40 for n in range(6))
    deep.mkdir(parents=True)
    for d in range(40):
        (tree / f"pkg{d}").mkdir()
        for f in range(8):
            (tree / f"pkg{d}" / f"m{f}.py").write_text(f"# {d} {f}\n")
    (deep / ("long-name-" + "y" * 120)).write_bytes(b"deep")
    (deep / "link").symlink_to("/" + "t" * 150)
    (tree / "caf\u00e9.txt").write_text("\u00e9")
    (tree / os.fsdecode(b"raw-\xff")).write_bytes(b"raw")
    (tree / "big.bin").write_bytes(os.urandom(3 << 20))
    (tree / "empty").write_bytes(b"")
    os.utime(tree / "empty", (-5, -5))
    unpacked, out = _round_trip(tree, tmp_path / "out")
    assert unpacked.size == dir_size(out) == dir_size(tree)
    assert (out / "empty").stat().st_mtime == -5


def test_a_layer_of_many_pieces_keeps_every_body_intact(tmp_path: Path) -> None:
    # The stream is decompressed into a few buffers reused in turn: with three times as many
    # pieces as buffers, bodies and headers straddling them, and bodies larger than a
    # piece, every byte written is the archive's (the digests read back agree).
    import random

    rng = random.Random(17)
    tree = tmp_path / "tree"
    tree.mkdir()
    for n in range(90):
        size = rng.choice([0, 1, 511, 513, 4096, 70_000, 700_000, (1 << 20) + 3, 1_500_000])
        (tree / f"f{n:02}").write_bytes(rng.randbytes(size))
    for n in range(400):
        (tree / f"s{n:03}").write_bytes(rng.randbytes(rng.randrange(2000)))
    unpacked, _out = _round_trip(tree, tmp_path / "out")
    assert unpacked.size == dir_size(tree) > 3 * inflate._BUFFERS * inflate.PIECE


def test_modes_are_the_archive_s_whatever_the_umask(tmp_path: Path) -> None:
    # Files are created with their mode where the umask keeps it, chmodded where it does not.
    tree = tmp_path / "tree"
    tree.mkdir()
    for mode in (0o400, 0o444, 0o600, 0o644, 0o664, 0o700, 0o755, 0o775):
        (tree / oct(mode)).write_text("x")
        (tree / oct(mode)).chmod(mode)
    blob = io.BytesIO()
    tar_size = archive.pack(tree, blob)
    for umask in (0o022, 0o077, 0o277):
        blob.seek(0)
        out = tmp_path / f"out-{umask:o}"
        out.mkdir()
        old = os.umask(umask)
        try:
            unpacked = archive.unpack(blob, out, tar_size=tar_size)
        finally:
            os.umask(old)
        modes = {p.name: p.stat().st_mode & 0o7777 for p in out.iterdir()}
        # Group and other write permissions are never kept (safetar's rule).
        assert modes == {oct(m): m & 0o755 for m in (0o400, 0o444, 0o600, 0o644, 0o664, 0o700,
                                                     0o755, 0o775)}  # fmt: skip
        assert unpacked.digest == tree_digest(out)


def test_hard_links_unpack_as_links_to_the_same_file(tmp_path: Path) -> None:
    members = [(member("a", size=2), b"hi"), (member("b", tarfile.LNKTYPE, linkname="a"), b"")]
    digest = _unpack(_zstd_tar(*members), tmp_path).digest
    assert (tmp_path / "a").stat().st_ino == (tmp_path / "b").stat().st_ino
    assert digest == tree_digest(tmp_path)


def _zstd_tar(*members: tuple[tarfile.TarInfo, bytes]) -> tuple[io.BytesIO, int]:
    """A zstd-compressed tar of `members`, and the tar's length."""
    import zstandard

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return io.BytesIO(zstandard.ZstdCompressor().compress(raw.getvalue())), len(raw.getvalue())


def _unpack(blob: tuple[io.BytesIO, int], dest: Path) -> archive.Unpacked:
    return archive.unpack(blob[0], dest, tar_size=blob[1])


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([(member("/etc/passwd"), b"")], "escapes the tree"),
        ([(member("../up"), b"")], "escapes the tree"),
        ([(member("dev", tarfile.DIRTYPE), b""), (member("dev/sda", tarfile.BLKTYPE), b"")],
         "device or FIFO"),
        ([(member("out", tarfile.SYMTYPE, linkname="/etc"), b""), (member("out/x"), b"")],
         "not in a directory"),
        ([(member("x"), b""), (member(".wh.x"), b"")], "both present and whited out"),
        ([(member(".wh.x"), b""), (member("x"), b"")], "both present and whited out"),
        ([(member(".wh.d", tarfile.DIRTYPE), b"")], "named like a whiteout marker"),
        ([(member("a", size=2), b"hi"), (member("b", tarfile.LNKTYPE, linkname="../etc/passwd"),
          b"")], "escapes the tree"),
        ([(member("b", tarfile.LNKTYPE, linkname="a"), b""), (member("a", size=2), b"hi")],
         "not a file unpacked before"),
        ([(member("d", tarfile.DIRTYPE), b""), (member("d/f", tarfile.FIFOTYPE), b"")],
         "device or FIFO"),
        ([(member("d/f", size=2), b"hi")], "not in a directory"),
        ([(member("a", size=2), b"hi"), (member("a", size=2), b"hi")], "appears twice"),
    ],
)  # fmt: skip
def test_hostile_archives_are_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], reason: str
) -> None:
    with pytest.raises(PyroError, match=reason):
        _unpack(_zstd_tar(*members), tmp_path)


def test_set_id_bits_are_dropped(tmp_path: Path) -> None:
    _unpack(_zstd_tar((member("su", mode=0o4755, size=2), b"hi")), tmp_path)
    assert (tmp_path / "su").stat().st_mode & 0o7777 == 0o755


def test_a_conflict_found_by_a_writing_thread_stops_them_all(tmp_path: Path) -> None:
    # The whiteout and the directory it hides are made by two threads, with hundreds of
    # entries waiting behind them for directories: every thread gives up, none hangs.
    members = [(member(".wh.x"), b"")]
    for n in range(300):
        members.append((member(f"d{n}", tarfile.DIRTYPE), b""))
    members.append((member("x", tarfile.DIRTYPE), b""))
    for n in range(300):
        members.append((member(f"x/d{n}", tarfile.DIRTYPE), b""))
        members.append((member(f"x/d{n}/f", size=2), b"hi"))
    with pytest.raises(PyroError, match="'x' is both present and whited out"):
        _unpack(_zstd_tar(*members), tmp_path)


def test_a_stream_cut_short_is_refused(tmp_path: Path) -> None:
    import zstandard

    raw = _zstd_tar((member("a", size=2000), b"x" * 2000), (member("b"), b""))[0]
    tar = zstandard.ZstdDecompressor().decompressobj().decompress(raw.getvalue())
    for cut in (300, 1500, 2560):  # in a header, in a body, before the end of the archive
        dest = tmp_path / str(cut)
        dest.mkdir()
        blob = io.BytesIO(zstandard.ZstdCompressor().compress(tar[:cut]))
        with pytest.raises(PyroError, match="not a whole tar archive"):
            archive.unpack(blob, dest, tar_size=cut)


def test_an_archive_not_written_by_pyro_is_refused(tmp_path: Path) -> None:
    import zstandard

    (tmp_path / "f").write_text("x")
    tar = subprocess.run(["tar", "--format=gnu", "-C", str(tmp_path), "-cf", "-", "f"],
                         capture_output=True, check=True).stdout  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PyroError, match="not a whole tar archive"):
        archive.unpack(io.BytesIO(zstandard.ZstdCompressor().compress(tar)), out,
                       tar_size=len(tar))  # fmt: skip
    assert not any(out.iterdir())


def test_damaged_stream_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PyroError, match="refusing the pulled layer"):
        archive.unpack(io.BytesIO(b"\x28\xb5\x2f\xfd not really zstd"), tmp_path, tar_size=1024)


# -- a layer built by root, pulled by an ordinary user --------------------------------------

NOBODY = 65534
AS_NOBODY = """
import json, os, sys
from pathlib import Path
from pyro_loop.project.config import load_project_config
from pyro_loop.loop.prepare import prepare
from pyro_loop.project.discovery import find_project
from pyro_loop.project.trust import allow
from pyro_loop.workspace.manager import Workspaces

project = find_project(Path(sys.argv[1]))
ws = Workspaces()
lines = []
config = load_project_config(project.root).config
allow(ws.home, config)  # this user has read the file
result = prepare(project, config, workspaces=ws,
                 on_progress=lambda event: lines.append(event.message))
record = ws.create(layers=[result.dependencies_layer])
try:
    out = ws.exec(record.id, ["cat", "/workspace/.deps/installed.txt"]).stdout.decode()
finally:
    ws.delete(record.id)
tree = ws.store.require(result.dependencies_layer).tree
owners = {os.lstat(os.path.join(d, n)).st_uid for d, ds, fs in os.walk(tree) for n in ds + fs}
print(json.dumps({"pulled": result.pulled, "built": result.built, "out": out,
                  "owners": sorted(owners), "uid": os.getuid(), "lines": lines}))
"""


def _copy_distributions(names: list[str], dest: Path) -> None:
    """Copy installed distributions and what they require (their RECORD's files) to `dest`,
    for an interpreter that has none of them (the system python, as `nobody`)."""
    todo, done = list(names), set()
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in done:
            continue
        done.add(name)
        dist = md.distribution(name)
        for file in dist.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue
            target = dest / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file.locate(), target)
        for requirement in dist.requires or []:
            if "extra ==" not in requirement:
                todo.append(re.split(r"[^A-Za-z0-9_.-]", requirement, maxsplit=1)[0])


def test_layer_built_by_root_is_pulled_by_an_ordinary_user(
    tmp_path: Path, registry: RegistryServer
) -> None:
    if os.geteuid() != 0:
        pytest.skip("run as an ordinary user already: every other test here proves it")
    base = Path(tempfile.mkdtemp(prefix="pyro-remote-nobody-", dir="/tmp"))
    try:
        lib = base / "lib"
        package = Path(__file__).resolve().parents[2] / "src" / "pyro_loop"
        shutil.copytree(package, lib / "pyro_loop",
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        _copy_distributions(["oras", "zstandard"], lib)
        project = base / "project"  # no git: the baseline would need pygit2 as well
        project.mkdir()
        (project / "requirements.txt").write_text("rooted==1\n")
        (project / ".pyro.toml").write_text(DEPS_CONFIG)
        for path in [base, *base.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        remote = f"{registry.address}/team/rooted"
        built, _ = _prepare(project, tmp_path / "root-home", remote, push=True)
        assert built.built == ["dependencies"]
        home = base / "home"
        home.mkdir()
        os.chown(home, NOBODY, NOBODY)
        (base / "script.py").write_text(AS_NOBODY)
        result = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
             "/usr/bin/python3", str(base / "script.py"), str(project)],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(lib), "PYRO_HOME": str(home),
                 "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8",
                 "PYRO_CACHE_REMOTE": remote},
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        seen = json.loads(result.stdout)
        assert seen["uid"] == NOBODY
        assert seen["pulled"] == ["dependencies"] and "dependencies" not in seen["built"]
        assert seen["out"] == "rooted==1\n"
        assert seen["owners"] == [NOBODY]
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _stand_ins(store: LayerStore, snapshot: share.Snapshot) -> None:
    """A small layer under each key the snapshot names (building debian:12 takes a minute,
    and a tool comes from PyPI)."""
    for kind, key in snapshot.layers:
        with store.staging() as staging:
            (staging / "tree").mkdir()
            (staging / "tree" / f"{kind}.txt").write_text(kind)
            store.publish(staging / "tree", kind=kind, key=key)


@pytest.mark.parametrize(
    ("extra", "kinds"),
    [
        ('[environment]\nbase = "debian:12"\n', ["environment", "dependencies"]),
        ('[tools]\nuv = "0.4.30"\n', ["tool", "dependencies"]),
    ],
)
def test_environment_and_tool_layers_are_shared_with_the_snapshot(
    tmp_path: Path, registry: RegistryServer, extra: str, kinds: list[str]
) -> None:
    root = commit_project(tmp_path / "p", DEPS_CONFIG + "\n" + extra, {"requirements.txt": "x\n"})
    snapshot = _snapshot(root)
    assert [kind for kind, _key in snapshot.layers] == kinds
    _stand_ins(LayerStore(tmp_path / "builder"), snapshot)
    remote = parse_remote(f"{registry.address}/team/{kinds[0]}")
    share.push(LayerStore(tmp_path / "builder"), remote, snapshot)
    manifest = RegistryClient(remote).get_manifest(snapshot.tag)
    assert manifest is not None
    assert json.loads(manifest["annotations"]["dev.pyro.lockfiles"]) == {
        "requirements.txt": snapshot.inputs["keys"]["requirements.txt"]
    }
    if kinds[0] == "environment":
        assert snapshot.tag.endswith("-" + os.uname().machine)  # self-contained: no host
        assert manifest["annotations"]["dev.pyro.environment"] == "debian:12"

    # prepare pulls them all: it builds neither the environment nor the tool.
    result, _lines = _prepare(root, tmp_path / "puller", str(remote))
    assert result.pulled == ["dependencies"] and result.built == ["baseline"]
    pulled = LayerStore(tmp_path / "puller")
    for kind, key in snapshot.layers:
        layer = pulled.require(key)
        assert (layer.tree / f"{kind}.txt").read_text() == kind
        assert layer.meta()["kind"] == kind

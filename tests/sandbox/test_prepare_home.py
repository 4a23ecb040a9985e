"""What prepare's commands install outside /workspace, what they get from the host, and the
download caches shared between prepares. Real sandboxes; the commands write files where the
installers would (no network needed)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pyro_loop.loop.downloads import CACHES, cache_root
from pyro_loop.loop.hostenv import COPIES_DIR, host_environment
from pyro_loop.loop.prepare import prepare
from pyro_loop.project.config import load_project_config
from pyro_loop.project.discovery import find_project
from pyro_loop.runtime import HOME_DIR
from pyro_loop.store.layercopy import adopt_upper
from pyro_loop.store.overlay import is_whiteout
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.project import commit_project

# Where poetry, cargo and Go put what they install by default, relative to HOME.
HOME_INSTALLS = (
    ".cache/pypoetry/virtualenvs/app-py3.11/bin/app-tool",
    ".cargo/registry/cache/index.crates.io-6f17d22bba15001f/serde-1.0.0.crate",
    "go/pkg/mod/golang.org/x/text@v0.14.0/go.mod",
)


def _project(root: Path, run: list[str], files: dict[str, str] | None = None) -> Path:
    commands = ", ".join(f"'{c}'" for c in run)
    config = f'[prepare]\nkeys = ["deps.lock"]\nrun = [{commands}]\ntimeout = 60\n'
    return commit_project(root, config, {"deps.lock": "a==1\n", **(files or {})})


def _workspace(repo: Path, workspaces: Workspaces) -> str:
    project = find_project(repo)
    result = prepare(project, load_project_config(repo).config, workspaces=workspaces)
    assert result.dependencies_layer and result.baseline_layer
    return workspaces.create(layers=[result.baseline_layer, result.dependencies_layer]).id


def _sh(workspaces: Workspaces, ws_id: str, command: str) -> str:
    result = workspaces.exec(ws_id, ["sh", "-c", command])
    assert result.exit_code == 0, result.stderr
    return result.stdout.decode()


def test_what_prepare_installs_in_the_home_is_in_the_snapshot(
    tmp_path: Path, workspaces: Workspaces
) -> None:
    install = " && ".join(
        f'mkdir -p "$HOME/{Path(p).parent}" && echo installed > "$HOME/{p}"' for p in HOME_INSTALLS
    )
    ws_id = _workspace(_project(tmp_path / "repo", [install]), workspaces)
    for path in HOME_INSTALLS:
        assert _sh(workspaces, ws_id, f'cat "$HOME/{path}"') == "installed\n", path
    # The home is not part of the project's files, nor of what the workspace changed.
    assert _sh(workspaces, ws_id, f"ls -A /workspace/{HOME_DIR}") == ""
    assert workspaces.changes(ws_id) == []


def test_a_workspace_writes_its_home_as_changes_reset_throws_away(
    tmp_path: Path, workspaces: Workspaces
) -> None:
    ws_id = _workspace(_project(tmp_path / "repo", ["mkdir -p .venv"]), workspaces)
    _sh(workspaces, ws_id, "echo 1 > ~/.python_history && echo new > out.txt")
    assert [c.path for c in workspaces.changes(ws_id)] == ["out.txt"]
    workspaces.reset(ws_id)
    assert _sh(workspaces, ws_id, "ls -A ~") == ""


def test_a_symlinked_home_in_the_repository_cannot_point_the_home_outside(
    tmp_path: Path, workspaces: Workspaces
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = _project(tmp_path / "repo", ["true"])
    (repo / HOME_DIR).symlink_to(outside)
    from tests.helpers.project import git

    git(repo, "add", HOME_DIR)
    git(repo, "commit", "-qm", "home link")
    ws_id = _workspace(repo, workspaces)
    _sh(workspaces, ws_id, "echo escaped > ~/probe")
    assert list(outside.iterdir()) == []


def test_proxy_certificate_and_index_variables_reach_prepare(
    tmp_path: Path, workspaces: Workspaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "corp-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\ncorp\n")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.internal")
    monkeypatch.setenv("PIP_INDEX_URL", "https://pypi.internal/simple")
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", "/etc/hostname")  # shown as it is (host /etc)
    monkeypatch.setenv("UNRELATED_SECRET", "never")
    record = 'mkdir -p .seen && env > .seen/env && cat "$SSL_CERT_FILE" > .seen/bundle'
    ws_id = _workspace(_project(tmp_path / "repo", [record]), workspaces)
    env = dict(line.split("=", 1) for line in _sh(workspaces, ws_id, "cat .seen/env").splitlines())
    assert env["HTTPS_PROXY"] == "http://proxy.internal:3128"
    assert env["NO_PROXY"] == "localhost,.internal"
    assert env["PIP_INDEX_URL"] == "https://pypi.internal/simple"
    assert env["SSL_CERT_FILE"] == f"{COPIES_DIR}/SSL_CERT_FILE"
    assert env["NODE_EXTRA_CA_CERTS"] == "/etc/hostname"
    assert "UNRELATED_SECRET" not in env
    assert _sh(workspaces, ws_id, "cat .seen/bundle") == bundle.read_text()


def test_host_environment_hands_over_only_files_the_sandbox_cannot_see(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    host = host_environment(
        ["MY_TOKEN"],
        environ={
            "SSL_CERT_FILE": str(bundle),
            "REQUESTS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",
            "PIP_FIND_LINKS": "https://wheels.internal/",
            "CURL_CA_BUNDLE": str(tmp_path / "missing.pem"),
            "MY_TOKEN": "t",
            "HOME": "/root",
        },
    )
    assert host.env == {
        "SSL_CERT_FILE": f"{COPIES_DIR}/SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",
        "PIP_FIND_LINKS": "https://wheels.internal/",
        "CURL_CA_BUNDLE": str(tmp_path / "missing.pem"),
        "MY_TOKEN": "t",
    }
    assert [(m.source, m.target) for m in host.mounts] == [
        (str(bundle), f"{COPIES_DIR}/SSL_CERT_FILE")
    ]


def test_download_caches_outlive_a_prepare_and_stay_out_of_layers(
    tmp_path: Path, workspaces: Workspaces
) -> None:
    # The first project's install fills pip's cache; the second (other keys) finds it there.
    fill = 'echo wheel > "$HOME/.cache/pip/iniconfig.whl" && mkdir -p .venv'
    first = _workspace(_project(tmp_path / "one", [fill]), workspaces)
    use = 'mkdir -p .seen && cp "$HOME/.cache/pip/iniconfig.whl" .seen/'
    second = _workspace(_project(tmp_path / "two", [use], {"other": "x"}), workspaces)
    assert _sh(workspaces, second, "cat .seen/iniconfig.whl") == "wheel\n"
    assert (cache_root(workspaces.home) / "pip" / "iniconfig.whl").read_text() == "wheel\n"
    # Neither the layers nor the workspaces hold the cache's contents.
    for ws_id in (first, second):
        assert _sh(workspaces, ws_id, f"ls -A ~/{CACHES['pip']} 2>/dev/null || true") == ""
    layers = workspaces.store.list()
    assert not any((layer.tree / HOME_DIR / CACHES["pip"] / "iniconfig.whl").exists()
                   for layer in layers)  # fmt: skip


def test_adopting_an_upper_dir_keeps_overlay_marks_and_drops_what_a_layer_must_not_hold(
    tmp_path: Path,
) -> None:
    upper = tmp_path / "upper"
    (upper / "bin").mkdir(parents=True)
    (upper / "bin" / "tool").write_text("#!/bin/sh\n")
    (upper / "bin" / "tool").chmod(0o4755)
    (upper / "gone").mkdir()
    os.mkfifo(upper / "pipe")
    marks = True
    try:
        os.setxattr(upper / "gone", "user.overlay.opaque", b"y")
        os.setxattr(upper / "bin", "user.overlay.origin", b"x")
    except OSError:
        marks = False  # no user xattrs on this filesystem: the rest still holds
    if os.getuid() == 0:
        os.mknod(upper / "deleted", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    layer = tmp_path / "layer"
    assert adopt_upper(upper, layer)
    assert not upper.exists()
    assert stat.S_IMODE((layer / "bin" / "tool").stat().st_mode) == 0o755
    assert not (layer / "pipe").exists()
    if os.getuid() == 0:
        assert is_whiteout((layer / "deleted").lstat())
    if marks:
        assert os.getxattr(layer / "gone", "user.overlay.opaque") == b"y"
        assert "user.overlay.origin" not in os.listxattr(layer / "bin")


def test_a_repository_never_fills_the_home(tmp_path: Path, workspaces: Workspaces) -> None:
    """Neither a committed `.pyro-home/` nor one in the working tree reaches HOME."""
    from pyro_loop.loop.live import ProjectLoop

    repo = _project(tmp_path / "repo", ["true"], {f"{HOME_DIR}/.npmrc": "registry=evil\n"})
    (repo / HOME_DIR / ".bashrc").write_text("echo planted\n")  # not committed: synced?
    loop = ProjectLoop(find_project(repo), load_project_config(repo).config, workspaces)
    out = loop.exec(["sh", "-c", "ls -A ~; ls -A /workspace"])
    assert out.exit_code == 0, out.stderr
    assert b".npmrc" not in out.stdout and b".bashrc" not in out.stdout

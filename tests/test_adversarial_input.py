"""Hostile input: ids, names, layer keys, mount options and argv that looks like options.

Each case goes through the real entry point (the CLI, or the library where the CLI cannot
express it), checks that it is refused with a one-line error before anything touches a
path or a mount, and that nothing on the host changed: no workspace made, no file removed.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

from pyro_loop.errors import InvalidInputError
from pyro_loop.overlay import overlay_options
from pyro_loop.store import check_key
from pyro_loop.workspace import Workspaces
from tests.conftest import commit_project, git, run_pyro
from tests.test_isolation import tree_state


@pytest.fixture
def canary(tmp_path: Path, pyro_home: Path) -> Path:
    """A directory beside the store (and one inside it) that traversal would reach."""
    pyro_home.mkdir(parents=True, exist_ok=True)
    (pyro_home / "workspaces").mkdir(exist_ok=True)
    (pyro_home / "workspaces" / "victim").mkdir()
    (pyro_home / "workspaces" / "victim" / "keep").write_text("keep\n")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "workspace.json").write_text("{}\n")
    return tmp_path


def _no_workspaces() -> bool:
    return json.loads(run_pyro("workspace", "list", "--json").stdout)["workspaces"] == []


@pytest.mark.parametrize(
    "ref",
    ["..", "../..", "../../precious", "/etc", ".", "victim/../..", "", ".hidden", "a/b"],
)
@pytest.mark.parametrize("command", ["delete", "status", "stop"])
def test_workspace_refs_that_traverse_are_refused(
    canary: Path, pyro_home: Path, command: str, ref: str
) -> None:
    victim, precious = pyro_home / "workspaces" / "victim", canary / "precious"
    before = (tree_state(victim), tree_state(precious))
    result = run_pyro("workspace", command, ref)
    assert result.returncode in (1, 2), result  # refused (or a usage error), never a crash
    assert "Traceback" not in result.stderr
    assert (tree_state(victim), tree_state(precious)) == before


@pytest.mark.parametrize(
    "name", ["../x", "-rf", "a,b", "a:b", "a\\b", "a\nb", "abc\n", "x" * 65, "", "/etc", "a b"]
)
def test_bad_workspace_names_are_refused_before_anything_is_made(seed_dir: Path, name: str) -> None:
    result = run_pyro("workspace", "create", "--seed-path", str(seed_dir), f"--name={name}")
    assert result.returncode == 1, result
    assert result.stderr.startswith("pyro: error: invalid workspace name")
    assert _no_workspaces()


@pytest.mark.parametrize(
    "key",
    ["abc,lowerdir=/", "../../../etc", "a" * 16 + ":/", "A" * 64, "0" * 15, "0" * 65,
     "0" * 16 + "\n", "0" * 16 + "\\"],
)  # fmt: skip
def test_layer_keys_that_would_inject_mount_options_are_refused(
    workspaces: Workspaces, key: str
) -> None:
    with pytest.raises(InvalidInputError, match="not a layer key"):
        check_key(key)
    with pytest.raises(InvalidInputError):
        workspaces.create(layers=[key])
    assert workspaces.list() == []


@pytest.mark.parametrize("package", ["git\n", "-oAPT::x=1", "git,evil", "../x", ""])
def test_bad_package_names_are_refused_before_any_build(
    workspaces: Workspaces, package: str
) -> None:
    with pytest.raises(InvalidInputError):
        workspaces.create(environment="debian:bookworm", packages=[package])
    assert workspaces.list() == []
    assert not workspaces.store.layers_dir.exists() or not any(
        workspaces.store.layers_dir.iterdir()
    )


@pytest.mark.parametrize("bad", ["a,upperdir=/", "a:b", "a\\b", "a\nb", ""])
def test_overlay_options_refuse_separator_characters(bad: str) -> None:
    for lowers, upper, work in (([bad], "u", "w"), (["l"], bad, "w"), (["l"], "u", bad)):
        with pytest.raises(ValueError, match="overlay mount"):
            overlay_options(lowers, upper, work)


@pytest.mark.parametrize("name", ["../up", "a/b", "-x", "baseline", ".", "x" * 65])
def test_bad_snapshot_names_are_refused(workspaces: Workspaces, seed_dir: Path, name: str) -> None:
    ws = workspaces.create(seed=seed_dir)
    layers_before = sorted(p.name for p in workspaces.store.layers_dir.iterdir())
    with pytest.raises(InvalidInputError):
        workspaces.snapshot_create(ws.id, name)
    assert workspaces.snapshot_list(ws.id)[-1].name == "baseline"
    assert sorted(p.name for p in workspaces.store.layers_dir.iterdir()) == layers_before


def test_argv_that_looks_like_options_reaches_the_workspace_verbatim(
    seed_dir: Path, tmp_path: Path
) -> None:
    ws = run_pyro("workspace", "create", "--seed-path", str(seed_dir), "--id-only")
    assert ws.returncode == 0, ws.stderr
    ws_id = ws.stdout.strip()
    try:
        # After `--`, nothing is a pyro option: `--version` is the command's own argv.
        echoed = run_pyro("workspace", "exec", ws_id, "--", "echo", "--json", "--help", "-rf")
        assert echoed.returncode == 0 and echoed.stdout == "--json --help -rf\n"
        missing = run_pyro("workspace", "exec", ws_id, "--", "--version")
        assert missing.returncode == 127  # run as a program named --version: not found
        # Bad environment names and labels are refused before the command starts.
        bad_env = run_pyro("workspace", "exec", ws_id, "--env", "A B=1", "--", "true")
        assert bad_env.returncode == 1 and "invalid environment variable" in bad_env.stderr
    finally:
        run_pyro("workspace", "delete", ws_id)
    bad_label = run_pyro("workspace", "create", "--label", "=x", "--seed-path", str(seed_dir))
    assert bad_label.returncode == 1 and "invalid label" in bad_label.stderr
    assert _no_workspaces()


# -- a repository's symlinks (keying files) ----------------------------------------------------


def _repo_with_links(tmp_path: Path, config: str, links: dict[str, str]) -> Path:
    """A committed project whose files in `links` are symlinks (path -> target)."""
    repo = commit_project(tmp_path / "repo", config, {"app.py": "print('hello')\n"})
    for rel, target in links.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).symlink_to(target)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "links")
    return repo


def _files_holding(root: Path, needle: bytes) -> list[str]:
    """Every regular file below `root` (links not followed) whose content has `needle`."""
    found = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as f:
                        if needle in f.read():
                            found.append(path)
    return found


SECRET = b"aws_secret_access_key = pyro-test-not-a-real-key-7f3a\n"
COPY_KEYS = 'run = ["mkdir -p .deps && cat {key} > .deps/seen"]\n'


@pytest.mark.parametrize(
    ("key", "declared", "target"),
    [
        ("requirements.txt", True, "../secret/credentials"),  # relative, climbing out
        ("package-lock.json", False, "{secret}"),  # absolute, found by npm's detection
        ("requirements.txt", True, ".git/config"),  # inside, but git's own (remote tokens)
    ],
)
def test_a_keying_file_linked_out_of_the_repository_is_never_read(
    tmp_path: Path, pyro_home: Path, key: str, declared: bool, target: str
) -> None:
    (tmp_path / "secret").mkdir()
    secret = tmp_path / "secret" / "credentials"
    secret.write_bytes(SECRET)
    config = "[prepare]\n" + (f'keys = ["{key}"]\n' if declared else "")
    config += COPY_KEYS.format(key=key)
    repo = _repo_with_links(tmp_path, config, {key: target.format(secret=secret)})
    if target.startswith(".git"):
        git(repo, "config", "remote.origin.url", "https://u:" + SECRET.decode().strip() + "@x")
    result = run_pyro("prepare", "-C", str(repo))
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"pyro: error: {key} is a symbolic link to "), lines
    assert lines[0].endswith(": pyro never reads through it"), lines
    assert "Traceback" not in result.stderr
    assert _files_holding(pyro_home, SECRET.strip()) == []


def test_a_keying_file_linked_inside_the_repository_is_read_from_its_target(
    tmp_path: Path,
) -> None:
    config = '[prepare]\nkeys = ["requirements.txt"]\n' + COPY_KEYS.format(key="requirements.txt")
    repo = _repo_with_links(tmp_path, config, {"requirements.txt": "reqs/base.txt"})
    (repo / "reqs").mkdir()
    (repo / "reqs" / "base.txt").write_text("requests==2.32.0\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    result = run_pyro("prepare", "-C", str(repo))
    assert result.returncode == 0, result.stderr
    up = run_pyro("exec", "-C", str(repo), "--", "cat", ".deps/seen")
    assert up.returncode == 0 and up.stdout == "requests==2.32.0\n", up

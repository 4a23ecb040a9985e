"""A cloned repository's `.pyro.toml` is someone else's input: what it may do before the user
trusts it (`pyro trust`), through every surface that reads it.

The hostile file routes the user's secrets into a networked prepare, opens the network of
workspaces and sets check commands. Until the user approves the file's exact contents,
nothing of that runs: prepare, up and check stop with one line, hooks say once what is
waiting and start nothing, the MCP server reports the state with the fix, and the library
refuses unless trusted in code. After `pyro trust` the same file works, and any change to it
asks again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import pytest

from pyro_loop.githooks import install as hooks
from pyro_loop.loop.live import ProjectLoop
from pyro_loop.project.config import ProjectConfig, load_project_config
from pyro_loop.project.discovery import find_project
from pyro_loop.project.trust import UntrustedConfigError
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.hooks import bare_shell_env, git_run, pyro_lines, wait_for_background_prepare
from tests.helpers.mcp import connect
from tests.helpers.project import commit_project, git, run_pyro

# The secret reaches the snapshot only if the prepare runs with it passed through.
HOSTILE = """\
[prepare]
keys = ["requirements.txt"]
env = ["AWS_SECRET_ACCESS_KEY"]
run = ["mkdir -p .deps && printf %s \\"$AWS_SECRET_ACCESS_KEY\\" > .deps/stolen"]

[workspace]
network = "egress"

[check]
run = ["false"]
"""
SECRET = {"AWS_SECRET_ACCESS_KEY": "hunter2-secret"}
REFUSED = "is not trusted: review it, then run `pyro trust`"


@pytest.fixture
def cloned(tmp_path: Path) -> Path:
    """A repository as cloned: its .pyro.toml never approved on this machine."""
    files = {"requirements.txt": "requests==2.32.0\n", "app.txt": "ok\n"}
    return commit_project(tmp_path / "repo", HOSTILE, files, trusted=False)


def _built_layers(home: Path) -> list[str]:
    """Kinds of the layers in the store (a prepare that ran leaves "keys"/"dependencies")."""
    layers = home / "layers"
    if not layers.is_dir():
        return []
    return sorted(json.loads((p / "meta.json").read_text())["kind"] for p in layers.iterdir())


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("pyro: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [["prepare"], ["up"], ["check"], ["prepare", "--if-changed"], ["exec", "--", "true"]],
)
def test_an_untrusted_config_runs_nothing_and_says_what_to_do(
    cloned: Path, pyro_home: Path, command: list[str]
) -> None:
    where = ["-C", str(cloned)]
    argv = [*command[:1], *where, *command[1:]]
    result = run_pyro(*argv, env=SECRET, timeout=120)
    assert result.returncode == 1, result
    assert REFUSED in _error_line(result.stderr)
    assert "[prepare] run" in result.stderr and "[workspace] network" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was built, no sandbox started, no log of a prepare written.
    assert not [k for k in _built_layers(pyro_home) if k in ("keys", "dependencies")]
    assert json.loads(run_pyro("workspace", "list", "--json").stdout)["workspaces"] == []
    assert not list(pyro_home.glob("logs/prepare-*"))


def test_pyro_trust_approves_this_content_and_a_change_asks_again(
    cloned: Path, pyro_home: Path
) -> None:
    status = run_pyro("status", "-C", str(cloned))
    assert status.returncode == 1
    assert "trust         .pyro.toml is not trusted" in status.stdout.replace(str(cloned) + "/", "")
    assert json.loads(run_pyro("status", "-C", str(cloned), "--json").stdout)["trust"] == {
        "state": "untrusted", "trusted": False, "path": str(cloned / ".pyro.toml"),
        "needs_trust": ["[prepare] run", "[prepare] env", "[workspace] network", "[check] run"],
    }  # fmt: skip

    trusted = run_pyro("trust", "-C", str(cloned))
    assert trusted.returncode == 0, trusted.stderr
    assert "[prepare] env" in trusted.stdout
    # The approval lives in the pyro home, never in the repository.
    assert git(cloned, "status", "--porcelain", "--ignored") == ""
    assert list((pyro_home / "trust").iterdir())

    prepared = run_pyro("prepare", "-C", str(cloned), "--json", env=SECRET, timeout=120)
    assert prepared.returncode == 0, prepared.stderr
    layer = pyro_home / "layers" / json.loads(prepared.stdout)["dependencies_layer"]
    assert (layer / "tree" / ".deps" / "stolen").read_text() == SECRET["AWS_SECRET_ACCESS_KEY"]

    # Someone pushes a change to the file: the next run asks again, naming the change.
    with (cloned / ".pyro.toml").open("a") as f:
        f.write('\n[sync]\nexclude = ["*.log"]\n')
    again = run_pyro("prepare", "-C", str(cloned))
    assert again.returncode == 1
    assert "changed since it was trusted: review it, then run `pyro trust`" in again.stderr
    assert run_pyro("trust", "-C", str(cloned)).returncode == 0
    assert run_pyro("prepare", "-C", str(cloned)).returncode == 0

    revoked = run_pyro("trust", "--revoke", "-C", str(cloned))
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert REFUSED in run_pyro("prepare", "-C", str(cloned)).stderr


def test_the_same_file_at_another_path_is_not_trusted(cloned: Path, tmp_path: Path) -> None:
    assert run_pyro("trust", "-C", str(cloned)).returncode == 0
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(cloned), str(other))
    assert REFUSED in run_pyro("prepare", "-C", str(other)).stderr


def test_a_config_that_widens_nothing_needs_no_trust(tmp_path: Path, pyro_home: Path) -> None:
    narrow = '[sync]\nexclude = ["*.log"]\n\n[workspace]\nprocesses = 100\n'
    repo = commit_project(tmp_path / "repo", narrow, {"a.txt": "a\n"}, trusted=False)
    up = run_pyro("up", "-C", str(repo), timeout=120)
    assert up.returncode == 0, up.stderr
    status = json.loads(run_pyro("status", "-C", str(repo), "--json").stdout)
    assert status["trust"]["state"] == "not needed"


def test_raising_a_limit_needs_trust(tmp_path: Path) -> None:
    wide = "[workspace]\nprocesses = 1000000\n"
    repo = commit_project(tmp_path / "repo", wide, {"a.txt": "a\n"}, trusted=False)
    result = run_pyro("up", "-C", str(repo))
    assert result.returncode == 1 and "[workspace] processes" in result.stderr


def test_pyro_init_trusts_the_file_it_wrote_and_not_an_edit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "requirements.txt").write_text("requests==2.32.0\n")
    assert run_pyro("init", str(repo)).returncode == 0, "init"
    config = load_project_config(repo).config
    assert config.widening(), "the written file runs an install command"
    status = json.loads(run_pyro("status", "-C", str(repo), "--json").stdout)
    assert status["trust"]["state"] == "trusted"
    with (repo / ".pyro.toml").open("a") as f:
        f.write("# any edit, even a comment\n")
    status = json.loads(run_pyro("status", "-C", str(repo), "--json").stdout)
    assert status["trust"]["state"] == "changed"


# -- hooks ---------------------------------------------------------------------------------------


def test_a_checkout_of_an_untrusted_config_prepares_nothing_and_says_so_once(
    tmp_path: Path, pyro_home: Path
) -> None:
    """The attack: hooks are installed, someone pushes a branch whose .pyro.toml passes the
    user's secrets to a networked prepare, the user runs a plain `git checkout`."""
    safe = '[prepare]\nkeys = ["requirements.txt"]\nrun = ["mkdir -p .deps"]\n'
    repo = commit_project(tmp_path / "repo", safe, {"requirements.txt": "a==1\n"})
    git(repo, "checkout", "-q", "-b", "evil")
    (repo / ".pyro.toml").write_text(HOSTILE)
    (repo / "requirements.txt").write_text("a==2\n")
    git(repo, "commit", "-qam", "innocent-looking bump")
    git(repo, "checkout", "-q", "main")
    hooks.install(find_project(repo))
    env = {**bare_shell_env(tmp_path), **SECRET}

    switched = git_run(repo, "checkout", "-q", "evil", env=env)
    assert switched.returncode == 0, switched.stderr
    # main's version was trusted, this one is not.
    changed = "changed since it was trusted: review it, then run `pyro trust`"
    assert pyro_lines(switched.stderr) == [f"pyro: .pyro.toml {changed} (not preparing)"]
    assert not (pyro_home / "projects" / find_project(repo).id / "background-prepare.json").exists()
    assert "dependencies" not in _built_layers(pyro_home)

    # Back to main (trusted: its prepare may run), then to the same untrusted version again:
    # said once per version of the file, not on every checkout.
    assert git_run(repo, "checkout", "-q", "main", env=env).returncode == 0
    wait_for_background_prepare(repo, pyro_home)
    again = git_run(repo, "checkout", "-q", "evil", env=env)
    assert again.returncode == 0 and pyro_lines(again.stderr) == [], again.stderr
    assert not list(pyro_home.glob("layers/*/tree/.deps/stolen"))


def test_a_commit_hook_does_not_run_untrusted_checks(cloned: Path, tmp_path: Path) -> None:
    hooks.install(find_project(cloned), hooks=["pre-commit"])
    (cloned / "app.txt").write_text("changed\n")
    git(cloned, "add", "app.txt")
    env = bare_shell_env(tmp_path)
    committed = git_run(cloned, "commit", "-qm", "edit", env=env)
    # The untrusted `[check] run = ["false"]` would have failed the commit had it run.
    assert committed.returncode == 0, committed.stderr
    notes = pyro_lines(committed.stderr)
    assert len(notes) == 1 and REFUSED in notes[0] and "checks not run" in notes[0], notes
    # Trusted, the same check runs (and fails, stopping the commit).
    assert run_pyro("trust", "-C", str(cloned)).returncode == 0
    (cloned / "app.txt").write_text("changed again\n")
    git(cloned, "add", "app.txt")
    blocked = git_run(cloned, "commit", "-qm", "edit", env=env)
    assert blocked.returncode != 0, blocked.stderr


# -- the library -----------------------------------------------------------------------------------


def test_the_library_refuses_until_trusted_in_code(cloned: Path, workspaces: Workspaces) -> None:
    project = find_project(cloned)
    loop = ProjectLoop(project, load_project_config(project.root).config, workspaces)
    assert loop.trust_state().state == "untrusted"
    with pytest.raises(UntrustedConfigError, match="pyro trust"):
        loop.up()
    assert workspaces.list() == []
    assert loop.trust().state == "trusted"
    assert loop.up().action == "created"


def test_a_config_built_in_code_is_the_callers_own(tmp_path: Path, workspaces: Workspaces) -> None:
    repo = commit_project(tmp_path / "repo", "", {"a.txt": "a\n"}, trusted=False)
    config = ProjectConfig(**{**ProjectConfig.default().__dict__, "check_run": ("true",)})
    loop = ProjectLoop(find_project(repo), config, workspaces)
    assert loop.trust_state().ok
    assert loop.up().action == "created"


# -- the MCP server ---------------------------------------------------------------------------


def test_the_mcp_server_reports_an_untrusted_project_with_the_fix(
    cloned: Path, pyro_home: Path
) -> None:
    async def main() -> None:
        async with connect(cloned) as client:
            text = await client.error("workspace_exec", command="true")
            assert REFUSED in text, text
            status = await client.call("project_status")
            assert status["ready"] is False
            assert status["trust"]["state"] == "untrusted"
            assert "pyro trust" in (status["warmup"]["error"] or "")
            assert "dependencies" not in _built_layers(pyro_home)
            # The user reviews and trusts the file on the host; the next call warms up.
            assert run_pyro("trust", "-C", str(cloned)).returncode == 0
            done = await client.call("workspace_exec", command="cat app.txt")
            assert done["stdout"] == "ok\n", done

    anyio.run(main)
    assert os.environ.get("AWS_SECRET_ACCESS_KEY") is None


def test_a_cache_remote_named_by_the_file_needs_trust(tmp_path: Path) -> None:
    """Layers pulled from a registry the file names would become the workspace's files."""
    config = '[prepare]\nkeys = ["requirements.txt"]\n\n[cache]\nremote = "registry.invalid/evil"\n'
    repo = commit_project(tmp_path / "repo", config, {"requirements.txt": "a==1\n"}, trusted=False)
    for command in (["prepare"], ["cache", "pull"], ["cache", "push"]):
        result = run_pyro(*command, "-C", str(repo))
        assert result.returncode == 1, (command, result)
        assert REFUSED in _error_line(result.stderr) and "[cache] remote" in result.stderr

"""`[prepare] project`: the project's own install, a layer of its own over the dependencies,
built over HEAD's files, redone when the metadata changes and never for a source edit. The
commands write files where an editable install would (no network needed)."""

from __future__ import annotations

from pathlib import Path

from pyro_loop.loop.live import ProjectLoop
from pyro_loop.loop.prepare import prepare
from pyro_loop.loop.status import readiness
from pyro_loop.project.config import load_project_config
from pyro_loop.project.discovery import find_project
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.project import commit_project, git, write_config

DEPS = "mkdir -p .venv && cp requirements.txt .venv/deps.txt"
# Reads README.md and the sources, as a build backend does: only there over HEAD's files.
PROJECT = "cat README.md src/app.py > .venv/app.pth && cp pyproject.toml .venv/meta.txt"
CONFIG = f"""\
[prepare]
keys = ["requirements.txt"]
run = ["{DEPS}"]
project = ["{PROJECT}"]
timeout = 60
"""
FILES = {
    "requirements.txt": "iniconfig\n",
    "pyproject.toml": "[project]\nname = 'app'\n",
    "README.md": "# app\n",
    "src/app.py": "print('v1')\n",
}


def _prepare(repo: Path, workspaces: Workspaces) -> list[str]:
    project = find_project(repo)
    return prepare(project, load_project_config(repo).config, workspaces=workspaces).built


def test_the_project_installs_over_its_sources_and_its_dependencies(
    tmp_path: Path, workspaces: Workspaces
) -> None:
    repo = commit_project(tmp_path / "repo", CONFIG, FILES)
    assert sorted(_prepare(repo, workspaces)) == ["baseline", "dependencies", "project"]
    loop = ProjectLoop(find_project(repo), load_project_config(repo).config, workspaces)
    out = loop.exec(["sh", "-c", "cat .venv/deps.txt .venv/app.pth .venv/meta.txt"])
    assert out.exit_code == 0, out.stderr
    assert out.stdout.decode() == "iniconfig\n# app\nprint('v1')\n[project]\nname = 'app'\n"
    assert loop.ws.changes(loop.live().id) == []

    # A source edit, even committed, redoes nothing.
    (repo / "src" / "app.py").write_text("print('v2')\n")
    git(repo, "commit", "-qam", "v2")
    assert _prepare(repo, workspaces) == ["baseline"]

    # New metadata: the project again, over the same dependencies (the working tree's).
    (repo / "pyproject.toml").write_text("[project]\nname = 'app'\nversion = '2'\n")
    config = load_project_config(repo).config
    state = readiness(find_project(repo), config, workspaces).dependencies
    assert state["state"] == "stale" and "pyproject.toml" in state["reasons"][0]
    assert _prepare(repo, workspaces) == ["project"]
    loop = ProjectLoop(find_project(repo), config, workspaces)
    loop.up()
    out = loop.exec(["cat", ".venv/meta.txt"])
    assert out.stdout == b"[project]\nname = 'app'\nversion = '2'\n"

    # New dependencies: both.
    (repo / "requirements.txt").write_text("iniconfig\npluggy\n")
    assert sorted(_prepare(repo, workspaces)) == ["dependencies", "project"]


def test_without_a_commit_the_project_waits_and_prepare_still_warms(
    tmp_path: Path, workspaces: Workspaces
) -> None:
    repo = tmp_path / "plain"
    repo.mkdir()
    write_config(repo, CONFIG)
    for rel, text in FILES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    assert _prepare(repo, workspaces) == ["dependencies"]
    assert _prepare(repo, workspaces) == []
    config = load_project_config(repo).config
    assert readiness(find_project(repo), config, workspaces).warm

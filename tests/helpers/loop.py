"""A project loop over a test repository, and a shell command run through it."""

from __future__ import annotations

from pathlib import Path

from pyro_loop.loop.live import ProjectLoop
from pyro_loop.project.config import load_project_config
from pyro_loop.project.discovery import find_project
from pyro_loop.workspace.manager import Workspaces


def loop_for(repo: Path, ws: Workspaces) -> ProjectLoop:
    project = find_project(repo)
    return ProjectLoop(project, load_project_config(project.root).config, ws)


def sh(loop: ProjectLoop, script: str) -> str:
    result = loop.exec(["sh", "-c", script])
    assert result.exit_code == 0, result.stderr
    return result.stdout.decode()

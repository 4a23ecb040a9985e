"""The README's Python examples run as written, in a real project."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from pyro_loop.workspace import Workspaces
from tests.conftest import commit_project

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


def test_the_readme_python_examples_run(tmp_path: Path, workspaces: Workspaces) -> None:
    blocks = python_blocks(README.read_text())
    assert len(blocks) == 2, "the project loop and workspaces by hand"
    project = commit_project(
        tmp_path / "project", '[environment]\nbase = "host"\n', {"calc.py": "ANSWER = 42\n"}
    )
    for block in blocks:
        done = subprocess.run(
            [sys.executable, "-c", block], cwd=project, env=dict(os.environ),
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"{block}\n{done.stderr}"
    # The first left the project's workspace running (for the next session); the second
    # deleted its own ("dev").
    assert [s.record.labels.get("pyro") for s in workspaces.list()] == ["project"]
    assert (
        not (project / ".pyro").exists()
        and project.joinpath("calc.py").read_text() == "ANSWER = 42\n"
    )

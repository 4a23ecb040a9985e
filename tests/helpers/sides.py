"""Two identical projects, each with its own pyro home, for comparing two ways of running
`pyro`: the lean entry, the fork server or the full CLI must give the same output, errors
and exit codes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pyro_loop.project.discovery import find_project
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.project import DEPS_CONFIG, commit_project, trust_config

# Each started as the `pyro` script starts it (the name shows in usage errors).
LEAN = "import sys; from pyro_loop.cli.entry import main; sys.argv[0] = 'pyro'; main()"
FULL = "import sys; from pyro_loop.cli.app import main; sys.argv[0] = 'pyro'; main()"


def run(lean: bool, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        input: str = "") -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`pyro ARGS` through the entry (`lean`: as the `pyro` script starts) or the full CLI."""
    head = ["-c", LEAN if lean else FULL]
    return subprocess.run([sys.executable, *head, *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=cwd, input=input,
                          env={**os.environ, **(env or {})})  # fmt: skip


class Side:
    """One of two identical projects, each with its own pyro home: one way of running pyro
    in each (`lean`, plus `env`), so each command meets the same state in both."""

    def __init__(self, root: Path, lean: bool, env: dict[str, str] | None = None) -> None:
        self.lean = lean
        self.env = env or {}
        self.home = root / "home"
        self.repo = commit_project(root / "repo", DEPS_CONFIG,
                                   {"requirements.txt": "requests==2.32.0\n",
                                    "app.py": "print(1)\n"})  # fmt: skip
        trust_config(self.repo, self.home)
        self.id = find_project(self.repo).id

    def __call__(
        self, *args: str, cwd: Path | None = None, input: str = ""
    ) -> tuple[int, str, str]:
        argv = [a.replace("REPO", str(self.repo)) for a in args]
        env = {"PYRO_HOME": str(self.home), **self.env}
        done = run(self.lean, *argv, cwd=cwd, env=env, input=input)
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, self._normalized(done.stdout), self._normalized(done.stderr)

    def _normalized(self, text: str) -> str:
        """What differs between the two sides (paths, ids, durations) and nothing else."""
        text = text.replace(str(self.repo), "<repo>").replace(str(self.home), "<home>")
        text = text.replace(self.id, "<project>").replace(self.id[:8], "<project>")
        text = re.sub(r"\b[0-9a-f]{12}\b", "<id>", text)
        text = re.sub(r"\b\d+(\.\d+)? (ms|s|min)\b", "<t>", text)
        return re.sub(r'"duration_ms": [\d.]+', '"duration_ms": <t>', text)

    def cleanup(self) -> None:
        ws = Workspaces(home=self.home)
        for status in ws.list():
            ws.delete(status.record.id)


def agreeing(tried: Side, full: Side) -> Callable[..., tuple[int, str, str]]:
    """A runner of the same command on both sides that asserts they answer alike (exit
    code, output, errors), and returns that answer."""

    def same(*args: str, cwd: Path | None = None, input: str = "") -> tuple[int, str, str]:
        got = tried(*args, cwd=cwd, input=input)
        assert got == full(*args, cwd=cwd, input=input), args
        return got

    return same

"""`pyro demo`: the daily loop on a small embedded project, timed, end to end.

It makes the sample project a git repository with a `.pyro.toml`, then does what a day of
work does: `up` (prepare and create, then reconnect), the tests inside, an edit on the host
that the next run sees, an "agent" breaking a file in the workspace, the diff, a reset in
milliseconds and a retry. At the end the workspace is deleted and the project forgotten (its
layers are left for `pyro cache gc`). Nothing outside a temporary directory and pyro's own
home is written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pyro_loop import git
from pyro_loop.records import dataclass
from pyro_loop.workspace.manager import Workspaces

if TYPE_CHECKING:
    from pyro_loop.loop.live import ProjectLoop

SAMPLE_PROJECT = {
    "README.md": "# calc\n\nA tiny project that pyro's demo runs in a workspace.\n",
    "requirements.txt": "# calc needs nothing beyond the standard library\n",
    ".gitignore": ".deps/\n__pycache__/\n",
    ".pyro.toml": (
        '[prepare]\nkeys = ["requirements.txt"]\n'
        'run = ["mkdir -p .deps && cp requirements.txt .deps/installed.txt"]\n'
    ),
    "calc.py": "def add(a, b):\n    return a + b\n",
    "test_calc.py": (
        "import unittest\n\nimport calc\n\n\n"
        "class TestCalc(unittest.TestCase):\n"
        "    def test_add(self):\n"
        "        self.assertEqual(calc.add(2, 3), 5)\n"
    ),
}
HOST_EDIT = "\n    def test_add_negative(self):\n        self.assertEqual(calc.add(-2, -3), -5)\n"
# No bytecode cache: an edit within the same second would otherwise run a stale .pyc.
TEST_COMMAND = ["env", "PYTHONDONTWRITEBYTECODE=1", "python3", "-m", "unittest"]
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "pyro demo", "GIT_AUTHOR_EMAIL": "demo@example.invalid",
                "GIT_COMMITTER_NAME": "pyro demo", "GIT_COMMITTER_EMAIL": "demo@example.invalid",
                "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}  # fmt: skip


@dataclass(frozen=True)
class Step:
    title: str
    seconds: float
    detail: str
    ok: bool = True


def run_demo(report: Callable[[Step], None], workspaces: Workspaces | None = None) -> list[Step]:
    from pyro_loop.loop.live import ProjectLoop
    from pyro_loop.project.config import load_project_config
    from pyro_loop.project.discovery import find_project
    from pyro_loop.workspace.diff import render_patch

    ws = workspaces or Workspaces()
    steps: list[Step] = []

    def record(title: str, started: float, detail: str, ok: bool = True) -> None:
        steps.append(Step(title, time.perf_counter() - started, detail, ok))
        report(steps[-1])

    with tempfile.TemporaryDirectory(prefix="pyro-demo-") as tmp:
        repo = _sample_repository(Path(tmp) / "calc")
        project = find_project(repo)
        loop = ProjectLoop(project, load_project_config(repo).config, ws)
        loop.trust()  # the demo wrote this .pyro.toml itself
        try:
            started = time.perf_counter()
            up = loop.up()
            record("pyro up, cold: prepare the snapshot, create", started, up.action)
            started = time.perf_counter()
            up = loop.up()
            record("pyro up again: reconnect", started, up.action, up.action == "reused")
            _tests(loop, "pyro exec: the tests inside (pass)", record, expect=0)

            with (repo / "test_calc.py").open("a") as f:
                f.write(HOST_EDIT)
            _tests(loop, "you add a test on the host; exec syncs it first", record,
                   expect=0, ran="Ran 2 tests")  # fmt: skip

            started = time.perf_counter()
            loop.exec(["sed", "-i", "s/a + b/a - b/", "calc.py"])
            record("an agent edits calc.py in the workspace (a bug)", started, "a + b -> a - b")
            _tests(loop, "pyro exec: the tests again (they fail)", record, expect=1)

            started = time.perf_counter()
            patch = render_patch(loop.changes())
            record("pyro diff: what the workspace changed", started, patch.strip(),
                   "-    return a + b" in patch and "test_calc" not in patch)  # fmt: skip
            started = time.perf_counter()
            loop.reset()
            record("pyro reset: the baseline plus your host files", started, "changes discarded")
            started = time.perf_counter()
            result = loop.retry()
            record("pyro retry: the tests once more (pass)", started,
                   _summary(result.stderr), result.exit_code == 0)  # fmt: skip

            intact = (repo / "calc.py").read_text() == SAMPLE_PROJECT["calc.py"]
            record("host files untouched by the workspace", time.perf_counter(),
                   "calc.py on the host unchanged", intact)  # fmt: skip
        finally:
            started = time.perf_counter()
            with contextlib.suppress(Exception):
                loop.down(delete=True)
            loop.files.forget()
            record("pyro down --delete", started, "all processes ended")
    return steps


def _sample_repository(root: Path) -> Path:
    root.mkdir()
    for name, text in SAMPLE_PROJECT.items():
        (root / name).write_text(text)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "calc"]):
        git.git_output(args, cwd=root, extra=GIT_IDENTITY, what="make the sample repository")
    return root


def _tests(loop: ProjectLoop, title: str, record: Callable[..., None], *, expect: int,
           ran: str = "") -> None:  # fmt: skip
    started = time.perf_counter()
    result = loop.exec(TEST_COMMAND)
    summary = _summary(result.stderr)
    record(title, started, summary, result.exit_code == expect and ran in summary)


def _summary(unittest_output: bytes) -> str:
    """unittest's "Ran N tests" and verdict lines."""
    lines = unittest_output.decode(errors="replace").splitlines()
    return " / ".join(line for line in lines if line.startswith(("Ran ", "OK", "FAILED")))

"""`pyro demo`: the daily loop on a small embedded project, timed, end to end.

It creates a workspace from the sample project, runs its tests inside, lets an "agent" break
a file, shows the diff, resets in milliseconds and runs the tests again, then deletes the
workspace. Nothing on the host is modified except pyro's own store.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyro_loop.diff import render_patch
from pyro_loop.workspace import Workspaces

SAMPLE_PROJECT = {
    "README.md": "# calc\n\nA tiny project that pyro's demo runs in a workspace.\n",
    "calc.py": "def add(a, b):\n    return a + b\n",
    "test_calc.py": (
        "import unittest\n\nimport calc\n\n\n"
        "class TestCalc(unittest.TestCase):\n"
        "    def test_add(self):\n"
        "        self.assertEqual(calc.add(2, 3), 5)\n\n\n"
        "if __name__ == '__main__':\n    unittest.main()\n"
    ),
}
TEST_COMMAND = ["python3", "-m", "unittest", "-q"]


@dataclass(frozen=True)
class Step:
    title: str
    seconds: float
    detail: str
    ok: bool = True


def run_demo(report: Callable[[Step], None], workspaces: Workspaces | None = None) -> list[Step]:
    ws = workspaces or Workspaces()
    steps: list[Step] = []

    def record(step: Step) -> None:
        steps.append(step)
        report(step)

    with tempfile.TemporaryDirectory(prefix="pyro-demo-") as tmp:
        seed = Path(tmp) / "calc"
        seed.mkdir()
        for name, text in SAMPLE_PROJECT.items():
            (seed / name).write_text(text)

        started = time.perf_counter()
        record_ = ws.create(seed=seed, labels={"pyro": "demo"})
        record(
            Step("create workspace (first time: imports the project)", _since(started), record_.id)
        )
        try:
            _run_tests(ws, record_.id, "run the tests inside", record, expect=0)
            started = time.perf_counter()
            ws.exec(record_.id, ["sh", "-c", "sed -i 's/a + b/a - b/' calc.py"])
            record(
                Step("an agent edits calc.py (introduces a bug)", _since(started), "a + b -> a - b")
            )
            _run_tests(ws, record_.id, "run the tests again (they fail)", record, expect=1)
            started = time.perf_counter()
            patch = render_patch(ws.changes(record_.id))
            record(Step("diff against the baseline", _since(started), patch.strip()))
            started = time.perf_counter()
            ws.reset(record_.id)
            record(Step("reset to the baseline", _since(started), "upper layer discarded"))
            _run_tests(ws, record_.id, "run the tests after reset (pass)", record, expect=0)
            host_intact = (seed / "calc.py").read_text() == SAMPLE_PROJECT["calc.py"]
            record(Step("host files untouched", 0.0, "calc.py on the host unchanged", host_intact))
        finally:
            started = time.perf_counter()
            ws.delete(record_.id)
            record(Step("delete workspace", _since(started), "all processes ended"))
    return steps


def _run_tests(
    ws: Workspaces, ws_id: str, title: str, record: Callable[[Step], None], *, expect: int
) -> None:
    started = time.perf_counter()
    # No bytecode cache: an edit within the same second would otherwise run the stale .pyc.
    result = ws.exec(ws_id, TEST_COMMAND, env={"PYTHONDONTWRITEBYTECODE": "1"})
    outcome = "passed" if result.exit_code == 0 else "failed"
    record(Step(title, _since(started), f"tests {outcome}", result.exit_code == expect))


def _since(started: float) -> float:
    return time.perf_counter() - started

"""The runtime benchmark runs end to end (CI smoke: small seed, few runs, no targets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_runtime.py"


@pytest.mark.slow
def test_benchmark_quick_run_measures_every_operation(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reset+first exec" in result.stdout
    data = json.loads(out.read_text())
    text = json.dumps(data)
    for operation in ("create", "exec", "reset", "snapshot", "delete", "copy"):
        assert operation in text


@pytest.mark.slow
def test_prepare_benchmark_runs_and_reports_the_warm_no_op() -> None:
    script = BENCH.parent / "bench_prepare.py"
    result = subprocess.run(
        [sys.executable, str(script), "--files", "50", "--runs", "2"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for row in ("prepare, cold", "pyro prepare, warm", "--if-changed", "git status"):
        assert row in result.stdout


@pytest.mark.slow
def test_daily_loop_benchmark_runs_every_step() -> None:
    script = BENCH.parent / "bench_loop.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for row in ("up, cold", "up, warm", "pyro exec -- true", "edit -> visible",
                "branch switch", "full copy", "one-file sync vs full copy"):  # fmt: skip
        assert row in result.stdout


@pytest.mark.slow
def test_mcp_benchmark_runs_and_reports_pyros_share_of_initialize(tmp_path: Path) -> None:
    script = BENCH.parent / "bench_mcp.py"
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for row in ("import mcp.server.mcpserver", "initialize answered", "first workspace_exec",
                "pyro exec -- true", "pyro's share of initialize"):  # fmt: skip
        assert row in result.stdout
    samples = json.loads(out.read_text())
    assert all(len(v) == 3 for k, v in samples.items() if k != "added_ms")


def test_hooks_benchmark_measures_checkout_and_check_overheads(tmp_path: Path) -> None:
    script = BENCH.parent / "bench_hooks.py"
    out = tmp_path / "hooks.json"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for row in ("git checkout, same lockfile, pyro's hook", "hook starts prepare",
                "pyro check --staged", "pre-commit hook on git commit"):  # fmt: skip
        assert row in result.stdout
    data = json.loads(out.read_text())
    assert len(data["samples_ms"]["git checkout, new lockfile, no hooks"]) == 3
    assert set(data["overhead_ms"]) >= {"post-checkout hook, same lockfile"}

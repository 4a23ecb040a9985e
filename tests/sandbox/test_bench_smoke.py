"""The benchmarks run end to end (CI smoke: small sizes, few runs, no targets)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_bench(script: str, *args: str, rows: Sequence[str], timeout: float = 300) -> None:
    """Run bench/`script` with `args`; it must succeed and print each of `rows`."""
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for row in rows:
        assert row in result.stdout


@pytest.mark.slow
def test_benchmark_quick_run_measures_every_operation(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run_bench("bench_runtime.py", "--quick", "--json", str(out), rows=["reset+first exec"])
    text = json.dumps(json.loads(out.read_text()))
    for operation in ("create", "exec", "reset", "snapshot", "delete", "copy"):
        assert operation in text


@pytest.mark.slow
def test_prepare_benchmark_runs_and_reports_the_warm_no_op() -> None:
    rows = [
        "prepare, cold",
        "pyro prepare, warm",
        "--if-changed",
        "git status",
        "prepare vs native install" if shutil.which("npm") is None else "npm ci, native",
    ]
    run_bench("bench_prepare.py", "--files", "50", "--runs", "2", "--install-runs", "1",
              rows=rows)  # fmt: skip


@pytest.mark.slow
def test_daily_loop_benchmark_runs_every_step() -> None:
    run_bench("bench_loop.py", "--quick", timeout=600,
              rows=["up, cold", "up, warm", "pyro exec -- true", "edit -> visible",
                    "branch switch", "full copy", "one-file sync vs full copy"])  # fmt: skip


def test_branch_switch_benchmark_runs_alone() -> None:
    run_bench("bench_switch.py", "--quick", rows=["branch switch sync", "full copy", "syncs:"])


@pytest.mark.slow
def test_mcp_benchmark_runs_and_reports_pyros_share_of_initialize(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run_bench("bench_mcp.py", "--quick", "--json", str(out),
              rows=["import mcp.server.mcpserver", "initialize answered", "first workspace_exec",
                    "pyro exec -- true", "pyro's share of initialize"])  # fmt: skip
    samples = json.loads(out.read_text())
    assert all(len(v) == 3 for k, v in samples.items() if k != "added_ms")


def test_hooks_benchmark_measures_checkout_and_check_overheads(tmp_path: Path) -> None:
    out = tmp_path / "hooks.json"
    run_bench("bench_hooks.py", "--quick", "--json", str(out), timeout=600,
              rows=["git checkout, same lockfile, pyro's hook", "hook starts prepare",
                    "pyro check --staged", "pre-commit hook on git commit"])  # fmt: skip
    data = json.loads(out.read_text())
    assert len(data["samples_ms"]["git checkout, new lockfile, no hooks"]) == 3
    assert set(data["overhead_ms"]) >= {"post-checkout hook, same lockfile"}


def test_cache_benchmark_builds_pushes_pulls_and_copies(tmp_path: Path) -> None:
    out = tmp_path / "cache.json"
    run_bench("bench_cache.py", "--quick", "--json", str(out),
              rows=["prepare, cold, building", "pyro cache push", "prepare, cold, pulling",
                    "cp -a of the layer"])  # fmt: skip
    data = json.loads(out.read_text())
    assert data["blob_bytes"] > 0 and len(data["pulls_s"]) == 1


@pytest.mark.slow
def test_published_port_benchmark_runs_both_rows(tmp_path: Path) -> None:
    out = tmp_path / "ports.json"
    run_bench("bench_ports.py", "--quick", "--json", str(out),
              rows=["published port, small request", "published port, 1 MiB response"])  # fmt: skip
    samples = json.loads(out.read_text())
    assert len(samples["small_native"]) == len(samples["small_published"]) == 20

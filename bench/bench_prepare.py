#!/usr/bin/env python3
"""Benchmark `pyro prepare` and `pyro status` on a generated git repository.

Measures, in one run: a cold prepare (baseline layer written from the git tree plus a
dependency snapshot built in a sandbox), the warm no-op (the library call, and the whole
`pyro prepare` / `pyro prepare --if-changed` / `pyro status` processes as a user runs them),
next to baselines measured in the same run: a bare Python start and `git status`; and a
cold prepare of a real npm project with a warm download cache against `npm ci` run natively
with a warm npm cache (coldinstall.py).
Targets: the warm no-op <= 150 ms (median), the whole CLI process included; the cold
prepare <= 1.2x the native install.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from benchrepo import compile_pyro, make_repo, scratch_home, timed
from coldinstall import TARGET_RATIO, measure

TARGET_WARM_MS = 150.0
INSTALL = (
    "mkdir -p .deps && cp requirements.txt .deps/ && head -c 2000000 /dev/urandom > .deps/blob"
)


def run(argv: list[str], cwd: Path) -> Callable[[], object]:
    def call() -> object:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {result.stderr.decode()}")
        return result

    return call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--check", action="store_true", help="exit 1 if the target fails")
    parser.add_argument("--install-runs", type=int, default=5,
                        help="runs of the cold install comparison (0: skip it)")  # fmt: skip
    args = parser.parse_args()

    pyro = [sys.executable, "-m", "pyro_loop"]
    with scratch_home("pyro-bench-prepare-") as tmp:
        repo = tmp / "repo"
        compile_pyro()
        make_repo(repo, args.files, INSTALL)
        from pyro_loop.loop.prepare import prepare
        from pyro_loop.project.config import load_project_config
        from pyro_loop.project.discovery import find_project

        project = find_project(repo)
        config = load_project_config(project.root).config
        cold = timed(lambda: prepare(project, config), 1)[0]
        n = args.runs
        warm = TARGET_WARM_MS
        rows = [
            ("prepare, cold (baseline + dependencies)", [cold], None),
            ("prepare, warm (library call)", timed(lambda: prepare(project, config), n), None),
            ("pyro prepare, warm (whole process)", timed(run([*pyro, "prepare"], repo), n), warm),
            (
                "pyro prepare --if-changed, warm",
                timed(run([*pyro, "prepare", "--if-changed"], repo), n),
                warm,
            ),
            ("pyro status, warm", timed(run([*pyro, "status"], repo), n), None),
            (
                "baseline: python3 -c pass",
                timed(run([sys.executable, "-c", "pass"], repo), n),
                None,
            ),
            ("baseline: git status", timed(run(["git", "status", "--short"], repo), n), None),
        ]
        print(f"pyro prepare benchmark: {args.files:,} files, {args.runs} runs; "
              f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
        print(f"{'operation':42} {'median ms':>10} {'p95 ms':>8}  target     result")
        failed = False
        for name, samples, target in rows:
            median = statistics.median(samples)
            p95 = sorted(samples)[max(0, round(0.95 * len(samples)) - 1)]
            verdict = "-" if target is None else ("PASS" if median <= target else "FAIL")
            failed |= verdict == "FAIL"
            shown = f"<= {target:.0f} ms" if target else "-"
            print(f"{name:42} {median:10.1f} {p95:8.1f}  {shown:10} {verdict}")
        if args.install_runs > 0:
            failed |= _cold_install(tmp, args.install_runs)
        return 1 if failed and args.check else 0


def _cold_install(tmp: Path, runs: int) -> bool:
    """Print the cold-install rows; True when the ratio misses its target."""
    result = measure(tmp, runs)
    if isinstance(result, str):
        print(f"{'prepare vs native install':42} skipped: {result}")
        return False
    for name, samples in (
        ("npm ci, native (warm npm cache)", result.native_ms),
        ("pyro prepare, cold (warm download cache)", result.prepare_ms),
    ):
        p95 = sorted(samples)[max(0, round(0.95 * len(samples)) - 1)]
        print(f"{name:42} {statistics.median(samples):10.1f} {p95:8.1f}  -          -")
    verdict = "PASS" if result.ratio <= TARGET_RATIO else "FAIL"
    shown = f"<= {TARGET_RATIO}x"
    print(f"{'cold prepare / native install':42} {result.ratio:9.2f}x {'':8}  {shown:10} {verdict}")
    return verdict == "FAIL"


if __name__ == "__main__":
    sys.exit(main())

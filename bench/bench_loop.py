#!/usr/bin/env python3
"""The daily-loop benchmark: the repeat loop a coding agent runs, timed end to end.

On a generated git repository (2,000 files by default) it measures, in one run: the warm
`pyro prepare` no-op, `pyro up` creating the workspace and reconnecting to it, an exec round
trip (library and whole `pyro exec -- true` process), `pyro retry`, `pyro reset`, the
latency from a host edit to its visibility in the workspace with the watcher running, a
one-file incremental sync and a 1,000-file branch switch; beside baselines measured in the
same run: a full copy of the repository (what re-seeding or a full sync push costs) and the
same command run natively. Medians (and p95 where it matters), ratios, PASS/FAIL against
the targets; `--check` exits 1 when one fails, `--json` writes the samples.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchrepo import compile_pyro, git, loop_arguments, make_repo, scratch_home, summarize, timed

INSTALL = "mkdir -p .deps && cp requirements.txt .deps/"


def make_branching_repo(root: Path, files: int) -> None:
    """The shared repository, plus a branch `other` touching 1,000 files (branch switch)."""
    make_repo(root, files, INSTALL)
    git(root, "checkout", "-q", "-b", "other")
    for i in range(min(1000, files)):
        (root / f"pkg{i % 50}" / f"mod{i}.py").write_text(f"VALUE = {-i}\n")
    git(root, "commit", "-qam", "other")
    git(root, "checkout", "-q", "main")


def cli(repo: Path, *args: str) -> Callable[[], object]:
    argv = [sys.executable, "-m", "pyro_loop", *args, "-C", str(repo)]
    if "--" in args:  # options must come before the command
        split = args.index("--")
        argv = [sys.executable, "-m", "pyro_loop", *args[:split], "-C", str(repo), *args[split:]]

    def call() -> object:
        result = subprocess.run(argv, capture_output=True, check=False)
        if result.returncode not in (0,):
            raise SystemExit(f"{' '.join(args)} failed: {result.stderr.decode()}")
        return result

    return call


def edit_latency(loop: Any, repo: Path, runs: int) -> list[float]:
    """Host write -> content readable in the workspace, with the watcher running."""
    from pyro_loop.watch import run_watcher

    record = loop.require()
    stop = threading.Event()
    thread = threading.Thread(
        target=run_watcher, args=(loop._syncer(record), repo), kwargs={"stop_event": stop},
        daemon=True,
    )  # fmt: skip
    thread.start()
    time.sleep(1.0)  # the first reconcile, and the watches in place
    client = loop.ws.client(record.id)
    samples = []
    try:
        for i in range(runs):
            content = f"edit {i} {time.time_ns()}\n".encode()
            start = time.perf_counter()
            (repo / "pkg0" / "mod0.py").write_bytes(content)
            while time.perf_counter() - start < 5:
                if client.read("pkg0/mod0.py")[0] == content:
                    break
                time.sleep(0.001)
            samples.append((time.perf_counter() - start) * 1000)
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    return samples


Row = tuple[str, list[float], float | None]


def measure(
    loop: Any, repo: Path, tmp: Path, runs: int
) -> tuple[list[Row], dict[str, list[float]]]:
    """Every timing of the loop, in the order a day of work would hit them."""
    ws = loop.ws
    rows: list[Row] = []

    def delete_workspace() -> None:
        record = loop.find()
        if record is not None:
            ws.delete(record.id)

    rows.append(("pyro prepare, warm (whole process)", timed(cli(repo, "prepare"), runs), 150))
    rows.append(("up, cold (create from warm layers)", timed(loop.up, runs, delete_workspace), 50))
    loop.up()
    rows.append(("up, warm (reconnect)", timed(loop.up, runs), 50))
    native = timed(lambda: subprocess.run(["true"], check=True), runs)
    exec_samples = timed(lambda: loop.exec(["true"]), runs)
    rows.append(("exec true (library, sync first)", exec_samples, None))
    rows.append(
        ("pyro exec -- true (whole process)", timed(cli(repo, "exec", "--", "true"), runs), 150)
    )
    rows.append(("pyro retry (whole process)", timed(cli(repo, "retry"), runs), None))

    def work_to_discard() -> None:
        # What comes before a reset in the loop: a command that changed files. Its run time
        # (here a pause of 0.1 s) is when the standby sandbox of the last reset boots.
        loop.exec(["sh", "-c", "echo scratch > scratch.txt; rm pkg3/mod3.py"])
        time.sleep(0.1)

    rows.append(
        ("reset (library, + host files synced)", timed(loop.reset, runs, work_to_discard), 20)
    )
    rows.append(
        ("edit -> visible, watcher (p95 target)", edit_latency(loop, repo, max(runs, 10)), 100)
    )
    counter = iter(range(10**6))
    edit_one = repo / "pkg1" / "mod1.py"
    one_file = timed(loop.sync, runs, lambda: edit_one.write_text(f"V = {next(counter)}\n"))
    rows.append(("sync of one changed file", one_file, None))
    branches = iter(["other", "main"] * runs)

    def switch() -> None:
        git(repo, "checkout", "-q", "-f", next(branches))

    rows.append(("branch switch sync (1,000 files)", timed(loop.sync, min(runs, 6), switch), 1000))
    copies = iter(range(10**6))
    copy = timed(
        lambda: shutil.copytree(repo, tmp / f"copy{next(copies)}", symlinks=True), min(runs, 5)
    )
    rows.append(("baseline: full copy of the repository", copy, None))
    rows.append(("baseline: native true", native, None))

    extras = {"exec": exec_samples, "native": native, "one_file": one_file, "copy": copy}
    return rows, extras


def report(
    rows: list[Row],
    exec_samples: list[float],
    native: list[float],
    one_file: list[float],
    copy: list[float],
) -> bool:
    """Print the table and the ratio checks; True if a target failed."""
    print(f"{'operation':42} {'median ms':>10} {'p95 ms':>8}  {'target':10} result")
    failed = False
    for name, samples, target in rows:
        median, p95 = summarize(samples)
        measured = p95 if "p95" in name else median
        verdict = "-" if target is None else ("PASS" if measured <= target else "FAIL")
        failed |= verdict == "FAIL"
        shown = f"<= {target:.0f} ms" if target else "-"
        print(f"{name:42} {median:10.1f} {p95:8.1f}  {shown:10} {verdict}")
    exec_overhead = summarize(exec_samples)[0] - summarize(native)[0]
    sync_ratio = summarize(copy)[0] / max(summarize(one_file)[0], 0.001)
    checks = [
        (f"exec overhead over native: {exec_overhead:.1f} ms", exec_overhead <= 10),
        (f"one-file sync vs full copy: {sync_ratio:.0f}x cheaper", sync_ratio >= 20),
    ]
    for text, ok in checks:
        print(f"{text:64} {'PASS' if ok else 'FAIL'}")
        failed |= not ok
    return failed


def main() -> int:
    args, files, runs = loop_arguments(__doc__)

    with scratch_home("pyro-bench-loop-") as tmp:
        repo = tmp / "repo"
        from pyro_loop.config import load_project_config
        from pyro_loop.loop import ProjectLoop
        from pyro_loop.prepare import prepare
        from pyro_loop.project import find_project
        from pyro_loop.workspace import Workspaces

        compile_pyro()
        make_branching_repo(repo, files)
        project = find_project(repo)
        config = load_project_config(project.root).config
        ws = Workspaces()
        loop = ProjectLoop(project, config, ws)
        prepare(project, config, workspaces=ws)
        rows, extras = measure(loop, repo, tmp, runs)
        print(f"pyro daily-loop benchmark: {files:,} files, {runs} runs; "
              f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
        failed = report(rows, extras["exec"], extras["native"], extras["one_file"], extras["copy"])
        if args.json_path:
            args.json_path.write_text(json.dumps({n: samples for n, samples, _ in rows}, indent=2))
        return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())

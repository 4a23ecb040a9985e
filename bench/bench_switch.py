#!/usr/bin/env python3
"""The branch-switch row of bench_loop.py alone: a 1,000-file switch of a 2,000-file
repository synced into a fresh workspace, and a full copy right after each checkout
(`--runs` switches, 6 by default as bench_loop takes; the first one writes into files of
the baseline layer, the next ones into files pyro put there)."""

from __future__ import annotations

import statistics
import sys

from bench_loop import branch_switches, make_branching_repo
from benchrepo import compile_pyro, loop_arguments, scratch_home, summarize


def main() -> int:
    args, files, runs = loop_arguments(__doc__)
    if not args.quick and "--runs" not in sys.argv:
        runs = 6  # as bench_loop times this row
    with scratch_home("pyro-bench-switch-") as tmp:
        from pyro_loop.loop.live import ProjectLoop
        from pyro_loop.loop.prepare import prepare
        from pyro_loop.project.config import load_project_config
        from pyro_loop.project.discovery import find_project
        from pyro_loop.workspace.manager import Workspaces

        compile_pyro()
        repo = tmp / "repo"
        make_branching_repo(repo, files)
        project = find_project(repo)
        config = load_project_config(project.root).config
        ws = Workspaces()
        prepare(project, config, workspaces=ws)
        loop = ProjectLoop(project, config, ws)
        loop.up()
        switched, copied = branch_switches(loop, repo, tmp, max(1, runs // 2))
        median, p95 = summarize(switched)
        floor = statistics.median(copied)
        ratio = median / floor
        print(f"branch switch sync, {files:,} files: median {median:.1f} ms, p95 {p95:.1f}; "
              f"full copy {floor:.1f} ms; ratio {ratio:.2f}x (target <= 0.25x)")  # fmt: skip
        print("  syncs:", " ".join(f"{x:.0f}" for x in switched))
        print("  copies:", " ".join(f"{x:.0f}" for x in copied))
        return 1 if args.check and ratio > 0.25 else 0


if __name__ == "__main__":
    sys.exit(main())

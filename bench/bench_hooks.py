#!/usr/bin/env python3
"""The git-hooks benchmark: what pyro's hooks add to git, and what isolation adds to a check.

On a generated git repository (2,000 files by default) and an identical clone without hooks,
it measures, in one run and interleaved: `git checkout` between branches with the same
lockfile and to a branch with a lockfile not prepared yet (the hook then starts a background
prepare), with pyro's post-checkout hook and without; and the project's check run natively
in the working tree, as `pyro check --staged` (the whole process the pre-commit hook runs),
and as `git commit` with the pre-commit hook against `git commit --no-verify`. Medians and
p95, the overheads (with - without), PASS/FAIL against the targets; `--check` exits 1 when
one fails, `--json` writes the samples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchrepo import (
    GIT_ENV,
    compile_pyro,
    git,
    loop_arguments,
    make_repo,
    scratch_home,
    summarize,
    trust_config,
)

INSTALL = "mkdir -p .deps && cp requirements.txt .deps/"
CHECK = "test -f .deps/requirements.txt && grep -q VALUE pkg0/mod0.py"
HOOK_TARGET_MS = 100.0  # what a post-checkout hook may add to git checkout


def make_project(root: Path, files: int, runs: int) -> None:
    """The shared repository with a [check], a branch `same` (a source change, same lockfile)
    and branches lock0..lockN, each with a lockfile of its own."""
    make_repo(root, files, INSTALL)
    with (root / ".pyro.toml").open("a") as f:
        f.write(f'\n[check]\nrun = ["{CHECK}"]\n')
    trust_config(root)
    git(root, "commit", "-qam", "check")
    git(root, "checkout", "-q", "-b", "same")
    (root / "pkg0" / "mod0.py").write_text("VALUE = 'same lockfile'\n")
    git(root, "commit", "-qam", "same lockfile")
    for i in range(runs):
        git(root, "checkout", "-q", "-b", f"lock{i}", "main")
        (root / "requirements.txt").write_text(f"requests==2.{i}.0\n")
        git(root, "commit", "-qam", f"lockfile {i}")
    git(root, "checkout", "-q", "main")
    # The native baseline runs where the dependencies are installed, as a developer's is.
    subprocess.run(["sh", "-c", INSTALL], cwd=root, check=True)


def timed_git(repo: Path, *args: str) -> float:
    start = time.perf_counter()
    result = subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV},
                            capture_output=True, check=False)  # fmt: skip
    elapsed = (time.perf_counter() - start) * 1000
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {result.stderr.decode()}")
    return elapsed


def wait_for_background_prepare(repo: Path, home: Path) -> None:
    """Untimed: the prepare a hook started finishes before the next measurement."""
    from pyro_loop.loop.projecthome import ProjectHome
    from pyro_loop.procutil import pid_alive
    from pyro_loop.project.discovery import find_project

    path = ProjectHome.of(home, find_project(repo)).background_prepare
    if not path.exists():
        raise SystemExit("the post-checkout hook started no background prepare")
    pid = int(json.loads(path.read_text())["pid"])
    deadline = time.monotonic() + 120
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def checkouts(hooked: Path, plain: Path, home: Path, runs: int) -> dict[str, list[float]]:
    """git checkout, with pyro's hook and without, alternating, for both kinds of switch."""
    samples: dict[str, list[float]] = {k: [] for k in ("same+", "same-", "lock+", "lock-")}
    for i in range(runs):
        for repo, mark in ((hooked, "+"), (plain, "-")):
            samples["same" + mark].append(timed_git(repo, "checkout", "-q", "same"))
            timed_git(repo, "checkout", "-q", "main")
        for repo, mark in ((hooked, "+"), (plain, "-")):
            samples["lock" + mark].append(timed_git(repo, "checkout", "-q", f"lock{i}"))
            if repo is hooked:
                wait_for_background_prepare(repo, home)
            timed_git(repo, "checkout", "-q", "main")
        # Back on main: main's snapshot is warm, so that checkout started nothing.
    return samples


def checks(repo: Path, runs: int) -> dict[str, list[float]]:
    """The same check natively, isolated (whole `pyro check --staged`), and as a commit."""
    samples: dict[str, list[float]] = {k: [] for k in ("native", "pyro", "commit+", "commit-")}
    counter = iter(range(10**6))
    pyro = [sys.executable, "-m", "pyro_loop", "check", "--staged"]

    def run(argv: list[str]) -> float:
        start = time.perf_counter()
        result = subprocess.run(argv, cwd=repo, capture_output=True, check=False)
        elapsed = (time.perf_counter() - start) * 1000
        if result.returncode != 0:
            raise SystemExit(f"{argv} failed: {result.stderr.decode()}")
        return elapsed

    def stage_an_edit() -> None:
        (repo / "pkg1" / "mod1.py").write_text(f"VALUE = {next(counter)}\n")
        git(repo, "add", "pkg1/mod1.py")

    for _ in range(runs):
        stage_an_edit()
        samples["native"].append(run(["sh", "-c", CHECK]))
        samples["pyro"].append(run(pyro))
        samples["commit+"].append(timed_git(repo, "commit", "-qm", "edit"))
        stage_an_edit()
        samples["commit-"].append(timed_git(repo, "commit", "-qm", "edit", "--no-verify"))
    return samples


Row = tuple[str, list[float], float | None]


def report(rows: list[Row], overheads: list[tuple[str, float, float | None]]) -> bool:
    """Print the table and the overheads; True if a target failed."""
    print(f"{'operation':50} {'median ms':>10} {'p95 ms':>8}")
    for name, samples, _ in rows:
        median, p95 = summarize(samples)
        print(f"{name:50} {median:10.1f} {p95:8.1f}")
    print(f"\n{'overhead (medians, with - without)':50} {'ms':>10}  {'target':10} result")
    failed = False
    for name, value, target in overheads:
        verdict = "-" if target is None else ("PASS" if value <= target else "FAIL")
        failed |= verdict == "FAIL"
        shown = f"<= {target:.0f} ms" if target else "-"
        print(f"{name:50} {value:10.1f}  {shown:10} {verdict}")
    return failed


def main() -> int:
    args, files, runs = loop_arguments(__doc__)

    with scratch_home("pyro-bench-hooks-") as tmp:
        home = tmp / "home"
        hooked, plain = tmp / "hooked", tmp / "plain"
        from pyro_loop.githooks.install import install
        from pyro_loop.loop.prepare import prepare
        from pyro_loop.project.config import load_project_config
        from pyro_loop.project.discovery import find_project
        from pyro_loop.workspace.manager import Workspaces

        compile_pyro()
        make_project(hooked, files, runs)
        git(tmp, "clone", "-q", str(hooked), str(plain))
        project = find_project(hooked)
        prepare(project, load_project_config(project.root).config, workspaces=Workspaces())
        install(project, hooks=["post-checkout", "post-merge", "pre-commit"])
        # Warm-up, untimed: the first runs compile the modules the hooks and pyro load.
        timed_git(hooked, "checkout", "-q", "same")
        timed_git(hooked, "checkout", "-q", "main")
        checks(hooked, 1)

        switch = checkouts(hooked, plain, home, runs)
        check = checks(hooked, runs)
        print(f"pyro hooks benchmark: {files:,} files, {runs} runs; "
              f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
        rows: list[Row] = [
            ("git checkout, same lockfile, no hooks", switch["same-"], None),
            ("git checkout, same lockfile, pyro's hook", switch["same+"], None),
            ("git checkout, new lockfile, no hooks", switch["lock-"], None),
            ("git checkout, new lockfile, hook starts prepare", switch["lock+"], None),
            ("check natively (sh -c CHECK in the repo)", check["native"], None),
            ("pyro check --staged (whole process)", check["pyro"], None),
            ("git commit --no-verify", check["commit-"], None),
            ("git commit, pre-commit hook (isolated check)", check["commit+"], None),
        ]

        def overhead(with_: str, without: str, data: dict[str, list[float]]) -> float:
            return summarize(data[with_])[0] - summarize(data[without])[0]

        overheads = [
            ("post-checkout hook, same lockfile",
             overhead("same+", "same-", switch), HOOK_TARGET_MS),
            ("post-checkout hook, new lockfile (starts prepare)",
             overhead("lock+", "lock-", switch), HOOK_TARGET_MS),
            ("isolated check over native (pyro check --staged)",
             overhead("pyro", "native", check), None),
            ("pre-commit hook on git commit", overhead("commit+", "commit-", check), None),
        ]  # fmt: skip
        failed = report(rows, overheads)
        if args.json_path:
            data = {
                "samples_ms": {name: samples for name, samples, _ in rows},
                "overhead_ms": {name: value for name, value, _ in overheads},
            }
            args.json_path.write_text(json.dumps(data, indent=2))
        return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())

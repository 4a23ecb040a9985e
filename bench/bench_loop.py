#!/usr/bin/env python3
"""The daily-loop benchmark: the repeat loop a coding agent runs, timed end to end.

On a generated git repository (2,000 files by default) it measures the daily commands as a
user starts them (whole `pyro prepare`, `pyro up`, `pyro status`, `pyro exec -- true` and
`pyro retry` processes) and as library calls (up cold and warm, exec, reset with the host's
files synced, edit-to-visible latency with the watcher, a one-file sync and a 1,000-file
branch switch), and a repository ten times larger beside it for exec, status and reset, so
that what grows with the repository shows. Every target is a ratio to a floor measured in
the same run, interleaved with the operation it is compared with: a bare `python -c pass`
(the interpreter the `pyro` script runs), a cold bubblewrap sandbox running `true`, a native
`true`, a full copy of the repository. Medians; `--check` exits 1 when a target fails,
`--json` writes the samples.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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


def pyro_command() -> list[str]:
    """How a user starts pyro: the installed `pyro` script beside this interpreter."""
    script = Path(sys.executable).parent / "pyro"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "pyro_loop"]


def cli(repo: Path, *args: str, env: dict[str, str] | None = None) -> Callable[[], object]:
    head, tail = (args, ()) if "--" not in args else (args[: args.index("--")],
                                                       args[args.index("--"):])  # fmt: skip
    argv = [*pyro_command(), *head, "-C", str(repo), *tail]

    def call() -> object:
        result = subprocess.run(argv, capture_output=True, check=False,
                                env=None if env is None else {**os.environ, **env})  # fmt: skip
        if result.returncode != 0:
            raise SystemExit(
                f"{' '.join(args)} failed: {result.stdout.decode()}{result.stderr.decode()}"
            )
        return result

    return call


def bare_python() -> object:
    return subprocess.run([sys.executable, "-c", "pass"], check=True)


def native_true() -> object:
    return subprocess.run(["true"], check=True)


def bwrap_argv() -> list[str]:
    """A cold bubblewrap sandbox running `true`, with the namespaces a workspace has."""
    argv = [shutil.which("bwrap") or "bwrap", "--unshare-user", "--unshare-pid",
            "--unshare-ipc", "--unshare-uts", "--unshare-net", "--die-with-parent",
            "--new-session"]  # fmt: skip
    for name in ("usr", "etc", "bin", "sbin", "lib", "lib32", "lib64"):
        path = Path("/") / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), f"/{name}"]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), f"/{name}"]
    return [*argv, "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "true"]


def bwrap_true() -> object:
    return subprocess.run(bwrap_argv(), check=True, capture_output=True)


def paired(
    fn: Callable[[], object],
    floor: Callable[[], object],
    runs: int,
    setup: Callable[[], object] | None = None,
) -> tuple[list[float], list[float]]:
    """`fn` and its floor timed alternately, so both see the same load: the floor right
    after `setup`, as `fn` is, so that neither sees what the last `fn` left running (the
    standby sandbox a reset or create boots in the background)."""
    samples: list[float] = []
    floors: list[float] = []
    for _ in range(runs):
        if setup is not None:
            setup()
        floors += timed(floor, 1)
        samples += timed(fn, 1)
    return samples, floors


@dataclass
class Row:
    name: str
    samples: list[float]
    floor: str | None = None  # the name of the floor its ratio is taken to
    target: float | None = None  # the ratio's limit (or ms for an absolute one)
    stat: str = "median"  # "median" | "p95"
    overhead: bool = False  # ratio of (median - floor) to the floor


def edit_latency(loop: Any, repo: Path, runs: int) -> list[float]:
    """Host write -> content readable in the workspace, with the watcher running."""
    from pyro_loop.sync.watcher import run_watcher

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


def discard_work(loop: Any) -> Callable[[], None]:
    def work() -> None:
        # What comes before a reset in the loop: a command that changed files. Its run time
        # (here a pause of 0.1 s) is when the standby sandbox of the last reset boots.
        loop.exec(["sh", "-c", "echo scratch > scratch.txt; rm pkg3/mod3.py"])
        time.sleep(0.1)

    return work


class Bench:
    """The samples of one run, by row, and the floors they are compared with."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.floors: dict[str, list[float]] = {"python": [], "bwrap": [], "native": [],
                                               "copy": []}  # fmt: skip

    def whole(
        self, name: str, fn: Callable[[], object], runs: int, target: float | None
    ) -> list[float]:
        samples, floors = paired(fn, bare_python, runs)
        self.floors["python"] += floors
        self.rows.append(Row(name, samples, "python", target))
        return samples

    def sandboxed(
        self, name: str, fn: Callable[[], object], runs: int, target: float,
        setup: Callable[[], object] | None = None,
    ) -> list[float]:  # fmt: skip
        samples, floors = paired(fn, bwrap_true, runs, setup)
        self.floors["bwrap"] += floors
        self.rows.append(Row(name, samples, "bwrap", target))
        return samples


def measure(loops: list[Any], tmp: Path, runs: int) -> Bench:
    """Every timing of the loop, in the order a day of work would hit them."""
    loop, big = loops
    repo, big_repo = loop.project.root, big.project.root
    bench = Bench()

    def delete_workspace() -> None:
        if loop.find() is not None:
            loop.down(delete=True)  # `pyro down --delete`: its standby serves the next up

    bench.whole("pyro prepare, warm (whole process)", cli(repo, "prepare"), runs, 4)
    bench.sandboxed("up, cold (create from warm layers)", loop.up, runs, 2, delete_workspace)
    loop.up()
    bench.rows.append(Row("up, warm (reconnect, library)", timed(loop.up, runs)))
    bench.whole("pyro up, warm (whole process)", cli(repo, "up"), runs, 3)
    bench.whole("pyro status (whole process)", cli(repo, "status"), runs, 4)
    exec_lib, native = paired(lambda: loop.exec(["true"]), native_true, runs)
    bench.floors["native"] += native
    bench.rows.append(Row("exec true (library, sync first)", exec_lib, "native", 5,
                          overhead=True))  # fmt: skip
    bench.whole("pyro exec -- true (whole process)", cli(repo, "exec", "--", "true"), runs, 3)
    # The same without the fork server (cli/starter.py): the first command after a quiet
    # quarter of an hour, or with PYRO_FORK_SERVER=0.
    no_server = cli(repo, "exec", "--", "true", env={"PYRO_FORK_SERVER": "0"})
    bench.whole("pyro exec -- true (whole process, no fork server)", no_server, runs, None)
    bench.whole("pyro retry (whole process)", cli(repo, "retry"), runs, 3)
    bench.sandboxed("reset (library, + host files synced)", loop.reset, runs, 1,
                    discard_work(loop))  # fmt: skip
    bench.rows.append(Row("edit -> visible, watcher (p95)", edit_latency(loop, repo, max(runs, 10)),
                          target=100, stat="p95"))  # fmt: skip
    counter = iter(range(10**6))
    edit_one = repo / "pkg1" / "mod1.py"
    one_file = timed(loop.sync, runs, lambda: edit_one.write_text(f"V = {next(counter)}\n"))
    bench.rows.append(Row("sync of one changed file", one_file))
    switched, copied = branch_switches(loop, repo, tmp, max(1, min(runs, 6) // 2))
    bench.rows.append(Row("branch switch sync (1,000 files)", switched, "copy", 0.25))
    bench.floors["copy"] = copied
    bench.floors["bwrap"] += timed(bwrap_true, runs)
    scale(bench, (loop, repo), (big, big_repo), max(3, runs))
    return bench


def branch_switches(
    loop: Any, repo: Path, tmp: Path, rounds: int
) -> tuple[list[float], list[float]]:
    """`rounds` switches to `other` and back, each timed as `loop.sync()` and as a full copy
    of the repository. Each switch's sync and copy are timed right after the same checkout:
    on ext4 without a journal, a file's creation walks every inode deleted in the last
    minute, and the checkout has just deleted 1,000 files; a copy timed elsewhere would not
    pay that."""
    switched: list[float] = []
    copied: list[float] = []
    for n, branch in enumerate(["other", "main"] * rounds):  # ends on main
        git(repo, "checkout", "-q", "-f", branch)
        switched += timed(loop.sync, 1)
        copied += timed(partial(shutil.copytree, repo, tmp / f"copy{n}", symlinks=True), 1)
    return switched, copied


def scale(bench: Bench, small: tuple[Any, Path], large: tuple[Any, Path], runs: int) -> None:
    """Exec, status and reset at both sizes, alternating which goes first."""
    ops: dict[str, Callable[[Any, Path], tuple[Callable[[], object], Callable[[], object]]]] = {
        "pyro exec -- true (whole process)": lambda lp, r: (cli(r, "exec", "--", "true"),
                                                            lambda: None),
        "pyro status (whole process)": lambda lp, r: (cli(r, "status"), lambda: None),
        "reset (library, + host files synced)": lambda lp, r: (lp.reset, discard_work(lp)),
    }  # fmt: skip
    samples: dict[tuple[str, int], list[float]] = {}
    for i in range(runs):
        for name, make in ops.items():
            order = [0, 1] if i % 2 == 0 else [1, 0]
            for size in order:
                fn, setup = make(*(small, large)[size])
                samples.setdefault((name, size), []).extend(timed(fn, 1, setup))
    for name in ops:
        ratio_row = Row(f"{name}: 10x files / 1x", samples[(name, 1)], f"1x {name}", 1.2)
        bench.floors[f"1x {name}"] = samples[(name, 0)]
        bench.rows.append(ratio_row)


def judge(bench: Bench, row: Row) -> tuple[float, float | None, str]:
    """(the row's measured value, its ratio, PASS/FAIL/-)."""
    median, p95 = summarize(row.samples)
    value = p95 if row.stat == "p95" else median
    if row.floor is None:
        ok = row.target is None or value <= row.target
        return value, None, "-" if row.target is None else ("PASS" if ok else "FAIL")
    floor = statistics.median(bench.floors[row.floor])
    ratio = (value - floor) / floor if row.overhead else value / floor
    verdict = "-" if row.target is None else ("PASS" if ratio <= row.target else "FAIL")
    return value, ratio, verdict


def report(bench: Bench) -> bool:
    """Print the table; True if a target failed."""
    print(f"{'operation':52} {'median ms':>9} {'p95 ms':>8} {'floor':>14} {'ratio':>7}"
          f"  {'target':9} result")  # fmt: skip
    failed = False
    for row in bench.rows:
        _, ratio, verdict = judge(bench, row)
        median, p95 = summarize(row.samples)
        floor = "-"
        if row.floor is not None:
            label = "1x" if row.floor.startswith("1x ") else row.floor
            floor = f"{label} {statistics.median(bench.floors[row.floor]):.1f}"
        shown_ratio = "-" if ratio is None else f"{ratio:.2f}x"
        if row.target is None:
            target = "-"
        elif row.floor is None:
            target = f"<= {row.target:.0f} ms"
        else:
            target = f"<= {row.target:g}x"
        failed |= verdict == "FAIL"
        print(f"{row.name:52} {median:9.1f} {p95:8.1f} {floor:>14} {shown_ratio:>7}"
              f"  {target:9} {verdict}")  # fmt: skip
    print("floors (medians, measured interleaved with the rows above):")
    names = {"python": "python -c pass", "bwrap": "cold bwrap true", "native": "native true",
             "copy": "full copy of the repository"}  # fmt: skip
    for key, label in names.items():
        samples = bench.floors[key]
        if samples:
            median, p95 = summarize(samples)
            print(f"  {label:50} {median:9.1f} {p95:8.1f}")
    one = statistics.median(next(r.samples for r in bench.rows if r.name.startswith("sync of one")))
    ratio = statistics.median(bench.floors["copy"]) / max(one, 0.001)
    text = f"one-file sync vs full copy: {ratio:.0f}x cheaper (target >= 20x)"
    print(f"{text:90} {'PASS' if ratio >= 20 else 'FAIL'}")
    return failed or ratio < 20


def main() -> int:
    args, files, runs = loop_arguments(__doc__)
    big_files = files * 5 if args.quick else files * 10

    with scratch_home("pyro-bench-loop-") as tmp:
        from pyro_loop.loop.live import ProjectLoop
        from pyro_loop.loop.prepare import prepare
        from pyro_loop.project.config import load_project_config
        from pyro_loop.project.discovery import find_project
        from pyro_loop.workspace.manager import Workspaces

        compile_pyro()
        ws = Workspaces()
        loops = []
        for name, count, branching in (("repo", files, True), ("big", big_files, False)):
            repo = tmp / name
            (make_branching_repo if branching else make_repo)(
                repo, count, *(() if branching else (INSTALL,))
            )
            project = find_project(repo)
            config = load_project_config(project.root).config
            prepare(project, config, workspaces=ws)
            loops.append(ProjectLoop(project, config, ws))
        loops[1].up()
        bench = measure(loops, tmp, runs)
        print(f"pyro daily-loop benchmark: {files:,} files ({big_files:,} for the 10x rows), "
              f"{runs} runs; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
        failed = report(bench)
        if args.json_path:
            data = {"rows": {r.name: r.samples for r in bench.rows}, "floors": bench.floors}
            args.json_path.write_text(json.dumps(data, indent=2))
        return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Measure pyro's workspace operations against their speed targets, and against baselines.

What is measured (wall time, as a caller of the `Workspaces` library waits for it):

- create            `create(layers=[key])` from a seed already in the store, until it returns
                    (the workspace's agent has answered a ping).
- exec round trip   `exec(id, ["true"])` on a live workspace.
- reset             `reset(id)` after ~20 files were changed inside the workspace.
- reset+first exec  the same reset plus the first `exec(["true"])` answered after it: what an
                    agent waits for before it can work again.
- snapshot create   `snapshot_create(id, name)` after ~20 files were changed.
- delete            `delete(id)` of a running workspace.

Baselines, measured in the same run and interleaved with the operations above so that a noisy
shared machine affects both alike:

- copy seed tree    `shutil.copytree` of the seed's tree to a fresh directory on the store's
                    filesystem: what giving each workspace (or each reset) its own copy costs.
- native true       `subprocess.run(["true"])` on the host: the floor for an exec round trip.

Flatness: create and reset are measured again for a seed 10x larger, alternating between
the two sizes run by run, and the ratio of their medians (large/small) shows whether the
cost grows with the size of the repository. The target is flat.

Each operation is repeated `--runs` times after warm-up runs; the table shows the median
and the 95th percentile, targets are judged on medians. The operations run back to back,
as a script driving the library would, so background work one operation leaves behind (the
standby sandbox booting, deferred removals) overlaps the next one; nothing the caller waits
for is left out. In particular each create directly follows the previous delete: the
baselines run between a create and the workspace's first exec, and the 10x copies after
all flatness cycles. See bench/README.md for the targets and how to read the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

try:
    from pyro_loop.errors import PyroError
    from pyro_loop.fs.util import remove_tree
    from pyro_loop.store.seed import import_seed
    from pyro_loop.workspace.manager import Workspaces
except ImportError as exc:  # pragma: no cover - depends on how the script is started
    sys.exit(
        f"bench_runtime: cannot import pyro_loop ({exc}).\n"
        "Run it with the interpreter pyro is installed in, e.g. .venv/bin/python "
        "bench/bench_runtime.py"
    )

REPO = Path(__file__).resolve().parent.parent

DEFAULT_FILES = 2_000
DEFAULT_RUNS = 15
QUICK_FILES = 200
QUICK_RUNS = 5
WARMUP_RUNS = 2
SCALE_FACTOR = 10
CHANGED_FILES = 20

# Seed shape: ~15 files per directory, up to 6 levels deep, text files of a few hundred
# bytes to a few KB (log-normal around 1.2 KB, like the source files of a typical repo).
FILES_PER_DIR = 15
MAX_DEPTH = 6
SIZE_MEDIAN = 1_200
SIZE_SIGMA = 0.8
SIZE_MIN = 200
SIZE_MAX = 8_192
RANDOM_SEED = 20_240_501

VOCABULARY = (
    "def", "return", "self", "import", "value", "config", "if", "else", "for", "in", "None",
    "result", "path", "items", "class", "raise", "error", "data", "name", "key", "index",
    "update", "request", "response", "yield", "with", "open", "test", "assert", "lambda",
    "=", "(", ")", ":", "+", "[0]", "True", "False", "0", "1", "len", "list", "dict",
)  # fmt: skip
DIR_NAMES = ("src", "lib", "core", "utils", "api", "models", "tests", "docs", "pkg", "internal")
EXTENSIONS = (".py", ".py", ".py", ".md", ".txt", ".json", ".toml", ".cfg", ".js", ".ts")

# Appends a line to each file named after the nonce: overlayfs copies each one up.
EDIT_SCRIPT = 'n="$1"; shift; for f in "$@"; do printf "edited %s\\n" "$n" >> "$f"; done'


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    files: int
    runs: int
    warmup: int
    scale: bool
    scale_runs: int
    home: Path | None
    json_path: Path | None
    check: bool
    quick: bool


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        description="Benchmark pyro workspace operations against their speed targets.",
        epilog="Exit status: 0, or 1 with --check when a target fails; 2 if pyro cannot run.",
    )
    parser.add_argument("--files", type=int, help=f"files in the seed (default {DEFAULT_FILES:,})")
    parser.add_argument("--runs", type=int, help=f"measured runs (default {DEFAULT_RUNS})")
    parser.add_argument(
        "--warmup", type=int, default=WARMUP_RUNS, help="unmeasured runs first (default 2)"
    )
    parser.add_argument(
        "--scale-runs", type=int, help="runs per size for the 10x seed (default: half of --runs)"
    )
    parser.add_argument("--no-scale", action="store_true", help="skip the 10x-seed flatness runs")
    parser.add_argument("--home", type=Path, help="PYRO_HOME to use (default: a temporary one)")
    parser.add_argument("--json", type=Path, dest="json_path", help="write samples and summary")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"CI smoke: {QUICK_FILES} files, {QUICK_RUNS} runs, no 10x seed, targets not "
        "enforced unless --check",
    )
    args = parser.parse_args(argv)
    files = args.files or (QUICK_FILES if args.quick else DEFAULT_FILES)
    runs = args.runs or (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    if files < 1 or runs < 1 or args.warmup < 0:
        parser.error("--files and --runs must be at least 1, --warmup at least 0")
    return Config(
        files=files,
        runs=runs,
        warmup=args.warmup,
        scale=not (args.no_scale or args.quick),
        scale_runs=args.scale_runs or max(3, runs // 2),
        home=args.home,
        json_path=args.json_path,
        check=args.check,
        quick=args.quick,
    )


# -- the seed repository ----------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    """A generated repository, imported into the store as a layer."""

    files: int
    dirs: int
    total_bytes: int
    changed: list[str]  # the files each modification touches, relative to /workspace
    key: str  # its layer in the store
    tree: Path  # that layer's read-only tree
    import_ms: float


def make_corpus(rng: random.Random) -> str:
    """Code-like text that file contents are cut from."""
    lines = []
    for _ in range(4_000):
        indent = "    " * rng.randrange(4)
        lines.append(indent + " ".join(rng.choices(VOCABULARY, k=rng.randint(2, 12))))
    return "\n".join(lines) + "\n"


def make_dirs(rng: random.Random, count: int) -> list[str]:
    """`count` nested directories (plus the root, ""), each under a random earlier one."""
    dirs = [""]
    while len(dirs) <= count:
        parent = rng.choice(dirs)
        if parent and parent.count("/") + 1 >= MAX_DEPTH:
            continue
        name = f"{rng.choice(DIR_NAMES)}_{len(dirs)}"
        dirs.append(f"{parent}/{name}" if parent else name)
    return dirs


def file_size(rng: random.Random) -> int:
    size = int(rng.lognormvariate(math.log(SIZE_MEDIAN), SIZE_SIGMA))
    return min(SIZE_MAX, max(SIZE_MIN, size))


def generate_seed(root: Path, n_files: int) -> tuple[list[str], int, int]:
    """Write `n_files` deterministic text files below `root`; returns (paths, dirs, bytes)."""
    rng = random.Random(RANDOM_SEED + n_files)
    corpus = make_corpus(rng)
    dirs = make_dirs(rng, max(1, n_files // FILES_PER_DIR))
    for directory in dirs:
        (root / directory).mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    total = 0
    for i in range(n_files):
        directory = rng.choice(dirs)
        name = f"{rng.choice(VOCABULARY[:30])}_{i}{rng.choice(EXTENSIONS)}"
        rel = f"{directory}/{name}" if directory else name
        size = file_size(rng)
        start = rng.randrange(len(corpus) - size)
        text = f"# {rel}\n{corpus[start : start + size]}"
        (root / rel).write_text(text)
        paths.append(rel)
        total += len(text)
    return paths, len(dirs) - 1, total


def prepare_seed(ws: Workspaces, scratch: Path, n_files: int) -> Seed:
    """Generate a seed of `n_files` files and import it once into the store."""
    source = scratch / f"seed-{n_files}"
    source.mkdir()
    paths, dirs, total = generate_seed(source, n_files)
    start = now()
    layer = import_seed(ws.store, source)
    import_ms = ms_since(start)
    remove_tree(source)  # workspaces use the layer, not the source
    step = max(1, len(paths) // CHANGED_FILES)
    return Seed(
        files=n_files,
        dirs=dirs,
        total_bytes=total,
        changed=paths[::step][:CHANGED_FILES],
        key=layer.key,
        tree=layer.tree,
        import_ms=import_ms,
    )


# -- timing -----------------------------------------------------------------------------------


def now() -> int:
    return time.perf_counter_ns()


def ms_since(start: int) -> float:
    return (time.perf_counter_ns() - start) / 1e6


@dataclass
class Bench:
    """The library under test, and what this run created (for the clean-up)."""

    ws: Workspaces
    scratch: Path
    token: str = field(default_factory=lambda: secrets.token_hex(4))
    live: set[str] = field(default_factory=set)
    layers: set[str] = field(default_factory=set)  # seeds and snapshots this run used


def run_ok(bench: Bench, ws_id: str, argv: list[str]) -> None:
    result = bench.ws.exec(ws_id, argv)
    if result.exit_code != 0:
        detail = result.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{argv[0]} exited {result.exit_code} in the workspace: {detail}")


def modify(bench: Bench, ws_id: str, seed: Seed, nonce: str) -> None:
    """Change ~20 files inside the workspace with one exec (not timed)."""
    run_ok(bench, ws_id, ["/bin/sh", "-c", EDIT_SCRIPT, "bench-edit", nonce, *seed.changed])


def timed_create(bench: Bench, seed: Seed) -> tuple[str, float]:
    start = now()
    record = bench.ws.create(layers=[seed.key])
    elapsed = ms_since(start)
    bench.live.add(record.id)
    return record.id, elapsed


def timed_reset(bench: Bench, ws_id: str) -> tuple[float, float]:
    """(reset, reset + the first exec answered after it)."""
    start = now()
    bench.ws.reset(ws_id)
    reset_ms = ms_since(start)
    run_ok(bench, ws_id, ["true"])
    return reset_ms, ms_since(start)


def timed_delete(bench: Bench, ws_id: str) -> float:
    start = now()
    bench.ws.delete(ws_id)
    elapsed = ms_since(start)
    bench.live.discard(ws_id)
    return elapsed


def workspace_cycle(bench: Bench, seed: Seed, nonce: str, *, baselines: bool) -> dict[str, float]:
    """One workspace's life: every operation of the main table once, plus the baselines.

    The baselines run while the workspace is up, before its first exec: that way each create
    directly follows the previous cycle's delete, as in a script's create/delete loop (the
    conservative case: the create overlaps the deleted workspace's removal).
    """
    sample: dict[str, float] = {}
    ws_id, sample["create"] = timed_create(bench, seed)
    if baselines:
        sample["copy"] = copy_sample(bench, seed)
        sample["native_true"] = native_true_sample()
    modify(bench, ws_id, seed, f"{nonce}-a")
    start = now()
    run_ok(bench, ws_id, ["true"])
    sample["exec"] = ms_since(start)
    sample["reset"], sample["reset_first_exec"] = timed_reset(bench, ws_id)
    modify(bench, ws_id, seed, f"{nonce}-b")  # the nonce makes every snapshot a new layer
    start = now()
    snapshot = bench.ws.snapshot_create(ws_id, "bench")
    sample["snapshot"] = ms_since(start)
    bench.layers.add(snapshot.layers[0])
    sample["delete"] = timed_delete(bench, ws_id)
    return sample


def scale_cycle(bench: Bench, seed: Seed, nonce: str) -> dict[str, float]:
    """Create and reset only, for the flatness comparison."""
    sample: dict[str, float] = {}
    ws_id, sample["create"] = timed_create(bench, seed)
    modify(bench, ws_id, seed, nonce)
    sample["reset"], sample["reset_first_exec"] = timed_reset(bench, ws_id)
    timed_delete(bench, ws_id)
    return sample


def copy_sample(bench: Bench, seed: Seed) -> float:
    """Baseline: a full copy of the seed tree on the same filesystem."""
    target = bench.scratch / f"copy-{secrets.token_hex(4)}"
    start = now()
    shutil.copytree(seed.tree, target, symlinks=True)
    elapsed = ms_since(start)
    remove_tree(target)
    # Write the copy's dirty data back now (not timed), rather than during the next pyro
    # operation, whose record and marker writes are fsync'ed.
    os.sync()
    return elapsed


def native_true_sample() -> float:
    """Baseline: a process started and waited for on the host, no sandbox."""
    start = now()
    subprocess.run(["true"], check=True)
    return ms_since(start)


Samples = dict[str, list[float]]


def keep(samples: Samples, sample: dict[str, float]) -> None:
    for name, value in sample.items():
        samples.setdefault(name, []).append(value)


def announce_run(i: int, warmup: int, runs: int) -> bool:
    """Print the run's number; True if it is measured (not a warm-up)."""
    measured = i >= warmup
    progress(f"  run {i + 1}/{warmup + runs}" + ("" if measured else " (warm-up)"))
    return measured


def measure_main(bench: Bench, seed: Seed, cfg: Config) -> Samples:
    """Workspace cycles, each with one sample of each baseline."""
    samples: Samples = {}
    for i in range(cfg.warmup + cfg.runs):
        measured = announce_run(i, cfg.warmup, cfg.runs)
        sample = workspace_cycle(bench, seed, f"{bench.token}-main-{i}", baselines=measured)
        if measured:
            keep(samples, sample)
    return samples


def measure_scale(bench: Bench, small: Seed, large: Seed, cfg: Config) -> dict[str, Samples]:
    """Both sizes, alternating which goes first, so drift on the machine hits both alike.

    The copy baselines come after all cycles: each 10x copy is seconds of heavy I/O that
    would otherwise still be settling during the next create or reset.
    """
    samples: dict[str, Samples] = {"1x": {}, "10x": {}}
    sizes = [("1x", small), ("10x", large)]
    for i in range(cfg.warmup + cfg.scale_runs):
        measured = announce_run(i, cfg.warmup, cfg.scale_runs)
        for label, seed in sizes if i % 2 == 0 else reversed(sizes):
            sample = scale_cycle(bench, seed, f"{bench.token}-scale-{label}-{i}")
            if measured:
                keep(samples[label], sample)
    for label, seed in sizes:
        progress(f"  copy baseline, {seed.files:,} files x {cfg.scale_runs}")
        samples[label]["copy"] = [copy_sample(bench, seed) for _ in range(cfg.scale_runs)]
    return samples


# -- statistics and targets -------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": percentile(values, 0.95),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


@dataclass(frozen=True)
class Target:
    metric: str  # a key of `headline()`
    limit: float
    unit: str  # "ms" or "x"
    label: str

    def describe(self) -> str:
        return f"<= {self.limit:g} {self.unit}" if self.unit == "ms" else f"<= {self.limit:g}x"


TARGETS = (
    Target("create", 50, "ms", "create"),
    Target("reset_first_exec", 20, "ms", "reset+first exec"),
    Target("exec", 10, "ms", "exec round trip"),
    Target("flat_reset", 1.5, "x", "reset flat as files grow 10x"),
    Target("flat_create", 1.5, "x", "create flat as files grow 10x"),
)


@dataclass(frozen=True)
class Verdict:
    target: Target
    value: float | None  # None: not measured in this run (--no-scale)

    @property
    def passed(self) -> bool | None:
        return None if self.value is None else self.value <= self.target.limit


def median_of(samples: Samples, name: str) -> float:
    return statistics.median(samples[name])


def flat_ratio(scale: dict[str, Samples] | None, name: str) -> float | None:
    if scale is None:
        return None
    return median_of(scale["10x"], name) / median_of(scale["1x"], name)


def headline(main: Samples, scale: dict[str, Samples] | None) -> dict[str, float | None]:
    """The numbers targets are judged on: medians (ms) and large/small ratios of medians."""
    values: dict[str, float | None] = {name: median_of(main, name) for name in main}
    for name in ("create", "reset", "reset_first_exec", "copy"):
        values[f"flat_{name}"] = flat_ratio(scale, name)
    return values


def judge(values: dict[str, float | None]) -> list[Verdict]:
    return [Verdict(t, values.get(t.metric)) for t in TARGETS]


@dataclass(frozen=True)
class Results:
    small: Seed
    large: Seed | None  # None with --no-scale
    main: Samples
    scale: dict[str, Samples] | None  # "1x" and "10x" samples, None with --no-scale
    verdicts: list[Verdict]
    load: tuple[float, float]  # 1-minute load average when measuring started and ended


# -- report -----------------------------------------------------------------------------------


def fmt_ms(value: float) -> str:
    return f"{value:,.1f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.1f}x" if value < 10 else f"{value:,.0f}x"


def fmt_result(verdict: Verdict | None) -> str:
    if verdict is None:
        return "-"
    if verdict.passed is None:
        return "skipped"
    return "PASS" if verdict.passed else "FAIL"


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A plain-text table; `align` has a letter per column: "l"eft or "r"ight."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        aligned = (
            cell.rjust(width) if how == "r" else cell.ljust(width)
            for cell, width, how in zip(cells, widths, align, strict=True)
        )
        return "  ".join(aligned).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def verdict_for(verdicts: list[Verdict], metric: str) -> Verdict | None:
    return next((v for v in verdicts if v.target.metric == metric), None)


def main_table(main: Samples, verdicts: list[Verdict]) -> str:
    copy = median_of(main, "copy")
    native = median_of(main, "native_true")
    rows_spec = [
        ("create", "create", f"copy/create = {fmt_ratio(copy / median_of(main, 'create'))}"),
        ("exec round trip", "exec", f"exec/native = {fmt_ratio(median_of(main, 'exec') / native)}"),
        ("reset", "reset", f"copy/reset = {fmt_ratio(copy / median_of(main, 'reset'))}"),
        (
            "reset+first exec",
            "reset_first_exec",
            f"copy/(reset+exec) = {fmt_ratio(copy / median_of(main, 'reset_first_exec'))}",
        ),
        (
            f"snapshot create ({CHANGED_FILES} files changed)",
            "snapshot",
            f"copy/snapshot = {fmt_ratio(copy / median_of(main, 'snapshot'))}",
        ),
        ("delete", "delete", "-"),
        ("baseline: copy seed tree", "copy", "-"),
        ("baseline: native true", "native_true", "-"),
    ]
    rows = []
    for label, name, versus in rows_spec:
        stats = summarize(main[name])
        verdict = verdict_for(verdicts, name)
        target = verdict.target.describe() if verdict else "-"
        rows.append(
            [
                label,
                fmt_ms(stats["median"]),
                fmt_ms(stats["p95"]),
                target,
                versus,
                fmt_result(verdict),
            ]
        )
    headers = ["operation", "median ms", "p95 ms", "target", "vs baseline", "result"]
    return render(headers, rows, align="lrrlll")


def scale_table(
    scale: dict[str, Samples], small: Seed, large: Seed, verdicts: list[Verdict]
) -> str:
    rows = []
    for label, name in (
        ("create", "create"),
        ("reset", "reset"),
        ("reset+first exec", "reset_first_exec"),
        ("baseline: copy seed tree", "copy"),
    ):
        one, ten = summarize(scale["1x"][name]), summarize(scale["10x"][name])
        verdict = verdict_for(verdicts, f"flat_{name}")
        rows.append(
            [
                label,
                f"{fmt_ms(one['median'])} / {fmt_ms(one['p95'])}",
                f"{fmt_ms(ten['median'])} / {fmt_ms(ten['p95'])}",
                fmt_ratio(ten["median"] / one["median"]),
                verdict.target.describe() if verdict else "-",
                fmt_result(verdict),
            ]
        )
    headers = [
        "operation",
        f"{small.files:,} files: median / p95 ms",
        f"{large.files:,} files: median / p95 ms",
        "ratio",
        "target",
        "result",
    ]
    return render(headers, rows, align="lrrrll")


def header(cfg: Config, results: Results) -> str:
    seed, large = results.small, results.large
    scale = f"; 10x seed: {large.files:,} files, {cfg.scale_runs} runs per size" if large else ""
    before, after = results.load
    return (
        f"pyro runtime benchmark: seed of {seed.files:,} files in {seed.dirs:,} dirs "
        f"({seed.total_bytes / 1e6:.1f} MB), {cfg.runs} runs after {cfg.warmup} warm-up"
        f"{scale}\nhost: {os.cpu_count()} CPUs, 1-min load average {before:.2f} at start, "
        f"{after:.2f} at end; Linux {platform.release()}, Python {platform.python_version()}"
    )


def footer(verdicts: list[Verdict], cfg: Config) -> str:
    failed = [v for v in verdicts if v.passed is False]
    skipped = [v for v in verdicts if v.passed is None]
    judged = len(verdicts) - len(skipped)
    lines = [f"targets (medians): {judged - len(failed)} of {judged} passed"]
    lines[0] += f", {len(skipped)} skipped (no 10x seed)" if skipped else ""
    for v in failed:
        unit = " ms" if v.target.unit == "ms" else "x"
        value = f"{v.value:.1f}{unit}" if v.value is not None else "?"
        lines.append(f"  FAIL {v.target.label}: {value}, target {v.target.describe()}")
    if not cfg.check:
        lines.append("(not enforced: pass --check to exit 1 when a target fails)")
    return "\n".join(lines)


def host_info() -> dict[str, Any]:
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "src"], capture_output=True, check=False
    )
    return {
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": commit.stdout.strip() or None,
        "src_modified": bool(dirty.stdout) if dirty.returncode == 0 else None,
    }


def seed_info(seed: Seed) -> dict[str, Any]:
    return {
        "files": seed.files,
        "dirs": seed.dirs,
        "bytes": seed.total_bytes,
        "layer": seed.key,
        "import_ms": seed.import_ms,
    }


def write_json(path: Path, cfg: Config, results: Results) -> None:
    main, scale = results.main, results.scale
    data = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {
            "files": cfg.files,
            "runs": cfg.runs,
            "warmup": cfg.warmup,
            "scale_runs": cfg.scale_runs if cfg.scale else 0,
            "changed_files": CHANGED_FILES,
            "quick": cfg.quick,
        },
        "host": {**host_info(), "load_at_start": results.load[0], "load_at_end": results.load[1]},
        "seeds": [seed_info(s) for s in (results.small, results.large) if s is not None],
        "samples_ms": {"main": main, "scale": scale},
        "summary_ms": {
            "main": {name: summarize(v) for name, v in main.items()},
            "scale": {
                size: {name: summarize(v) for name, v in s.items()} for size, s in scale.items()
            }
            if scale
            else None,
        },
        "headline": headline(main, scale),
        "targets": [
            {
                "metric": v.target.metric,
                "label": v.target.label,
                "limit": v.target.limit,
                "unit": v.target.unit,
                "value": v.value,
                "passed": v.passed,
            }
            for v in results.verdicts
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


# -- set-up and clean-up ----------------------------------------------------------------------


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def bench_environment(cfg: Config) -> Iterator[Bench]:
    """A pyro home (temporary unless --home) and, afterwards, nothing left of this run."""
    temporary = cfg.home is None
    home = Path(tempfile.mkdtemp(prefix="pyro-bench-")) if cfg.home is None else cfg.home
    home = home.expanduser().absolute()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["PYRO_HOME"] = str(home)
    progress(f"pyro home: {home}" + (" (temporary)" if temporary else ""))
    ws = Workspaces(home=home)
    known_layers = {layer.key for layer in ws.store.list()}
    bench = Bench(ws=ws, scratch=Path(tempfile.mkdtemp(prefix="bench-scratch-", dir=home)))
    try:
        yield bench
    finally:
        progress("cleaning up")
        delete_workspaces(bench)
        remove_tree(bench.scratch)
        if temporary:
            remove_home(home)
        else:
            for key in sorted(bench.layers - known_layers):
                with contextlib.suppress(PyroError, OSError):
                    ws.store.delete(key)


def delete_workspaces(bench: Bench) -> None:
    for ws_id in sorted(bench.live):
        try:
            bench.ws.delete(ws_id)
        except (PyroError, OSError) as exc:
            progress(f"warning: could not delete workspace {ws_id}: {exc}")


def remove_home(home: Path, timeout: float = 30.0) -> None:
    """Remove the temporary home; pyro's own background removals may still be running in it."""
    deadline = time.monotonic() + timeout
    while home.exists():
        remove_tree(home)
        if time.monotonic() > deadline:
            progress(f"warning: could not remove {home}")
            return
        time.sleep(0.05)


def exit_on_sigterm() -> None:
    """Turn SIGTERM (a CI timeout, `kill`) into SystemExit, so the clean-up still runs."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# -- main -------------------------------------------------------------------------------------


def measure(bench: Bench, cfg: Config) -> Results:
    load_before = os.getloadavg()[0]
    progress(f"importing a seed of {cfg.files:,} files")
    small = prepare_seed(bench.ws, bench.scratch, cfg.files)
    bench.layers.add(small.key)
    progress(f"measuring: {cfg.warmup} warm-up + {cfg.runs} runs")
    main = measure_main(bench, small, cfg)
    large, scale = None, None
    if cfg.scale:
        progress(f"importing a seed of {cfg.files * SCALE_FACTOR:,} files")
        large = prepare_seed(bench.ws, bench.scratch, cfg.files * SCALE_FACTOR)
        bench.layers.add(large.key)
        progress(f"flatness: {cfg.warmup} warm-up + {cfg.scale_runs} runs per size")
        scale = measure_scale(bench, small, large, cfg)
    verdicts = judge(headline(main, scale))
    return Results(small, large, main, scale, verdicts, (load_before, os.getloadavg()[0]))


def report(cfg: Config, results: Results) -> None:
    print(header(cfg, results))
    print()
    print(main_table(results.main, results.verdicts))
    if results.scale is not None and results.large is not None:
        print()
        print(f"flatness ({SCALE_FACTOR}x the files; ratio = large/small medians):")
        print(scale_table(results.scale, results.small, results.large, results.verdicts))
    print()
    print(footer(results.verdicts, cfg))


def run(cfg: Config) -> int:
    with bench_environment(cfg) as bench:
        results = measure(bench, cfg)
    if cfg.json_path is not None:  # first: the samples are kept even if stdout is gone
        write_json(cfg.json_path, cfg, results)
        progress(f"wrote {cfg.json_path}")
    report(cfg, results)
    failed = any(v.passed is False for v in results.verdicts)
    return 1 if cfg.check and failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    exit_on_sigterm()
    try:
        return run(cfg)
    except PyroError as exc:
        hint = f"\n  hint: {exc.hint}" if exc.hint else ""
        print(f"bench_runtime: pyro cannot run here: {exc}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

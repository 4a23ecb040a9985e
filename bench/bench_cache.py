#!/usr/bin/env python3
"""Benchmark a cold `pyro prepare` that builds against one that pulls from a registry.

In one run, with Debian's docker-registry started on loopback: a cold prepare of a real
project (a virtualenv with a few dozen Python packages from PyPI) in one fresh pyro home,
which builds; `pyro cache push` of its layers; cold prepares in fresh homes, which pull
them; and, as the floor, copying the same layer tree from disk with `cp -a` (pulls and
copies alternate, medians compared). Nothing is deleted between the measured runs: on
ext4 without a journal, creating a file skips every inode deleted in the last minute, one
by one (the kernel's `recently_deleted`), so a tree removed just before would charge the
next pull or copy for its own removal (seen: 0.6 ms against 0.05 ms per file). For the same
reason the measured runs wait `--settle` seconds after the build (pip creates and deletes
thousands of files), 75 by default.
Targets: the pull at least 5x faster than the build, and within 1.5x of the disk copy.
`--quick` (the CI smoke run) installs a small synthetic tree instead, with no network.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchrepo import make_repo, scratch_home

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.helpers.oci_registry
from tests.helpers.oci_registry import running_registry

# Packages a web service's test environment typically has; with their dependencies, a few
# dozen distributions.
REQUIREMENTS = """\
flask
requests
httpx
pydantic
sqlalchemy
rich
pytest
pyyaml
python-dateutil
attrs
click
jinja2
"""
VENV = "python3 -m venv .venv && .venv/bin/pip install -q --no-compile -r requirements.txt"
# --quick: about 600 files, no network.
SYNTHETIC = (
    "mkdir -p .venv && for d in $(seq 30); do mkdir -p .venv/p$d; "
    "for f in $(seq 20); do head -c 4000 /dev/urandom | base64 > .venv/p$d/m$f.py; done; done"
)
TARGET_SPEEDUP = 5.0
TARGET_VS_COPY = 1.5


def timed_prepare(root: Path, home: Path) -> tuple[float, object]:
    from pyro_loop.loop.prepare import prepare
    from pyro_loop.project.config import load_project_config
    from pyro_loop.project.discovery import find_project
    from pyro_loop.project.trust import allow
    from pyro_loop.workspace.manager import Workspaces

    project = find_project(root)
    config = load_project_config(project.root).config
    ws = Workspaces(home=home)
    allow(home, config)  # each machine's user has read the file
    started = time.perf_counter()
    result = prepare(project, config, workspaces=ws)
    seconds = time.perf_counter() - started
    for status in ws.list():
        ws.delete(status.record.id)
    return seconds, result


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: a small synthetic tree")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    parser.add_argument("--json", dest="json_path", type=Path, help="write the figures here")
    parser.add_argument("--runs", type=int, default=5, help="pulls and copies (medians)")
    parser.add_argument("--settle", type=float, default=75.0,
                        help="seconds to wait after the build (not with --quick)")  # fmt: skip
    return parser.parse_args()


def measure(args: argparse.Namespace, install: str, requirements: str) -> dict[str, Any]:
    """Build, push, then pull and copy in alternation; the seconds of each."""

    from pyro_loop.loop.prepare import compute_inputs
    from pyro_loop.loop.teamcache import project_snapshot
    from pyro_loop.remote import share
    from pyro_loop.remote.address import parse_remote
    from pyro_loop.store.layers import LayerStore

    os.environ.pop("PYRO_CACHE_REMOTE", None)
    with scratch_home("pyro-bench-cache-") as tmp, running_registry() as registry:
        root = tmp / "project"
        make_repo(root, 20, install, requirements)
        build_s, built = timed_prepare(root, tmp / "machine-a")
        if "dependencies" not in built.built:  # type: ignore[attr-defined]
            raise SystemExit("the first prepare did not build the dependency snapshot")

        from pyro_loop.project.config import load_project_config
        from pyro_loop.project.discovery import find_project

        project = find_project(root)
        config = load_project_config(project.root).config
        snapshot = project_snapshot(config, compute_inputs(project, config))
        remote = parse_remote(f"{registry.address}/bench/cache")
        store_a = LayerStore(tmp / "machine-a")
        started = time.perf_counter()
        pushed = share.push(store_a, remote, snapshot)
        push_s = time.perf_counter() - started

        tree = store_a.require(snapshot.key).tree
        if not args.quick:  # creating files is slow for a minute after deleting many
            time.sleep(args.settle)
        pulls, copies = [], []
        for n in range(1 if args.quick else args.runs):
            os.environ["PYRO_CACHE_REMOTE"] = str(remote)
            # Each side starts with nothing of the other's left to write back (untimed).
            os.sync()
            try:
                seconds, pulled = timed_prepare(root, tmp / f"machine-b{n}")
            finally:
                del os.environ["PYRO_CACHE_REMOTE"]
            if pulled.pulled != ["dependencies"]:  # type: ignore[attr-defined]
                raise SystemExit("a prepare in a fresh home did not pull the snapshot")
            pulls.append(seconds)
            os.sync()
            started = time.perf_counter()
            subprocess.run(["cp", "-a", str(tree), str(tmp / f"copy{n}")], check=True)
            copies.append(time.perf_counter() - started)
    return {"build_s": build_s, "push_s": push_s, "pulls_s": pulls, "copies_s": copies,
            "blob_bytes": pushed.layers[-1]["blob_size"]}  # fmt: skip


def main() -> int:
    args = arguments()
    install, requirements = (SYNTHETIC, "synthetic\n") if args.quick else (VENV, REQUIREMENTS)
    figures = measure(args, install, requirements)
    build_s, push_s = figures["build_s"], figures["push_s"]
    pull_s, copy_s = statistics.median(figures["pulls_s"]), statistics.median(figures["copies_s"])
    meta_size = figures["blob_bytes"]
    speedup, vs_copy = build_s / pull_s, pull_s / copy_s
    rows = [
        ("prepare, cold, building", build_s, "-", "-"),
        ("pyro cache push (pack + upload)", push_s, "-", "-"),
        ("prepare, cold, pulling (median)", pull_s, f"build/pull >= {TARGET_SPEEDUP:.0f}x",
         "PASS" if speedup >= TARGET_SPEEDUP else "FAIL"),
        ("baseline: cp -a of the layer (median)", copy_s, f"pull/copy <= {TARGET_VS_COPY}x",
         "PASS" if vs_copy <= TARGET_VS_COPY else "FAIL"),
    ]  # fmt: skip
    kind = (
        "synthetic tree (--quick)"
        if args.quick
        else "virtualenv of " + ", ".join(requirements.split())
    )
    print(f"pyro cache benchmark: {kind}; blob {meta_size / 1e6:.1f} MB; "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'operation':38} {'seconds':>8}  {'target':22} result")
    for name, seconds, target, verdict in rows:
        print(f"{name:38} {seconds:8.2f}  {target:22} {verdict}")
    print(f"pull is {speedup:.1f}x faster than building, {vs_copy:.2f}x the disk copy")
    if args.json_path:
        args.json_path.write_text(json.dumps(
            {**figures, "pull_s": pull_s, "copy_s": copy_s, "speedup": speedup,
             "pull_vs_copy": vs_copy}))  # fmt: skip
    failed = any(verdict == "FAIL" for *_rest, verdict in rows)
    return 1 if failed and args.check and not args.quick else 0


if __name__ == "__main__":
    sys.exit(main())

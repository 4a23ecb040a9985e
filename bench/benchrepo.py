"""What the benchmarks share: a generated git repository and a timing loop."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

GIT_ENV = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.invalid",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.invalid"}  # fmt: skip


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, check=True,
                   capture_output=True)  # fmt: skip


def make_repo(
    root: Path, files: int, install: str, requirements: str = "requests==2.32.3\n"
) -> None:
    """A committed repository on `main`: `files` Python modules in 50 packages, a
    requirements.txt (`requirements`) keying a dependency snapshot that `install` builds."""
    root.mkdir()
    for i in range(files):
        path = root / f"pkg{i % 50}" / f"mod{i}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"VALUE = {i}\n" * 20)
    (root / "requirements.txt").write_text(requirements)
    (root / ".gitignore").write_text(".deps/\n")
    (root / ".pyro.toml").write_text(
        f'[prepare]\nkeys = ["requirements.txt"]\nrun = ["{install}"]\n'
    )
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "main")
    trust_config(root)


def trust_config(root: Path) -> None:
    """Approve the repository's .pyro.toml in the run's PYRO_HOME, as `pyro trust` does."""
    from pyro_loop.home import pyro_home
    from pyro_loop.project.trust import allow_content

    path = root / ".pyro.toml"
    allow_content(pyro_home(), path, path.read_bytes())


def compile_pyro() -> None:
    """Byte-compile pyro's modules, as installing a wheel does. The whole-process timings are
    of an installed pyro; without this, an editable install under PYTHONDONTWRITEBYTECODE
    (common in containers and CI) would time the compiler on every run instead."""
    import compileall

    import pyro_loop

    compileall.compile_dir(Path(pyro_loop.__file__).parent, quiet=1)


def timed(
    fn: Callable[[], object], runs: int, setup: Callable[[], object] | None = None
) -> list[float]:
    """Milliseconds per call of `fn`, `runs` times; `setup` runs before each, untimed."""
    samples = []
    for _ in range(runs):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def summarize(samples: list[float]) -> tuple[float, float]:
    """(median, p95) of the samples."""
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[max(0, round(0.95 * len(ordered)) - 1)]


def loop_arguments(doc: str | None) -> tuple[argparse.Namespace, int, int]:
    """The options the project-level benchmarks share; returns (args, files, runs)."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="CI smoke: 200 files, 3 runs")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    parser.add_argument("--json", dest="json_path", type=Path, help="write samples here")
    args = parser.parse_args()
    files, runs = (200, 3) if args.quick else (args.files, args.runs)
    return args, files, runs


@contextlib.contextmanager
def scratch_home(prefix: str) -> Iterator[Path]:
    """A temporary directory whose `home` is PYRO_HOME for this run. On the way out (a
    failure or Ctrl-C included), every workspace in it is deleted, its processes with it,
    and the directory removed."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["PYRO_HOME"] = str(tmp / "home")
    try:
        yield tmp
    finally:
        from pyro_loop.workspace.manager import Workspaces

        ws = Workspaces(home=tmp / "home")
        for status in ws.list():
            ws.delete(status.record.id)
        ws.pool.drain()
        shutil.rmtree(tmp, ignore_errors=True)

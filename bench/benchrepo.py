"""What the benchmarks share: a generated git repository and a timing loop."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

GIT_ENV = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.invalid",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.invalid"}  # fmt: skip


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, env={**os.environ, **GIT_ENV}, check=True,
                   capture_output=True)  # fmt: skip


def make_repo(root: Path, files: int, install: str) -> None:
    """A committed repository on `main`: `files` Python modules in 50 packages, a
    requirements.txt keying a dependency snapshot that `install` builds into .deps/."""
    root.mkdir()
    for i in range(files):
        path = root / f"pkg{i % 50}" / f"mod{i}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"VALUE = {i}\n" * 20)
    (root / "requirements.txt").write_text("requests==2.32.3\n")
    (root / ".gitignore").write_text(".deps/\n")
    (root / ".pyro.toml").write_text(
        f'[prepare]\nkeys = ["requirements.txt"]\nrun = ["{install}"]\n'
    )
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "main")


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

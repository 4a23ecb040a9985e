"""Cold prepare of a real npm project against the same install run natively, in one run.

Both sides start with a warm download cache and no installed dependencies: natively,
`npm ci` with npm's cache filled by an earlier run; in pyro, a prepare whose dependency
snapshot is missing (a new key each time) with the pyro home's download cache filled by an
earlier prepare. The ratio of the medians is the figure (target <= 1.2x): what a relock or
a second project with the same dependencies costs over installing natively.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchrepo import git, timed, trust_config

TARGET_RATIO = 1.2
# Small, popular packages with no install scripts: what the comparison measures is pyro's
# cost around the installer, not the network.
DEPENDENCIES = {
    "lodash": "4.17.21",
    "chalk": "4.1.2",
    "commander": "11.1.0",
    "semver": "7.6.0",
    "yargs": "17.7.2",
    "debug": "4.3.4",
}
NPM_CI = "npm ci --no-audit --no-fund"


@dataclass(frozen=True)
class ColdInstall:
    native_ms: list[float]
    prepare_ms: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.prepare_ms) / statistics.median(self.native_ms)


def _npm(args: list[str], cwd: Path, home: Path) -> None:
    env = {**os.environ, "HOME": str(home)}
    result = subprocess.run(["npm", *args], cwd=cwd, env=env, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"npm {' '.join(args)}: {result.stderr.decode()[-500:]}")


def measure(tmp: Path, runs: int) -> ColdInstall | str:
    """The samples, or why they cannot be taken here (no npm, no registry)."""
    if shutil.which("npm") is None:
        return "npm is not installed"
    native_home, repo = tmp / "native-home", tmp / "npm-project"
    native_home.mkdir()
    repo.mkdir()
    package = {"name": "bench-app", "version": "1.0.0", "dependencies": DEPENDENCIES}
    (repo / "package.json").write_text(json.dumps(package, indent=2) + "\n")
    try:
        _npm(["install", "--package-lock-only", "--no-audit", "--no-fund"], repo, native_home)
    except RuntimeError as exc:
        return f"the npm registry is not reachable ({exc})"
    (repo / ".gitignore").write_text("node_modules/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "app")

    def clean() -> None:
        shutil.rmtree(repo / "node_modules", ignore_errors=True)

    native = [*timed(lambda: _npm(["ci", "--no-audit", "--no-fund"], repo, native_home),
                     runs + 1, setup=clean)][1:]  # fmt: skip
    clean()
    pyro = [sys.executable, "-m", "pyro_loop", "prepare"]
    run = [0]

    def new_key() -> None:
        # Another command line, another snapshot key: a cold prepare, the cache kept.
        run[0] += 1
        command = f"{NPM_CI} # run {run[0]}"
        (repo / ".pyro.toml").write_text(f'[prepare]\nrun = ["{command}"]\n')
        trust_config(repo)  # the benchmark wrote it

    def prepare() -> None:
        result = subprocess.run(pyro, cwd=repo, capture_output=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"pyro prepare failed: {result.stderr.decode()}")

    prepared = timed(prepare, runs + 1, setup=new_key)[1:]  # the first fills the cache
    return ColdInstall(native, prepared)

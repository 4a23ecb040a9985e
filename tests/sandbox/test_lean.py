"""The lean entry (`pyro exec`, `retry`, `status`, `up`, `prepare` without the full CLI) gives
the full CLI's exit codes, output and errors, and loads none of typer, pygit2 or mcp."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyro_loop.cli.lean import parse
from pyro_loop.project.discovery import find_project
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.project import DEPS_CONFIG, commit_project, trust_config

# Each started as the `pyro` script starts it (the name shows in usage errors).
LEAN = "import sys; from pyro_loop.cli.entry import main; sys.argv[0] = 'pyro'; main()"
FULL = "import sys; from pyro_loop.cli.app import main; sys.argv[0] = 'pyro'; main()"


def run(lean: bool, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        input: str = "") -> subprocess.CompletedProcess[str]:  # fmt: skip
    head = ["-c", LEAN if lean else FULL]
    return subprocess.run([sys.executable, *head, *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd=cwd, input=input,
                          env={**os.environ, **(env or {})})  # fmt: skip


class Side:
    """One of two identical projects, each with its own pyro home: the lean entry runs in
    one, the full CLI in the other, so each command meets the same state in both."""

    def __init__(self, root: Path, lean: bool) -> None:
        self.lean = lean
        self.home = root / "home"
        self.repo = commit_project(root / "repo", DEPS_CONFIG,
                                   {"requirements.txt": "requests==2.32.0\n",
                                    "app.py": "print(1)\n"})  # fmt: skip
        trust_config(self.repo, self.home)
        self.id = find_project(self.repo).id

    def __call__(
        self, *args: str, cwd: Path | None = None, input: str = ""
    ) -> tuple[int, str, str]:
        argv = [a.replace("REPO", str(self.repo)) for a in args]
        done = run(self.lean, *argv, cwd=cwd, env={"PYRO_HOME": str(self.home)}, input=input)
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, self._normalized(done.stdout), self._normalized(done.stderr)

    def _normalized(self, text: str) -> str:
        """What differs between the two sides (paths, ids, durations) and nothing else."""
        text = text.replace(str(self.repo), "<repo>").replace(str(self.home), "<home>")
        text = text.replace(self.id, "<project>").replace(self.id[:8], "<project>")
        text = re.sub(r"\b[0-9a-f]{12}\b", "<id>", text)
        text = re.sub(r"\b\d+(\.\d+)? (ms|s|min)\b", "<t>", text)
        return re.sub(r'"duration_ms": [\d.]+', '"duration_ms": <t>', text)

    def cleanup(self) -> None:
        ws = Workspaces(home=self.home)
        for status in ws.list():
            ws.delete(status.record.id)


@pytest.fixture
def sides(tmp_path: Path) -> Iterator[tuple[Side, Side]]:
    pair = (Side(tmp_path / "lean", True), Side(tmp_path / "full", False))
    try:
        yield pair
    finally:
        for side in pair:
            side.cleanup()


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["exec"],
        ["exec", "true"],  # without `--`: click's reading of the rest
        ["exec", "--"],
        ["exec", "--help", "--", "true"],
        ["exec", "--timeout", "soon", "--", "true"],
        ["exec", "--timeout"],
        ["exec", "--cwd", "-x", "--", "true"],
        ["exec", "--bogus", "--", "true"],
        ["status", "--json=1"],
        ["status", "extra"],
        ["up", "--"],
        ["retry", "--reset=yes"],
        ["--version"],
        ["workspace", "list"],
    ],
)
def test_what_the_lean_parser_leaves_to_the_full_cli(argv: list[str]) -> None:
    assert parse(argv) is None


@pytest.mark.parametrize(
    "argv",
    [
        ["exec", "--", "true"],
        ["exec", "-C", "x", "--timeout", "1.5", "--cwd", "sub", "--env", "A=1", "--env",
         "B=2", "--", "sh", "-c", "exit 3"],
        ["exec", "--project=x", "--", "--weird-command"],
        ["retry", "--reset", "-C", "x"],
        ["status", "--json"],
        ["up", "--no-prepare", "--watch", "--json", "--project", "x"],
        ["prepare", "--if-changed", "--json"],
    ],
)  # fmt: skip
def test_the_daily_command_lines_take_the_lean_entry(argv: list[str]) -> None:
    assert parse(argv) is not None


def test_lean_and_full_cli_agree_on_output_errors_and_exit_codes(
    sides: tuple[Side, Side], tmp_path: Path
) -> None:
    lean, full = sides

    def same(*args: str, cwd: Path | None = None, input: str = "") -> tuple[int, str, str]:
        got = lean(*args, cwd=cwd, input=input)
        assert got == full(*args, cwd=cwd, input=input), args
        return got

    c = ("-C", "REPO")
    same("retry", *c)  # nothing to retry yet
    same("status", *c)  # not warm: exit 1
    same("up", "--no-prepare", *c)  # not warm: fails fast
    same("prepare", *c)
    same("prepare", "--if-changed", "--json", *c)
    same("prepare", "--json", *c)
    same("status", *c)
    same("status", "--json", *c)
    same("up", *c)
    same("up", "--json", *c)
    for side in sides:
        (side.repo / "app.py").write_text("print(2)\n")
    assert same("exec", *c, "--", "sh", "-c", "cat app.py; echo err >&2; exit 7") == (
        7, "print(2)\n", "err\n")  # fmt: skip
    same("retry", *c)
    same("retry", "--reset", *c)
    assert same("exec", *c, "--", "cat", input="piped\n") == (0, "piped\n", "")
    assert same("exec", *c, "-t", "--", "true")[0] == 1  # -t needs a terminal
    out = same("exec", *c, "--env", "A=1", "--env", "B=two", "--cwd", ".deps", "--", "sh", "-c",
               "echo $A $B; pwd")  # fmt: skip
    assert out[1] == "1 two\n/workspace/.deps\n"
    assert same("exec", *c, "--cwd", "/tmp", "--", "true")[0] == 1  # outside /workspace
    assert same("exec", *c, "--timeout", "0.3", "--", "sleep", "5")[0] != 0
    assert same("exec", *c, "--", "no-such-command")[0] == 127
    assert same("exec", *c, "--env", "NOEQUALS", "--", "true")[0] == 1
    assert same("exec", *c, "--timeout", "soon", "--", "true")[0] == 2  # usage error
    assert same("exec", "-C", str(tmp_path / "missing"), "--", "true")[0] == 1
    plain = tmp_path / "plain"
    plain.mkdir()
    assert same("exec", "--", "true", cwd=plain)[0] == 1  # not a pyro project
    same("status", "-C", str(plain))


def test_the_lean_entry_loads_neither_typer_nor_pygit2_nor_mcp(
    tmp_path: Path, workspaces: Workspaces
) -> None:
    repo = commit_project(tmp_path / "repo", DEPS_CONFIG, {"requirements.txt": "x==1\n"})
    c = ("-C", str(repo))
    assert run(True, "up", *c).returncode == 0
    assert run(True, "exec", *c, "--", "true").returncode == 0
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    for args in (["exec", *c, "--", "true"], ["retry", *c], ["status", *c], ["up", *c],
                 ["prepare", *c], ["prepare", "--if-changed", *c]):  # fmt: skip
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pyro_loop", *args],
                              capture_output=True, text=True, env=env, timeout=120,
                              check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        loaded = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
        assert not loaded & {"typer", "click", "pygit2", "mcp"}, args
        # Nor what only a rarer path needs (starting a process, copying trees, suggesting a
        # key, ctypes' system calls): each is milliseconds of every daily command's start.
        assert not loaded & {"subprocess", "shutil", "ctypes", "uuid", "difflib"}, args
        # Nor the standard dataclasses (records.py stands in), nor the TOML parser for a
        # .pyro.toml already parsed (kept by its digest in the pyro home).
        assert not loaded & {"dataclasses", "inspect", "tomllib"}, args
        if args[0] in ("status", "prepare"):  # they talk to no agent and start no thread
            assert not loaded & {"socket", "threading"}, args
        # The JSON shapes are for type checking and the MCP server's schemas only.
        assert "pyro_loop.shapes" not in loaded, args
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pyro_loop", "diff", *c],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert "typer" in {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}

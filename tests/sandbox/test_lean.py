"""The lean entry (`pyro exec`, `retry`, `status`, `up`, `prepare` without the full CLI) gives
the full CLI's exit codes, output and errors, and loads none of typer, pygit2 or mcp."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyro_loop.cli.lean import parse
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.project import DEPS_CONFIG, commit_project
from tests.helpers.sides import Side, agreeing, run


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
    same = agreeing(lean, full)

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

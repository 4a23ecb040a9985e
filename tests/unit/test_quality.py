"""The codebase stays lint- and type-clean and keeps its layers: ruff, mypy (strict) and
import-linter run as part of the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "src" / "pyro_loop" / "agent"
# The agent's floor: Debian 11's python3. mypy 2 targets 3.10 at the oldest, so vermin checks
# the floor itself (ruff too, for syntax: per-file-target-version in pyproject.toml).
AGENT_FLOOR = "3.9"
AGENT_MYPY_VERSION = "3.10"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


@pytest.mark.parametrize(
    "args",
    [
        ("ruff", "check", "src", "tests", "bench"),
        ("ruff", "format", "--check", "src", "tests", "bench"),
        ("mypy",),
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_is_clean(args: tuple[str, ...]) -> None:
    result = _run(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_agent_is_type_clean_at_its_own_floor() -> None:
    # The agent's modules run under the sandbox's python3 (3.9 and later) and import each
    # other by bare name, as top-level modules of one directory: a run of their own, with the
    # directories they come from as import roots (files named on the command line skip the
    # main run's exclude), strict like the rest.
    from pyro_loop.runtime.bwrap import AGENT_FILES, agent_source

    sources = [agent_source(name) for name in AGENT_FILES]
    roots = sorted({str(source.parent) for source in sources})
    result = _run(
        "mypy", "--python-version", AGENT_MYPY_VERSION, "--explicit-package-bases",
        *(str(source.relative_to(ROOT)) for source in sources),
        env={"MYPYPATH": os.pathsep.join(roots)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"in {len(AGENT_FILES)} source files" in result.stdout


def test_agent_needs_nothing_newer_than_its_floor() -> None:
    # Every standard-library module, function, argument and syntax the agent uses, by the
    # Python version that brought it (annotations are postponed: they are not run).
    from pyro_loop.runtime.bwrap import AGENT_SHARED

    vermin = Path(sys.executable).parent / "vermin"  # it has no `python -m` entry
    result = subprocess.run(
        [vermin, f"--target={AGENT_FLOOR}-", "--violations", "--no-tips", AGENT,
         *AGENT_SHARED.values()],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Minimum required versions: {AGENT_FLOOR}" in result.stdout


def test_each_subsystem_imports_only_from_the_layers_below_it() -> None:
    """The layers declared in pyproject.toml ([tool.importlinter], docs/architecture.md)."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_agent_modules_are_shipped_and_shadow_no_standard_module() -> None:
    # The agent's directory comes first on the sandbox's sys.path: a module named like a
    # standard one would replace it for the agent and for every standard module it imports.
    import re
    import tomllib

    from pyro_loop.runtime.bwrap import AGENT_FILES, AGENT_SHARED, AGENT_SOURCE

    modules = {path.name for path in AGENT_SOURCE.glob("*.py")} - {"__init__.py"}
    assert set(AGENT_FILES) == modules | set(AGENT_SHARED)
    assert not {name.removesuffix(".py") for name in AGENT_FILES} & sys.stdlib_module_names
    # The main mypy run skips the modules that import their siblings by bare name, and only
    # those (the two the host shares, protocol.py and redact.py, import none); all of them
    # are checked by test_agent_is_type_clean_at_its_own_floor.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    skipped = {
        name
        for name in modules
        if any(re.search(pattern, f"src/pyro_loop/agent/{name}") for pattern in config["exclude"])
    }
    assert skipped == modules - {"protocol.py", "redact.py"}


@pytest.mark.slow
def test_wheel_ships_type_information_and_the_agent(tmp_path: Path) -> None:
    # The README offers a Python API: type checkers read its hints only with py.typed in the
    # installed package. The agent's files reach sandboxes from the installed package too.
    import zipfile

    from pyro_loop.runtime.bwrap import AGENT_FILES, agent_source

    result = _run("pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), ".")
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("pyro_loop-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "pyro_loop/py.typed" in names
    package = ROOT / "src"
    assert {agent_source(name).relative_to(package).as_posix() for name in AGENT_FILES} <= names
    assert "pyro_loop/templates/pyro.toml" in names


def test_a_unit_test_cannot_start_a_sandbox(pyro_home: Path) -> None:
    """tests/unit/conftest.py puts a failing `bwrap` first on PATH: what needs a sandbox
    belongs in tests/sandbox."""
    from pyro_loop.errors import PyroError
    from pyro_loop.workspace.manager import Workspaces

    with pytest.raises(PyroError) as raised:
        Workspaces(home=pyro_home).create()
    assert "no-sandbox" in str(raised.value)  # the stub's directory: the one bwrap it tried

"""The codebase stays lint- and type-clean: ruff and mypy (strict) run as part of the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
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


def test_agent_modules_are_shipped_and_shadow_no_standard_module() -> None:
    # The agent's directory comes first on the sandbox's sys.path: a module named like a
    # standard one would replace it for the agent and for every standard module it imports.
    import re
    import tomllib

    from pyro_loop.runtime.bwrap import AGENT_FILES, AGENT_SOURCE

    modules = {path.name for path in AGENT_SOURCE.glob("*.py")} - {"__init__.py"}
    assert set(AGENT_FILES) == modules
    assert not {name.removesuffix(".py") for name in modules} & sys.stdlib_module_names
    # mypy skips the modules that import their siblings by bare name, and only those (the two
    # the host shares, protocol.py and redact.py, import none and are checked).
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    skipped = {
        name
        for name in modules
        if any(re.search(pattern, f"src/pyro_loop/agent/{name}") for pattern in config["exclude"])
    }
    assert skipped == modules - {"protocol.py", "redact.py"}

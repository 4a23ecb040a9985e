"""Exit 127 explained: which PATH the workspace searched, and the likely fix for the command."""

from __future__ import annotations

import re

from pyro_loop.project.config import TOOL_NAMES, ProjectConfig
from pyro_loop.runtime import SANDBOX_PATH

# dash: "sh: 1: uv: not found"; bash: "bash: line 1: uv: command not found"
_SHELL_NOT_FOUND = re.compile(rb"(?:^|\n)[^\n]*?([^\s:/]+): (?:command )?not found\s*$")
# Commands an ecosystem's install puts in the project, and the ecosystem that puts them there.
_PROJECT_COMMANDS = {
    "pytest": "python",
    "tox": "python",
    "nox": "python",
    "ruff": "python",
    "mypy": "python",
    "jest": "node",
    "vitest": "node",
    "tsc": "node",
    "eslint": "node",
    "mocha": "node",
}


def missing_command(argv: list[str], stderr: bytes) -> str | None:
    """The command a 127 was about: named by the shell's message, else the program itself."""
    found = _SHELL_NOT_FOUND.search(stderr[-2048:].rstrip())
    if found:
        return found[1].decode(errors="replace")
    return argv[0].rsplit("/", 1)[-1] if argv else None


def not_found_hint(command: str | None, env: dict[str, str], config: ProjectConfig) -> str:
    """One or two lines: the PATH searched, then what most likely makes `command` found."""
    path = env.get("PATH", SANDBOX_PATH)
    lines = [f"the workspace's PATH is {path}"]
    name = command or "the command"
    if command in TOOL_NAMES:
        if command in config.tools:
            lines.append(
                f"{command} is declared in [tools] but not built: run `pyro prepare`, then "
                "`pyro up`"
            )
        else:
            lines.append(
                f'declare it in .pyro.toml: [tools] {command} = "latest" (or the version '
                "you use), then `pyro up` installs it"
            )
    elif command in _PROJECT_COMMANDS:
        kind = _PROJECT_COMMANDS[command]
        where = ".venv/bin" if kind == "python" else "node_modules/.bin"
        lines.append(
            f"{name} comes from the project's dependencies: add it to the lockfile so that "
            f"[prepare] run installs it into {where}, which is on PATH"
            + ("" if config.workspace_path is None else " (see [workspace] path)")
        )
    else:
        lines.append(
            f"install {name} with [prepare] run (or [environment] packages on a debian base), "
            "or expose a host toolchain with [tools] host"
        )
    return "\n  ".join(lines)

"""The lean entry: the daily commands without loading the full CLI.

`pyro exec`, `retry`, `status`, `up` and `prepare` run many times a day, and a typer
application (with its click, and everything its commands import) costs several times a bare
Python start before it parses a word. This parser accepts exactly the well-formed command
lines of those five commands and calls the same bodies (daily.py) the full CLI does; anything
else (help, an unknown or malformed option, a value that does not convert) goes to the full
CLI, which says what is wrong in its own words. So both give the same output, errors and exit
codes, and tests/sandbox/test_lean.py holds them to it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

Call = Callable[[], int]

# Per command: option -> (destination, kind), kind "value" | "values" (repeatable) | "flag".
_PROJECT = {"-C": ("project", "value"), "--project": ("project", "value")}
_JSON = {"--json": ("json", "flag")}
OPTIONS: dict[str, dict[str, tuple[str, str]]] = {
    "exec": {
        **_PROJECT,
        "--timeout": ("timeout", "value"),
        "--cwd": ("cwd", "value"),
        "--env": ("env", "values"),
        "-i": ("interactive", "flag"),
        "--interactive": ("interactive", "flag"),
        "-t": ("tty", "flag"),
        "--tty": ("tty", "flag"),
        "--no-prepare": ("no_prepare", "flag"),
    },
    "retry": {**_PROJECT, "--reset": ("reset", "flag"), "--no-prepare": ("no_prepare", "flag")},
    "status": {**_PROJECT, **_JSON},
    "up": {
        **_PROJECT,
        **_JSON,
        "--no-prepare": ("no_prepare", "flag"),
        "--watch": ("watch", "flag"),
    },
    "prepare": {**_PROJECT, **_JSON, "--if-changed": ("if_changed", "flag")},
}


def parse(argv: list[str]) -> Call | None:
    """The command to run for `argv`, or None when the full CLI must handle it."""
    if not argv or argv[0] not in OPTIONS:
        return None
    name, rest = argv[0], argv[1:]
    values: dict[str, list[str]] = {}
    i = 0
    while i < len(rest):
        if rest[i] == "--" and name == "exec":
            return _bind(name, values, rest[i + 1 :]) if rest[i + 1 :] else None
        taken = _option(OPTIONS[name], rest, i, values)
        if taken == 0:
            return None  # help, an unknown option, a positional argument: the full CLI's
        i += taken
    return None if name == "exec" else _bind(name, values, [])


def _option(known: dict[str, tuple[str, str]], rest: list[str], i: int,
            values: dict[str, list[str]]) -> int:  # fmt: skip
    """Read the option at `rest[i]` into `values`; how many words it took (0: not lean's)."""
    arg = rest[i]
    option, eq, inline = arg.partition("=")
    spec = known.get(option if arg.startswith("--") else arg)
    if spec is None:
        return 0
    dest, kind = spec
    if kind == "flag":
        if eq:
            return 0
        values[dest] = ["1"]
        return 1
    if eq and arg.startswith("--"):
        value, taken = inline, 1
    elif i + 1 < len(rest):
        value, taken = rest[i + 1], 2
    else:
        return 0
    if not value or value.startswith("-"):
        return 0  # click's reading of these is its own
    values[dest] = [*values.get(dest, []), value] if kind == "values" else [value]
    return taken


def _bind(name: str, values: dict[str, list[str]], command: list[str]) -> Call | None:
    from pyro_loop.cli import daily

    def one(dest: str) -> str | None:
        return values[dest][-1] if dest in values else None

    project = Path(values["project"][-1]) if "project" in values else None
    as_json = "json" in values
    if name == "exec":
        timeout = None
        if "timeout" in values:
            try:
                timeout = float(values["timeout"][-1])
            except ValueError:
                return None
        cwd, env = one("cwd"), values.get("env", [])
        interactive, tty = "interactive" in values, "tty" in values
        return lambda: daily.exec_(command, project, timeout=timeout, cwd=cwd, env=env,
                                   interactive=interactive, tty=tty,
                                   no_prepare="no_prepare" in values)  # fmt: skip
    if name == "retry":
        return lambda: daily.retry(project, reset="reset" in values,
                                   no_prepare="no_prepare" in values)  # fmt: skip
    if name == "status":
        return lambda: daily.status(project, as_json=as_json)
    if name == "up":
        no_prepare, watch = "no_prepare" in values, "watch" in values
        return lambda: daily.up(project, no_prepare=no_prepare, watch=watch, as_json=as_json)
    if_changed = "if_changed" in values
    return lambda: daily.prepare(project, if_changed=if_changed, as_json=as_json)

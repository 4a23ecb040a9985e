"""Secrets: values that reach a command's environment and nothing else.

Two sources: `--secret NAME=VALUE` when a workspace is created (kept beside its record in
`secrets.json`, readable by its owner only, never in the record, `.pyro.toml` or any log),
and `--secret-env NAME` on an exec (the value is read from pyro's own environment when the
command starts; `retry` keeps the name, never the value). Every value is masked in what a
command prints back before it leaves the library (CLI output, MCP results and their saved
outputs, service logs, shells), so a command that echoes a secret shows `[REDACTED]`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pyro_loop.agent.redact import MASK, Redactor
from pyro_loop.errors import InvalidInputError
from pyro_loop.names import ENV_NAME

__all__ = ["MASK", "Redactor", "from_host", "from_mapping", "load", "parse", "redact_text", "save"]
FILENAME = "secrets.json"


def parse(pairs: Iterable[str]) -> dict[str, str]:
    """`NAME=VALUE` strings (from --secret) -> a dict; one line per mistake."""
    found: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not ENV_NAME.fullmatch(name):
            raise InvalidInputError(
                f"--secret takes NAME=VALUE with NAME a variable name, not {name!r}"
            )
        if not value:
            raise InvalidInputError(f"--secret {name}= has no value")
        found[name] = value
    return found


def from_mapping(values: object) -> dict[str, str]:
    """Secrets given as a JSON object of NAME: VALUE (MCP's workspace_create). It is checked
    here rather than by the tool's schema, whose errors would quote the values back."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InvalidInputError("secrets must be an object of NAME: VALUE pairs")
    found: dict[str, str] = {}
    for name, value in values.items():
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            raise InvalidInputError(f"secrets: {name!r} is not a variable name")
        if not isinstance(value, str) or not value:
            raise InvalidInputError(f"secrets: {name}'s value must be a non-empty string")
        found[name] = value
    return found


def from_host(names: Sequence[str]) -> dict[str, str]:
    """The values of `names` in pyro's own environment (--secret-env)."""
    values: dict[str, str] = {}
    for name in names:
        if not ENV_NAME.fullmatch(name):
            raise InvalidInputError(f"--secret-env takes a variable name, not {name!r}")
        value = os.environ.get(name)
        if not value:
            raise InvalidInputError(
                f"--secret-env {name}: {name} is not set in this environment",
                hint=f"export {name}=... first (its value never goes on a command line)",
            )
        values[name] = value
    return values


def save(workspace_dir: Path, values: Mapping[str, str]) -> None:
    """Keep a workspace's secrets (none: nothing is written)."""
    if not values:
        return
    path = workspace_dir / FILENAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dict(values), f)


def load(workspace_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((workspace_dir / FILENAME).read_text())
    except FileNotFoundError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def redact_text(text: str, values: Iterable[str]) -> str:
    """`text` with each value masked (longest first, so a value containing another wins)."""
    for value in sorted(set(values), key=len, reverse=True):
        if value:
            text = text.replace(value, MASK.decode())
    return text

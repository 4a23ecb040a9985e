"""Validation of the names and labels users give workspaces and snapshots."""

from __future__ import annotations

import re

from pyro_loop.errors import InvalidInputError

# An environment variable's name, as shells accept it (--env, --secret, [prepare] env).
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")


def check_name(name: str, *, what: str = "name") -> str:
    if not _NAME_RE.fullmatch(name):  # fullmatch: `$` would allow a final newline
        raise InvalidInputError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse_labels(items: list[str]) -> dict[str, str]:
    """Parse `key=value` strings (as given with --label) into a dict."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY_RE.fullmatch(key):
            raise InvalidInputError(f"invalid label {item!r}: expected key=value")
        if len(value) > 256 or not value.isprintable():
            raise InvalidInputError(f"invalid label value for {key!r}: at most 256 printable chars")
        labels[key] = value
    return labels


def parse_env(items: list[str]) -> dict[str, str]:
    """Parse `NAME=value` strings (as given with --env) into a dict."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not ENV_NAME.fullmatch(key):
            raise InvalidInputError(f"invalid environment variable {item!r}: expected NAME=value")
        env[key] = value
    return env

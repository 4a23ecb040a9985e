"""The login for a registry, from where container tools already keep it.

In order: PYRO_CACHE_USERNAME and PYRO_CACHE_PASSWORD (for CI), the file REGISTRY_AUTH_FILE
names, podman's ${XDG_RUNTIME_DIR}/containers/auth.json, then docker's config.json
($DOCKER_CONFIG, or ~/.docker). An entry may hold the login itself (`auth`, as `docker
login` writes it), an identity token (`identitytoken`, as `az acr login` and other
OAuth2 logins write it), or name a credential helper (`credHelpers`, `credsStore`; a helper
answering the user name `<token>` hands over an identity token, as docker reads it). Never
from `.pyro.toml`, which a cloned repository controls. The secret is only ever put in a
request: no message, log or repr shows it.

An identity token is an OAuth2 refresh token: it never goes to the registry itself, only to
the registry's token service, in exchange for an access token (registry.py).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from pyro_loop.errors import InvalidInputError
from pyro_loop.records import dataclass, field

USERNAME_VAR, PASSWORD_VAR = "PYRO_CACHE_USERNAME", "PYRO_CACHE_PASSWORD"
_HELPER_TIMEOUT = 20.0


IDENTITY_TOKEN_USER = "<token>"  # docker's user name for a helper's identity token


@dataclass(frozen=True)
class Credentials:
    source: str  # where they came from, for messages: a variable's or a file's name
    basic: str = field(repr=False)  # base64 of "user:password", as the Basic scheme sends it
    identity_token: str | None = field(default=None, repr=False)  # an OAuth2 refresh token


def auth_files() -> list[Path]:
    """The files searched, most specific first."""
    files = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    docker = os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
    files.append(Path(docker) / "config.json")
    return files


def find_credentials(registry: str) -> Credentials | None:
    """The login for `registry` (host[:port]), or None: anonymous."""
    user, password = os.environ.get(USERNAME_VAR), os.environ.get(PASSWORD_VAR)
    if user and password is not None:
        return Credentials(USERNAME_VAR, _encode(user, password))
    for path in auth_files():
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"cannot read the registry logins in {path}: {exc}") from None
        found = _from_config(data, registry, path) if isinstance(data, dict) else None
        if found is not None:
            return found
    return None


def _from_config(data: dict[str, Any], registry: str, path: Path) -> Credentials | None:
    names = [registry, f"https://{registry}", f"http://{registry}"]
    auths = data.get("auths")
    for name in names:
        entry = auths.get(name) if isinstance(auths, dict) else None
        if not isinstance(entry, dict):
            continue
        auth, token = entry.get("auth"), entry.get("identitytoken")
        token = token if isinstance(token, str) and token else None
        if token or (isinstance(auth, str) and auth):
            return Credentials(str(path), auth if isinstance(auth, str) else "", token)
    helpers = data.get("credHelpers")
    helper = helpers.get(registry) if isinstance(helpers, dict) else None
    helper = helper or data.get("credsStore")
    if isinstance(helper, str) and helper:
        return _from_helper(helper, registry)
    return None


def _from_helper(helper: str, registry: str) -> Credentials | None:
    """Ask `docker-credential-<helper>` (the docker credential-helper protocol)."""
    program = f"docker-credential-{helper}"
    try:
        result = subprocess.run(
            [program, "get"], input=registry.encode(), capture_output=True,
            timeout=_HELPER_TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InvalidInputError(f"the registry credential helper {program} failed: {exc}") from None
    if result.returncode != 0:
        return None  # the helper has no login for this registry
    try:
        payload = json.loads(result.stdout)
        user, secret = str(payload["Username"]), str(payload["Secret"])
    except (ValueError, KeyError, TypeError):
        raise InvalidInputError(f"{program} answered something that is not a login") from None
    if user == IDENTITY_TOKEN_USER:
        return Credentials(program, "", identity_token=secret)
    return Credentials(program, _encode(user, secret))


def _encode(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()

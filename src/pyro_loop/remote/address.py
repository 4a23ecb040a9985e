"""Where a project's layers are shared: `[cache] remote`, or PYRO_CACHE_REMOTE.

`<registry>/<repository>`, such as `ghcr.io/acme/pyro-cache` or `127.0.0.1:5000/pyro`. The
registry is spoken to over HTTPS, except on the loopback address, where plain HTTP is
allowed (as container tools allow it). Any other registry is reached over plain HTTP only
when the address says so explicitly: `http://registry.lan:5000/pyro`.
"""

from __future__ import annotations

import ipaddress
import os
import re

from pyro_loop.errors import InvalidInputError
from pyro_loop.records import dataclass

ENV_VAR = "PYRO_CACHE_REMOTE"
# The distribution spec's repository name: lowercase components joined by `/`.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST = re.compile(r"(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::\d{1,5})?")
EXAMPLE = "ghcr.io/acme/pyro-cache, or 127.0.0.1:5000/pyro"


@dataclass(frozen=True)
class Remote:
    registry: str  # host[:port]
    repository: str  # namespace/name
    scheme: str  # "https", or "http" (loopback, or said explicitly)

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def plain_http(self) -> bool:
        return self.scheme == "http"


def parse_remote(text: str) -> Remote:
    """`[http://|https://]<registry>/<repository>` as a Remote, or InvalidInputError."""
    scheme, sep, rest = text.strip().partition("://")
    if not sep:
        scheme, rest = "", text.strip()
    elif scheme not in ("http", "https"):
        raise InvalidInputError(f"cache remote {text!r}: only http:// or https:// may prefix it")
    registry, slash, repository = rest.partition("/")
    if not slash or not _HOST.fullmatch(registry) or not _REPOSITORY.fullmatch(repository):
        raise InvalidInputError(
            f"cache remote {text!r} is not <registry>/<repository>",
            hint=f"for example {EXAMPLE} (lowercase repository names)",
        )
    if not scheme:
        scheme = "http" if is_loopback(registry) else "https"
    return Remote(registry=registry, repository=repository, scheme=scheme)


def is_loopback(registry: str) -> bool:
    host = registry[1 : registry.index("]")] if registry.startswith("[") else registry
    host = host if registry.startswith("[") else host.split(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configured_remote(from_config: str | None) -> Remote | None:
    """The remote in effect: PYRO_CACHE_REMOTE over `[cache] remote`; None when neither
    names one (an empty PYRO_CACHE_REMOTE turns the project's remote off)."""
    text = os.environ.get(ENV_VAR)
    if text is None:
        text = from_config
    return parse_remote(text) if text else None

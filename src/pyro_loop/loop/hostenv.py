"""What prepare's commands get from the host: proxy, certificate and index settings.

Installers behind a TLS-intercepting proxy or a private index work natively because the
user's environment says where the proxy, the extra certificate authorities and the index
are. A prepare sandbox starts from an empty environment, so the standard variables for
these are passed through by default (their values, like those of `[prepare] env`, are never
part of a key or of a file pyro writes). A variable naming a file or directory the sandbox
cannot see as it is (outside the system directories a `host` environment shows) gets a
read-only copy of it at a path under /tmp in the sandbox, and its value is rewritten to that.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from pyro_loop.records import dataclass, field
from pyro_loop.runtime import Mount

# Passed through to prepare's commands when set on the host.
PROXY_VARIABLES = (
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
    "http_proxy", "https_proxy", "no_proxy", "all_proxy",
)  # fmt: skip
# Variables whose value is a file (certificate bundles, installer configs).
FILE_VARIABLES = (
    "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO", "PIP_CERT", "PIP_CLIENT_CERT", "PIP_CONFIG_FILE", "PIP_CONSTRAINT",
    "UV_CONSTRAINT", "npm_config_cafile", "NPM_CONFIG_CAFILE", "CARGO_HTTP_CAINFO",
)  # fmt: skip
# Variables whose value is a directory (or, for the find-links ones, possibly a URL).
DIRECTORY_VARIABLES = ("SSL_CERT_DIR", "PIP_FIND_LINKS", "UV_FIND_LINKS")
# Index and TLS settings of the installers init writes commands for.
INDEX_VARIABLES = (
    "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT",
    "UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX", "UV_NATIVE_TLS",
    "UV_INSECURE_HOST", "UV_HTTP_TIMEOUT",
    "npm_config_registry", "NPM_CONFIG_REGISTRY", "npm_config_strict_ssl",
    "YARN_REGISTRY", "YARN_NPM_REGISTRY_SERVER",
    "GOPROXY", "GOPRIVATE", "GONOSUMDB", "GONOPROXY", "GOSUMDB",
)  # fmt: skip
DEFAULT_VARIABLES = (*PROXY_VARIABLES, *FILE_VARIABLES, *DIRECTORY_VARIABLES, *INDEX_VARIABLES)

# Host directories a `host` environment shows read-only as they are (see runtime/bwrap.py).
HOST_SYSTEM_DIRS = ("/usr", "/etc", "/opt", "/bin", "/sbin", "/lib", "/lib32", "/lib64")
COPIES_DIR = "/tmp/pyro-host"  # in the sandbox: where copies of other host files appear


@dataclass(frozen=True)
class HostEnvironment:
    env: dict[str, str]  # variable -> value as the sandbox sees it
    mounts: list[Mount] = field(default_factory=list)


def host_environment(
    names: Iterable[str],
    *,
    environ: Mapping[str, str] | None = None,
    visible: Iterable[str] = HOST_SYSTEM_DIRS,
    defaults: bool = True,
) -> HostEnvironment:
    """The variables `names` (and the default ones) that are set in `environ`, with the files
    they name made readable in the sandbox. `visible`: host directories (or files) the
    sandbox shows at the same path, so a value inside them is passed unchanged."""
    source = os.environ if environ is None else environ
    wanted = dict.fromkeys([*(DEFAULT_VARIABLES if defaults else ()), *names])
    shown = tuple(visible)
    env: dict[str, str] = {}
    mounts: list[Mount] = []
    for name in wanted:
        value = source.get(name)
        if value is None:
            continue
        env[name] = value
        if name not in FILE_VARIABLES and name not in DIRECTORY_VARIABLES:
            continue
        if not value.startswith("/") or _inside(value, shown):
            continue  # a URL, a relative path, or a file the sandbox sees as it is
        is_file = os.path.isfile(value)
        if not is_file and not (name in DIRECTORY_VARIABLES and _readable_dir(value)):
            continue  # nothing there to hand over: the installer reports it as natively
        target = f"{COPIES_DIR}/{name}"
        mounts.append(Mount(source=value, target=target))
        env[name] = target
    return HostEnvironment(env, mounts)


def _inside(path: str, dirs: tuple[str, ...]) -> bool:
    real = os.path.realpath(path)
    return any(real == d or real.startswith(d.rstrip("/") + "/") for d in dirs)


def _readable_dir(path: str) -> bool:
    """A directory is bound, not copied: the sandbox's uid (not pyro's) must be able to read
    it, so only a world-readable one under world-searchable parents is handed over."""
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        return False
    try:
        if os.stat(real).st_mode & 0o005 != 0o005:
            return False
        parent = os.path.dirname(real)
        while parent != "/":
            if os.stat(parent).st_mode & 0o001 == 0:
                return False
            parent = os.path.dirname(parent)
    except OSError:
        return False
    return True

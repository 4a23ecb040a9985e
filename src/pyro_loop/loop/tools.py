"""Tool layers: uv, poetry, pnpm and friends, built once per version from the registries.

A project declares the tools its commands need in `.pyro.toml` (`[tools] uv = "0.5.x"`).
Each tool and version is built once per environment into a layer of the store, keyed by its
inputs like every other layer, and shared by every project that asks for the same one. The
layer is mounted read-only at /run/pyro/tools/<name> in prepare and in workspaces, with its
`bin` directory on PATH.

The build runs in a sandbox of the target environment with the network on and the layer's
staging tree bound, writable, at that same path: a Python tool's virtualenv and its scripts'
`#!` lines are made for the place where they will run, and its interpreter is the one the
environment provides. Python tools come from PyPI into a virtualenv (only their own commands
are linked into `bin`, so the virtualenv's python never shadows the project's); node tools
come from npm (`npm install --global --prefix`), using the environment's node and npm.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pyro_loop.digest import sha256_hex
from pyro_loop.errors import PyroError
from pyro_loop.identity import hand_over
from pyro_loop.progress import OnProgress, Phase
from pyro_loop.project.config import TOOL_NAMES
from pyro_loop.records import dataclass
from pyro_loop.runtime import Mount
from pyro_loop.store.layers import Layer, LayerStore, layer_path

if TYPE_CHECKING:
    from pyro_loop.shapes import ToolStateJSON
    from pyro_loop.store.environments import EnvironmentSpec
    from pyro_loop.workspace.manager import Workspaces

# Bump when the build below changes what ends up in a tool's tree: old layers are then rebuilt.
TOOLS_FORMAT = 1
TOOLS_DIR = "/run/pyro/tools"
BUILD_TIMEOUT = 900.0
HOST_PYTHON = "/usr/bin/python3"


class ToolBuildError(PyroError):
    """A tool could not be installed from its registry."""


@dataclass(frozen=True)
class Tool:
    name: str
    registry: Literal["pypi", "npm"]
    package: str
    commands: tuple[str, ...] = ()  # a Python tool's entry points, linked into bin/
    # Set wherever the tool is on PATH: each keeps the environment it makes inside the
    # project, where the dependency snapshot captures it and PATH activation finds it.
    env: tuple[tuple[str, str], ...] = ()
    # Set in workspaces only: prepare has made the environment match the lockfile, and a
    # workspace has no network, so `uv run` must not sync it again (it would rebuild the
    # project's own package, whose build backend is not installed, and fail offline).
    workspace_env: tuple[tuple[str, str], ...] = ()

    def package_for(self, version: str) -> str:
        # Yarn 2 and later are published as @yarnpkg/cli-dist; `yarn` on npm is yarn 1.
        major = version.split(".", maxsplit=1)[0]
        if self.name == "yarn" and major.isdigit() and int(major) >= 2:
            return "@yarnpkg/cli-dist"
        return self.package

    @property
    def needs(self) -> str:
        """The program the environment must provide to build and run this tool."""
        return "python3" if self.registry == "pypi" else "npm"


CATALOG: dict[str, Tool] = {
    "uv": Tool("uv", "pypi", "uv", ("uv", "uvx"), workspace_env=(("UV_NO_SYNC", "1"),)),
    "poetry": Tool("poetry", "pypi", "poetry", ("poetry",),
                   (("POETRY_VIRTUALENVS_IN_PROJECT", "true"),)),
    "pipenv": Tool("pipenv", "pypi", "pipenv", ("pipenv",), (("PIPENV_VENV_IN_PROJECT", "1"),)),
    "pdm": Tool("pdm", "pypi", "pdm", ("pdm",)),
    "pnpm": Tool("pnpm", "npm", "pnpm"),
    "yarn": Tool("yarn", "npm", "yarn"),
}  # fmt: skip
assert tuple(CATALOG) == TOOL_NAMES  # the config's declared keys are this catalog


@dataclass(frozen=True)
class ToolRequest:
    """One declared tool: name and version as written in `.pyro.toml`, for one environment."""

    name: str
    version: str
    environment: str  # canonical name: "host", "debian:12"
    packages: tuple[str, ...] = ()  # the environment's extra packages

    @property
    def tool(self) -> Tool:
        return CATALOG[self.name]

    @property
    def target(self) -> str:
        return f"{TOOLS_DIR}/{self.name}"

    @property
    def bin_dir(self) -> str:
        return f"{self.target}/bin"

    def inputs(self) -> dict[str, object]:
        tool = self.tool
        data: dict[str, object] = {
            "format": TOOLS_FORMAT,
            "tool": self.name,
            "package": tool.package_for(self.version),
            "version": self.version,
            "environment": self.environment,
            "packages": list(self.packages),
            "architecture": os.uname().machine,
        }
        if tool.registry == "pypi" and self.environment == "host":
            # The virtualenv is tied to the interpreter's minor version ("python3.11").
            data["python"] = os.path.realpath(HOST_PYTHON)
        return data

    @property
    def key(self) -> str:
        canonical = json.dumps(self.inputs(), sort_keys=True, separators=(",", ":"))
        return sha256_hex(canonical.encode())

    def describe(self) -> str:
        return f"{self.name} {self.version}"


def requests_for(
    tools: dict[str, str], environment: str, packages: tuple[str, ...] = ()
) -> list[ToolRequest]:
    return [ToolRequest(n, v, environment, tuple(sorted(packages))) for n, v in tools.items()]


def mount_for(request: ToolRequest, layer_key: str) -> Mount:
    return Mount(layer_path(layer_key), request.target)


def tool_env(requests: list[ToolRequest], *, workspace: bool) -> dict[str, str]:
    """The variables the tools set: in prepare's sandbox, or (`workspace`) in workspaces."""
    pairs = [pair for r in requests for pair in r.tool.env]
    if workspace:
        pairs += [pair for r in requests for pair in r.tool.workspace_env]
    return dict(pairs)


def missing(store: LayerStore, requests: list[ToolRequest]) -> list[ToolRequest]:
    return [r for r in requests if store.get(r.key) is None]


def install_script(request: ToolRequest) -> str:
    """The shell script that installs the tool into its directory (run in the sandbox)."""
    tool, target = request.tool, shlex.quote(request.target)
    version = request.version
    if tool.registry == "pypi":
        spec = tool.package
        if version.endswith(".x"):
            spec += f"=={version[:-2]}.*"
        elif version != "latest":
            spec += f"=={version}"
        links = " && ".join(f"ln -s ../venv/bin/{c} {target}/bin/{c}" for c in tool.commands)
        return (
            f"python3 -m venv {target}/venv"
            f" && {target}/venv/bin/python -m pip install --no-cache-dir --quiet"
            f" --disable-pip-version-check {shlex.quote(spec)}"
            f" && mkdir {target}/bin && {links}"
        )
    package = tool.package_for(version)
    return (
        "npm install --global --no-fund --no-audit --no-update-notifier"
        f" --prefix {target} {shlex.quote(f'{package}@{version}')}"
    )


def ensure_tools(
    ws: Workspaces,
    requests: list[ToolRequest],
    *,
    on_progress: OnProgress | None = None,
) -> dict[str, Layer]:
    """Each requested tool's layer (by tool name), built from its registry if missing.

    `on_progress` gets "tools" events counting the tools done of those requested."""
    layers: dict[str, Layer] = {}
    progress = Phase("tools", on_progress)
    for done, request in enumerate(requests):
        layer = ws.store.get(request.key)
        if layer is None:
            layer = _build(
                ws, request, partial(progress, done=done, total=len(requests), unit="items")
            )
        else:
            progress(f"{request.describe()}: cached", done=done + 1, total=len(requests),
                     unit="items")  # fmt: skip
        layers[request.name] = layer
    return layers


def _build(ws: Workspaces, request: ToolRequest, progress: Callable[[str], None]) -> Layer:
    from pyro_loop.loop.downloads import download_mounts
    from pyro_loop.loop.snapshotbuild import delete_abandoned, log_tail, prepare_environment
    from pyro_loop.runtime import SANDBOX_HOME
    from pyro_loop.store.environments import parse_environment

    need = unmet_need(request)
    if need is not None:  # say so now, not as the installer's failure deep in a log
        raise ToolBuildError(f"cannot install {request.describe()}: {need}")
    spec: EnvironmentSpec = parse_environment(request.environment, request.packages)
    log_path = ws.home / "logs" / f"tool-{request.name}-{request.key[:12]}.log"

    def build(tree: Path) -> None:
        progress(f"{request.describe()}: installing from {request.tool.registry}")
        hand_over(tree)  # the sandbox user writes it
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # As for prepare: the host's proxy, CA and index settings, the download caches.
        host = prepare_environment(spec.name, [])
        record = ws.create(
            environment=spec.name,
            packages=list(spec.extra_packages),
            network=True,
            standby=False,
            mounts=[
                Mount(str(tree), request.target, writable=True),
                *host.mounts,
                *download_mounts(ws.home, SANDBOX_HOME),
            ],
            labels={"pyro": "tool", "tool": request.name, "pid": str(os.getpid())},
        )
        try:
            script = install_script(request)
            with log_path.open("wb") as log:
                log.write(f"$ {script}\n".encode())

                def to_log(_stream: str, data: bytes) -> None:
                    log.write(data)

                result = ws.exec(
                    record.id,
                    ["sh", "-c", script],
                    env=host.env,
                    timeout=BUILD_TIMEOUT,
                    on_output=to_log,
                )
            if result.timed_out or result.exit_code != 0:
                why = "timed out" if result.timed_out else f"exit code {result.exit_code}"
                raise ToolBuildError(
                    f"installing {request.describe()} from {request.tool.registry} failed ({why})",
                    hint=log_tail(log_path) + f"\n  full log: {log_path}",
                )
        finally:
            with contextlib.suppress(PyroError):
                ws.delete(record.id)

    delete_abandoned(ws, "tool")
    started = time.monotonic()
    layer = ws.store.build(
        request.key,
        build,
        kind="tool",
        inputs=request.inputs(),
        on_wait=lambda: progress(f"{request.describe()}: waiting for another build of it"),
    )
    progress(f"{request.describe()}: ready in {time.monotonic() - started:.1f} s")
    return layer


def unmet_need(request: ToolRequest) -> str | None:
    """Why the tool cannot be built here, or None: a host environment lacks the program the
    tool is built with (npm for node tools). A Debian environment must list it in packages."""
    program = request.tool.needs
    if request.environment == "host":
        import shutil  # here: shutil loads three compression modules

        if shutil.which(program, path="/usr/local/bin:/usr/bin:/bin") is None:
            package = "npm" if program == "npm" else "python3-venv"
            return f"{request.name} needs {program} on the host (apt-get install {package})"
        return None
    needed = "npm" if program == "npm" else "python3-venv"
    if needed not in request.packages:
        return (
            f"{request.name} needs {needed} in the {request.environment} environment "
            f'(add "{needed}" to [environment] packages)'
        )
    return None


def tool_states(store: LayerStore, requests: list[ToolRequest]) -> list[ToolStateJSON]:
    """Each declared tool: cached, or missing with how to get it (for status and doctor)."""
    states: list[ToolStateJSON] = []
    for request in requests:
        name, version = request.name, request.version
        if store.get(request.key) is not None:
            states.append({"name": name, "version": version, "state": "cached"})
            continue
        fix = unmet_need(request) or f"`pyro prepare` installs it from {request.tool.registry}"
        states.append({"name": name, "version": version, "state": "missing", "fix": fix})
    return states

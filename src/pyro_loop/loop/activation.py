"""What a project's sandboxes see besides its files: tool layers, host toolchains, and PATH.

Commands find the project's environments the way `uv run` and `npm exec` make them found: the
detected virtualenvs' bin directories and node_modules/.bin come first on PATH, then the
declared tools' bin directories, then the host toolchains' (`[tools] host`), then the system's.
The same activation holds in prepare (so an install command finds its tool) and in every
workspace of the project (so `pyro exec -- pytest` finds the virtualenv's pytest), and so does
the version of a project that takes it from git tags (project/scmversion.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pyro_loop.digest import sha256_hex
from pyro_loop.errors import InvalidInputError
from pyro_loop.loop.tools import ToolRequest, mount_for, requests_for, tool_env
from pyro_loop.project.config import FILENAME, ProjectConfig
from pyro_loop.project.detect import Ecosystem, detect_ecosystems
from pyro_loop.records import dataclass, field
from pyro_loop.runtime import SANDBOX_HOME, Mount
from pyro_loop.runtime import SANDBOX_PATH as SYSTEM_PATH
from pyro_loop.store.layers import LayerStore

WORKSPACE = "/workspace"
# Where each ecosystem keeps the commands its install puts in the project.
PYTHON_ENVIRONMENTS = frozenset({"uv", "poetry", "pipenv", "pdm", "pip", "pyproject"})
NODE_ENVIRONMENTS = frozenset({"npm", "pnpm", "yarn"})


@dataclass(frozen=True)
class Activation:
    mounts: tuple[Mount, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> list[str]:
        return self.env.get("PATH", SYSTEM_PATH).split(":")

    @property
    def digest(self) -> str:
        """Changes whenever a workspace made with it would differ: names the activation."""
        data = {"mounts": [m.to_json() for m in self.mounts], "env": self.env}
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return sha256_hex(canonical.encode())[:16]


def tool_requests(config: ProjectConfig) -> list[ToolRequest]:
    return requests_for(config.tools, config.environment, config.packages)


def project_path(root: Path, config: ProjectConfig) -> list[str]:
    """The project's own PATH entries, absolute inside the sandbox: `[workspace] path`, or
    the bin directories of the environments detected at `root`."""
    entries = (
        list(config.workspace_path)
        if config.workspace_path is not None
        else detected_path(detect_ecosystems(root))
    )
    return [e if e.startswith("/") else f"{WORKSPACE}/{e}".rstrip("/") for e in entries]


def detected_path(ecosystems: list[Ecosystem]) -> list[str]:
    """The bin directories the detected ecosystems' installs create, relative to the root."""
    entries: list[str] = []
    for eco in ecosystems:
        prefix = "" if eco.directory == "." else f"{eco.directory}/"
        if eco.name in PYTHON_ENVIRONMENTS:
            entries.append(f"{prefix}.venv/bin")
        elif eco.name in NODE_ENVIRONMENTS:
            entries.append(f"{prefix}node_modules/.bin")
    return list(dict.fromkeys(entries))


def host_tool_mount(entry: str) -> Mount:
    """`~/.cargo` -> the host's ~/.cargo at /home/pyro/.cargo; `/usr/local/go` at itself."""
    if entry.startswith("~/"):
        source = os.path.join(os.path.expanduser("~"), entry[2:])
        target = f"{SANDBOX_HOME}/{entry[2:]}"
    else:
        source = target = entry
    return Mount(os.path.normpath(source), os.path.normpath(target))


def _closed_to_sandbox(path: str, home: Path) -> str | None:
    """The first directory that a root pyro's sandbox uid may not pass on its way to `path`
    (root's own 0700 home, holding rustup's ~/.cargo), or None. The sandbox binds it from
    the pyro home (runtime/bwrap.py), so the way starts below the directory they share; as
    an ordinary user the sandbox is that user, and the mount fails only where they could."""
    from pyro_loop.identity import sandbox_owner

    owner = sandbox_owner()
    if owner is None:
        return None
    target = Path(os.path.realpath(path))
    common = Path(os.path.commonpath([target, os.path.realpath(home)]))
    for directory in [common, *reversed(target.parents), target]:
        if directory != common and common not in directory.parents:
            continue
        st = os.stat(directory)
        bit = 0o100 if st.st_uid == owner else 0o010 if st.st_gid == owner else 0o001
        if not st.st_mode & bit:
            return str(directory)
    return None


def activation(
    root: Path, config: ProjectConfig, store: LayerStore, *, workspace: bool = True
) -> Activation:
    """The mounts and environment of the project's workspaces (or, not `workspace`, of its
    prepare sandboxes). Declared tools whose layer is not in the store (not prepared yet)
    are left out: `pyro status` names them."""
    requests = [r for r in tool_requests(config) if store.get(r.key) is not None]
    mounts = [mount_for(r, r.key) for r in requests]
    path = project_path(root, config) + [r.bin_dir for r in requests]
    for entry in config.host_tools:
        mount = host_tool_mount(entry)
        if not os.path.isdir(mount.source):
            raise InvalidInputError(
                f"{FILENAME}: [tools] host: {entry} is not a directory on this machine "
                f"({mount.source})",
                hint="fix the path, or remove it from [tools] host",
            )
        closed = _closed_to_sandbox(mount.source, store.home)
        if closed is not None:
            raise InvalidInputError(
                f"{FILENAME}: [tools] host: {entry} is out of the sandbox's reach: {closed} is "
                f"mode {os.stat(closed).st_mode & 0o777:o} (pyro run as root runs sandboxes "
                "as another uid, which may pass only what every user may)",
                hint=f"let every user pass it (chmod o+x {closed}), or install the toolchain "
                "where every user can read it (/usr/local, /opt)",
            )
        mounts.append(mount)
        if os.path.isdir(os.path.join(mount.source, "bin")):
            path.append(f"{mount.target}/bin")
    env = tool_env(requests, workspace=workspace)
    env["PATH"] = ":".join([*dict.fromkeys(path), SYSTEM_PATH])
    # No `.git` in a sandbox: a project versioned by its git tags is told its version.
    from pyro_loop.project.scmversion import pretend_version_env  # tomllib: not on exec's path

    env.update(pretend_version_env(root))
    return Activation(tuple(mounts), env)

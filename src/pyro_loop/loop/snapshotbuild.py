"""One build of a snapshot in a prepare sandbox: the install commands run, what they wrote
is frozen into a layer.

The sandbox starts over the working tree's keying files (and, for the project's own
install, HEAD's files and the dependency layer below them), with the network on, the
host's proxy, certificate and index settings (loop/hostenv.py), the installers' download caches
(loop/downloads.py) and the project's activated environments. Its changes, in /workspace and in
its home, become the layer; the sandbox is deleted whatever happens.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pyro_loop.errors import PrepareFailedError, PyroError
from pyro_loop.fs.beneath import Beneath
from pyro_loop.loop.downloads import CACHES, download_mounts, prune_mount_points
from pyro_loop.loop.hostenv import HOST_SYSTEM_DIRS, HostEnvironment, host_environment
from pyro_loop.procutil import pid_alive
from pyro_loop.progress import OnProgress, Progress
from pyro_loop.project.config import ProjectConfig
from pyro_loop.project.discovery import Project
from pyro_loop.records import dataclass, field
from pyro_loop.runtime import SANDBOX_HOME
from pyro_loop.store.layers import Layer

if TYPE_CHECKING:
    from pyro_loop.loop.prepare import PrepareInputs
    from pyro_loop.workspace.manager import Workspaces


@dataclass
class SnapshotBuild:
    """One build of a dependency snapshot: a sandbox over the keying files, the commands."""

    project: Project
    config: ProjectConfig
    inputs: PrepareInputs
    ws: Workspaces
    log_path: Path
    progress: OnProgress
    # "dependencies" (the `run` commands over the keying files alone) or "project" (the
    # `project` commands over the `below` layers: HEAD's files and the dependencies).
    phase: str = "dependencies"
    below: list[str] = field(default_factory=list)
    ran: bool = False  # False when another process built the same key while we waited

    @property
    def key(self) -> str:
        key = self.inputs.key if self.phase == "dependencies" else self.inputs.project_key
        assert key is not None
        return key

    @property
    def commands(self) -> list[str]:
        return self.inputs.run if self.phase == "dependencies" else self.inputs.project

    def run(self) -> Layer:
        delete_abandoned(self.ws, "prepare")
        about = self.inputs.to_json()
        if self.phase == "project":
            about = {"dependencies": self.inputs.key, "keys": self.inputs.project_keys,
                     "project": self.inputs.project}  # fmt: skip
        return self.ws.store.build(
            self.key,
            self._build,
            kind=self.phase,
            inputs={**about, "project_root": str(self.project.root), "built_on": self._built_on()},
            on_wait=lambda: self.progress(
                Progress(self.phase, "waiting for another prepare of this snapshot")
            ),
        )

    def _built_on(self) -> list[str]:
        """The layers the sandbox runs over (its environment, tools and `below`): damage
        found in one of them later makes this layer suspect too (`pyro cache verify`)."""
        from pyro_loop.loop.activation import tool_requests
        from pyro_loop.loop.warmth import environment_layer

        keys = [environment_layer(self.config), *(r.key for r in tool_requests(self.config))]
        return [k for k in dict.fromkeys([*keys, *self.below]) if k is not None]

    def _build(self, dest: Path) -> None:
        self.ran = True
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            record = self._start_sandbox()
            try:
                self._run_commands(record.id, log)
                self.progress(Progress(self.phase, "freezing the installed files as a layer"))
                self.ws.stop(record.id)
                dest.rmdir()  # take_changes creates it
                self.ws.take_changes(record.id, dest)
                prune_mount_points(dest)
            finally:
                with contextlib.suppress(PyroError):
                    self.ws.delete(record.id)

    def _start_sandbox(self) -> Any:
        store = self.ws.store
        with store.staging() as staging:  # the keying files alone: the sandbox's only layer
            tree = staging / "tree"
            tree.mkdir()
            # The working tree's keying (and, for the project, metadata) files: what the key
            # says was installed, even where they differ from HEAD's.
            from pyro_loop.loop.prepare import open_key_file  # prepare imports this module

            with Beneath(self.project.root) as repo:
                for rel in {**self.inputs.keys, **self.inputs.project_keys}:
                    (tree / rel).parent.mkdir(parents=True, exist_ok=True)
                    with os.fdopen(open_key_file(repo, self.project, rel), "rb") as f:
                        (tree / rel).write_bytes(f.read())
            keys_layer = store.publish(
                tree, kind="keys", inputs={"project": str(self.project.root)}
            )
        self.progress(
            Progress(self.phase, f"starting a {self.config.environment} sandbox, network on")
        )
        from pyro_loop.loop.activation import activation

        active = activation(self.project.root, self.config, self.ws.store, workspace=False)
        return self.ws.create(
            environment=self.config.environment,
            packages=list(self.config.packages),
            layers=[keys_layer.key, *self.below],
            network=True,
            standby=False,
            mounts=[
                *self.host.mounts,
                *download_mounts(self.ws.home, SANDBOX_HOME),
                *active.mounts,
            ],
            env=active.env,
            labels={"pyro": "prepare", "project": self.project.id, "pid": str(os.getpid())},
        )

    @functools.cached_property
    def host(self) -> HostEnvironment:
        host = prepare_environment(self.config.environment, self.inputs.env)
        if "pnpm" in self.config.tools or any("pnpm" in c for c in self.commands):
            # pnpm keeps its store on the filesystem it installs to: with its default store
            # (the download cache) bound from another one, it makes /workspace/.pnpm-store,
            # which downloads everything again and is frozen into the layer. Named, the store
            # is used across filesystems (pnpm copies from it). Only where pnpm runs: npm
            # warns about a setting it does not know.
            store = f"{SANDBOX_HOME}/{CACHES['pnpm']}"
            host.env.setdefault("npm_config_store_dir", store)
        return host

    def _run_commands(self, ws_id: str, log: IO[bytes]) -> None:
        passthrough = self.host.env

        def to_log(_stream: str, data: bytes) -> None:
            log.write(data)
            log.flush()

        deadline = time.monotonic() + self.config.prepare_timeout
        for done, command in enumerate(self.commands):
            # Counted: "3 of 5" tells a long install's place in the list.
            self.progress(
                Progress(self.phase, f"running: {command}", done, len(self.commands), "items")
            )
            log.write(f"$ {command}\n".encode())
            log.flush()
            result = self.ws.exec(
                ws_id,
                ["sh", "-c", command],
                env=passthrough,
                timeout=max(1.0, deadline - time.monotonic()),
                on_output=to_log,
            )
            if result.timed_out or result.exit_code != 0:
                why = (
                    f"timed out after {self.config.prepare_timeout:.0f} s"
                    if result.timed_out
                    else f"exit code {result.exit_code}"
                )
                raise PrepareFailedError(
                    f"prepare command failed ({why}): {command}",
                    hint=log_tail(self.log_path) + _advice(self.log_path)
                    + f"\n  full log: {self.log_path}",
                )  # fmt: skip


def prepare_environment(environment: str, names: list[str]) -> HostEnvironment:
    """The host variables prepare's commands get: `[prepare] env` and the standard proxy,
    certificate and index settings (see loop/hostenv.py)."""
    from pyro_loop.runtime.bwrap import HOST_NETWORK_FILES

    # A Debian root has its own /etc: of the host's files only the network ones are there.
    visible = HOST_SYSTEM_DIRS if environment == "host" else HOST_NETWORK_FILES
    host = host_environment(names, visible=visible)
    # The download caches are bound from another filesystem than the workspace's, where
    # uv's default hard links fail (with a warning) before it copies.
    host.env.setdefault("UV_LINK_MODE", "copy")
    return host


# What a failed command's output says, and what fixes it in a workspace (the installers'
# own advice, `apt install ...`, does not apply there: the environment is declared).
_ADVICE = {
    b"ensurepip is not": 'the environment has no python3-venv: add packages = ["python3-venv"]'
    " under [environment] in .pyro.toml",
    # rustup's and Go's own installs live outside the system directories a sandbox sees.
    b"cargo: not found": 'the environment has no cargo: expose rustup\'s with host = ["~/.cargo",'
    ' "~/.rustup"] under [tools], or use base = "debian:12" with packages = ["cargo"]',
    b"go: not found": 'the environment has no go: expose it with host = ["/usr/local/go"] under'
    ' [tools], or use base = "debian:12" with packages = ["golang-go"]',
}


def _advice(log_path: Path) -> str:
    try:
        text = log_path.read_bytes()[-65536:]
    except OSError:
        return ""
    found = [advice for marker, advice in _ADVICE.items() if marker in text]
    return "".join(f"\n  fix: {advice}" for advice in found)


def log_tail(log_path: Path, lines: int = 15) -> str:
    try:
        text = log_path.read_text(errors="replace").rstrip().splitlines()[-lines:]
    except OSError:
        return ""
    return "last lines of its output:\n" + "\n".join(f"    {line}" for line in text)


def delete_abandoned(ws: Workspaces, purpose: str) -> None:
    """Sandboxes of one `purpose` ("prepare", "check") whose pyro process died (killed
    mid-run) are deleted."""
    for status in ws.list():
        labels = status.record.labels
        if labels.get("pyro") != purpose:
            continue
        pid = labels.get("pid", "")
        if pid.isdigit() and pid_alive(int(pid)):
            continue
        with contextlib.suppress(PyroError):
            ws.delete(status.record.id)

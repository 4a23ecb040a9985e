"""After a checkout, merge or rewrite: start `pyro prepare` in the background if it is needed.

This runs inside git's post-checkout, post-merge and post-rewrite hooks, so git waits for it:
it reads the configuration and the keying files and asks `warmth.judge` (the judgment every
command shares) whether the snapshot for them is in the store. Only when the snapshot
for the checked-out lockfiles is missing does it start a detached `pyro prepare`, logged
under the pyro home, and return. It loads no git library and no CLI framework.

A project whose `.pyro.toml` needs approval the user has not given (project/trust.py) is never
prepared: the hook says so once per version of the file.

A background prepare that is still running for the same key is not started twice; one that
failed is not retried on every checkout (the note says how to retry) until the key changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pyro_loop.fs.util import write_json_atomic
from pyro_loop.git import without_git_env
from pyro_loop.loop.projecthome import ProjectHome
from pyro_loop.loop.warmth import judge
from pyro_loop.procutil import pid_alive, spawn_detached
from pyro_loop.project.config import load_project_config
from pyro_loop.project.discovery import Project, find_project
from pyro_loop.project.trust import TrustState, trust_state
from pyro_loop.records import dataclass

# How long a recorded background prepare may still be running: past this, a live pid is
# taken for another process that reuses the number (after a reboot, say).
GRACE = 600.0


@dataclass(frozen=True)
class KeepWarm:
    """What the hook decided, and the one line it has to say (if any)."""

    action: str  # "started" | "warm" | "running" | "failed before" | "nothing to install" | ...
    note: str | None = None
    key: str | None = None
    pid: int | None = None
    log: Path | None = None


def keep_warm(project_dir: Path, home: Path, *, python: str = sys.executable) -> KeepWarm:
    """Start a background prepare of the project at `project_dir` when its snapshot is missing.

    Raises PyroError (a broken `.pyro.toml`, a configured key file that is missing): the hook
    turns that into a one-line note.
    """
    project = find_project(project_dir)
    if not project.config_path.is_file():
        return KeepWarm("not a pyro project")
    config = load_project_config(project.root).config
    trust = trust_state(home, config)
    if not trust.ok:
        return _untrusted(home, project, trust, config.digest)
    warmth = judge(project, config, home)
    key = warmth.key
    if not warmth.inputs.run:
        return KeepWarm("nothing to install", key=key)
    if warmth.dependencies_cached:
        return KeepWarm("warm", key=key)

    files = ProjectHome.of(home, project)
    record_file = files.background_prepare
    last = _read_record(record_file)
    if last.get("key") == key:
        log = Path(str(last.get("log", "")))
        started = float(last.get("started", 0))
        pid = int(last.get("pid", 0))
        if pid > 0 and pid_alive(pid) and time.time() - started < config.prepare_timeout + GRACE:
            return KeepWarm("running", key=key, pid=pid, log=log)
        return KeepWarm(
            "failed before",
            note=f"pyro: the background prepare for these lockfiles did not finish (log: {log});"
            " run `pyro prepare` to see why",
            key=key,
            log=log,
        )

    reasons = warmth.dependency_reasons()
    why = "; ".join(reasons[:2]) if reasons != ["never prepared"] else "not prepared yet"
    log = files.background_log
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        out.write(f"pyro: {time.strftime('%Y-%m-%d %H:%M:%S')}: {why}\n".encode())
        out.flush()
        proc = spawn_detached(
            [python, "-m", "pyro_loop", "prepare", "-C", str(project.root)],
            log=out,
            env=without_git_env(os.environ),
            cwd=project.root,
        )
    record_file.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        record_file,
        {"key": key, "pid": proc.pid, "started": time.time(), "log": str(log)},
        durable=False,
    )
    return KeepWarm(
        "started",
        note=f"pyro: {why}: preparing in the background (log: {log})",
        key=key,
        pid=proc.pid,
        log=log,
    )


def _untrusted(home: Path, project: Project, trust: TrustState, digest: str | None) -> KeepWarm:
    """A hook never prompts and never runs what the user has not approved: it says what is
    waiting, once per version of the file (checkouts are frequent), and does nothing."""
    told = ProjectHome.of(home, project).untrusted_noted
    if _read_record(told).get("sha256") == digest:
        return KeepWarm("untrusted")
    told.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(told, {"sha256": digest}, durable=False)
    return KeepWarm("untrusted", note=f"pyro: {trust.message()} (not preparing)")


def _read_record(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}

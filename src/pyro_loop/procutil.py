"""Processes pyro starts but does not wait for: workspace keepers and background clean-ups."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO

_DETACHED: list[subprocess.Popen[bytes]] = []


def spawn_detached(
    argv: Sequence[str],
    *,
    log: IO[bytes] | None = None,
    pass_fds: Sequence[int] = (),
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session, so it outlives this process and its terminal.

    A short-lived CLI simply exits and the child is re-parented. A long-lived caller (the MCP
    server, the tests) keeps the Popen objects and reaps finished ones on each later call,
    so no zombies pile up and no SIGCHLD handler is imposed on the host application.
    """
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=log if log is not None else subprocess.DEVNULL,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
        env=env if env is not None else {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    _DETACHED.append(proc)
    reap_finished()
    return proc


def reap_finished() -> None:
    for proc in list(_DETACHED):
        if proc.poll() is not None:
            _DETACHED.remove(proc)


def remove_in_background(paths: Sequence[Path]) -> None:
    """Delete directory trees without making the caller wait (they are already renamed away).

    `chmod` first: overlayfs leaves a mode-000 directory in every work dir.
    """
    if not paths:
        return
    script = 'chmod -R u+rwX -- "$@" 2>/dev/null; exec rm -rf -- "$@"'
    spawn_detached(["/bin/sh", "-c", script, "pyro-cleanup", *map(str, paths)])

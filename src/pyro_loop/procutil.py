"""Processes pyro starts but does not wait for: workspace keepers and background clean-ups."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:  # imported when a process is started: not on every command's path
    import subprocess
    import threading

_DETACHED: list[subprocess.Popen[bytes]] = []
# Threads finishing work after the call that started them returned (a standby sandbox booting,
# see workspace/manager.py): `settle_background` waits for them.
_BACKGROUND: list[threading.Thread] = []


def spawn_detached(
    argv: Sequence[str],
    *,
    log: IO[bytes] | None = None,
    pass_fds: Sequence[int] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    preexec: Callable[[], None] | None = None,
    pipes: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session, so it outlives this process and its terminal.
    `pipes`: its stdin and stdout are pipes to this process (for a spec in, an answer out).

    A short-lived CLI simply exits and the child is re-parented. A long-lived caller (the MCP
    server, the tests) keeps the Popen objects and reaps finished ones on each later call,
    so no zombies pile up and no SIGCHLD handler is imposed on the host application.
    """
    import subprocess

    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
        stdout=subprocess.PIPE if pipes else log if log is not None else subprocess.DEVNULL,
        stderr=log if log is not None else subprocess.DEVNULL,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
        env=env if env is not None else {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        cwd=cwd,
        # Runs between fork and exec, where another thread's lock may be held forever: kept
        # to system calls through ctypes (runtime/idmap.py), which take none (CPython
        # re-initialises its own locks in the child, glibc its allocator's).
        preexec_fn=preexec,  # noqa: PLW1509
    )
    _DETACHED.append(proc)
    reap_finished()
    return proc


def track_background(thread: threading.Thread) -> None:
    """Count `thread` among those `settle_background` waits for."""
    _BACKGROUND[:] = [t for t in _BACKGROUND if t.is_alive()]
    _BACKGROUND.append(thread)


def settle_background() -> None:
    """Wait for the work pyro's library left running in this process's threads. A process
    that ends with `os._exit` (a forked child) calls it first: that exit would cut the work
    off midway (a sandbox started and not yet recorded keeps running, nobody's); a normal
    exit waits for those threads by itself."""
    while _BACKGROUND:
        _BACKGROUND.pop().join()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (possibly another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_finished() -> None:
    for proc in list(_DETACHED):
        if proc.poll() is not None:
            _DETACHED.remove(proc)


def remove_in_background(paths: Sequence[Path], *, after: Sequence[int] = ()) -> None:
    """Delete directory trees without making the caller wait (they are already renamed away).

    `after`: pids of killed processes still being torn down, which may still have the trees
    mounted; removal starts once they are gone (or after 5 s at most). `chmod` first:
    overlayfs leaves a mode-000 directory in every work dir.
    """
    if not paths:
        return
    script = (
        'for pid in $PYRO_WAIT_PIDS; do n=0; while kill -0 "$pid" 2>/dev/null && [ $n -lt 500 ];'
        " do sleep 0.01; n=$((n+1)); done; done;"
        ' chmod -R u+rwX -- "$@" 2>/dev/null; exec rm -rf -- "$@"'
    )
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYRO_WAIT_PIDS": " ".join(map(str, after))}
    spawn_detached(["/bin/sh", "-c", script, "pyro-cleanup", *map(str, paths)], env=env)

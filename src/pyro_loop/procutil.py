"""Processes pyro starts but does not wait for: workspace keepers and background clean-ups."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:  # imported when a process is started: not on every command's path
    import subprocess

_DETACHED: list[subprocess.Popen[bytes]] = []


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


class _Background:
    """One thread running the work pyro's library leaves to finish after the call that
    handed it over has returned (a standby sandbox booting, see workspace/manager.py), one
    job after another. Started at the first job: a thread per job made each caller wait for
    that thread's start, 0.3 to 0.7 ms on a busy machine. A daemon, so an idle one never
    holds the process: `settle_background` runs at exit and waits for the jobs handed over."""

    def __init__(self) -> None:
        import queue
        import threading

        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.done = threading.Condition()
        self.pending = 0
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._work, name="pyro-background", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                job()
            except Exception as exc:  # a job handles its own failures: this is a bug's
                self.error = exc  # kept for a debugger; the next jobs must still run
            finally:
                with self.done:
                    self.pending -= 1
                    self.done.notify_all()

    def put(self, job: Callable[[], None]) -> None:
        with self.done:
            self.pending += 1
        self.jobs.put(job)

    def settle(self) -> None:
        with self.done:
            while self.pending:
                self.done.wait()


_BACKGROUND: list[_Background] = []  # this process's, once started


def run_in_background(job: Callable[[], None]) -> None:
    """Run `job` in pyro's background thread, after the jobs handed over before it."""
    if not _BACKGROUND:
        import atexit

        _BACKGROUND.append(_Background())
        atexit.register(settle_background)
    _BACKGROUND[0].put(job)


def settle_background() -> None:
    """Wait for the jobs handed to the background thread. A process that ends with
    `os._exit` (a forked child) calls it first: that exit would cut a job off midway (a
    sandbox started and not yet recorded would run on, nobody's); a normal exit calls it."""
    for background in _BACKGROUND:
        background.settle()


def _forget_background() -> None:
    _BACKGROUND.clear()  # the parent's thread and its jobs stay the parent's


os.register_at_fork(after_in_child=_forget_background)


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
    """Forget the detached children that have exited (their exit status collected). Threads
    call it at once (a reset's, the standby pool's): each takes what is still listed."""
    for proc in list(_DETACHED):
        if proc.poll() is not None:
            with contextlib.suppress(ValueError):  # another thread took it meanwhile
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

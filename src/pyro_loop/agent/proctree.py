"""Process trees in the workspace: find every descendant of a process, kill them all.

Shared by `exec` (a command and what it left behind, on a timeout or a disconnect) and the
services (a detached command's tree, on `service_stop`).
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typeshed describes `_signal` (cheap to import) as `signal` (slow: enum)
    import signal as _signal
    from typing import Any
else:
    import _signal

PR_SET_CHILD_SUBREAPER = 36
_libc: list[Any] = []  # libc through ctypes, once `preload` has loaded it (None: no ctypes)


def preload() -> None:
    """Load libc through ctypes now. Importing ctypes takes a few milliseconds, too slow for
    the agent's start (on the path of every create and reset) and for each request's handler
    (a fresh fork that would import it again): the agent calls this once when idle, and the
    handlers it forks afterwards inherit it."""
    if _libc:
        return
    try:
        import ctypes

        _libc.append(ctypes.CDLL(None, use_errno=True))
    except Exception:  # no ctypes in a minimal image: callers fall back
        _libc.append(None)


def libc() -> Any:
    """libc through ctypes (loaded now if `preload` has not run yet), or None without ctypes."""
    preload()
    return _libc[0]


def become_subreaper() -> None:
    """Orphaned descendants re-parent to this process, so a kill finds double-forked ones."""
    found = libc()
    if found is not None:  # else only the process group is found (no ctypes)
        found.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def kill_tree(root: int, sig: int = _signal.SIGKILL) -> None:
    """Send `sig` to every descendant of `root` (not `root` itself), repeating until none
    is left when the signal is SIGKILL, in case a process forked meanwhile."""
    for _attempt in range(100 if sig == _signal.SIGKILL else 1):
        victims = descendants(root)
        if not victims:
            return
        for victim in victims:
            try:
                os.kill(victim, sig)
            except OSError:
                pass
        time.sleep(0.001)


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] == b"Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    found: list[int] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


SIGNALS = {
    "INT": _signal.SIGINT,
    "TERM": _signal.SIGTERM,
    "KILL": _signal.SIGKILL,
    "HUP": _signal.SIGHUP,
    "QUIT": _signal.SIGQUIT,
    "USR1": _signal.SIGUSR1,
    "USR2": _signal.SIGUSR2,
    "STOP": _signal.SIGSTOP,
    "CONT": _signal.SIGCONT,
    "TSTP": _signal.SIGTSTP,
    "WINCH": _signal.SIGWINCH,
}


def signal_number(name: object) -> int | None:
    """A signal named in a request ("INT", "SIGINT" or its number) -> its number, or None."""
    if isinstance(name, int) and not isinstance(name, bool):
        return name if 0 < name < 65 else None
    if not isinstance(name, str):
        return None
    name = name.upper()
    if name.startswith("SIG"):
        name = name[3:]
    return SIGNALS.get(name)

"""How every `pyro` command ends: its exit code, or one line for an expected failure, 130 for
Ctrl-C and a crash log for a bug. Shared by the full CLI and the lean entry (no typer here)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from pyro_loop import __version__
from pyro_loop.errors import PyroError
from pyro_loop.fs.util import DISK_FULL_ERRNOS
from pyro_loop.safetext import for_stream


def guarded(call: Callable[[], int]) -> int:
    """Run a command; its exit code, or the code its failure maps to (said on stderr)."""
    try:
        return call()
    except KeyboardInterrupt:
        sys.stderr.write("pyro: interrupted\n")
        return 130
    except PyroError as exc:
        # A message may quote what a workspace holds (a file name): shown harmless.
        note(f"pyro: error: {exc.message}")
        if exc.hint:
            note(f"  hint: {exc.hint}")
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (`pyro --help | head`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            return _crashed()
        # Expected on a full disk, not a bug: say where, and how to make room.
        where = f" ({exc.filename})" if exc.filename else ""
        sys.stderr.write(f"pyro: error: {exc.strerror}{where}\n")
        sys.stderr.write(
            "  hint: free space on that disk: `pyro workspace delete` or `pyro cache gc`\n"
        )
        return 1
    except Exception:
        return _crashed()


def _crashed() -> int:
    """A bug: exit 3 with the traceback in a log (or on stderr, when no log can be written:
    a full disk must not hide the crash)."""
    import traceback

    details = traceback.format_exc()
    try:
        log = write_crash_log(details)
    except OSError:
        sys.stderr.write(details)
        sys.stderr.write("pyro: internal error (a bug); the crash log could not be written\n")
        return 3
    sys.stderr.write(f"pyro: internal error (a bug): the details are in {log}\n")
    return 3


def masked_argv(argv: list[str]) -> list[str]:
    """The command line without the values of `--secret NAME=VALUE` (a crash log is kept)."""
    masked = list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--secret="):
            masked[i] = "--secret=" + arg[len("--secret=") :].split("=", 1)[0] + "=[REDACTED]"
        elif i and argv[i - 1] == "--secret":
            masked[i] = arg.split("=", 1)[0] + "=[REDACTED]"
    return masked


def write_crash_log(details: str) -> Path:
    import platform
    import time

    from pyro_loop.home import pyro_home

    try:
        logs = pyro_home() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    except OSError:
        path = Path(f"/tmp/pyro-crash-{os.getpid()}.log")
    path.write_text(
        f"pyro {__version__}\npython {sys.version}\nplatform {platform.platform()}\n"
        f"argv {masked_argv(sys.argv)}\n\n{details}"
    )
    return path


def note(text: str) -> None:
    sys.stderr.write(for_stream(text, sys.stderr) + "\n")

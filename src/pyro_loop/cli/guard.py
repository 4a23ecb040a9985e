"""How every `pyro` command ends: its exit code, or one line for an expected failure, 130 for
Ctrl-C and a crash log for a bug. Shared by the full CLI and the lean entry (no typer here)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from pyro_loop import __version__
from pyro_loop.errors import PyroError


def guarded(call: Callable[[], int]) -> int:
    """Run a command; its exit code, or the code its failure maps to (said on stderr)."""
    try:
        return call()
    except KeyboardInterrupt:
        sys.stderr.write("pyro: interrupted\n")
        return 130
    except PyroError as exc:
        sys.stderr.write(f"pyro: error: {exc.message}\n")
        if exc.hint:
            sys.stderr.write(f"  hint: {exc.hint}\n")
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except Exception:
        log = write_crash_log()
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


def write_crash_log() -> Path:
    import platform
    import time
    import traceback

    from pyro_loop.home import pyro_home

    try:
        logs = pyro_home() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    except OSError:
        path = Path(f"/tmp/pyro-crash-{os.getpid()}.log")
    path.write_text(
        f"pyro {__version__}\npython {sys.version}\nplatform {platform.platform()}\n"
        f"argv {masked_argv(sys.argv)}\n\n{traceback.format_exc()}"
    )
    return path

"""Stopping the change journal's servers a test started (sync/journald.py)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path


def journal_servers() -> Iterator[tuple[Path, list[bytes]]]:
    """The running journal servers: each one's /proc directory and command line."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                if b"pyro_loop.sync.journald" in cmdline:
                    yield entry, cmdline


def stop_journal_servers(home: Path) -> None:
    """End the journal servers started for `home` (they would live on, idle, for minutes)."""
    wanted = f"PYRO_HOME={home}".encode()
    for entry, _cmdline in journal_servers():
        with contextlib.suppress(OSError):
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGTERM)

"""Stopping the change journal's servers a test started (sync/journald.py)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def stop_journal_servers(home: Path) -> None:
    """End the journal servers started for `home` (they would live on, idle, for minutes)."""
    wanted = f"PYRO_HOME={home}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (b"pyro_loop.sync.journald" in (entry / "cmdline").read_bytes()
                        and wanted in (entry / "environ").read_bytes().split(b"\0")):  # fmt: skip
                    os.kill(int(entry.name), signal.SIGTERM)

"""Where pyro keeps its state: one directory, from `PYRO_HOME` or the platform's cache dir."""

from __future__ import annotations

import os
from pathlib import Path

CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This directory holds pyro's cached layers and workspaces.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
README = (
    "This directory is pyro's store: read-only layers (environments, dependency snapshots,\n"
    "repo baselines, workspace snapshots) and the state of each workspace.\n"
    "Manage it with `pyro workspace list|delete` and `pyro cache`; do not edit it by hand.\n"
)


def pyro_home() -> Path:
    """The root of pyro's state, created on first use with a README and a CACHEDIR.TAG."""
    configured = os.environ.get("PYRO_HOME")
    if configured:
        root = Path(configured).expanduser().absolute()
    else:
        # Imported lazily: the daily commands should not pay for it when PYRO_HOME is set.
        import platformdirs

        root = Path(platformdirs.user_cache_dir("pyro", appauthor=False))
    if not (root / "CACHEDIR.TAG").exists():
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        (root / "README").write_text(README)
        (root / "CACHEDIR.TAG").write_text(CACHEDIR_TAG)
    return root

"""A secret value, and a search for it in everything pyro wrote."""

from __future__ import annotations

import os
from pathlib import Path

VALUE = "s3cr3t-Value-7f1e"  # the secret; it must not appear anywhere below


def everything_under(root: Path) -> str:
    """Every file's bytes below `root` (the pyro home, a project), as text."""
    text = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory, name)
            if path.is_file() and not path.is_symlink():
                text.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(text)

"""Files shipped beside the code: `templates/` (pyro init) and `hooks/` (hook scripts).

In a wheel they are inside the package (pyproject's force-include); an editable install
imports from src/, and they sit at the top of the checkout.
"""

from __future__ import annotations

from pathlib import Path


def shipped_text(directory: str, name: str) -> str:
    from importlib.resources import files

    packaged = files("pyro_loop") / directory / name
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[2] / directory / name).read_text(encoding="utf-8")

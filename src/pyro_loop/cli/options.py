"""Options several typer commands share."""

from __future__ import annotations

import typer

JsonOption = typer.Option(False, "--json", help="Print one JSON document for machines.")
ProjectOption = typer.Option(None, "--project", "-C", help="Project directory (default: here).")

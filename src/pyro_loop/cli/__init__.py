"""The `pyro` command: a thin typer front over the library."""

"""`pyro mcp serve`: the MCP server for chat hosts, a thin call into `pyro_loop.mcp.serve`."""

from __future__ import annotations

from pathlib import Path

import typer

mcp_app = typer.Typer(
    help="The MCP server chat hosts (Claude Code, Codex, Cursor, ...) start in a project.",
    no_args_is_help=True,
)


@mcp_app.command()
def serve(
    profile: str = typer.Option(
        "workspace-core",
        "--profile",
        help="Tools to offer: vm-run (one-shot runs), workspace-core (the editing loop), "
        "workspace-full (also snapshots).",
    ),
    project_dir: Path | None = typer.Option(
        None, "--project", "-C", help="Project directory (default: here)."
    ),
    wait: float = typer.Option(
        20.0,
        "--wait",
        help="Seconds a tool waits for the workspace to be ready before it "
        "answers with the warm-up's progress.",
    ),
    down_on_exit: bool = typer.Option(
        False,
        "--down-on-exit",
        help="Stop the project's workspace when the client "
        "disconnects (default: it stays for the next session).",
    ),
) -> None:
    """Serve pyro over MCP (stdio) for the project here: warm its workspace in the
    background, keep it synced with the host, and offer the workspace tools."""
    from pyro_loop.mcp.serve import serve as run_server

    run_server(
        project_dir=project_dir or Path.cwd(),
        profile=profile,
        wait_seconds=wait,
        down_on_exit=down_on_exit,
    )

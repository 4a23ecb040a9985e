"""The daily loop in a project directory: `pyro up`, `exec`, `retry`, `reset`, `diff`,
`apply`, `sync`, `watch`, `down`. Each is a thin call into `ProjectLoop`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from pyro_loop.cli import daily
from pyro_loop.cli.options import JsonOption, ProjectOption
from pyro_loop.cli.output import emit, emit_changes, ms, note, say
from pyro_loop.cli.terminal import STDIN_HELP, TTY_HELP

NoPrepareOption = typer.Option(
    False, "--no-prepare", help="Stop (naming what changed) instead of preparing."
)
SECRET_ENV_HELP = (
    "NAME of a variable of this environment whose value the command gets as a secret: in its "
    "environment only, masked in its output, never recorded; repeatable."
)
PUBLISH_HELP = (
    "Make a port the workspace listens on reachable at 127.0.0.1 on the host (PORT, or "
    "HOST_PORT:PORT), until `pyro down`; repeatable. The workspace gets no network from it."
)


def _loop(project_dir: Path | None) -> Any:
    return daily.project_loop(project_dir)


_progress = daily.progress


def up(
    project_dir: Path | None = ProjectOption,
    no_prepare: bool = typer.Option(False, "--no-prepare", help="Fail fast if not warm."),
    watch: bool = typer.Option(
        False, "--watch", help="Then keep syncing host edits (Ctrl-C stops)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Reconnect to the project's workspace, or create it from the warm snapshot."""
    daily.up(project_dir, no_prepare=no_prepare, watch=watch, as_json=as_json)


def exec_(
    command: list[str] = typer.Argument(..., metavar="-- CMD...", help="The command to run."),
    project_dir: Path | None = ProjectOption,
    timeout: float | None = typer.Option(
        None, "--timeout", help="Kill the process tree after S s (default: no limit)."
    ),
    cwd: str | None = typer.Option(None, "--cwd", help="Working directory (default /workspace)."),
    env: list[str] = typer.Option([], "--env", help="NAME=value, repeatable."),
    interactive: bool = typer.Option(False, "--interactive", "-i", help=STDIN_HELP),
    tty: bool = typer.Option(False, "--tty", "-t", help=TTY_HELP),
    detach: bool = typer.Option(
        False, "--detach", "-d", help="Start it as a service and return at once (pyro logs)."
    ),
    name: str | None = typer.Option(
        None, "--name", help="The service's name with --detach (default: the program's)."
    ),
    publish: list[str] = typer.Option([], "--publish", "-p", help=PUBLISH_HELP),
    secret_env: list[str] = typer.Option([], "--secret-env", help=SECRET_ENV_HELP),
    as_json: bool = JsonOption,
    no_prepare: bool = NoPrepareOption,
) -> None:
    """Run a command in the project's workspace; its exit code is pyro's.

    Piped input (`echo x | pyro exec -- cat`) reaches the command's stdin; a terminal's
    only with -i. -t gives the command a terminal (`pyro exec -t -- python3`). --detach
    starts a service: its stdin is empty, its output goes to a bounded log (`pyro logs`).
    """
    from pyro_loop.names import parse_env

    loop = _loop(project_dir)
    if publish:
        from pyro_loop.workspace.ports import parse_publish

        mappings = [parse_publish(value) for value in publish]
        for mapping in loop.publish(mappings):
            if mapping in mappings:
                note(f"pyro: {mapping.url} -> port {mapping.port} of the workspace")
    if detach:
        from pyro_loop.cli.service_cmds import show_started
        from pyro_loop.errors import InvalidInputError

        if interactive or tty or timeout is not None:
            raise InvalidInputError("--detach runs without input, terminal or --timeout")
        info = loop.start_service(
            command, name=name, cwd=cwd, env=parse_env(env), secret_env=secret_env
        )
        show_started(info, as_json=as_json, logs_hint=f"`pyro logs {info['name']} -f`")
        return
    if name is not None or as_json:
        from pyro_loop.errors import InvalidInputError

        raise InvalidInputError("--name and --json go with --detach")
    code = daily.exec_(command, project_dir, timeout=timeout, cwd=cwd, env=env,
                       interactive=interactive, tty=tty, no_prepare=no_prepare,
                       secret_env=secret_env, loop=loop)  # fmt: skip
    raise typer.Exit(code)


def retry(
    project_dir: Path | None = ProjectOption,
    reset: bool = typer.Option(False, "--reset", help="Reset the workspace first."),
    no_prepare: bool = NoPrepareOption,
) -> None:
    """Run the last command again (after syncing host edits): the repro-fix loop in one word."""
    raise typer.Exit(daily.retry(project_dir, reset=reset, no_prepare=no_prepare))


def reset(
    project_dir: Path | None = ProjectOption,
    no_prepare: bool = NoPrepareOption,
    as_json: bool = JsonOption,
) -> None:
    """Back to the warm baseline plus the host's current files, in milliseconds."""
    started = time.perf_counter()
    synced = _loop(project_dir).reset(prepare=not no_prepare, on_progress=_progress)
    elapsed = time.perf_counter() - started
    emit(
        {"duration_ms": round(elapsed * 1000, 1), "synced": synced.to_json()},
        as_json=as_json,
        human=lambda: say(f"reset in {ms(elapsed)}"),
    )


def diff(
    project_dir: Path | None = ProjectOption,
    stat: bool = typer.Option(False, "--stat", help="Only list changed paths."),
    as_json: bool = JsonOption,
) -> None:
    """What the workspace changed relative to the host's files, as a patch."""

    changes = _loop(project_dir).changes()
    emit_changes(changes, stat=stat, as_json=as_json)


def apply(
    paths: list[str] = typer.Argument(None, help="Paths to bring back (default: all changes)."),
    project_dir: Path | None = ProjectOption,
    force: bool = typer.Option(False, "--force", help="Overwrite host files changed meanwhile."),
    as_json: bool = JsonOption,
) -> None:
    """Bring the workspace's changes back to the host (the only command that writes it)."""
    written = _loop(project_dir).apply(paths or (), force=force)
    emit(
        {"applied": written},
        as_json=as_json,
        human=lambda: say(
            f"applied {len(written)} file(s)" + (": " + ", ".join(written) if written else "")
        ),
    )


def sync(project_dir: Path | None = ProjectOption, as_json: bool = JsonOption) -> None:
    """Push the host's changed files into the project's workspace once."""
    result = _loop(project_dir).sync()
    emit(
        result.to_json(),
        as_json=as_json,
        human=lambda: say(
            f"synced {result.copied} file(s), removed {result.removed} in {ms(result.seconds)}"
        ),
    )


def watch(project_dir: Path | None = ProjectOption) -> None:
    """Keep the project's workspace in sync with host edits until Ctrl-C."""
    daily.watch_project(_loop(project_dir))


def down(
    project_dir: Path | None = ProjectOption,
    delete: bool = typer.Option(False, "--delete", help="Delete instead of stopping."),
    as_json: bool = JsonOption,
) -> None:
    """Stop (or delete) the project's workspace."""
    loop = _loop(project_dir)
    record = loop.require()
    closed = loop.ws.published(record.id)
    record = loop.down(delete=delete)
    verb = "deleted" if delete else "stopped"
    if closed:
        verb += f" (closed {', '.join(m.url for m in closed)})"
    emit(
        {"id": record.id, "action": verb},
        as_json=as_json,
        human=lambda: say(f"{verb} {record.name or record.id}"),
    )


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command("exec")(exec_)
    from pyro_loop.cli.shell_cmds import project_shell_app  # it imports this module

    app.add_typer(project_shell_app, name="shell")
    app.command()(retry)
    app.command()(reset)
    app.command()(diff)
    app.command()(apply)
    app.command()(sync)
    app.command()(watch)
    app.command()(down)

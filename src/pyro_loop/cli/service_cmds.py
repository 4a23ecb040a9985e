"""Services on the command line: `pyro workspace service start|list|status|logs|stop ID`
(the predecessor's names) and the project's short forms `pyro exec --detach`, `pyro logs`,
`pyro ps`, `pyro service ...`. Each is a thin call into `ServiceClient`; the two families
differ only in how they find the workspace."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pyro_loop.cli.options import JsonOption
from pyro_loop.cli.output import emit, output_writer, say

if TYPE_CHECKING:
    from pyro_loop.shapes import PsJSON, ServiceJSON, ServiceStoppedJSON
    from pyro_loop.workspace.services import ServiceClient

IdArg = typer.Argument(..., metavar="ID", help="Workspace id, name or unique id prefix.")
NameArg = typer.Argument(..., metavar="NAME", help="The service's name.")
ProjectOption = typer.Option(None, "--project", "-C", help="Project directory (default: here).")
FollowOption = typer.Option(False, "--follow", "-f", help="Go on printing until it ends.")
TailOption = typer.Option(None, "--tail", "-n", help="Only the last N lines.")
LOG_NOTE = (
    "A service keeps its latest 8 MiB of output (stdout and stderr, interleaved); older "
    "output is dropped and counted."
)

workspace_service_app = typer.Typer(
    help="Long-running commands in a workspace, detached: start, list, status, logs, stop.",
    no_args_is_help=True,
)
project_service_app = typer.Typer(
    help="Long-running commands in the project's workspace (`pyro exec --detach` starts one).",
    no_args_is_help=True,
)


def _by_id(ref: str) -> ServiceClient:
    from pyro_loop.workspace.manager import Workspaces

    services: ServiceClient = Workspaces().services(ref)
    return services


def _project(project_dir: Path | None) -> ServiceClient:
    from pyro_loop.cli.loop_cmds import _loop

    services: ServiceClient = _loop(project_dir).services()
    return services


# -- what both families print ------------------------------------------------------------------


def _line(info: ServiceJSON) -> str:
    state = info["state"]
    if state == "exited":
        state = f"exited {info['exit_code']}"
    command = " ".join(info["argv"])
    return f"{info['name']:16} {state:12} pid {info['pid'] or '-':<7} {command}"


def show_started(info: ServiceJSON, *, as_json: bool, logs_hint: str) -> None:
    emit(
        {"service": info},
        as_json=as_json,
        human=lambda: say(
            f"started service {info['name']} (pid {info['pid']}); {logs_hint} follows its output"
        ),
    )


def show_list(services: list[ServiceJSON], *, as_json: bool) -> None:
    def human() -> None:
        if not services:
            say("no services (start one: pyro exec --detach -- CMD)")
        for info in services:
            say(_line(info))

    emit({"services": services}, as_json=as_json, human=human)


def show_status(info: ServiceJSON, *, as_json: bool) -> None:
    emit({"service": info}, as_json=as_json, human=lambda: say(_line(info)))
    if info["state"] != "running":
        raise typer.Exit(1)


def show_logs(
    client: ServiceClient, name: str, *, follow: bool, tail: int | None, as_json: bool
) -> None:
    if as_json:
        output, info = client.service_logs(name, tail=tail)
        emit({**info, "output": output.decode("utf-8", "replace")}, as_json=True)
        return

    write, end = output_writer(program=True)  # a service's colours are kept
    try:
        _output, info = client.service_logs(name, tail=tail, follow=follow, on_output=write)
    finally:
        end()
    if info["dropped_bytes"]:
        sys.stderr.write(
            f"pyro: {info['dropped_bytes']} bytes of older output were dropped "
            "(a service keeps its latest 8 MiB)\n"
        )


def show_stopped(info: ServiceStoppedJSON, *, as_json: bool) -> None:
    how = "killed" if info.get("killed") else "stopped"
    emit({"service": info}, as_json=as_json, human=lambda: say(f"{how} service {info['name']}"))


def show_ps(client: ServiceClient, *, as_json: bool) -> None:
    services = client.service_list()
    processes = client.ps()

    def human() -> None:
        running = [s for s in services if s["state"] == "running"]
        if running:
            say("services:")
            for info in running:
                say("  " + _line(info))
        say(f"{'PID':>7} {'PPID':>7} S COMMAND")
        for row in processes:
            say(f"{row['pid']:>7} {row['ppid']:>7} {row['state']} {' '.join(row['argv'])}")

    data: PsJSON = {"services": services, "processes": processes}
    emit(data, as_json=as_json, human=human)


# -- pyro workspace service ... ------------------------------------------------------------


@workspace_service_app.command("start")
def ws_start(
    ref: str = IdArg,
    name: str = NameArg,
    command: list[str] = typer.Argument(..., metavar="-- CMD...", help="The command to run."),
    cwd: str | None = typer.Option(None, "--cwd", help="Working directory (default /workspace)."),
    env: list[str] = typer.Option([], "--env", help="NAME=value, repeatable."),
    as_json: bool = JsonOption,
) -> None:
    """Start a command detached, as the service NAME; returns once it runs."""
    from pyro_loop.names import parse_env

    info = _by_id(ref).service_start(name, command, cwd=cwd, env=parse_env(env))
    show_started(info, as_json=as_json, logs_hint=f"`pyro workspace service logs {ref} {name} -f`")


@workspace_service_app.command("list")
def ws_list(ref: str = IdArg, as_json: bool = JsonOption) -> None:
    """List the workspace's services, running and exited."""
    show_list(_by_id(ref).service_list(), as_json=as_json)


@workspace_service_app.command("status")
def ws_status(ref: str = IdArg, name: str = NameArg, as_json: bool = JsonOption) -> None:
    """One service's state; exit 1 unless it runs."""
    show_status(_by_id(ref).service_status(name), as_json=as_json)


@workspace_service_app.command("logs", help=f"Print a service's output. {LOG_NOTE}")
def ws_logs(
    ref: str = IdArg,
    name: str = NameArg,
    follow: bool = FollowOption,
    tail: int | None = TailOption,
    as_json: bool = JsonOption,
) -> None:
    show_logs(_by_id(ref), name, follow=follow, tail=tail, as_json=as_json)


@workspace_service_app.command("stop")
def ws_stop(
    ref: str = IdArg,
    name: str = NameArg,
    timeout: float = typer.Option(5.0, "--timeout", help="SIGKILL after S s of SIGTERM."),
    as_json: bool = JsonOption,
) -> None:
    """Stop a service: SIGTERM to its whole process tree, SIGKILL after --timeout."""
    show_stopped(_by_id(ref).service_stop(name, timeout=timeout), as_json=as_json)


# -- the project's: pyro service ..., pyro logs, pyro ps ---------------------------------------


@project_service_app.command("list")
def project_list(project_dir: Path | None = ProjectOption, as_json: bool = JsonOption) -> None:
    """List the project workspace's services, running and exited."""
    show_list(_project(project_dir).service_list(), as_json=as_json)


@project_service_app.command("status")
def project_status(
    name: str = NameArg, project_dir: Path | None = ProjectOption, as_json: bool = JsonOption
) -> None:
    """One service's state; exit 1 unless it runs."""
    show_status(_project(project_dir).service_status(name), as_json=as_json)


@project_service_app.command("stop")
def project_stop(
    name: str = NameArg,
    project_dir: Path | None = ProjectOption,
    timeout: float = typer.Option(5.0, "--timeout", help="SIGKILL after S s of SIGTERM."),
    as_json: bool = JsonOption,
) -> None:
    """Stop a service: SIGTERM to its whole process tree, SIGKILL after --timeout."""
    show_stopped(_project(project_dir).service_stop(name, timeout=timeout), as_json=as_json)


def logs(
    name: str | None = typer.Argument(None, metavar="[NAME]", help="The service (if several)."),
    project_dir: Path | None = ProjectOption,
    follow: bool = FollowOption,
    tail: int | None = TailOption,
    as_json: bool = JsonOption,
) -> None:
    from pyro_loop.errors import InvalidInputError

    client = _project(project_dir)
    if name is None:
        services = client.service_list()
        if len(services) != 1:
            names = ", ".join(s["name"] for s in services) or "none yet"
            raise InvalidInputError(
                f"say which service's output to show (services: {names})",
                hint="pyro logs NAME; `pyro exec --detach -- CMD` starts one",
            )
        name = services[0]["name"]
    show_logs(client, name, follow=follow, tail=tail, as_json=as_json)


logs.__doc__ = f"Print a service's output (-f: follow it). {LOG_NOTE}"


def ps(project_dir: Path | None = ProjectOption, as_json: bool = JsonOption) -> None:
    """What runs in the project's workspace: its services and every process."""
    show_ps(_project(project_dir), as_json=as_json)


def register(app: typer.Typer, workspace_app: typer.Typer) -> None:
    app.command()(logs)
    app.command()(ps)
    app.add_typer(project_service_app, name="service")
    workspace_app.add_typer(workspace_service_app, name="service")

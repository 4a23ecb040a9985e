"""Shells on the command line: `pyro workspace shell ID` attaches this terminal to a shell in
the workspace; `pyro workspace shell open|read|write|signal|close` (the predecessor's names)
drive a shell session that outlives each command, for scripts and agents without a terminal
(workspace/shellkeeper.py holds it). Each is a thin call into the library."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from pyro_loop.cli.loop_cmds import SECRET_ENV_HELP
from pyro_loop.cli.options import JsonOption
from pyro_loop.cli.output import emit, note, output_writer, say, stream_output
from pyro_loop.cli.terminal import run_attached
from pyro_loop.workspace.shells import SIGNALS, TERMINAL


class _ShellGroup(TyperGroup):
    """`pyro workspace shell ID [--env ...]` is the interactive shell; a known word after
    `shell` is a session command."""

    # Typed loosely: typer's Context and Command are those of the click it bundles.
    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and self.get_command(ctx, args[0]) is None:
            return "attach", self.get_command(ctx, "attach"), args
        return super().resolve_command(ctx, args)


shell_app = typer.Typer(
    cls=_ShellGroup,
    help="`pyro workspace shell ID`: an interactive shell on this terminal. The commands "
    "below drive a shell that stays open between commands, for scripts and agents: open one, "
    "write to it, read what it printed (by cursor), signal it, close it.",
    no_args_is_help=True,
    context_settings={"ignore_unknown_options": True},
)

IdArg = typer.Argument(..., metavar="ID", help="Workspace id, name or unique id prefix.")
ShellIdArg = typer.Argument(..., metavar="SHELL_ID", help="The id `shell open` printed.")


def _kept(ref: str) -> Any:
    from pyro_loop.workspace.manager import Workspaces
    from pyro_loop.workspace.shellkeeper import KeptShells

    return KeptShells(Workspaces(), ref)


def _state(data: dict[str, Any]) -> str:
    if data["state"] == "exited":
        return f"exited {data['exit_code']}"
    if data["state"] == "lost":
        return f"lost: {data.get('error')}"
    return str(data["state"])


@shell_app.command("attach", hidden=True)
def attach(
    ref: str = IdArg,
    env: list[str] = typer.Option([], "--env", help="NAME=value, repeatable."),
) -> None:
    """An interactive shell in a workspace (bash if it has one): a real terminal with job
    control and Ctrl-C to the foreground process."""
    from pyro_loop.names import parse_env
    from pyro_loop.workspace.manager import Workspaces
    from pyro_loop.workspace.shellcmd import SHELL_ARGV

    ws = Workspaces()
    result = run_attached(
        lambda _stdin, size: ws.open_exec(
            ref, SHELL_ARGV, env=parse_env(env), stdin=True, tty=size
        ),
        interactive=True,
        tty=True,
        on_output=stream_output,
        shell=True,
    )
    raise typer.Exit(result.exit_code)


@shell_app.command("open")
def open_(
    ref: str = IdArg,
    cwd: str | None = typer.Option(None, "--cwd", help="Working directory (default /workspace)."),
    cols: int = typer.Option(TERMINAL[1], "--cols", min=20, max=1000, help="Terminal width."),
    rows: int = typer.Option(TERMINAL[0], "--rows", min=5, max=1000, help="Terminal height."),
    secret_env: list[str] = typer.Option([], "--secret-env", help=SECRET_ENV_HELP),
    id_only: bool = typer.Option(False, "--id-only", help="Print only the shell's id."),
    as_json: bool = JsonOption,
) -> None:
    """Open a shell (bash, else sh) on a terminal in the workspace, with exec's environment;
    it stays open until `shell close` or until the workspace stops."""
    from pyro_loop.workspace.secrets import from_host

    data = _kept(ref).open(cwd=cwd, size=(rows, cols), secrets=from_host(secret_env))
    if id_only:
        say(data["shell_id"])
        return
    emit(
        data,
        as_json=as_json,
        human=lambda: say(
            f"shell {data['shell_id']} open in workspace {data['workspace_id']} "
            f"({data['cols']}x{data['rows']}, {data['cwd']})"
        ),
    )


@shell_app.command("read")
def read(
    ref: str = IdArg,
    shell_id: str = ShellIdArg,
    cursor: int = typer.Option(
        0, "--cursor", min=0, help="Read from here: the next cursor of the last read."
    ),
    max_bytes: int = typer.Option(
        65536, "--max-bytes", "--max-chars", min=1, max=1024 * 1024, help="Read at most this."
    ),
    wait: float = typer.Option(
        0.5, "--wait", min=0, max=30, help="Wait up to S seconds for output to come."
    ),
    idle_ms: int | None = typer.Option(
        None,
        "--wait-for-idle-ms",
        min=0,
        max=30000,
        help="Once output comes, go on until none has come for N ms (30 s at most): a "
        "command's whole answer in one read.",
    ),
    plain: bool = typer.Option(
        False, "--plain", help="As the screen shows it: no escape sequences, LF line ends."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Print what the shell printed from --cursor on (its latest 1 MiB is kept); the cursor
    to go on from, and whether it still runs, follow on stderr. Raw terminal output unless
    --plain."""
    idle = None if idle_ms is None else idle_ms / 1000
    data = _kept(ref).read(
        shell_id, cursor=cursor, max_bytes=max_bytes, wait=wait, idle=idle, plain=plain
    )
    if as_json:
        emit(data, as_json=True)
        return
    write, end = output_writer(program=True)
    write(data["output"].encode())
    end()
    dropped = f", {data['dropped_bytes']} older bytes dropped" if data["dropped_bytes"] else ""
    more = ", more to read" if data["more"] else ""
    note(f"pyro: shell {shell_id} {_state(data)}; next cursor {data['next_cursor']}{more}{dropped}")


@shell_app.command("write")
def write(
    ref: str = IdArg,
    shell_id: str = ShellIdArg,
    text: str = typer.Option(..., "--input", help="What to type (a command line, an answer)."),
    no_newline: bool = typer.Option(False, "--no-newline", help="Do not press Enter after it."),
    as_json: bool = JsonOption,
) -> None:
    """Type into the shell; Enter is pressed after it unless --no-newline."""
    data = _kept(ref).write(shell_id, text if no_newline else text + "\n")
    emit(
        data,
        as_json=as_json,
        human=lambda: say(f"wrote {data['written']} bytes to shell {shell_id}"),
    )


@shell_app.command("signal")
def signal(
    ref: str = IdArg,
    shell_id: str = ShellIdArg,
    name: str = typer.Option(
        "INT", "--signal", help="One of " + ", ".join(SIGNALS) + " (SIGINT works too)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Signal the shell's foreground process (INT: as Ctrl-C would)."""
    data = _kept(ref).signal(shell_id, name)
    emit(
        data,
        as_json=as_json,
        human=lambda: say(f"sent SIG{data['signal']} to shell {shell_id}"),
    )


@shell_app.command("close")
def close(ref: str = IdArg, shell_id: str = ShellIdArg, as_json: bool = JsonOption) -> None:
    """End the shell and everything it started."""
    data = _kept(ref).close(shell_id)
    was = "" if data["state"] == "running" else f" (it had {_state(data)})"
    emit(data, as_json=as_json, human=lambda: say(f"closed shell {shell_id}{was}"))

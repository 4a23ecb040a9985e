"""Shells on the command line: `pyro shell` (in a project) and `pyro workspace shell ID`
attach this terminal to a shell in the workspace; `open|read|write|signal|close` after either
(the predecessor's names, under `workspace shell`) drive a shell session that outlives each
command, for scripts and agents without a terminal (workspace/shellkeeper.py holds it). The
two families differ only in how they find the workspace; each is a thin call into the library."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

from pyro_loop.cli.loop_cmds import SECRET_ENV_HELP
from pyro_loop.cli.options import JsonOption, ProjectOption
from pyro_loop.cli.output import emit, note, output_writer, say, stream_output
from pyro_loop.cli.terminal import run_attached
from pyro_loop.workspace.shells import SIGNALS, TERMINAL

if TYPE_CHECKING:
    from pyro_loop.shapes import ShellStateJSON
    from pyro_loop.workspace.shellkeeper import KeptShells


class _ShellGroup(TyperGroup):
    """`pyro [workspace] shell [ID] [--env ...]` is the interactive shell; a known word after
    `shell` is a session command."""

    # Typed loosely: typer's Context and Command are those of the click it bundles.
    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and self.get_command(ctx, args[0]) is None:
            return "attach", self.get_command(ctx, "attach"), args
        return super().resolve_command(ctx, args)


SESSIONS = (
    "The commands below drive a shell that stays open between commands, for scripts and "
    "agents: open one, write to it, read what it printed (by cursor), signal it, close it."
)
shell_app = typer.Typer(
    cls=_ShellGroup,
    help="An interactive shell in a workspace on this terminal (`pyro workspace shell ID "
    "[--env NAME=value]`). " + SESSIONS,
    no_args_is_help=True,
    context_settings={"ignore_unknown_options": True},
)
project_shell_app = typer.Typer(
    cls=_ShellGroup,
    help="An interactive shell in the project's workspace on this terminal (`pyro shell [-C "
    "DIR] [--env NAME=value]`): job control, Ctrl-C to the foreground process, exec's "
    "environment. " + SESSIONS,
    invoke_without_command=True,
    context_settings={"ignore_unknown_options": True},
)

IdArg = typer.Argument(..., metavar="ID", help="Workspace id, name or unique id prefix.")
ShellIdArg = typer.Argument(..., metavar="SHELL_ID", help="The id `shell open` printed.")
EnvOption = typer.Option([], "--env", help="NAME=value, repeatable.")
CwdOption = typer.Option(None, "--cwd", help="Working directory (default /workspace).")
ColsOption = typer.Option(TERMINAL[1], "--cols", min=20, max=1000, help="Terminal width.")
RowsOption = typer.Option(TERMINAL[0], "--rows", min=5, max=1000, help="Terminal height.")
SecretEnvOption = typer.Option([], "--secret-env", help=SECRET_ENV_HELP)
IdOnlyOption = typer.Option(False, "--id-only", help="Print only the shell's id.")
CursorOption = typer.Option(
    0, "--cursor", min=0, help="Read from here: the next cursor of the last read."
)
MaxBytesOption = typer.Option(
    65536, "--max-bytes", "--max-chars", min=1, max=1024 * 1024, help="Read at most this."
)
WaitOption = typer.Option(
    0.5, "--wait", min=0, max=30, help="Wait up to S seconds for output to come."
)
IdleOption = typer.Option(
    None,
    "--wait-for-idle-ms",
    min=0,
    max=30000,
    help="Once output comes, go on until none has come for N ms (30 s at most): a command's "
    "whole answer in one read.",
)
PlainOption = typer.Option(
    False, "--plain", help="As the screen shows it: no escape sequences, LF line ends."
)
InputOption = typer.Option(..., "--input", help="What to type (a command line, an answer).")
NoNewlineOption = typer.Option(False, "--no-newline", help="Do not press Enter after it.")
SignalOption = typer.Option(
    "INT", "--signal", help="One of " + ", ".join(SIGNALS) + " (SIGINT works too)."
)
OPEN_DOC = """Open a shell (bash, else sh) on a terminal in the workspace, with exec's
    environment; it stays open until `shell close` or until the workspace stops."""
READ_DOC = """Print what the shell printed from --cursor on (its latest 1 MiB is kept); the
    cursor to go on from, and whether it still runs, follow on stderr. Raw terminal output
    unless --plain."""
WRITE_DOC = "Type into the shell; Enter is pressed after it unless --no-newline."
SIGNAL_DOC = "Signal the shell's foreground process (INT: as Ctrl-C would)."
CLOSE_DOC = "End the shell and everything it started."


def _kept(ref: str) -> KeptShells:
    from pyro_loop.workspace.manager import Workspaces
    from pyro_loop.workspace.shellkeeper import KeptShells

    return KeptShells(Workspaces(), ref)


def _project_kept(project_dir: Path | None, *, start: bool = False) -> KeptShells:
    from pyro_loop.cli.loop_cmds import _loop

    kept: KeptShells = _loop(project_dir).shell_sessions(start=start)
    return kept


def _state(data: ShellStateJSON) -> str:
    if data["state"] == "exited":
        return f"exited {data['exit_code']}"
    if data["state"] == "lost":
        return f"lost: {data.get('error')}"
    return str(data["state"])


# -- what both families do and print -----------------------------------------------------------


def attach_shell(opener: Callable[[tuple[int, int] | None], Any]) -> None:
    """This terminal attached to a shell `opener(size)` starts, until it exits."""
    result = run_attached(
        lambda _stdin, size: opener(size),
        interactive=True,
        tty=True,
        on_output=stream_output,
        shell=True,
    )
    raise typer.Exit(result.exit_code)


def open_session(
    kept: KeptShells, *, cwd: str | None, size: tuple[int, int], secret_env: list[str],
    id_only: bool, as_json: bool,
) -> None:  # fmt: skip
    from pyro_loop.workspace.secrets import from_host

    data = kept.open(cwd=cwd, size=size, secrets=from_host(secret_env))
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


def read_session(
    kept: KeptShells, shell_id: str, *, cursor: int, max_bytes: int, wait: float,
    idle_ms: int | None, plain: bool, as_json: bool,
) -> None:  # fmt: skip
    idle = None if idle_ms is None else idle_ms / 1000
    data = kept.read(
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


def write_session(
    kept: KeptShells, shell_id: str, text: str, *, no_newline: bool, as_json: bool
) -> None:
    data = kept.write(shell_id, text if no_newline else text + "\n")
    emit(
        data,
        as_json=as_json,
        human=lambda: say(f"wrote {data['written']} bytes to shell {shell_id}"),
    )


def signal_session(kept: KeptShells, shell_id: str, name: str, *, as_json: bool) -> None:
    data = kept.signal(shell_id, name)
    emit(
        data,
        as_json=as_json,
        human=lambda: say(f"sent SIG{data['signal']} to shell {shell_id}"),
    )


def close_session(kept: KeptShells, shell_id: str, *, as_json: bool) -> None:
    data = kept.close(shell_id)
    was = "" if data["state"] == "running" else f" (it had {_state(data)})"
    emit(data, as_json=as_json, human=lambda: say(f"closed shell {shell_id}{was}"))


# -- pyro workspace shell ... --------------------------------------------------------------------


@shell_app.command("attach", hidden=True)
def attach(ref: str = IdArg, env: list[str] = EnvOption) -> None:
    """An interactive shell in a workspace (bash if it has one): a real terminal with job
    control and Ctrl-C to the foreground process."""
    from pyro_loop.names import parse_env
    from pyro_loop.workspace.manager import Workspaces
    from pyro_loop.workspace.shellcmd import SHELL_ARGV

    ws = Workspaces()
    attach_shell(lambda size: ws.open_exec(ref, SHELL_ARGV, env=parse_env(env), stdin=True,
                                           tty=size))  # fmt: skip


@shell_app.command("open", help=OPEN_DOC)
def open_(
    ref: str = IdArg, cwd: str | None = CwdOption, cols: int = ColsOption,
    rows: int = RowsOption, secret_env: list[str] = SecretEnvOption,
    id_only: bool = IdOnlyOption, as_json: bool = JsonOption,
) -> None:  # fmt: skip
    open_session(_kept(ref), cwd=cwd, size=(rows, cols), secret_env=secret_env,
                 id_only=id_only, as_json=as_json)  # fmt: skip


@shell_app.command("read", help=READ_DOC)
def read(
    ref: str = IdArg, shell_id: str = ShellIdArg, cursor: int = CursorOption,
    max_bytes: int = MaxBytesOption, wait: float = WaitOption,
    idle_ms: int | None = IdleOption, plain: bool = PlainOption, as_json: bool = JsonOption,
) -> None:  # fmt: skip
    read_session(_kept(ref), shell_id, cursor=cursor, max_bytes=max_bytes, wait=wait,
                 idle_ms=idle_ms, plain=plain, as_json=as_json)  # fmt: skip


@shell_app.command("write", help=WRITE_DOC)
def write(
    ref: str = IdArg, shell_id: str = ShellIdArg, text: str = InputOption,
    no_newline: bool = NoNewlineOption, as_json: bool = JsonOption,
) -> None:  # fmt: skip
    write_session(_kept(ref), shell_id, text, no_newline=no_newline, as_json=as_json)


@shell_app.command("signal", help=SIGNAL_DOC)
def signal(
    ref: str = IdArg, shell_id: str = ShellIdArg, name: str = SignalOption,
    as_json: bool = JsonOption,
) -> None:  # fmt: skip
    signal_session(_kept(ref), shell_id, name, as_json=as_json)


@shell_app.command("close", help=CLOSE_DOC)
def close(ref: str = IdArg, shell_id: str = ShellIdArg, as_json: bool = JsonOption) -> None:
    close_session(_kept(ref), shell_id, as_json=as_json)


# -- pyro shell ... (the project's workspace) ----------------------------------------------------


@project_shell_app.callback()
def project_default(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:  # plain `pyro shell`
        project_attach(None, [])


@project_shell_app.command("attach", hidden=True)
def project_attach(project_dir: Path | None = ProjectOption, env: list[str] = EnvOption) -> None:
    """An interactive shell in the project's workspace (bash if it has one): a real terminal
    with job control, Ctrl-C to the foreground process, and exec's environment."""
    from pyro_loop.cli.loop_cmds import _loop
    from pyro_loop.names import parse_env

    loop = _loop(project_dir)
    attach_shell(lambda size: loop.shell(tty=size, env=parse_env(env)))


@project_shell_app.command("open", help=OPEN_DOC + " Host edits are synced first.")
def project_open(
    project_dir: Path | None = ProjectOption, cwd: str | None = CwdOption,
    cols: int = ColsOption, rows: int = RowsOption, secret_env: list[str] = SecretEnvOption,
    id_only: bool = IdOnlyOption, as_json: bool = JsonOption,
) -> None:  # fmt: skip
    open_session(_project_kept(project_dir, start=True), cwd=cwd, size=(rows, cols),
                 secret_env=secret_env, id_only=id_only, as_json=as_json)  # fmt: skip


@project_shell_app.command("read", help=READ_DOC)
def project_read(
    shell_id: str = ShellIdArg, project_dir: Path | None = ProjectOption,
    cursor: int = CursorOption, max_bytes: int = MaxBytesOption, wait: float = WaitOption,
    idle_ms: int | None = IdleOption, plain: bool = PlainOption, as_json: bool = JsonOption,
) -> None:  # fmt: skip
    read_session(_project_kept(project_dir), shell_id, cursor=cursor, max_bytes=max_bytes,
                 wait=wait, idle_ms=idle_ms, plain=plain, as_json=as_json)  # fmt: skip


@project_shell_app.command("write", help=WRITE_DOC)
def project_write(
    shell_id: str = ShellIdArg, project_dir: Path | None = ProjectOption,
    text: str = InputOption, no_newline: bool = NoNewlineOption, as_json: bool = JsonOption,
) -> None:  # fmt: skip
    write_session(_project_kept(project_dir), shell_id, text, no_newline=no_newline,
                  as_json=as_json)  # fmt: skip


@project_shell_app.command("signal", help=SIGNAL_DOC)
def project_signal(
    shell_id: str = ShellIdArg, project_dir: Path | None = ProjectOption,
    name: str = SignalOption, as_json: bool = JsonOption,
) -> None:  # fmt: skip
    signal_session(_project_kept(project_dir), shell_id, name, as_json=as_json)


@project_shell_app.command("close", help=CLOSE_DOC)
def project_close(
    shell_id: str = ShellIdArg, project_dir: Path | None = ProjectOption,
    as_json: bool = JsonOption,
) -> None:  # fmt: skip
    close_session(_project_kept(project_dir), shell_id, as_json=as_json)

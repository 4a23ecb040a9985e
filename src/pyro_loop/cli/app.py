"""`pyro`: the root command, error handling and exit codes.

Exit codes: 0 success; 1 an expected failure (one line saying what to fix); 2 a usage error;
3 a bug (a crash log is written); 126 command not executable, 127 command not found in the
workspace; 130 interrupted.
`pyro workspace exec` passes the command's own exit code through.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pyro_loop import __version__
from pyro_loop.cli import hooks_cmds, loop_cmds, service_cmds
from pyro_loop.cli.init_cmd import init_command
from pyro_loop.cli.mcp_cmd import mcp_app
from pyro_loop.cli.options import JsonOption
from pyro_loop.cli.output import emit, say
from pyro_loop.cli.project import cache_app, prepare, status, trust
from pyro_loop.cli.workspace import workspace_app
from pyro_loop.guard import guarded

if TYPE_CHECKING:
    from pyro_loop.runtime.doctor import Check
    from pyro_loop.shapes import DoctorJSON, ToolStateJSON

HELP = """\
pyro: fast, isolated, disposable workspaces for coding agents.

Once per machine: `pyro doctor`. Once per repo: `pyro init`. Then, in the repo:

\b
  pyro up            # warm the repo's workspace (prepare if needed), or reconnect in ms
  pyro exec -- pytest   # run there: host edits synced first, network off
  pyro retry         # the same command again (--reset: from the baseline)
  pyro reset         # back to the warm baseline + your current files, in ms
  pyro diff          # what the workspace changed; `pyro apply` brings it back
  pyro status        # is this machine warm for this repo?
"""

app = typer.Typer(
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(prepare)
app.command()(status)
app.command()(trust)
loop_cmds.register(app)
app.add_typer(workspace_app, name="workspace")
app.command("init")(init_command)
app.add_typer(cache_app, name="cache")
app.add_typer(mcp_app, name="mcp")
hooks_cmds.register(app)
service_cmds.register(app, workspace_app)


def _version(value: bool) -> None:
    if value:
        say(f"pyro {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """pyro: fast, isolated, disposable workspaces for coding agents."""


@app.command()
def doctor(as_json: bool = JsonOption) -> None:
    """Check what this host supports (namespaces, overlayfs, bubblewrap) and how to fix gaps."""
    from pyro_loop.cli.starter import describe_server
    from pyro_loop.runtime.doctor import Check, run_checks, tool_checks

    server = Check("fork server", True, describe_server(), required=False)
    checks = [*run_checks(), *tool_checks(_project_tools()), server, *_journal_check()]
    ready = all(c.ok for c in checks if c.required)

    def human() -> None:
        for c in checks:
            mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
            say(f"{mark} {c.name}: {c.detail}")
            if c.fix and not c.ok:
                say(f"     fix: {c.fix}")
        say("ready: workspaces can run here" if ready else "not ready: fix the FAIL lines above")

    report: DoctorJSON = {"ready": ready, "checks": [c.to_json() for c in checks]}
    emit(report, as_json=as_json, human=human)
    if not ready:
        raise typer.Exit(1)


def _journal_check() -> list[Check]:
    """The change journal of the project around the working directory, if any."""
    from pyro_loop.errors import PyroError
    from pyro_loop.project.discovery import find_project
    from pyro_loop.runtime.doctor import Check
    from pyro_loop.sync.journal import describe

    try:
        project = find_project(Path.cwd())
    except PyroError:
        return []
    root = (project.repo_root or project.root).resolve()
    return [Check("change journal", True, describe(str(root)), required=False)]


def _project_tools() -> list[ToolStateJSON]:
    """The tools declared by the project around the working directory, if any."""
    from pyro_loop.errors import PyroError
    from pyro_loop.home import pyro_home
    from pyro_loop.loop.activation import tool_requests
    from pyro_loop.loop.tools import tool_states
    from pyro_loop.project.config import load_project_config
    from pyro_loop.project.discovery import find_project
    from pyro_loop.store.layers import LayerStore

    try:
        config = load_project_config(find_project(Path.cwd()).root).config
    except PyroError:
        return []  # no project here, or a broken .pyro.toml: `pyro status` says which
    return tool_states(LayerStore(pyro_home()), tool_requests(config))


@app.command()
def demo(as_json: bool = JsonOption) -> None:
    """Run the daily loop on a small embedded project: create, test, break, diff, reset."""
    from pyro_loop.cli.output import ms
    from pyro_loop.loop.demo import Step, run_demo

    def report(step: Step) -> None:
        if not as_json:
            mark = "ok  " if step.ok else "FAIL"
            say(f"{mark} {step.title:52} {ms(step.seconds):>8}")
            if step.title.startswith("pyro diff"):
                say("\n".join("       " + line for line in step.detail.splitlines()))

    steps = run_demo(report)
    ok = all(s.ok for s in steps)
    rows = [
        {"step": s.title, "ms": round(s.seconds * 1000, 2), "ok": s.ok, "detail": s.detail}
        for s in steps
    ]
    emit({"ok": ok, "steps": rows}, as_json=as_json, human=lambda: None)
    if not ok:
        raise typer.Exit(1)


def _here() -> None:
    """After the root help: is this machine warm for the repository here? Best effort: the
    help must show whatever state the directory is in."""
    try:
        from pyro_loop.cli.daily import load_project as _load
        from pyro_loop.loop.status import readiness
        from pyro_loop.workspace.manager import Workspaces

        project, config = _load(None)
        if project.config_path.is_file():
            line = readiness(project, config, Workspaces()).summary()
        else:
            line = f"{project.root}: not a pyro project yet (run `pyro init` in the repository)"
    except Exception as exc:
        line = f"not in a project ({getattr(exc, 'message', exc)})"
    say(f"\nHere: {line}")


def main() -> None:
    if sys.argv[1:] in ([], ["-h"], ["--help"]):

        def root_help() -> int:
            with contextlib.suppress(typer.Exit, SystemExit):
                app(args=["--help"], standalone_mode=False)
            _here()
            return 0

        sys.exit(guarded(root_help))

    def call() -> int:
        try:
            rv = app(standalone_mode=False)
        except typer.Abort:
            raise KeyboardInterrupt from None
        except typer.TyperException as exc:  # usage errors: typer shows them with the usage line
            show = getattr(exc, "show", None)
            if callable(show):
                show()
            else:
                sys.stderr.write(f"pyro: {exc}\n")
            return int(getattr(exc, "exit_code", 2))
        return rv if isinstance(rv, int) else 0

    sys.exit(guarded(call))

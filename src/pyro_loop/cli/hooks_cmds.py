"""`pyro check` and `pyro hooks install | uninstall | status | run`: thin calls into
pyro_loop.loop.check and pyro_loop.githooks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pyro_loop.cli.options import JsonOption, ProjectOption
from pyro_loop.cli.output import emit, note, say

if TYPE_CHECKING:
    from pyro_loop.shapes import CheckJSON, HooksRemovedJSON

hooks_app = typer.Typer(
    help="Git hooks: keep the project warm after checkouts; check what is committed.",
    no_args_is_help=True,
)


def check(
    project_dir: Path | None = ProjectOption,
    staged: bool = typer.Option(
        False, "--staged", help="Check the staged files (the index), as `git commit` commits them."
    ),
    rev: list[str] = typer.Option([], "--rev", help="Check this commit's files (repeatable)."),
    as_json: bool = JsonOption,
) -> None:
    """Run the [check] commands in a fresh isolated workspace on exactly one git tree: the
    working tree's files (default), the staged ones (--staged) or a commit's (--rev)."""
    from pyro_loop.cli.daily import load_project
    from pyro_loop.loop.check import check_project

    project, config = load_project(project_dir)

    # With --json, stdout is the JSON document: the commands' output goes to stderr.
    def output(which: str, data: bytes) -> None:
        out = sys.stdout.buffer if which == "stdout" and not as_json else sys.stderr.buffer
        out.write(data)
        out.flush()

    results = check_project(project, config, staged=staged, revs=rev, note=note, on_output=output)
    failed = next((r for r in results if r.failed is not None), None)
    report: CheckJSON = {"ok": failed is None, "results": [r.to_json() for r in results]}
    emit(report, as_json=as_json, human=lambda: None)
    if failed is not None:
        raise typer.Exit(failed.exit_code)


@hooks_app.command("install")
def install(
    project_dir: Path | None = ProjectOption,
    pre_commit: bool = typer.Option(
        False, "--pre-commit", help="Also run the checks on the staged files before each commit."
    ),
    pre_push: bool = typer.Option(
        False, "--pre-push", help="Also run the checks on each commit before it is pushed."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Install pyro's git hooks: after checkout, merge and rewrite, prepare in the background
    when a lockfile changed; --pre-commit/--pre-push add the isolated checks."""
    from pyro_loop.githooks import install as lib
    from pyro_loop.project.hooks import KEEP_WARM

    project = _project(project_dir)
    wanted = [*KEEP_WARM, *(["pre-commit"] if pre_commit else []),
              *(["pre-push"] if pre_push else [])]  # fmt: skip
    report = lib.install(project, hooks=wanted)

    def human() -> None:
        say(f"installed {', '.join(report.installed)} in {report.hooks_dir}")
        for hook in report.hooks:
            if hook.state == "pyro" and hook.legacy:
                say(f"  {hook.name}: the hook that was there runs first ({hook.name}.legacy)")
        if report.shared:
            say("  (this repository's worktrees share these hooks)")

    emit(report.to_json(), as_json=as_json, human=human)


@hooks_app.command("uninstall")
def uninstall(
    hooks: list[str] = typer.Argument(None, help="Only these hooks (default: all of pyro's)."),
    project_dir: Path | None = ProjectOption,
    as_json: bool = JsonOption,
) -> None:
    """Remove pyro's git hooks, putting back the hooks they replaced, exactly."""
    from pyro_loop.githooks import install as lib
    from pyro_loop.project.hooks import HOOKS
    from pyro_loop.project.hooks import status as hooks_status

    project = _project(project_dir)
    before = set(hooks_status(project).installed)
    report = lib.uninstall(project, hooks=hooks or HOOKS)
    removed = sorted(before - set(report.installed))
    data: HooksRemovedJSON = {**report.to_json(), "removed": removed}
    emit(
        data,
        as_json=as_json,
        human=lambda: say(f"removed {', '.join(removed) or 'nothing: no pyro hooks installed'}"),
    )


@hooks_app.command("status")
def status(project_dir: Path | None = ProjectOption, as_json: bool = JsonOption) -> None:
    """Which of pyro's hooks are installed, and whether git will run them."""
    from pyro_loop.project.hooks import status as hooks_status

    report = hooks_status(_project(project_dir))

    def human() -> None:
        shared = " (shared by worktrees)" if report.shared else ""
        say(f"hooks dir     {report.hooks_dir}{shared}")
        for hook in report.hooks:
            line = f"{hook.name:14}{hook.state}"
            if hook.state == "pyro":
                line += f" ({hook.python})" if hook.python_ok else (
                    f": {hook.python} is gone: run `pyro hooks install` again")  # fmt: skip
            if hook.legacy:
                line += f", runs {hook.name}.legacy first" if hook.state == "pyro" else (
                    f", {hook.name}.legacy left over")  # fmt: skip
            say(line)
        if report.problem:
            say(f"problem       {report.problem}")

    emit(report.to_json(), as_json=as_json, human=human)
    if report.problem or report.broken:
        raise typer.Exit(1)


@hooks_app.command(
    "run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def run(
    ctx: typer.Context,
    hook: str = typer.Argument(..., help="post-checkout, post-merge, post-rewrite, pre-commit..."),
    project_dir: Path | None = ProjectOption,
) -> None:
    """Do what pyro's HOOK does, for other hook managers: `pyro hooks run post-checkout "$@"`."""
    from pyro_loop.githooks.run import run_hook

    raise typer.Exit(run_hook(hook, project_dir or Path.cwd(), stdin=sys.stdin))


def _project(project_dir: Path | None) -> Any:
    from pyro_loop.project.discovery import find_project

    return find_project(project_dir or Path.cwd())


def register(app: typer.Typer) -> None:
    app.command()(check)
    app.add_typer(hooks_app, name="hooks")

"""`pyro check` and `pyro hooks install | uninstall | status | run`: thin calls into
pyro_loop.check and pyro_loop.githooks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from pyro_loop.cli.options import JsonOption, ProjectOption
from pyro_loop.cli.output import emit, ms, note, say

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
    from pyro_loop import check as lib
    from pyro_loop.cli.daily import load_project as _load
    from pyro_loop.errors import InvalidInputError
    from pyro_loop.workspace import Workspaces

    if staged and rev:
        raise InvalidInputError("give --staged or --rev, not both")
    project, config = _load(project_dir)
    if not config.check_run:
        note(f"pyro check: nothing to check: no [check] run in {project.config_path}")
        emit({"ok": True, "results": []}, as_json=as_json, human=lambda: None)
        return
    if staged:
        trees = [("staged", lib.staged_tree(project))]
    elif rev:
        trees = [(f"commit {r}", lib.commit_tree(project, r)) for r in rev]
    else:
        trees = [("working tree", lib.working_tree(project))]

    def progress(phase: str, message: str) -> None:
        if phase in ("prepare", "warning"):
            note(f"pyro check: {message}")
        elif phase in ("dependencies", "baseline"):  # from the prepare it had to run first
            note(f"prepare: {phase}: {message}")

    # With --json, stdout is the JSON document: the commands' output goes to stderr.
    def output(which: str, data: bytes) -> None:
        out = sys.stdout.buffer if which == "stdout" and not as_json else sys.stderr.buffer
        out.write(data)
        out.flush()

    ws = Workspaces()
    results = []
    for source, tree in trees:
        result = lib.run_check(
            project, config, tree, ws=ws, source=source, on_output=output, on_progress=progress
        )
        results.append(result)
        _summarize(result, staged=staged)
        if result.failed is not None:
            break
    failed = next((r for r in results if r.failed is not None), None)
    emit(
        {"ok": failed is None, "results": [r.to_json() for r in results]},
        as_json=as_json,
        human=lambda: None,
    )
    if failed is not None:
        raise typer.Exit(failed.exit_code)


def _summarize(result: Any, *, staged: bool) -> None:
    where = f"{result.source} (tree {result.tree[:8]})"
    if result.failed is None:
        note(f"pyro check: passed on {where}: {len(result.runs)} command(s) in "
             f"{ms(result.seconds)}, isolation {ms(result.setup_seconds)}")  # fmt: skip
        return
    failed = result.failed
    why = "timed out" if failed.timed_out else f"exited {failed.exit_code}"
    note(f"pyro check: FAILED on {where}: `{failed.command}` {why}")
    if staged:
        note("pyro check: commit blocked; fix and `git add` it, or `git commit --no-verify` "
             "to skip the hook once")  # fmt: skip


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

    project = _project(project_dir)
    wanted = [*lib.KEEP_WARM, *(["pre-commit"] if pre_commit else []),
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

    project = _project(project_dir)
    before = set(lib.status(project).installed)
    report = lib.uninstall(project, hooks=hooks or lib.HOOKS)
    removed = sorted(before - set(report.installed))
    emit(
        {**report.to_json(), "removed": removed},
        as_json=as_json,
        human=lambda: say(f"removed {', '.join(removed) or 'nothing: no pyro hooks installed'}"),
    )


@hooks_app.command("status")
def status(project_dir: Path | None = ProjectOption, as_json: bool = JsonOption) -> None:
    """Which of pyro's hooks are installed, and whether git will run them."""
    from pyro_loop.githooks import install as lib

    report = lib.status(_project(project_dir))

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
    from pyro_loop.project import find_project

    return find_project(project_dir or Path.cwd())


def register(app: typer.Typer) -> None:
    app.command()(check)
    app.add_typer(hooks_app, name="hooks")

"""The daily commands' bodies: `pyro prepare`, `status`, `up`, `exec`, `retry`.

Plain functions returning the exit code, with no typer: the full CLI's commands and the lean
entry (lean.py) both call them, so their output, errors and exit codes are one code path.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_loop.cli.output import emit, ms, note, say, stream_output
from pyro_loop.units import size

if TYPE_CHECKING:
    from pyro_loop.progress import Progress
    from pyro_loop.shapes import HooksStateJSON, ProjectWorkspaceJSON, TransferJSON


def load_project(project_dir: Path | None) -> tuple[Any, Any]:
    """The project around `project_dir` (or here) and its configuration; warnings to stderr."""
    from pyro_loop.project.config import load_project_config
    from pyro_loop.project.discovery import find_project

    project = find_project(project_dir or Path.cwd())
    result = load_project_config(project.root)
    for warning in result.warnings:
        note(f"pyro: warning: {warning}")
    return project, result.config


def project_loop(project_dir: Path | None) -> Any:
    from pyro_loop.errors import NotFoundError
    from pyro_loop.loop.live import ProjectLoop
    from pyro_loop.workspace.manager import Workspaces

    project, config = load_project(project_dir)
    if not project.config_path.is_file():
        raise NotFoundError(
            f"{project.root} is not a pyro project (no .pyro.toml here or above)",
            hint="run `pyro init` in the repository",
        )
    return ProjectLoop(project, config, Workspaces())


def prepare(project_dir: Path | None, *, if_changed: bool, as_json: bool,
            push: bool = False) -> int:  # fmt: skip
    from pyro_loop.home import pyro_home
    from pyro_loop.loop.warmth import judge

    started = time.perf_counter()
    project, config = load_project(project_dir)
    if if_changed and not push and judge(project, config, pyro_home()).warm:
        warm = {
            "warm": True,
            "built": [],
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        emit(
            warm,
            as_json=as_json,
            human=lambda: say(f"warm: nothing to prepare ({ms(time.perf_counter() - started)})"),
        )
        return 0
    from pyro_loop.cli.progress import progress_display
    from pyro_loop.loop.prepare import prepare as run_prepare

    with progress_display(as_json=as_json) as progress:
        result = run_prepare(project, config, on_progress=progress, push=push)
    data = result.to_json()

    def human() -> None:
        what = ", ".join(result.built) if result.built else "nothing (already warm)"
        pulled = f"; pulled {', '.join(result.pulled)}" if result.pulled else ""
        say(f"prepared {project.root} in {ms(result.seconds)}: built {what}{pulled}")
        if result.pushed is not None:
            say(transfer_line("pushed", result.pushed))

    emit(data, as_json=as_json, human=human)
    return 0


def transfer_line(verb: str, data: TransferJSON) -> str:
    moved = [i for i in data["layers"] if i["action"] != "present"]
    kept = len(data["layers"]) - len(moved)
    held = f" ({kept} already there)" if kept else ""
    return (
        f"{verb} {len(moved)} layers, {size(data['bytes'])}{held}: {data['remote']} "
        f"tag {data['tag'][:16]}..."
    )


def status(project_dir: Path | None, *, as_json: bool) -> int:
    """Exit 0 when warm, 1 when something is missing."""
    from pyro_loop.loop.status import readiness
    from pyro_loop.workspace.manager import Workspaces

    project, config = load_project(project_dir)
    state = readiness(project, config, Workspaces())
    data = state.to_json()

    def human() -> None:
        config_note = (
            project.config_path.name
            if state.config_found
            else "no .pyro.toml (pyro init writes one)"
        )
        say(f"project       {project.root} ({config_note})")
        env = data["environment"]
        say(
            f"environment   {env['name']}" + ("" if env["state"] == "host" else f": {env['state']}")
        )
        deps = data["dependencies"]
        line = f"dependencies  {deps['state']}"
        if deps["state"] == "warm":
            line += f" (snapshot {deps['key'][:12]})"
        elif deps.get("background"):
            line += ": " + "; ".join(deps["reasons"]) + " (preparing in the background)"
        elif deps.get("reasons"):
            line += ": " + "; ".join(deps["reasons"]) + " (run: pyro prepare)"
        say(line)
        for tool in data["tools"]:
            line = f"tool          {tool['name']} {tool['version']}: {tool['state']}"
            say(line + (f" ({tool['fix']})" if tool.get("fix") else ""))
        base = data["baseline"]
        line = f"baseline      {base['state']}"
        if base.get("commit"):
            line += f" (HEAD {base['commit'][:8]})"
        say(line)
        if data["workspaces"]:
            for w in data["workspaces"]:
                _say_workspace(w)
        else:
            say("workspace     none running")
        sync = data["sync"]
        if sync.startswith("not watching"):  # how host edits reach the workspace then
            sync += " (exec syncs first; `pyro watch` keeps it live)"
        say(f"sync          {sync}")
        say(f"hooks         {_hooks_line(data['hooks'])}")
        if state.trust is not None:
            say(f"trust         {state.trust.describe()}")
        say(f"cache         {size(data['cache_bytes'])}")
        say(_verdict(state))

    emit(data, as_json=as_json, human=human)
    trusted = state.trust is None or state.trust.ok
    return 0 if state.warm and trusted else 1


def _verdict(state: Any) -> str:
    """The last line of `pyro status`: ready, or the one thing to do next."""
    if state.trust is not None and not state.trust.ok:
        return f"not ready: {state.trust.message()}"
    if state.warm:
        return "ready: warm for this project"
    if state.dependencies.get("background"):
        return "not warm yet: a prepare runs in the background (`pyro prepare` waits for it)"
    return "not warm: run `pyro prepare` (or `pyro up`)"


def _say_workspace(w: ProjectWorkspaceJSON) -> None:
    """A workspace's status line, then one per port it publishes."""
    outdated = "" if w["current"] else " (made for other dependencies: the next exec moves it)"
    say(f"workspace     {w['name'] or w['id']}: {w['state']}{outdated}")
    for port in w.get("ports") or []:
        say(f"port          {port['url']} -> {port['port']} in the workspace")


def _hooks_line(hooks: HooksStateJSON) -> str:
    if hooks["problem"]:
        return f"not run by git: {hooks['problem']}"
    if hooks["broken"]:
        return f"{', '.join(hooks['broken'])}: interpreter gone (run: pyro hooks install)"
    installed = hooks["installed"]
    return ", ".join(installed) if installed else "not installed (pyro hooks install)"


def progress(event: Progress) -> None:
    """Progress of a command whose own output follows on the terminal: plain lines, never
    a live line redrawn over that output."""
    note(f"prepare: {event.text()}")


def up(project_dir: Path | None, *, no_prepare: bool, watch: bool, as_json: bool) -> int:
    from pyro_loop.cli.progress import progress_display

    loop = project_loop(project_dir)
    with progress_display(as_json=as_json) as on_progress:
        result = loop.up(prepare=not no_prepare, on_progress=on_progress)
    emit(result.to_json(), as_json=as_json, human=lambda: say(result.describe()))
    if watch:
        watch_project(loop)
    return 0


def exec_(
    command: list[str],
    project_dir: Path | None,
    *,
    timeout: float | None,
    cwd: str | None,
    env: list[str],
    interactive: bool = False,
    tty: bool = False,
    no_prepare: bool = False,
    loop: Any = None,
    secret_env: list[str] | None = None,
) -> int:
    """The command's exit code is pyro's. Piped input reaches its stdin; a terminal's only
    with `interactive`; `tty` runs it on a pseudo-terminal. `secret_env` names host
    variables passed as secrets."""
    from pyro_loop.cli.terminal import run_attached
    from pyro_loop.names import parse_env

    loop = loop or project_loop(project_dir)
    output = StderrTail()
    result = run_attached(
        lambda stdin, size: loop.open_exec(
            command,
            timeout=timeout,
            cwd=cwd,
            env=parse_env(env),
            stdin=stdin,
            tty=size,
            prepare=not no_prepare,
            on_progress=progress,
            secret_env=secret_env or (),
        ),
        interactive=interactive,
        tty=tty,
        on_output=output,
    )
    if result.timed_out:
        note(f"pyro: command timed out after {timeout} s (process tree killed)")
    output.explain_127(loop, command, result)
    return int(result.exit_code)


def retry(project_dir: Path | None, *, reset: bool, no_prepare: bool = False) -> int:
    import shlex

    loop = project_loop(project_dir)
    last = loop.last_command()
    if last is not None:  # what runs, as a shell would echo it (stdout stays the command's)
        note(f"pyro: retry: {shlex.join(last['argv'])}")
    output = StderrTail()
    result = loop.retry(reset=reset, on_output=output, prepare=not no_prepare, on_progress=progress)
    output.explain_127(loop, last["argv"] if last else [], result)
    return int(result.exit_code)


class StderrTail:
    """Streams a command's output, keeping the end of its stderr: a 127 is explained from
    the shell's "not found" line."""

    def __init__(self) -> None:
        self.tail = b""

    def __call__(self, stream: str, data: bytes) -> None:
        stream_output(stream, data)
        if stream == "stderr":
            self.tail = (self.tail + data)[-2048:]

    def explain_127(self, loop: Any, argv: list[str], result: Any) -> None:
        if result.exit_code == 127 and not result.timed_out:
            hint = loop.not_found_hint(argv, self.tail)
            note(f"pyro: exit 127 (command not found): {hint}")


def watch_project(loop: Any) -> None:
    record = loop.require()
    note(f"pyro: watching {loop.project.root} -> {record.name or record.id} (Ctrl-C stops)")
    try:
        loop.watch(on_event=lambda text: note(f"pyro: {text}"))
    except KeyboardInterrupt:
        note("pyro: watcher stopped")

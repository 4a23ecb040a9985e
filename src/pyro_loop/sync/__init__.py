"""The sync engine: the host's working tree -> the project's running workspace.

A workspace of a git project starts from a baseline layer: the files of a git tree (HEAD's
when the workspace was made). What the host has on top of that (modified, deleted, new and
not ignored files) is pushed into the running workspace, and from then on only what changes.

The manifest (a JSON file per project workspace) records every path pyro pushed or removed
over the baseline: what the workspace now holds there (kind, mode, size, times, sha256). A
path's host state is compared with its record, or with the baseline when it has none, and
only what differs moves: all the files in one `put_tar` stream, all the removals in one
`remove_many` request.

When is a file "unchanged" without reading it? Only when its kind, mode, size, mtime_ns,
ctime_ns and inode all equal the record AND both times are at least RACY_NS older than the
moment the record was taken. Anything else is hashed (sha256) and compared. ctime cannot be
set from user space, so a rewrite that restores the old mtime (`touch -d`, `cp -p`, `git
checkout` of same-size content) still changes it; the racy window is git's racy-git rule: a
file written in the same timestamp tick as the record could look unchanged, so recently
written files are always hashed until a later sync has seen them settle.

Conflicts: the host wins for paths it changed; paths the host did not change are never
touched, whatever the workspace did to them.

Modules: `paths` (which paths take part), `fs.hoststate` (a host path's state and digests),
`manifest` (what pyro pushed), `baseline` (the git tree the workspace started from),
`tarstream` (the push), `engine` (the `Syncer` that plans and pushes), `result` (what a
sync did), `hostscan` (has anything changed since the last sync? one pass of lstat calls).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyro_loop.fs.hoststate import host_digest
    from pyro_loop.sync.engine import Syncer
    from pyro_loop.sync.manifest import manifest_digest
    from pyro_loop.sync.paths import ExcludeRules, PathFilter
    from pyro_loop.sync.result import Skipped, SyncResult

__all__ = ["ExcludeRules", "PathFilter", "Skipped", "SyncResult", "Syncer", "host_digest",
           "manifest_digest"]  # fmt: skip

# Loaded on first use: `pyro_loop.sync.hostscan`, on the path of every daily command, must
# not pull in the engine (and what it imports) to answer "nothing changed".
_HOMES = {"Syncer": "sync.engine", "host_digest": "fs.hoststate",
          "manifest_digest": "sync.manifest", "ExcludeRules": "sync.paths",
          "PathFilter": "sync.paths", "Skipped": "sync.result",
          "SyncResult": "sync.result"}  # fmt: skip


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"pyro_loop.{home}"), name)

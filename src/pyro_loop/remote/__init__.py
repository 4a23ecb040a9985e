"""Sharing prepared layers through an OCI registry (docs/cache.md).

address      which registry and repository, and whether plain HTTP is allowed
credentials  where the login comes from (the container tools' files, or the environment)
registry     the registry protocol, through the ORAS SDK, with bounded timeouts
archive      a layer tree as a compressed tar blob, and back
share        push and pull a snapshot key's layers: the manifest mapping and the store

Nothing here is imported by a daily command that does not use a remote.
"""

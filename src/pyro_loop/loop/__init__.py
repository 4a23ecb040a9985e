"""The project's daily loop: prepare, the warm-state judgment, the live workspace, checks.

projecthome    a project's files in the pyro home (state, last command, manifest, locks)
prepare        `pyro prepare`: build the layers a project's workspaces start from
snapshotbuild  one build of a dependency snapshot in a prepare sandbox
tools          tool layers (uv, poetry, pnpm, ...) built once per version
activation     what a project's sandboxes see besides its files: tools, toolchains, PATH
hostenv        proxy, certificate and index settings prepare takes from the host
downloads      installers' download caches, kept across prepares outside every layer
keydigests     the keying files' digests, remembered while they are unchanged
warmth         is this project warm, and which layers does its configuration need?
teamcache      prepare's step through a cache remote (the `remote` package)
live           the project's live workspace: up, exec, retry, reset, diff, apply, down
relocate       moving a live workspace onto the dependency layer it now needs
notfound       exit 127 explained: the PATH searched and the likely fix
warmup         the live workspace made ready in the background and kept synced
keepwarm       what the post-checkout hooks do: prepare in the background when needed
check          `pyro check`: the `[check] run` commands on exactly one git tree
status         `pyro status`: is this machine warm for this project? (no side effects)
gc             `pyro cache`: what the store holds, and removing what nothing needs
demo           `pyro demo`: the loop on a small embedded project, end to end

Imports: every subsystem below it (`remote`, `sync`, `project`, `workspace`, `runtime`,
`store`); never the fronts (`cli`, `mcp`, `githooks`).
"""

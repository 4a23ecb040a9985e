"""The layer store: read-only, content-addressed directory trees that workspaces stack.

layers        the store itself: publish atomically, look up, in-use locks, verify
treehash      a tree's content digest, as overlayfs will present it
layercopy     an overlay upper dir turned into a new layer (whiteouts, opaque dirs)
layerview     a stack of layers read on the host the way overlayfs shows it
overlay       overlayfs facts: whiteouts, opaque directories, mount option safety
seed          a directory or tar archive turned into a layer
environments  root filesystems: the host's, or a Debian release built with mmdebstrap

Imports: `fs` and the basics. Knows nothing of workspaces, projects or git.
"""

"""The project: a git repository with a `.pyro.toml`, and what its files say.

discovery    which project a directory belongs to; HEAD, trees and git facts about it
             (through `pyro_loop.git`, the one module every git operation goes through)
config       `.pyro.toml`: every setting declared once, validated, documented from there
trust        which `.pyro.toml` files the user approved (`pyro trust`)
detect       which package managers a project uses and how to install its dependencies
conventions  what a project's files say about its tools and tests (for `pyro init`)
repofiles    reading the repository's manifests for those: beneath its root, capped, a
             malformed file or a value of the wrong type read as empty
scmversion   the version setuptools-scm would compute, for a prepare without the .git
scaffold     `pyro init`: a commented `.pyro.toml` filled in from what is detected
hooks        which git hooks the repository has, and which are pyro's
diffignore   which of a workspace's changes git would ignore

Imports: `workspace` (port and limit types), `store`, `runtime`, `fs` and the basics.
Reads the repository; never writes it.
"""

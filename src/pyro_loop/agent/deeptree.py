"""Trees at any depth inside the workspace: removing them, and making directories, without
recursion.

A workspace's processes can nest directories without end. The standard library goes down
such a tree by recursion, one call per level (`shutil.rmtree`, `os.makedirs`), and a request
would end in RecursionError; a path that deep is also longer than PATH_MAX, so what is below
it cannot be named by its full path. The walk (`treewalk`, the host's fs/treewalk.py shipped
beside these modules) goes by descriptor instead, one directory open at a time.
"""

from __future__ import annotations

import os

from treewalk import make_searchable, walk


def remove_tree(path: str) -> None:
    """Remove the directory `path` with everything below it, links not followed; a
    directory without permissions for its owner is opened up first (the workspace's user
    may make one). Raises on the first failure, as shutil.rmtree does."""

    def rmdir(parent_fd: int, name: str) -> None:
        os.rmdir(name, dir_fd=parent_fd)

    make_searchable(None, path)
    for here in walk(path, leave=rmdir):
        for name in here.others:
            os.unlink(name, dir_fd=here.fd)
        for name in here.dirs:
            make_searchable(here.fd, name)
    os.rmdir(path)


def makedirs(path: str) -> None:
    """os.makedirs(path, exist_ok=True), without its recursion (one call per missing level):
    creates the missing directories of `path`, top down; raises FileExistsError when `path`
    is something else than a directory."""
    missing: list[str] = []
    head = path
    while head and not os.path.exists(head):  # as os.makedirs: a dangling link is missing
        head, name = os.path.split(head)
        missing.append(name)
    if not missing:
        if not os.path.isdir(path):
            os.mkdir(path)  # raises FileExistsError, as os.makedirs does
        return
    for name in reversed(missing):
        head = os.path.join(head, name)
        try:
            os.mkdir(head)
        except FileExistsError:  # made meanwhile, by the workspace or another request
            if not os.path.isdir(head):
                raise

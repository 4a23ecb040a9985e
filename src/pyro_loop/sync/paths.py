"""Which host paths take part in sync: never `.git`, never `[sync] exclude`d paths, never
paths git ignores (unless git tracks them anyway)."""

from __future__ import annotations

import bisect
import contextlib
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pyro_loop import git
from pyro_loop.agent.protocol import HOME_DIR

if TYPE_CHECKING:
    import pygit2

# -- gitignore-style patterns ----------------------------------------------------------------


class ExcludeRules:
    """`[sync] exclude`: gitignore-style patterns, matched against paths relative to the root.

    Supported as in .gitignore: `#` comments, `!` negation, a trailing `/` for directories
    only, a leading or inner `/` anchoring to the root, `*`, `?`, `[...]` and `**`. A path
    inside an excluded directory is excluded (a negation cannot bring it back, as in git).
    """

    def __init__(self, patterns: Sequence[str]) -> None:
        self.rules: list[tuple[re.Pattern[str], bool, bool]] = []
        for raw in patterns:
            rule = compile_pattern(raw)
            if rule is not None:
                self.rules.append(rule)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def excluded(self, rel: str, *, is_dir: bool) -> bool:
        if not self.rules:
            return False
        parts = rel.split("/")
        for end in range(1, len(parts)):
            if self._match("/".join(parts[:end]), is_dir=True):
                return True
        return self._match(rel, is_dir=is_dir)

    def _match(self, rel: str, *, is_dir: bool) -> bool:
        result = False
        for regex, negate, dir_only in self.rules:
            if (is_dir or not dir_only) and regex.fullmatch(rel):
                result = not negate
        return result


def compile_pattern(raw: str) -> tuple[re.Pattern[str], bool, bool] | None:
    pattern = raw.strip()
    if not pattern or pattern.startswith("#"):
        return None
    negate = pattern.startswith("!")
    if negate or pattern.startswith("\\"):  # "\!" and "\#" match a literal first character
        pattern = pattern[1:]
    dir_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    if not pattern:
        return None
    anchored = "/" in pattern
    regex = ("" if anchored else "(?:.*/)?") + translate_glob(pattern.lstrip("/"))
    try:
        return re.compile(regex), negate, dir_only
    except re.error:
        return None  # a malformed class: git ignores such a pattern too


def translate_glob(pattern: str) -> str:
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            regex += "/.*"
            i += 3
        elif pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            regex += "[^/]"
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            regex += "[" + body.replace("\\", "\\\\").replace("[", "\\[") + "]"
            i = end + 1
        elif pattern[i] == "\\" and i + 1 < len(pattern):
            regex += re.escape(pattern[i + 1])
            i += 2
        else:
            regex += re.escape(pattern[i])
            i += 1
    return regex


# -- which host paths take part ---------------------------------------------------------------


def open_repository(root: Path) -> pygit2.Repository | None:
    """The git repository whose work tree contains `root`, or None."""
    repo = git.discover_repository(root)
    return repo if repo is not None and repo.workdir else None


class PathFilter:
    """Decides which host paths are synced: never `.git`, nor `[sync] exclude`d paths, nor
    paths git ignores (unless git tracks them anyway).

    `root` is the directory mirrored at /workspace: the work tree's top in a git repository.
    """

    def __init__(
        self, root: Path, exclude: Sequence[str] = (), *, repo: pygit2.Repository | None = None
    ) -> None:
        self.root = root
        self._prefix = str(root).rstrip("/") + "/"
        self.exclude = ExcludeRules(exclude)
        self.repo = repo
        self._ignored_dirs: dict[str, bool] = {}
        self._links: dict[str, bool] = {}
        self._links_ignored: dict[str, bool] = {}
        self._tracked_sorted: list[str] | None = None  # the index's paths, for tracked_below
        self._index: pygit2.Index | None = None

    @classmethod
    def for_root(cls, root: Path, exclude: Sequence[str] = ()) -> PathFilter:
        root = root.resolve()
        repo = open_repository(root)
        top = Path(repo.workdir).resolve() if repo is not None else root
        return cls(top, exclude, repo=repo)

    def refresh(self) -> None:
        """Forget cached answers: .gitignore files or the index may have changed."""
        self._ignored_dirs.clear()
        self._links.clear()
        self._links_ignored.clear()
        self._tracked_sorted = None
        self._index = None
        if self.repo is not None:
            with contextlib.suppress(Exception):
                self._index = self.repo.index
                self._index.read(False)  # re-read only if it changed on disk

    def scan_rules(self) -> tuple[Callable[[str], bool], Callable[[str], list[str]],
                                  Callable[[str], bool]]:  # fmt: skip
        """What a host scan (hostscan.HostScan.take) needs to know: is a directory synced,
        which files does git track below an ignored one, is a file excluded."""

        def wants_dir(rel: str) -> bool:
            return self.wants(rel, is_dir=True)

        def excluded(rel: str) -> bool:
            return self.exclude.excluded(rel, is_dir=False)

        return wants_dir, self.tracked_below, excluded

    def tracked_below(self, rel: str) -> list[str]:
        """The paths git tracks below directory `rel`, sorted: in a directory git ignores,
        the only ones that take part."""
        if self.repo is None:
            return []
        if self._tracked_sorted is None:
            self._tracked_sorted = sorted(entry.path for entry in self.repo.index)
        tracked = self._tracked_sorted
        start = bisect.bisect_left(tracked, rel + "/")
        end = bisect.bisect_left(tracked, rel + "0")  # "0" sorts right after "/"
        return tracked[start:end]

    def rel(self, path: Path | str) -> str | None:
        """`path` relative to the root as a POSIX string; None for the root or outside it."""
        text = os.path.normpath(os.fspath(path))
        if not text.startswith(self._prefix):
            return None
        return text[len(self._prefix) :]

    def __call__(self, path: Path | str) -> bool:
        """Should a change at `path` (absolute) be synced?"""
        rel = self.rel(path)
        return rel is not None and not self.through_symlink(rel) and self.wants(rel)

    def through_symlink(self, rel: str) -> bool:
        """Is one of `rel`'s parent directories a symlink on the host? The kernel follows
        those, a watcher may too (watchfiles does), but pyro never syncs through them: the
        link itself is what the workspace gets."""
        parts = rel.split("/")
        for end in range(1, len(parts)):
            parent = "/".join(parts[:end])
            link = self._links.get(parent)
            if link is None:
                link = self._links[parent] = os.path.islink(self._prefix + parent)
            if link:
                return True
        return False

    def wants(self, rel: str, *, is_dir: bool | None = None) -> bool:
        parts = rel.split("/")
        if ".git" in parts or parts[0] == HOME_DIR:  # the sandbox's home is no project file
            return False
        if is_dir is None:
            is_dir = os.path.isdir(self._prefix + rel) and not os.path.islink(self._prefix + rel)
        if self.exclude.excluded(rel, is_dir=is_dir):
            return False
        if self.repo is None:
            return True
        # A directory git ignores hides everything in it: answer from cached parents first.
        for end in range(1, len(parts)):
            if self._dir_ignored("/".join(parts[:end])):
                return self._tracked(rel)
        if is_dir:
            return not self._dir_ignored(rel)
        # A tracked file is synced whatever the ignore rules say; the index is asked first,
        # as the cheaper question (most of a full sync's candidates are tracked files).
        return self._tracked(rel) or not self._file_ignored(rel)

    def _file_ignored(self, rel: str) -> bool:
        """Is `rel` (not a directory: a file or a symlink) ignored?

        libgit2 stats the path, following a symlink, so a link to a directory matches a
        directory-only pattern (`build/` for a link named `build`); git itself looks at the
        link and does not. For such a link, git's own answer is asked for (rare enough that
        a process per link, cached, costs nothing in the loop).
        """
        if not self._ignored(rel):
            return False
        if not os.path.islink(self._prefix + rel) or not os.path.isdir(self._prefix + rel):
            return True
        cached = self._links_ignored.get(rel)
        if cached is None:
            cached = self._links_ignored[rel] = _git_check_ignore(self.root, rel)
        return cached

    def _dir_ignored(self, rel: str) -> bool:
        cached = self._ignored_dirs.get(rel)
        if cached is None:
            cached = self._ignored_dirs[rel] = self._ignored(rel + "/")
        return cached

    def _ignored(self, rel: str) -> bool:
        if self.repo is None:
            return False
        try:
            return bool(self.repo.path_is_ignored(rel))
        except Exception:  # a path libgit2 cannot represent: not ignored, so it is seen
            return False

    def _tracked(self, rel: str) -> bool:
        if self.repo is None:
            return False
        try:
            # The repository's one index, held from refresh to refresh: asking the repository
            # for it again costs more than the lookup, once per candidate of a sync.
            if self._index is None:
                self._index = self.repo.index
            return rel in self._index
        except Exception:
            return False


def _git_check_ignore(root: Path, rel: str) -> bool:
    """git's own verdict on `rel`; True (ignored, libgit2's answer) if git cannot tell."""
    import subprocess

    try:
        done = git.run_git(["check-ignore", "-q", "--", rel], cwd=root, timeout=30)
    except (OSError, subprocess.TimeoutExpired, git.GitMissingError):
        return True
    return done.returncode != 1  # 0: ignored, 1: not ignored, 128: an error

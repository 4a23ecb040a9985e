"""Every git operation pyro does goes through here.

Three ways in, from cheapest to dearest:
- plain file reading (where the repository is, its HEAD commit, its format): on the path of
  every daily command and of the keep-warm hook, so it loads no git library;
- pygit2, typed, for real git work (trees, status, ignore rules): `open_repository`;
- git itself, for what only git does the way the user expects (`write-tree` from a given
  index, `add -A` into a scratch index, `apply`, `check-ignore`, the user's configuration):
  `run_git`, always with git's own variables scrubbed from the environment.

A repository in a format pyro cannot read (reftable refs, SHA-256 object names, an extension
libgit2 refuses) is refused with one line that says so, before anything reads it: reading
such a repository by hand would silently find no commits.

It sits with the shared basics, not in `project/`, because the workspace layer applies
patches with git too, and a layer never imports from one above it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pyro_loop.errors import InvalidInputError, PyroError

if TYPE_CHECKING:  # pygit2 is loaded when a repository is opened, not on every command's path
    import subprocess

    import pygit2

# git's own numbers (the same in every git and libgit2), so callers compare file modes and
# status flags without loading pygit2; tests/test_git.py checks them against pygit2's.
MODE_TREE = 0o040000
MODE_BLOB = 0o100644
MODE_EXECUTABLE = 0o100755
MODE_LINK = 0o120000
MODE_SUBMODULE = 0o160000
STATUS_IGNORED = 1 << 14
DELTA_DELETED = 2


class UnsupportedRepositoryError(InvalidInputError):
    """A repository stored in a format pyro cannot read (refused before it is read)."""


class GitMissingError(PyroError):
    """git itself is needed and is not installed on the host."""


# -- the environment -------------------------------------------------------------------------

# Inside a hook, git exports GIT_DIR, GIT_INDEX_FILE, GIT_PREFIX (and in worktrees GIT_DIR
# points at the worktree's git dir). A git command pyro runs from there, or a prepare it starts
# for later, would otherwise act on whatever repository and index those name, not on the one
# it is given. Variables about how to reach remotes and which configuration to read say
# nothing about the repository, and stay.
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


# -- git itself ------------------------------------------------------------------------------


def run_git(
    args: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `git *args` in `cwd` and capture its output; the caller reads the exit status.

    The environment is `env` (else this process's) without git's repository variables,
    plus `extra` (set after the scrub: an index file, an identity, a ceiling directory).
    """
    import subprocess

    git = _which("git")
    if git is None:
        raise GitMissingError("this needs git on the host", hint="apt-get install git")
    clean = without_git_env(os.environ if env is None else env)
    clean.update(extra or {})
    return subprocess.run(
        [git, *args], cwd=cwd, env=clean, capture_output=True, text=True, check=False,
        timeout=timeout,
    )  # fmt: skip


def git_output(
    args: Sequence[str],
    *,
    cwd: Path,
    what: str,
    env: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
    silent_failure: str = "git failed",
) -> str:
    """`run_git`'s standard output, stripped; a failure is one line: "cannot <what>: why"
    (git's last line of complaint, or `silent_failure` when it said nothing)."""
    result = run_git(args, cwd=cwd, env=env, extra=extra)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or [silent_failure])[-1]
        raise InvalidInputError(f"cannot {what}: {reason}")
    return result.stdout.strip()


def config_value(work_tree: Path, git_dir: Path, key: str) -> str | None:
    """The value git gives `key` (e.g. "core.hooksPath") in this repository, or None.

    git itself answers, not libgit2: git also reads `git -c` settings handed down in the
    environment (GIT_CONFIG_COUNT) and GIT_CONFIG_GLOBAL, which libgit2 ignores. Starting git
    costs far more than reading its configuration files, and they rarely mention the key
    (`pyro status` asks every time): git is asked only when one of them might.
    """
    if not _may_set(git_dir, key.rpartition(".")[2].lower().encode()):
        return None
    result = run_git(["config", "--get", key], cwd=work_tree)
    value = result.stdout.strip()
    return value if result.returncode == 0 and value else None


def _may_set(git_dir: Path, name: bytes) -> bool:
    """Could a configuration file git reads set a key called `name`? Whatever cannot be
    read, includes another file or comes from the environment might."""
    if "GIT_CONFIG_COUNT" in os.environ:
        return True
    home = os.path.expanduser("~")
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    files = [os.environ.get("GIT_CONFIG_GLOBAL") or os.path.join(home, ".gitconfig"),
             os.path.join(xdg, "git", "config"),
             str(common_dir(git_dir) / "config"),
             str(git_dir / "config.worktree")]  # fmt: skip
    if not os.environ.get("GIT_CONFIG_NOSYSTEM"):
        git = _which("git")
        prefix = os.path.dirname(os.path.dirname(git)) if git else "/usr"
        files += [os.environ.get("GIT_CONFIG_SYSTEM") or "/etc/gitconfig",
                  os.path.join(prefix, "etc", "gitconfig")]  # fmt: skip
    for path in files:
        try:
            with open(path, "rb") as f:
                text = f.read().lower()
        except FileNotFoundError:
            continue
        except OSError:
            return True
        if name in text or b"include" in text:
            return True
    return False


def _which(program: str) -> str | None:
    """shutil.which without shutil (it loads three compression modules; `pyro status` asks)."""
    for directory in os.get_exec_path():
        path = os.path.join(directory, program)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


# -- plain file reading ----------------------------------------------------------------------


def find_repository(start: Path) -> tuple[Path | None, Path | None]:
    """(work tree, git dir) of the repository containing directory `start`, or (None, None).
    A worktree or submodule has a `.git` file naming its git dir ("gitdir: <path>")."""
    for directory in [start, *start.parents]:
        dot_git = directory / ".git"
        if dot_git.is_dir():
            return directory, dot_git
        if dot_git.is_file():
            text = dot_git.read_text().strip()
            if text.startswith("gitdir:"):
                target = Path(text.partition(":")[2].strip())
                return directory, (directory / target).resolve()
    return None, None


def common_dir(git_dir: Path) -> Path:
    """The directory a worktree shares with its main repository (refs, objects, hooks)."""
    common = _read(git_dir / "commondir")
    return (git_dir / common).resolve() if common else git_dir


def check_format(git_dir: Path) -> None:
    """Raise `UnsupportedRepositoryError` unless pyro can read this repository's refs and
    objects. git declares the format in the shared config file's `core.repositoryformatversion`
    and `[extensions]` (and reads it from that file alone, includes aside)."""
    _check_format(git_dir, common_dir(git_dir))


def _check_format(git_dir: Path, common: Path) -> None:
    path = common / "config"
    try:
        info = os.stat(path)
    except OSError:
        return  # no config: a repository git itself would treat as format 0
    # Asked on every daily command, several times: a config file already found readable is
    # not read again while it stays the same file (git replaces it on each change: a rename).
    seen = (info.st_ino, info.st_size, info.st_mtime_ns)
    if _READABLE.get(path) == seen:
        return
    version, extensions = _format_of(_read(path) or "")
    _refuse(git_dir, version, extensions)
    _READABLE[path] = seen


_READABLE: dict[Path, tuple[int, int, int]] = {}  # config files found readable, by identity


def _refuse(git_dir: Path, version: int, extensions: dict[str, str]) -> None:
    """Raise `UnsupportedRepositoryError` for a format pyro cannot read."""
    where = _describe(git_dir)
    if version > 1:
        raise UnsupportedRepositoryError(
            f"{where} has repository format version {version}, which pyro cannot read",
            hint="pyro reads repositories of format version 0 and 1",
        )
    if version == 0:
        return  # git ignores extensions in a version 0 repository, and so does libgit2
    for name, value in extensions.items():
        if name == "refstorage" and value.lower() == "reftable":
            raise UnsupportedRepositoryError(
                f"{where} stores its refs as reftable, which pyro cannot read yet",
                hint="convert it: `git refs migrate --ref-format=files` (git 2.46 or later)",
            )
        if name == "objectformat" and value.lower() != "sha1":
            raise UnsupportedRepositoryError(
                f"{where} names its objects with {value.upper()}, which pyro cannot read yet",
                hint="pyro reads SHA-1 repositories (clone the project into one)",
            )
        if name not in _READABLE_EXTENSIONS:
            raise UnsupportedRepositoryError(
                f"{where} uses git's repository extension {name!r}, which pyro cannot read",
                hint="pyro reads repositories that need none of "
                "refStorage, partialClone, compatObjectFormat or newer extensions",
            )


# What libgit2 opens in a version 1 repository (objectformat only as sha1, checked above).
_READABLE_EXTENSIONS = frozenset({"noop", "preciousobjects", "worktreeconfig", "objectformat"})


def _format_of(config: str) -> tuple[int, dict[str, str]]:
    """(core.repositoryformatversion, {extension: value}) from a git config file's text."""
    version = 0
    extensions: dict[str, str] = {}
    section = ""
    for raw in config.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            header, _, rest = line[1:].partition("]")
            section = header.strip().lower()
            line = rest.strip()  # git allows "[core] bare = false" on one line
            if not line:
                continue
        key, eq, value = line.partition("=")
        key = key.strip().lower()
        value = _config_value(value) if eq else "true"  # a bare key is a boolean true
        if section == "core" and key == "repositoryformatversion":
            try:
                version = int(value)
            except ValueError:
                version = 2  # unreadable: refused as a format pyro does not know
        elif section == "extensions":
            extensions[key] = value
    return version, extensions


def _config_value(text: str) -> str:
    value = text.strip()
    for mark in ("#", ";"):  # a comment after the value (outside quotes: values here have none)
        if mark in value and '"' not in value:
            value = value.partition(mark)[0].strip()
    return value.strip('"')


def head_commit(git_dir: Path) -> str | None:
    """HEAD's commit id, read from the git dir without loading a git library; None if unborn.
    Refuses a format it cannot read (`check_format`) rather than reporting no commit."""
    common = common_dir(git_dir)
    _check_format(git_dir, common)
    head = _read(git_dir / "HEAD")
    for _ in range(5):  # a symbolic ref may name another one (git follows up to 5)
        if head is None:
            return None
        if not head.startswith("ref:"):
            return head if _is_oid(head) else None
        head = _ref(git_dir, common, head.partition(":")[2].strip())
    return None


def _ref(git_dir: Path, common: Path, ref: str) -> str | None:
    """The content of loose ref `ref` (an id or "ref: ..."), else its packed value."""
    for base in (git_dir, common):
        value = _read(base / ref)
        if value is not None:
            return value
    for line in (_read(common / "packed-refs") or "").splitlines():
        oid, _, name = line.partition(" ")
        if name == ref and _is_oid(oid):
            return oid
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _is_oid(text: str) -> bool:
    return len(text) == 40 and all(c in "0123456789abcdef" for c in text)


def _describe(git_dir: Path) -> str:
    """The repository as its user knows it: the work tree for `<tree>/.git`."""
    return str(git_dir.parent if git_dir.name == ".git" else git_dir)


# -- pygit2 ----------------------------------------------------------------------------------


def open_repository(git_dir: Path) -> pygit2.Repository:
    """The repository at `git_dir`, once its format is known to be readable."""
    import pygit2

    check_format(git_dir)
    try:
        return pygit2.Repository(str(git_dir))
    except pygit2.GitError as exc:
        where = _describe(git_dir)
        raise InvalidInputError(f"cannot open the git repository {where}: {exc}") from None


def discover_repository(path: Path) -> pygit2.Repository | None:
    """The repository containing `path` (searching upwards, as git does), or None."""
    import pygit2

    try:
        found = pygit2.discover_repository(str(path))
    except pygit2.GitError as exc:
        raise InvalidInputError(f"cannot open the git repository of {path}: {exc}") from None
    return open_repository(Path(found)) if found else None


def scratch_repository(path: Path) -> pygit2.Repository:
    """A new empty repository at `path`, to ask git's rules about files that are not in one."""
    import pygit2

    return pygit2.init_repository(str(path))


def describe_head(path: Path) -> tuple[str | None, int, str] | None:
    """(nearest tag, commits since it, HEAD's short hash) of the repository containing
    `path`, as `git describe --tags --long` gives them; the tag is None when no tag is
    reachable; None for no repository or no commits."""
    import pygit2
    from pygit2.enums import DescribeStrategy

    repo = discover_repository(path)
    if repo is None or repo.head_is_unborn:
        return None
    short = str(repo.head.target)[:7]
    try:
        described = repo.describe(
            describe_strategy=DescribeStrategy.TAGS, always_use_long_format=True,
            abbreviated_size=7,
        )  # fmt: skip
    except (pygit2.GitError, KeyError):  # no tag reachable from HEAD
        return None, 0, short
    tag, distance, _hash = described.rsplit("-", 2)
    return tag, int(distance), short


def head_tree_id(repo: pygit2.Repository) -> str | None:
    """The tree id of HEAD's commit, or None for a repository with no commits yet."""
    return None if repo.head_is_unborn else str(repo.head.peel(_tree_type()).id)


def head_tree(repo: pygit2.Repository) -> pygit2.Tree | None:
    return None if repo.head_is_unborn else repo.head.peel(_tree_type())


def tree(repo: pygit2.Repository, tree_id: str) -> pygit2.Tree | None:
    """Tree `tree_id` (or the tree of commit `tree_id`), None if the repository has neither."""
    import pygit2

    try:
        return repo[tree_id].peel(pygit2.Tree)
    except (KeyError, ValueError, pygit2.GitError):
        return None


def as_tree(obj: pygit2.Object) -> pygit2.Tree:
    """A tree's entry that is itself a tree (its filemode says so), typed as one."""
    import pygit2

    assert isinstance(obj, pygit2.Tree), obj
    return obj


def blob_data(repo: pygit2.Repository, oid: str | pygit2.Oid) -> bytes:
    return _blob(repo, oid).data


def tree_file(repo: pygit2.Repository, tree_id: str, rel: str) -> bytes | None:
    """The content of file `rel` in tree `tree_id`, or None if it has no such file."""
    import pygit2

    try:
        entry = repo[tree_id].peel(pygit2.Tree)[rel]
    except KeyError:
        return None
    obj = repo[entry.id]
    return obj.data if isinstance(obj, pygit2.Blob) else None


def _blob(repo: pygit2.Repository, oid: str | pygit2.Oid) -> pygit2.Blob:
    import pygit2

    obj = repo[oid]
    if not isinstance(obj, pygit2.Blob):
        raise InvalidInputError(f"git object {oid} is a {obj.type_str}, not a file's content")
    return obj


def _tree_type() -> type[pygit2.Tree]:
    import pygit2

    return pygit2.Tree

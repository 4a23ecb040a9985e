"""Which package managers a project uses, and how to install its dependencies.

Detection goes by file names: a lock file (or manifest) names the ecosystem, the files that
key the dependency snapshot, and the command that installs exactly what they pin. The commands
run from /workspace, so those of a subdirectory start with `cd <dir> && `. A symlink counts by
its name too; the few files whose text shapes a command (requirements' lines naming the
project, package.json's install scripts) are read beneath the root, never through a link that
leaves it (`Beneath.open_following`), as the keying files are in loop/prepare.py.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from pyro_loop.fs.beneath import Beneath
from pyro_loop.project.repofiles import read_json, read_text, read_toml, table
from pyro_loop.records import dataclass, replace

if TYPE_CHECKING:
    from pyro_loop.project.config import ProjectConfig
    from pyro_loop.shapes import EcosystemJSON

# Dependencies, build output and tool state: never project roots, and often huge to walk.
SKIP_DIRS = frozenset(
    {".git", "node_modules", ".venv", "venv", "vendor", "target", "dist", "build"}
)
MAX_DEPTH = 2  # the root is depth 0: "services/api" is as deep as a monorepo scan goes


@dataclass(frozen=True)
class Ecosystem:
    name: str
    directory: str  # relative to the root, "/"-separated; "." for the root itself
    keys: tuple[str, ...]  # files relative to the root
    run: tuple[str, ...]  # shell command lines run from /workspace
    # Installing the project itself (see loop/prepare.py): its commands, and the metadata files
    # that key it (relative to the root).
    project: tuple[str, ...] = ()
    project_keys: tuple[str, ...] = ()
    # False for a manifest with no lock: the install takes the newest versions it allows.
    locked: bool = True

    def to_json(self) -> EcosystemJSON:
        return {
            "name": self.name,
            "directory": self.directory,
            "keys": list(self.keys),
            "run": list(self.run),
            "project": list(self.project),
            "project_keys": list(self.project_keys),
        }


@dataclass(frozen=True)
class _Rule:
    name: str
    triggers: tuple[str, ...]  # any of these files present: this ecosystem is used here
    keys: tuple[str, ...]  # those present key the snapshot
    run: str
    project: str = ""  # installs the project itself, once its sources are there


# The files a project's own install reads (its name, entry points, package layout): a change
# to one of them redoes that install; a source edit never does.
PYTHON_PROJECT_FILES = ("pyproject.toml", "setup.cfg", "setup.py")
NODE_PROJECT_FILES = ("package.json",)
# npm runs these scripts of the root package after installing, and they usually build the
# project from its sources (absent while dependencies install): they run with the project.
NPM_ROOT_SCRIPTS = ("preinstall", "install", "postinstall", "prepare")

# The installers' settings files are keys too (beside the manifests and locks): they change
# what an install writes (yarn's cacheKey and nodeLinker, a registry, pnpm's workspace list),
# and the install runs with the keying files alone.

# cargo refuses a manifest without a target ("no targets specified"), and the install runs
# with the keying files alone: each manifest whose src/lib.rs and src/main.rs are absent gets
# an empty src/lib.rs while `cargo fetch` runs, removed after (so no trace in the layer).
CARGO_FETCH = (
    "( stubs=$(find . -name Cargo.toml -not -path '*/target/*' | while read -r m; do"
    ' d=${m%/Cargo.toml}; [ -e "$d/src/lib.rs" ] || [ -e "$d/src/main.rs" ] || echo "$d"; done);'
    ' for d in $stubs; do mkdir -p "$d/src" && : > "$d/src/lib.rs"; done;'
    " cargo fetch; s=$?;"
    ' for d in $stubs; do rm -f "$d/src/lib.rs"; rmdir "$d/src"; done; exit $s )'
)

# A lock file pins exactly what to install, so it is what detection looks for; cargo and go
# pin well enough from their manifests (and libraries often commit no lock file). The
# dependency commands leave the project itself out (its build needs its sources, which the
# dependency snapshot is not keyed on); the project commands install it, editable.
RULES = (
    _Rule("uv", ("uv.lock",), ("uv.lock", "pyproject.toml"),
          "uv sync --frozen --no-install-workspace", "uv sync --frozen"),
    _Rule("poetry", ("poetry.lock",), ("poetry.lock", "pyproject.toml"),
          "poetry install --no-root --no-interaction",
          "poetry install --only-root --no-interaction"),
    _Rule("pipenv", ("Pipfile.lock",), ("Pipfile", "Pipfile.lock"), "pipenv sync"),
    _Rule("npm", ("package-lock.json",), ("package.json", "package-lock.json", ".npmrc"),
          "npm ci"),
    _Rule("pnpm", ("pnpm-lock.yaml",),
          ("package.json", "pnpm-lock.yaml", ".npmrc", "pnpm-workspace.yaml", ".pnpmfile.cjs"),
          "pnpm install --frozen-lockfile"),
    _Rule("yarn", ("yarn.lock",), ("package.json", "yarn.lock", ".yarnrc.yml", ".yarnrc", ".npmrc"),
          "yarn install --frozen-lockfile"),
    _Rule("cargo", ("Cargo.lock", "Cargo.toml"), ("Cargo.toml", "Cargo.lock"), CARGO_FETCH),
    _Rule("go", ("go.sum", "go.mod"), ("go.mod", "go.sum"), "go mod download"),
)  # fmt: skip
# With one of these in the same directory, requirements files are exports or extras of the lock,
# and installing them with pip on top would fight the lock's own environment.
PYTHON_LOCKS = frozenset({"uv", "poetry", "pipenv"})
NODE_MANAGERS = frozenset({"npm", "pnpm", "yarn"})


def detect_ecosystems(root: Path) -> list[Ecosystem]:
    """The ecosystems used at `root` and its subdirectories (to depth 2), by directory then name."""
    found: list[Ecosystem] = []
    cargo_roots: list[PurePosixPath] = []
    python_roots: list[PurePosixPath] = []  # where a Python ecosystem was found
    node_roots: list[PurePosixPath] = []  # where a JS one was: below, a workspace's members
    for rel, files in _walk(root):
        here = [r for r in RULES if any(t in files for t in r.triggers)]
        if any(r.name == "cargo" for r in here):
            # A manifest without its own lock below a cargo project is a workspace member: the
            # root's `cargo fetch` covers it, but its manifest still keys the snapshot.
            parent = next((c for c in cargo_roots if c in rel.parents), None)
            if parent is None or "Cargo.lock" in files:
                cargo_roots.append(rel)
            else:
                found = [_with_key(e, str(rel / "Cargo.toml"), parent) for e in found]
                here = [r for r in here if r.name != "cargo"]
        for rule in here:
            keys = [k for k in rule.keys if k in files]
            run, project = [rule.run], [rule.project] if rule.project else []
            if rule.name in NODE_MANAGERS:
                run, project, more_keys = _node_commands(root, rel, rule.name, rule.run)
                keys += more_keys
            found.append(_ecosystem(rule.name, rel, keys, run, project=project, files=files))
        node = any(r.name in NODE_MANAGERS for r in here)
        if not node and "package.json" in files and not _below(rel, node_roots):
            found.append(_unlocked_node(root, rel, files))
            node = True
        if node:
            node_roots.append(rel)
        locked = any(r.name in PYTHON_LOCKS for r in here)
        unlocked = _unlocked_python(root, rel, files, locked=locked, python_roots=python_roots)
        found.extend(unlocked)
        if unlocked or locked:
            python_roots.append(rel)
    return sorted(found, key=lambda e: (PurePosixPath(e.directory).parts, e.name))


def _unlocked_python(
    root: Path,
    rel: PurePosixPath,
    files: set[str],
    *,
    locked: bool,
    python_roots: list[PurePosixPath],
) -> list[Ecosystem]:
    """A Python project at `rel` that no lock of uv, poetry or pipenv pins: its requirements
    files, else its pyproject.toml (unless a Python project above holds it)."""
    if locked:
        return []
    # requirements.txt first: the others (-dev, -test) usually build on it.
    requirements = sorted(
        (f for f in files if f.startswith("requirements") and f.endswith(".txt")),
        key=lambda f: (f != "requirements.txt", f),
    )
    if requirements and not _auxiliary(rel, files, python_roots):
        run, project = _pip_commands(root, rel, requirements)
        return [_ecosystem("pip", rel, requirements, run, project=project, files=files)]
    if requirements or "pyproject.toml" not in files:
        return []
    if _below(rel, python_roots):
        return []
    found = _pyproject_ecosystem(root, rel, files)
    return [found] if found is not None else []


# Directories whose requirements build the documentation (Read the Docs' convention), never
# what the project's checks run with.
DOCS_DIRS = frozenset({"docs", "doc"})


def _auxiliary(rel: PurePosixPath, files: set[str], python_roots: list[PurePosixPath]) -> bool:
    """Requirements files that are not a Python project of their own: in a directory without
    a project file, below a Python project (its docs, benchmarks or CI extras) or named for
    the documentation. Installing them would make a second virtualenv the checks never use."""
    if any(f in files for f in PYTHON_PROJECT_FILES):
        return False
    return rel.name in DOCS_DIRS or any(p in rel.parents for p in python_roots)


# A requirement line that names a directory of the project (`-e .`, `-e .[test]`, `./sub`):
# pip builds the project for it, from sources the dependency install does not have.
LOCAL_REQUIREMENT = (
    r"^[[:space:]]*(-e|--editable)?[[:space:]]*\.\.?(/[^[:space:]]*)?(\[.*\])?[[:space:]]*$"
)
DEPS_COPY = "/tmp/pyro-deps"  # in the sandbox: the requirements files without those lines


def _pip_commands(
    root: Path, rel: PurePosixPath, requirements: list[str]
) -> tuple[list[str], list[str]]:
    """The commands for requirements files: one install; or, when a file names the project
    itself, its dependencies first (copies of the files without those lines), then all of
    it again with the sources there (pip skips what is installed already)."""
    venv = "python3 -m venv .venv"
    local = any(_local_lines(root, str(rel / name)) for name in requirements)
    files = " ".join(f"-r {shlex.quote(f)}" for f in requirements)
    if not local:
        return [f"{venv} && .venv/bin/pip install {files}"], []
    # The copies keep their names, so `-r requirements.txt` inside one finds its copy.
    names = " ".join(shlex.quote(f) for f in requirements)
    strip = (
        f"mkdir -p {DEPS_COPY} && for f in {names}; do "
        f'sed -E \'\\#{LOCAL_REQUIREMENT}#d\' "$f" > {DEPS_COPY}/"$f"; done'
    )
    copies = " ".join(f"-r {DEPS_COPY}/{shlex.quote(f)}" for f in requirements)
    return (
        [f"{strip} && {venv} && .venv/bin/pip install {copies}"],
        [f".venv/bin/pip install {files}"],
    )


# The dependency group and the extra a project's tests install, by their usual names.
TEST_SETS = ("test", "tests", "testing", "dev")


def _pyproject_ecosystem(root: Path, rel: PurePosixPath, files: set[str]) -> Ecosystem | None:
    """A Python project that declares itself in pyproject.toml (PEP 621) and locks nothing:
    uv installs its declared dependencies, with the dependency group and the extra its tests
    use, into .venv; then the project itself, editable. Without a lock the versions are
    whatever the index has when prepare runs; `pyro init` says so. Dependencies the build
    backend computes (`dynamic`) come with the project, which needs its sources."""
    pyproject = read_toml(root, str(rel / "pyproject.toml"))
    project = table(pyproject, "project")
    if not isinstance(project.get("name"), str):
        return None
    groups, extras = pyproject.get("dependency-groups"), project.get("optional-dependencies")
    group = next((g for g in TEST_SETS if isinstance(groups, dict) and g in groups), None)
    extra = next((e for e in TEST_SETS if isinstance(extras, dict) and e in extras), None)
    with_group = f" --group {group}" if group else ""
    dynamic = project.get("dynamic")
    if isinstance(dynamic, list) and "dependencies" in dynamic:
        run = [f"uv venv .venv{' && uv pip install' + with_group if group else ''}"]
        project_install = f"uv pip install -e {shlex.quote(f'.[{extra}]' if extra else '.')}"
    else:
        with_extra = f" --extra {extra}" if extra else ""
        run = [f"uv venv .venv && uv pip install -r pyproject.toml{with_extra}{with_group}"]
        project_install = "uv pip install --no-deps -e ."
    eco = _ecosystem(
        "pyproject", rel, ["pyproject.toml"], run, project=[project_install], files=files
    )
    return replace(eco, locked=False)


def _local_lines(root: Path, rel: str) -> list[str]:
    import re

    pattern = re.compile(LOCAL_REQUIREMENT.replace("[[:space:]]", r"\s"))
    return [line for line in read_text(root, rel).splitlines() if pattern.match(line)]


def _workspace_members(root: Path, rel: PurePosixPath, manager: str) -> list[str]:
    """The package.json of each member of a JS workspace at `rel` (pnpm-workspace.yaml's
    `packages`, package.json's `workspaces`), relative to `rel`; members reached through a
    symlink, or under node_modules, are left out."""
    base = root / rel
    members = set()
    for pattern in _workspace_patterns(root, rel, manager):
        path = PurePosixPath(pattern.rstrip("/"))
        if pattern.startswith("!") or path.is_absolute() or ".." in path.parts:
            continue
        for match in base.glob(f"{path}/package.json"):
            member = match.relative_to(base)
            inside = [base / p for p in member.parents if str(p) != "."]
            if "node_modules" in member.parts or any(p.is_symlink() for p in [*inside, match]):
                continue
            if match.is_file():
                members.add(member.as_posix())
    return sorted(members)


def _workspace_patterns(root: Path, rel: PurePosixPath, manager: str) -> list[str]:
    import re

    if manager == "pnpm":
        patterns, listing = [], False
        for line in read_text(root, str(rel / "pnpm-workspace.yaml")).splitlines():
            item = re.match(r"\s+-\s*[\"']?([^\"'#\s]+)", line)
            if listing and item:
                patterns.append(item[1])
            elif line.strip() and not line.lstrip().startswith("#"):
                listing = re.match(r"packages:\s*$", line) is not None
        return patterns
    declared = read_json(root, str(rel / "package.json")).get("workspaces")
    if isinstance(declared, dict):
        declared = declared.get("packages")
    return [p for p in declared if isinstance(p, str)] if isinstance(declared, list) else []


def _yarnrc_files(root: Path, rel: PurePosixPath) -> list[str]:
    """The files .yarnrc.yml points at (`yarnPath`, plugins' `path`), relative to `rel`:
    those that stay inside the directory's tree and exist."""
    import re

    text = read_text(root, str(rel / ".yarnrc.yml"))
    found = []
    for value in re.findall(r"^\s*-?\s*(?:yarnPath|path):\s*[\"']?([^\"'\s#]+)", text, re.M):
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts:
            continue
        if (root / rel / path).is_file() and not (root / rel / path).is_symlink():
            found.append(str(path))
    return found


# A throwaway repository for the hook installers to write into, removed after the install (so
# nothing of it is in the layer): without one, lefthook and simple-git-hooks fail the install.
WITH_THROWAWAY_GIT = "(git init -q 2>/dev/null; {install}; s=$?; rm -rf .git; exit $s)"


def _node_commands(
    root: Path, rel: PurePosixPath, manager: str, install: str
) -> tuple[list[str], list[str], list[str]]:
    """([prepare] run, [prepare] project, keys beside the rule's) for a JS project: the root
    package's install scripts (NPM_ROOT_SCRIPTS) usually build it from its sources, which
    the dependency install does not have, so they wait for the project's install; scripts
    that only install git hooks get a throwaway repository instead."""
    scripts = _root_scripts(root, str(rel / "package.json"))
    hooks_only = bool(scripts) and all(map(_installs_git_hooks, scripts))
    run, project, keys = [install], [], []
    if manager == "npm" and hooks_only:
        # The dependencies' own install scripts still run (npm rebuild), the root's do not.
        run = [f"{install} --ignore-scripts && npm rebuild"]
    elif manager == "npm" and scripts:
        run = [f"{install} --ignore-scripts"]
        project = ["npm rebuild && npm run --if-present prepare"]
    elif manager == "pnpm" and scripts and not hooks_only:
        # pnpm rebuild runs the dependencies' build scripts and then the root's.
        run = ["pnpm install --frozen-lockfile --ignore-scripts"]
        project = ["pnpm rebuild"]
    if manager == "yarn" and "__metadata:" in read_text(root, str(rel / "yarn.lock"), 4096):
        # yarn 2 and later: --frozen-lockfile is yarn 1's spelling; the release and plugins
        # that .yarnrc.yml names run the install, so they key it too.
        run = ["yarn install --immutable"]
        keys += _yarnrc_files(root, rel)
    if manager in ("pnpm", "yarn") and hooks_only:
        run = [WITH_THROWAWAY_GIT.format(install=run[0])]
    # A JS workspace installs its members' dependencies too, from their manifests.
    keys += _workspace_members(root, rel, manager)
    return run, project, keys


def _below(rel: PurePosixPath, roots: list[PurePosixPath]) -> bool:
    """`rel` is one of `roots` or inside one."""
    return any(r == rel or r in rel.parents for r in roots)


def _unlocked_node(root: Path, rel: PurePosixPath, files: set[str]) -> Ecosystem:
    """A package.json with no lock beside it (many libraries commit none, some say so in
    .npmrc with package-lock=false): npm installs the newest versions it allows, writing
    no lock into the workspace."""
    run, project, keys = _node_commands(root, rel, "npm", "npm install --no-package-lock")
    keys = ["package.json", *(f for f in (".npmrc",) if f in files), *keys]
    eco = _ecosystem("npm", rel, keys, run, project=project, files=files)
    return replace(eco, locked=False)


def _root_scripts(root: Path, rel: str) -> list[str]:
    """The package's scripts that npm runs after installing it (NPM_ROOT_SCRIPTS)."""
    scripts = table(read_json(root, rel), "scripts")
    return [str(scripts[name]) for name in NPM_ROOT_SCRIPTS if name in scripts]


# A script that only installs the repository's git hooks (`husky`, `lefthook install`,
# `simple-git-hooks`, `is-ci || husky install`, ...): it builds nothing, and lefthook and
# simple-git-hooks fail where there is no .git, as in a sandbox (whose commands never commit).
_HOOK_STEP = (
    r"(npx\s+|pnpm\s+(exec\s+)?|yarn\s+)?"
    r"(husky(\s+install)?(\s+[\w./-]+)?|lefthook\s+install(\s+-f)?|simple-git-hooks|is-ci"
    r"|git\s+config\s+core\.hooks[Pp]ath\s+[\w./-]+)"
    r"|true|exit\s+0|"
)


def _installs_git_hooks(script: str) -> bool:
    import re

    step = re.compile(rf"\s*(?:{_HOOK_STEP})\s*")
    return all(step.fullmatch(s) for s in re.split(r"&&|\|\||;", script))


def keying_files(root: Path, config: ProjectConfig) -> list[str]:
    """The files that key the dependency snapshot: the configured ones, else those detected.

    Sorted, so that the snapshot's key never depends on the order they are listed in.
    """
    if config.prepare_keys is not None:
        return sorted(set(config.prepare_keys))
    return sorted({key for e in detect_ecosystems(root) for key in e.keys})


def _ecosystem(
    name: str,
    rel: PurePosixPath,
    keys: list[str],
    run: list[str],
    *,
    project: list[str] | None = None,
    files: set[str] | None = None,
) -> Ecosystem:
    directory = str(rel)
    prefix = "" if directory == "." else f"cd {shlex.quote(directory)} && "
    metadata = NODE_PROJECT_FILES if name in ("npm", "pnpm", "yarn") else PYTHON_PROJECT_FILES
    return Ecosystem(
        name=name,
        directory=directory,
        keys=tuple(str(rel / k) for k in keys),
        run=tuple(prefix + command for command in run),
        project=tuple(prefix + command for command in project or ()),
        project_keys=tuple(str(rel / f) for f in metadata if f in (files or ())) if project else (),
    )


def project_files(root: Path) -> list[str]:
    """The metadata files that key the project's own install: those of the root and of each
    directory where an ecosystem is detected."""
    directories = {"."} | {e.directory for e in detect_ecosystems(root)}
    found = set()
    for directory in directories:
        for name in (*PYTHON_PROJECT_FILES, *NODE_PROJECT_FILES):
            rel = name if directory == "." else f"{directory}/{name}"
            if (root / rel).is_file() and not (root / rel).is_symlink():
                found.add(rel)
    return sorted(found)


def _with_key(eco: Ecosystem, key: str, directory: PurePosixPath) -> Ecosystem:
    if eco.name != "cargo" or eco.directory != str(directory):
        return eco
    return Ecosystem(
        eco.name, eco.directory, (*eco.keys, key), eco.run, eco.project, eco.project_keys
    )


# The last walk of each root, with the stat data of the directories it listed: a listing
# changes only with its directory's times (creating, removing or renaming an entry in it),
# so while they all hold, so does the walk (a long-lived caller, the MCP server or the
# benchmarks, creates workspaces without listing the tree each time).
_WALKS: dict[str, tuple[list[tuple[int, int, int, int]], list[tuple[PurePosixPath, set[str]]]]] = {}
# A directory changed this close to the walk may change again within the same timestamp tick,
# its times unchanged (git's "racy" case): such a walk is not kept.
RACY_NS = 50_000_000


def _walk(root: Path) -> list[tuple[PurePosixPath, set[str]]]:
    """(directory relative to root, names of the regular files in it), breadth first.

    Symlinked directories are not followed: they may point outside the project, or loop.
    """
    import time

    kept = _WALKS.get(str(root))
    if kept is not None and _dir_stats(root, kept[1]) == kept[0]:
        return kept[1]
    started = time.time_ns()
    out, complete = _walk_tree(root)
    stats = _dir_stats(root, out)
    if complete and stats and max(max(st[2], st[3]) for st in stats) < started - RACY_NS:
        _WALKS[str(root)] = (stats, out)
    else:
        _WALKS.pop(str(root), None)
    return out


def _dir_stats(
    root: Path, walked: list[tuple[PurePosixPath, set[str]]]
) -> list[tuple[int, int, int, int]]:
    """(mode, inode, mtime, ctime) of every directory a walk listed (all zero for one gone)."""
    found = []
    base = str(root)
    for rel, _files in walked:
        try:
            st = os.lstat(f"{base}/{rel}")
        except OSError:
            found.append((0, 0, 0, 0))
        else:
            found.append((st.st_mode, st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
    return found


def _walk_tree(root: Path) -> tuple[list[tuple[PurePosixPath, set[str]]], bool]:
    """The walk, and whether every directory it met was listed (else it is not kept: one
    made readable later changes no listing's times)."""
    out: list[tuple[PurePosixPath, set[str]]] = []
    queue = [PurePosixPath(".")]
    complete = True
    with Beneath(root) as tree:
        while queue:
            rel = queue.pop(0)
            try:
                entries = tree.scandir(str(rel))
            except OSError:
                complete = False
                continue  # unreadable, or swapped for a link: nothing to detect there
            files = {e.name for e in entries if _is_file_or_link(e)}
            out.append((rel, files))
            if len(rel.parts) < MAX_DEPTH:
                queue.extend(
                    rel / e.name
                    for e in sorted(entries, key=lambda e: e.name)
                    if _is_real_dir(e) and e.name not in SKIP_DIRS and not e.name.startswith(".")
                )
    return out, complete


def _is_file_or_link(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_symlink() or entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False

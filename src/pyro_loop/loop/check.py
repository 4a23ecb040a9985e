"""`pyro check`: the project's `[check] run` commands in a fresh isolated workspace, on exactly
one git tree.

The tree is what `git commit` is about to commit (the index: `--staged`), a commit being
pushed (`--rev`), or the working tree's files as `git add -A` would stage them (the default).
Its files reach the workspace as layers, never through a checkout, so unstaged edits cannot
mask what is committed:

    delta        the files that differ from the last prepared baseline (often a handful)
    baseline     the HEAD tree `pyro prepare` wrote (warm)
    dependencies the warm dependency snapshot

Files the tree deletes are removed in the workspace before the commands run. A check thus
costs its commands plus a workspace start and a small tree diff; the first check with no
baseline writes the whole tree once. When the dependency snapshot is not warm, it is
prepared first (and said so).

The commands run with the working tree's `.pyro.toml` and dependency snapshot: when the
checked tree's key files differ from the working tree's, a warning says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pyro_loop import git
from pyro_loop.errors import InvalidInputError, PyroError
from pyro_loop.loop.prepare import (
    PrepareInputs,
    prepare,
    tree_layer,
)
from pyro_loop.loop.projecthome import ProjectHome
from pyro_loop.loop.snapshotbuild import delete_abandoned
from pyro_loop.progress import OnProgress, Progress, ignore
from pyro_loop.project.config import ProjectConfig
from pyro_loop.project.discovery import Project, tree_changes, tree_file, write_changes
from pyro_loop.project.trust import require_trust
from pyro_loop.records import dataclass, field
from pyro_loop.units import duration

if TYPE_CHECKING:
    from pyro_loop.loop.warmth import Warmth
    from pyro_loop.shapes import CheckResultJSON, CommandRunJSON
    from pyro_loop.store.layers import Layer
    from pyro_loop.workspace.client import OutputSink
    from pyro_loop.workspace.manager import Workspaces

DELTA_FORMAT = 1


@dataclass(frozen=True)
class CommandRun:
    command: str
    exit_code: int
    seconds: float
    timed_out: bool

    def to_json(self) -> CommandRunJSON:
        return {
            "command": self.command,
            "exit_code": self.exit_code,
            "duration_ms": round(self.seconds * 1000, 1),
            "timed_out": self.timed_out,
        }


@dataclass(frozen=True)
class CheckResult:
    source: str  # "staged" | "working tree" | "commit <sha>"
    tree: str
    runs: tuple[CommandRun, ...]
    prepared: bool  # the dependency snapshot had to be built first
    seconds: float
    setup_seconds: float  # all but the commands: layers, workspace start and removal
    warnings: tuple[str, ...] = field(default=())

    @property
    def failed(self) -> CommandRun | None:
        return next((r for r in self.runs if r.exit_code != 0 or r.timed_out), None)

    @property
    def exit_code(self) -> int:
        failed = self.failed
        if failed is None:
            return 0
        return failed.exit_code or 1

    def to_json(self) -> CheckResultJSON:
        return {
            "source": self.source,
            "tree": self.tree,
            "ok": self.failed is None,
            "exit_code": self.exit_code,
            "commands": [r.to_json() for r in self.runs],
            "prepared": self.prepared,
            "duration_ms": round(self.seconds * 1000, 1),
            "setup_ms": round(self.setup_seconds * 1000, 1),
            "warnings": list(self.warnings),
        }


# -- which tree ------------------------------------------------------------------------------


def trees_to_check(project: Project, *, staged: bool, revs: Sequence[str]) -> list[tuple[str, str]]:
    """(source, tree) for each tree to check: the staged files, each commit, or (neither
    given) the working tree's files."""
    if staged and revs:
        raise InvalidInputError("give --staged or --rev, not both")
    if staged:
        return [("staged", staged_tree(project))]
    if revs:
        return [(f"commit {rev}", commit_tree(project, rev)) for rev in revs]
    return [("working tree", working_tree(project))]


def staged_tree(project: Project, env: dict[str, str] | None = None) -> str:
    """The tree of the index that is being committed.

    Inside a pre-commit hook, GIT_INDEX_FILE names it, and it is not always the repository's
    index: `git commit -a` and `git commit <paths>` commit a temporary one. It is read here on
    purpose (relative to the hook's directory, the top of the working tree); every other git
    variable is dropped.
    """
    env = dict(os.environ if env is None else env)
    index = env.get("GIT_INDEX_FILE")
    extra = {"GIT_INDEX_FILE": os.path.abspath(index)} if index else {}
    return _git(project, ["write-tree"], env=env, extra=extra, what="read the staged files")


def working_tree(project: Project) -> str:
    """The tree of the working tree's files, as `git add -A` would stage them (ignored files
    left out), written from a copy of the index so the real one is never touched."""
    git_dir = _git_dir(project)
    with tempfile.TemporaryDirectory(prefix="pyro-check-") as tmp:
        index = Path(tmp) / "index"
        with contextlib.suppress(FileNotFoundError):  # a repository with nothing staged yet
            shutil.copyfile(git_dir / "index", index)
        extra = {"GIT_INDEX_FILE": str(index)}
        _git(project, ["add", "-A"], extra=extra, what="stage the working tree in a scratch index")
        return _git(project, ["write-tree"], extra=extra, what="read the working tree's files")


def commit_tree(project: Project, rev: str) -> str:
    return _git(project, ["rev-parse", "--verify", "--quiet", f"{rev}^{{tree}}"],
                what=f"find commit {rev}")  # fmt: skip


def _git_dir(project: Project) -> Path:
    if project.git_dir is None or project.repo_root is None:
        raise InvalidInputError(
            f"{project.root} is not in a git repository: pyro check runs on a git tree",
            hint="run it in a git working tree",
        )
    return project.git_dir


def _git(
    project: Project,
    args: list[str],
    *,
    what: str,
    env: dict[str, str] | None = None,
    extra: dict[str, str] | None = None,
) -> str:
    git_dir = _git_dir(project)
    assert project.repo_root is not None
    # The trees git writes are read back through pygit2: refuse a format it cannot read.
    git.check_format(git_dir)
    return git.git_output(args, cwd=project.repo_root, what=what, env=env, extra=extra,
                          silent_failure="no such revision")  # fmt: skip


# -- running ---------------------------------------------------------------------------------


def run_check(
    project: Project,
    config: ProjectConfig,
    tree: str,
    *,
    ws: Workspaces,
    source: str,
    on_output: OutputSink | None = None,
    on_progress: OnProgress | None = None,
) -> CheckResult:
    """Run `[check] run` on git tree `tree`, in order, stopping at the first that fails.

    `on_progress` gets the check's own events ("prepare", "tree", "warning", "run") and
    those of a prepare it has to run first. Raises UntrustedConfigError when the project's
    `.pyro.toml` is not trusted (`pyro trust`).
    """
    require_trust(ws.home, config)
    started = time.perf_counter()
    progress = on_progress or ignore
    from pyro_loop.loop.warmth import judge

    warmth = judge(project, config, ws.home)
    inputs = warmth.inputs
    layers, deleted, prepared = _layers(project, config, warmth, tree, ws=ws, progress=progress)
    warnings = _key_file_warnings(project, inputs, tree) if source != "working tree" else []
    for warning in warnings:
        progress(Progress("warning", warning))
    delete_abandoned(ws, "check")
    from pyro_loop.loop.activation import activation

    active = activation(project.root, config, ws.store)
    record = ws.create(
        environment=config.environment,
        packages=list(config.packages),
        layers=layers,
        labels={"pyro": "check", "project": project.id, "pid": str(os.getpid()), "tree": tree},
        network=config.network == "egress",
        limits=config.limits(),
        standby=False,  # used once: no sandbox booted ahead for a reset
        mounts=list(active.mounts),
        env=active.env,
    )
    runs: list[CommandRun] = []
    command_seconds = 0.0
    try:
        if deleted:
            ws.client(record.id).remove_many(deleted)
        for done, command in enumerate(config.check_run):
            total = len(config.check_run)
            progress(Progress("run", f"{command}", done, total, "items"))
            result = ws.exec(record.id, ["sh", "-c", command], on_output=on_output)
            runs.append(CommandRun(command, result.exit_code, result.duration, result.timed_out))
            command_seconds += result.duration
            if result.exit_code != 0 or result.timed_out:
                break
    finally:
        with contextlib.suppress(PyroError):
            ws.delete(record.id)
    seconds = time.perf_counter() - started
    return CheckResult(
        source=source,
        tree=tree,
        runs=tuple(runs),
        prepared=prepared,
        seconds=seconds,
        setup_seconds=max(0.0, seconds - command_seconds),
        warnings=tuple(warnings),
    )


def run_checks(
    project: Project,
    config: ProjectConfig,
    trees: Sequence[tuple[str, str]],
    *,
    ws: Workspaces,
    on_output: OutputSink | None = None,
    on_progress: OnProgress | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """`run_check` on each (source, tree) in turn, stopping after the first that fails."""
    results: list[CheckResult] = []
    for source, tree in trees:
        result = run_check(project, config, tree, ws=ws, source=source, on_output=on_output,
                           on_progress=on_progress)  # fmt: skip
        results.append(result)
        if on_result is not None:
            on_result(result)
        if result.failed is not None:
            break
    return results


def check_project(
    project: Project,
    config: ProjectConfig,
    *,
    staged: bool,
    revs: Sequence[str],
    note: Callable[[str], None],
    on_output: OutputSink,
) -> list[CheckResult]:
    """`pyro check` as the CLI and the git hooks run it: the trees asked for (the working
    tree, the staged files or commits) checked in turn, each step and each tree's outcome
    said through `note` as a line; the commands' output goes to `on_output`."""
    from pyro_loop.workspace.manager import Workspaces

    if not config.check_run:
        note(f"pyro check: nothing to check: no [check] run in {project.config_path}")
        return []

    def summarize(result: CheckResult) -> None:
        for line in summary(result, staged=staged):
            note(line)

    trees = trees_to_check(project, staged=staged, revs=revs)
    return run_checks(project, config, trees, ws=Workspaces(), on_output=on_output,
                      on_progress=lambda event: note(f"pyro check: {event.text()}"),
                      on_result=summarize)  # fmt: skip


def summary(result: CheckResult, *, staged: bool) -> list[str]:
    """What a person reads after one tree's check: passed or failed, on which tree, and for
    a blocked commit how to go on."""
    where = f"{result.source} (tree {result.tree[:8]})"
    failed = result.failed
    if failed is None:
        took, setup = duration(result.seconds), duration(result.setup_seconds)
        return [f"pyro check: passed on {where}: {len(result.runs)} command(s) in {took}, "
                f"isolation {setup}"]  # fmt: skip
    why = "timed out" if failed.timed_out else f"exited {failed.exit_code}"
    lines = [f"pyro check: FAILED on {where}: `{failed.command}` {why}"]
    if staged:
        lines.append("pyro check: commit blocked; fix and `git add` it, or "
                     "`git commit --no-verify` to skip the hook once")  # fmt: skip
    return lines


def delta_key(base: str, tree: str) -> str:
    text = f"pyro-delta-v{DELTA_FORMAT}\0{base}\0{tree}"
    return hashlib.sha256(text.encode()).hexdigest()


def _layers(
    project: Project,
    config: ProjectConfig,
    warmth: Warmth,
    tree: str,
    *,
    ws: Workspaces,
    progress: OnProgress,
) -> tuple[list[str], list[str], bool]:
    """The workspace's layers for `tree` (topmost first), the paths to remove on top of them,
    and whether the environment or dependencies had to be prepared first."""
    store = ws.store
    prepared = False
    inputs = warmth.inputs
    if not warmth.runnable:
        reasons = "; ".join(warmth.reasons() or ["never prepared"])
        progress(Progress("prepare", f"dependencies not warm ({reasons}): preparing first"))
        prepare(project, config, workspaces=ws, on_progress=progress)
        prepared = True
    # Topmost first: the project's own install over its dependencies.
    deps = [k for k in inputs.layers() if store.get(k) is not None]

    state = ProjectHome.of(ws.home, project).load_state()
    base: Layer | None = None
    if state is not None and state.baseline_layer and state.baseline_tree:
        base = store.get(state.baseline_layer)
    if base is None or state is None or state.baseline_tree is None:
        progress(
            Progress("tree", f"writing the files of tree {tree[:8]} (no prepared baseline yet)")
        )
        layer, _wrote = tree_layer(project, store, tree)
        return [layer.key, *deps], [], prepared
    if state.baseline_tree == tree:
        return [base.key, *deps], [], prepared

    changes = tree_changes(project, state.baseline_tree, tree)
    progress(
        Progress(
            "tree",
            f"{len(changes.written)} changed and {len(changes.deleted)} deleted paths over the "
            f"baseline (tree {state.baseline_tree[:8]} -> {tree[:8]})",
        )
    )
    if not changes.written:
        return [base.key, *deps], list(changes.deleted), prepared

    def write(dest: Path) -> None:
        write_changes(project, changes, dest)

    delta = store.build(
        delta_key(state.baseline_tree, tree),
        write,
        kind="delta",
        inputs={"base": state.baseline_tree, "tree": tree, "project": str(project.root)},
    )
    return [delta.key, base.key, *deps], list(changes.deleted), prepared


def _key_file_warnings(project: Project, inputs: PrepareInputs, tree: str) -> list[str]:
    """Key files (and .pyro.toml) that differ between the checked tree and the working tree:
    the dependencies and commands used are the working tree's."""
    prefix = os.path.relpath(project.root, project.repo_root or project.root)
    prefix = "" if prefix == "." else prefix + "/"
    differ = []
    wanted = dict(inputs.keys)
    with contextlib.suppress(OSError):
        config_bytes = project.config_path.read_bytes()
        wanted[project.config_path.name] = hashlib.sha256(config_bytes).hexdigest()
    for rel, digest in sorted(wanted.items()):
        content = tree_file(project, tree, prefix + rel)
        if content is None or hashlib.sha256(content).hexdigest() != digest:
            differ.append(rel)
    if not differ:
        return []
    return [
        f"{', '.join(differ)} in the checked files differ from the working tree's: the check "
        "uses the working tree's configuration and dependencies"
    ]

"""Git hooks and `pyro check`, with real git (and the real pre-commit framework) in temp repos.

Prepare and check commands write or read files instead of installing anything, which is what
a package manager or a test runner does from the sandbox's point of view.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_loop.errors import ConflictError
from pyro_loop.githooks import install as hooks
from pyro_loop.githooks.run import pushed_commits
from pyro_loop.loop.check import run_check, staged_tree
from pyro_loop.loop.prepare import compute_inputs, prepare
from pyro_loop.loop.status import readiness
from pyro_loop.project.config import load_project_config
from pyro_loop.project.discovery import find_project
from pyro_loop.project.hooks import KEEP_WARM
from pyro_loop.project.hooks import status as hooks_status
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.hooks import (
    background_record,
    bare_shell_env,
    git_run,
    project_of,
    pyro_lines,
    wait_for_background_prepare,
)
from tests.helpers.project import GIT_ENV, commit_project, git, run_pyro, trust_config, write_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """\
[prepare]
keys = ["requirements.txt"]
run = ["mkdir -p .deps && cp requirements.txt .deps/installed.txt"]

[check]
run = ["test -f .deps/installed.txt", "grep -qx 'ok' app.txt"]
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A project on `main`, and a branch `other` whose lockfile differs."""
    files = {"requirements.txt": "requests==2.32.0\n", "app.txt": "ok\n"}
    root = commit_project(tmp_path / "repo", CONFIG, files)
    git(root, "checkout", "-q", "-b", "other")
    (root / "requirements.txt").write_text("requests==2.32.3\n")
    git(root, "commit", "-qam", "bump requests")
    git(root, "checkout", "-q", "-b", "feature", "main")
    (root / "notes.txt").write_text("same lockfile as main\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "notes")
    git(root, "checkout", "-q", "main")
    return root


def warm_up(repo: Path, workspaces: Workspaces) -> None:
    project = project_of(repo)
    prepare(project, load_project_config(project.root).config, workspaces=workspaces)


# -- keeping warm ------------------------------------------------------------------------------


def test_a_branch_with_another_lockfile_starts_a_background_prepare_that_warms(
    repo: Path, workspaces: Workspaces, pyro_home: Path, tmp_path: Path
) -> None:
    warm_up(repo, workspaces)
    hooks.install(project_of(repo))
    # From a shell without the virtualenv pyro is installed in: the script names its Python.
    switched = git_run(repo, "checkout", "-q", "other", env=bare_shell_env(tmp_path))
    assert switched.returncode == 0, switched.stderr
    notes = pyro_lines(switched.stderr)
    assert len(notes) == 1 and "requirements.txt changed" in notes[0], switched.stderr
    assert "preparing in the background" in notes[0]
    record = wait_for_background_prepare(repo, pyro_home)
    project = project_of(repo)
    config = load_project_config(project.root).config
    assert record["key"] == compute_inputs(project, config).key
    assert workspaces.store.get(str(record["key"])) is not None
    assert readiness(project, config, workspaces).dependencies["state"] == "warm"
    log = Path(str(record["log"])).read_text()
    assert "built" in log and "dependencies" in log
    # Switching back: main's snapshot is still warm, nothing starts.
    back = git_run(repo, "checkout", "-q", "main")
    assert back.returncode == 0 and pyro_lines(back.stderr) == []


def test_branches_with_the_same_lockfile_start_nothing(
    repo: Path, workspaces: Workspaces, pyro_home: Path
) -> None:
    warm_up(repo, workspaces)
    hooks.install(project_of(repo))
    for branch in ("feature", "main", "feature"):
        switched = git_run(repo, "checkout", "-q", branch)
        assert switched.returncode == 0 and pyro_lines(switched.stderr) == [], switched.stderr
    assert not background_record(pyro_home, repo).exists()
    merged = git_run(repo, "merge", "-q", "--no-edit", "main")
    assert merged.returncode == 0 and pyro_lines(merged.stderr) == []


def test_a_merge_that_changes_the_lockfile_prepares_and_a_running_one_is_not_doubled(
    repo: Path, workspaces: Workspaces, pyro_home: Path
) -> None:
    warm_up(repo, workspaces)
    hooks.install(project_of(repo))
    merged = git_run(repo, "merge", "-q", "--ff-only", "other")
    assert merged.returncode == 0, merged.stderr
    assert any("preparing in the background" in line for line in pyro_lines(merged.stderr))
    first = json.loads(background_record(pyro_home, repo).read_text())
    # Another hook for the same lockfile while it runs (or after it): no second prepare.
    again = git_run(repo, "checkout", "-q", "HEAD")  # post-checkout, same lockfile
    assert again.returncode == 0
    assert json.loads(background_record(pyro_home, repo).read_text())["pid"] == first["pid"]
    wait_for_background_prepare(repo, pyro_home)
    assert workspaces.store.get(first["key"]) is not None
    assert first["key"] == compute_inputs(project_of(repo), load_project_config(repo).config).key


def test_a_broken_config_never_fails_git_and_says_so_in_one_line(repo: Path) -> None:
    hooks.install(project_of(repo))
    git(repo, "checkout", "-q", "-b", "broken")
    write_config(repo, '[prepare]\nrun = "not a list"\n')
    git(repo, "commit", "-qam", "broken config")
    switched = git_run(repo, "checkout", "-q", "main")
    assert switched.returncode == 0
    back = git_run(repo, "checkout", "-q", "broken")
    assert back.returncode == 0
    notes = pyro_lines(back.stderr)
    assert len(notes) == 1, back.stderr
    assert ".pyro.toml:2" in notes[0] and "not preparing" in notes[0]


def test_a_missing_interpreter_never_fails_git_and_says_how_to_fix_it(
    repo: Path, tmp_path: Path
) -> None:
    venv_python = tmp_path / "gone" / "bin" / "python"
    hooks.install(project_of(repo), hooks=[*KEEP_WARM, "pre-commit"],
                  python=str(venv_python))  # fmt: skip
    switched = git_run(repo, "checkout", "-q", "other")
    assert switched.returncode == 0
    notes = pyro_lines(switched.stderr)
    assert len(notes) == 1 and "pyro hooks install" in notes[0] and str(venv_python) in notes[0]
    # A blocking hook cannot check anything: it stops the commit and says why.
    (repo / "app.txt").write_text("changed\n")
    git(repo, "add", "app.txt")
    committed = git_run(repo, "commit", "-qm", "change")
    assert committed.returncode != 0 and "pyro hooks install" in committed.stderr
    report = hooks_status(project_of(repo))
    assert report.broken == ["post-checkout", "post-merge", "post-rewrite", "pre-commit"]
    hooks.install(project_of(repo))  # again, from a live interpreter: fixed
    assert hooks_status(project_of(repo)).broken == []


# -- checking what is committed ------------------------------------------------------------------


def test_a_commit_whose_staged_content_fails_is_blocked_even_with_an_unstaged_fix(
    repo: Path, workspaces: Workspaces, tmp_path: Path
) -> None:
    warm_up(repo, workspaces)
    hooks.install(project_of(repo), hooks=["pre-commit"])
    head = git(repo, "rev-parse", "HEAD")
    (repo / "app.txt").write_text("broken\n")
    git(repo, "add", "app.txt")
    (repo / "app.txt").write_text("ok\n")  # fixed in the working tree, not staged
    blocked = git_run(repo, "commit", "-qm", "broken", env=bare_shell_env(tmp_path))
    assert blocked.returncode != 0
    assert "FAILED" in blocked.stderr and "grep -qx 'ok' app.txt" in blocked.stderr
    assert git(repo, "rev-parse", "HEAD") == head
    # --no-verify works as git users expect.
    skipped = git_run(repo, "commit", "-qm", "broken anyway", "--no-verify")
    assert skipped.returncode == 0 and git(repo, "rev-parse", "HEAD") != head
    # Once the fix is staged, the check passes and the commit goes through.
    git(repo, "add", "app.txt")
    passed = git_run(repo, "commit", "-qm", "fixed", env=bare_shell_env(tmp_path))
    assert passed.returncode == 0, passed.stderr
    assert "passed on staged" in passed.stderr


def test_commit_all_and_commit_paths_are_checked_on_the_index_git_commits(
    repo: Path, workspaces: Workspaces
) -> None:
    warm_up(repo, workspaces)
    hooks.install(project_of(repo), hooks=["pre-commit"])
    head = git(repo, "rev-parse", "HEAD")
    (repo / "app.txt").write_text("broken\n")  # only in the working tree; the index is fine
    assert git_run(repo, "commit", "-qam", "all").returncode != 0  # -a: a temporary index
    assert git_run(repo, "commit", "-qm", "paths", "app.txt").returncode != 0
    assert git(repo, "rev-parse", "HEAD") == head
    (repo / "other.txt").write_text("fine\n")
    git(repo, "add", "other.txt")
    assert git_run(repo, "commit", "-qm", "other only", "other.txt").returncode == 0


def test_the_check_sees_exactly_the_staged_tree(
    repo: Path, workspaces: Workspaces, pyro_home: Path
) -> None:
    warm_up(repo, workspaces)
    project = project_of(repo)
    git(repo, "rm", "-q", "app.txt")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "new.txt").write_text("staged\n")
    git(repo, "add", "pkg/new.txt")
    (repo / "pkg" / "new.txt").write_text("unstaged edit\n")
    (repo / "untracked.txt").write_text("never staged\n")
    config = load_project_config(project.root).config
    config = type(config)(**{**config.__dict__, "check_run": (
        "test ! -e app.txt && test ! -e untracked.txt && test \"$(cat pkg/new.txt)\" = staged"
        " && test -f requirements.txt && test -f .deps/installed.txt",
    )})  # fmt: skip
    result = run_check(project, config, staged_tree(project), ws=workspaces, source="staged")
    assert result.failed is None, result.to_json()
    assert [s for s in workspaces.list() if s.record.labels.get("pyro") == "check"] == []


def test_pyro_check_cli_on_the_working_tree_and_a_commit(
    repo: Path, workspaces: Workspaces, tmp_path: Path
) -> None:
    warm_up(repo, workspaces)
    (repo / "app.txt").write_text("broken\n")
    working = run_pyro("check", "--json", "-C", str(repo))
    assert working.returncode == 1, working.stderr
    data = json.loads(working.stdout)
    assert data["ok"] is False and data["results"][0]["source"] == "working tree"
    assert data["results"][0]["commands"][-1]["command"] == "grep -qx 'ok' app.txt"
    head = run_pyro("check", "--rev", "HEAD", "-C", str(repo))
    assert head.returncode == 0, head.stderr
    assert "passed on commit HEAD" in head.stderr
    plain = tmp_path / "plain"
    plain.mkdir()
    write_config(plain, CONFIG)
    outside = run_pyro("check", "-C", str(plain))
    assert outside.returncode == 1 and "not in a git repository" in outside.stderr


def test_pre_push_checks_each_pushed_commit(repo: Path, workspaces: Workspaces,
                                            tmp_path: Path) -> None:  # fmt: skip
    warm_up(repo, workspaces)
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    hooks.install(project_of(repo), hooks=["pre-push"])
    git(repo, "checkout", "-q", "-b", "bad")
    (repo / "app.txt").write_text("broken\n")
    git(repo, "commit", "-qam", "bad")
    pushed = git_run(repo, "push", "-q", str(remote), "bad")
    assert pushed.returncode != 0 and "FAILED on commit" in pushed.stderr
    assert git_run(repo, "push", "-q", str(remote), "main").returncode == 0
    zero = "0" * 40
    assert pushed_commits(f"refs/heads/a {'1' * 40} refs/heads/a {zero}\n"
                          f"(delete) {zero} refs/heads/b {'2' * 40}\n") == ["1" * 40]  # fmt: skip


# -- install, uninstall, status ------------------------------------------------------------------


def test_a_foreign_hook_is_kept_runs_first_and_is_restored_exactly(
    repo: Path, workspaces: Workspaces
) -> None:
    warm_up(repo, workspaces)
    hook_dir = repo / ".git" / "hooks"
    foreign = b'#!/bin/sh\necho "foreign $*" >> "$(git rev-parse --git-dir)/foreign.log"\n'
    (hook_dir / "post-checkout").write_bytes(foreign)
    (hook_dir / "post-checkout").chmod(0o751)
    blocker = b"#!/bin/sh\necho 'foreign pre-commit says no' >&2\nexit 3\n"
    (hook_dir / "pre-commit").write_bytes(blocker)
    (hook_dir / "pre-commit").chmod(0o700)

    report = hooks.install(project_of(repo), hooks=[*KEEP_WARM, "pre-commit"])
    assert report.installed == ["post-checkout", "post-merge", "post-rewrite", "pre-commit"]
    assert (hook_dir / "post-checkout.legacy").read_bytes() == foreign
    assert git_run(repo, "checkout", "-q", "feature").returncode == 0
    assert "foreign" in (repo / ".git" / "foreign.log").read_text()
    # The legacy blocking hook's exit code decides, even though pyro's check would pass.
    (repo / "more.txt").write_text("x\n")
    git(repo, "add", "more.txt")
    blocked = git_run(repo, "commit", "-qm", "more")
    assert blocked.returncode != 0 and "foreign pre-commit says no" in blocked.stderr
    direct = subprocess.run([hook_dir / "pre-commit"], cwd=repo, capture_output=True, check=False)
    assert direct.returncode == 3  # git reports any failure as 1; the script passes 3 on
    # Installing again refreshes pyro's scripts and keeps the legacy ones as they are.
    hooks.install(project_of(repo))
    assert (hook_dir / "pre-commit.legacy").read_bytes() == blocker

    hooks.uninstall(project_of(repo))
    assert (hook_dir / "post-checkout").read_bytes() == foreign
    assert stat.S_IMODE((hook_dir / "post-checkout").stat().st_mode) == 0o751
    assert (hook_dir / "pre-commit").read_bytes() == blocker
    assert stat.S_IMODE((hook_dir / "pre-commit").stat().st_mode) == 0o700
    assert not list(hook_dir.glob("*.legacy"))
    assert not (hook_dir / "post-merge").exists()


def test_install_refuses_when_both_a_hook_and_its_legacy_exist(repo: Path) -> None:
    hook_dir = repo / ".git" / "hooks"
    for name in ("post-merge", "post-merge.legacy"):
        (hook_dir / name).write_text("#!/bin/sh\n")
        (hook_dir / name).chmod(0o755)
    with pytest.raises(ConflictError, match="both exist"):
        hooks.install(project_of(repo))
    assert not (hook_dir / "post-checkout").exists()  # nothing half-installed


def test_core_hooks_path_is_refused_with_the_fix(repo: Path) -> None:
    git(repo, "config", "core.hooksPath", ".githooks")
    with pytest.raises(ConflictError, match=r"core\.hooksPath is set to \.githooks") as info:
        hooks.install(project_of(repo))
    assert "git config --unset core.hooksPath" in (info.value.hint or "")
    assert hooks_status(project_of(repo)).problem is not None
    result = run_pyro("hooks", "install", "-C", str(repo))
    assert result.returncode == 1 and "core.hooksPath" in result.stderr
    git(repo, "config", "core.hooksPath", ".git/hooks")  # the default place, spelled out
    assert hooks.install(project_of(repo)).problem is None


def test_a_worktree_uses_the_repository_hooks(
    repo: Path, workspaces: Workspaces, pyro_home: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", str(tree), "feature")
    trust_config(tree)  # another path: approved on its own
    warm_up(tree, workspaces)
    report = hooks.install(project_of(tree))
    assert report.shared and report.hooks_dir == repo / ".git" / "hooks"
    switched = git_run(tree, "checkout", "-q", "other")
    assert switched.returncode == 0
    assert any("preparing in the background" in line for line in pyro_lines(switched.stderr))
    record = wait_for_background_prepare(tree, pyro_home)
    assert workspaces.store.get(str(record["key"])) is not None


def test_a_submodule_gets_hooks_of_its_own(repo: Path, tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    outer.mkdir()
    git(outer, "init", "-q", "-b", "main")
    git(outer, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(repo), "sub")
    report = hooks.install(find_project(outer / "sub"))
    assert report.hooks_dir == outer / ".git" / "modules" / "sub" / "hooks"
    assert (report.hooks_dir / "post-checkout").is_file()
    assert not (outer / ".git" / "hooks" / "post-checkout").exists()


def test_cli_install_status_uninstall_and_pyro_status(repo: Path) -> None:
    installed = run_pyro("hooks", "install", "--pre-commit", "--json", "-C", str(repo))
    assert installed.returncode == 0, installed.stderr
    assert json.loads(installed.stdout)["installed"] == [
        "post-checkout", "post-merge", "post-rewrite", "pre-commit"
    ]  # fmt: skip
    shown = run_pyro("hooks", "status", "-C", str(repo))
    assert shown.returncode == 0 and "pre-push      absent" in shown.stdout
    assert sys.executable in shown.stdout
    status = run_pyro("status", "--json", "-C", str(repo))
    assert json.loads(status.stdout)["hooks"]["installed"][-1] == "pre-commit"
    human = run_pyro("status", "-C", str(repo))
    assert "hooks         post-checkout, post-merge, post-rewrite, pre-commit" in human.stdout
    removed = run_pyro("hooks", "uninstall", "-C", str(repo))
    assert removed.returncode == 0 and "removed post-checkout" in removed.stdout
    assert "hooks         not installed" in run_pyro("status", "-C", str(repo)).stdout


# -- the pre-commit framework --------------------------------------------------------------------


def manifest_repo(tmp_path: Path) -> Path:
    """A git repository holding this project's .pre-commit-hooks.yaml, committed: what
    pre-commit clones. Its hooks run the `pyro` on PATH, so nothing else is needed."""
    source = tmp_path / "pyro-hooks"
    source.mkdir()
    shutil.copy(ROOT / ".pre-commit-hooks.yaml", source)
    git(source, "init", "-q", "-b", "main")
    git(source, "add", "-A")
    git(source, "commit", "-qm", "hooks")
    return source


def pre_commit_env(tmp_path: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # where `pyro` and `pre-commit` are installed
    return {**os.environ, **GIT_ENV, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
            "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"}  # fmt: skip


@pytest.mark.slow
def test_pre_commit_framework_runs_both_shipped_hooks(
    repo: Path, workspaces: Workspaces, pyro_home: Path, tmp_path: Path
) -> None:
    warm_up(repo, workspaces)
    source = manifest_repo(tmp_path)
    env = pre_commit_env(tmp_path)

    def pre_commit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pre_commit", *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip

    (repo / "app.txt").write_text("broken\n")
    git(repo, "add", "app.txt")
    (repo / "app.txt").write_text("ok\n")  # pre-commit stashes this; the index is checked
    failed = pre_commit("try-repo", str(source), "pyro-check", "--verbose")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAILED on staged" in failed.stdout
    assert (repo / "app.txt").read_text() == "ok\n"  # the unstaged fix is back
    git(repo, "add", "app.txt")
    passed = pre_commit("try-repo", str(source), "pyro-check")
    assert passed.returncode == 0, passed.stdout + passed.stderr

    # An installed config: the three lines of YAML docs/hooks.md shows, then real git.
    rev = git(source, "rev-parse", "HEAD").strip()
    (repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n- repo: {source}\n  rev: {rev}\n"
        "  hooks: [{id: pyro-check}, {id: pyro-prepare}]\n"
        "default_install_hook_types: [pre-commit, post-checkout, post-merge, post-rewrite]\n"
    )
    git(repo, "add", ".pre-commit-config.yaml")
    git(repo, "commit", "-qm", "pre-commit config", "--no-verify")
    installed = pre_commit("install")
    assert installed.returncode == 0, installed.stdout + installed.stderr

    def git_ok(*args: str) -> None:  # the hooks pre-commit installed run here too
        done = git_run(repo, *args, env=env)
        assert done.returncode == 0, done.stdout + done.stderr

    git_ok("checkout", "-q", "-b", "bumped")
    (repo / "requirements.txt").write_text("requests==9.9.9\n")
    git_ok("commit", "-qam", "bump")  # pyro-check prepares the new lockfile first, then passes
    (repo / "app.txt").write_text("broken\n")
    blocked = git_run(repo, "commit", "-qam", "break", env=env)
    assert blocked.returncode != 0 and "FAILED on staged" in blocked.stdout + blocked.stderr
    git_ok("checkout", "-q", "app.txt")
    # pyro-prepare at post-checkout: a lockfile nobody prepared yet starts a background prepare.
    git_ok("checkout", "-q", "-b", "bumped-again")
    (repo / "requirements.txt").write_text("requests==10.0.0\n")
    git_ok("commit", "-qam", "bump again", "--no-verify")
    git_ok("checkout", "-q", "main")
    switched = git_run(repo, "checkout", "-q", "bumped-again", env=env)
    assert switched.returncode == 0, switched.stderr
    assert "pyro prepare (in the background, when a lockfile changed)" in switched.stderr
    record = wait_for_background_prepare(repo, pyro_home)
    assert workspaces.store.get(str(record["key"])) is not None


def test_the_documented_local_config_declares_the_shipped_hooks_and_runs(
    repo: Path, workspaces: Workspaces, tmp_path: Path
) -> None:
    """docs/hooks.md's `repo: local` block is the shipped manifest's hooks, and it works."""
    import yaml  # pre-commit's own dependency

    docs = (ROOT / "docs" / "hooks.md").read_text()
    local_block = next(
        block.split("```", 1)[0] for block in docs.split("```yaml\n")[1:] if "repo: local" in block
    )
    shipped = {
        hook["id"]: hook for hook in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    }
    local = {hook["id"]: hook for hook in yaml.safe_load(local_block)["repos"][0]["hooks"]}
    assert local.keys() == shipped.keys()
    for hook_id, hook in local.items():
        for key in ("entry", "language", "pass_filenames", "always_run", "stages"):
            assert hook[key] == shipped[hook_id][key], (hook_id, key)

    warm_up(repo, workspaces)
    (repo / ".pre-commit-config.yaml").write_text(local_block)
    (repo / "app.txt").write_text("broken\n")
    git(repo, "add", "app.txt", ".pre-commit-config.yaml")
    failed = subprocess.run(
        [sys.executable, "-m", "pre_commit", "run", "pyro-check"], cwd=repo,
        env=pre_commit_env(tmp_path), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert failed.returncode == 1 and "FAILED on staged" in failed.stdout, failed.stdout


def test_core_hooks_path_from_the_global_config_or_an_include_is_seen(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `pyro status` reads git's config files before it starts git: a hooksPath set where
    # the repository's own config does not say so must still be found.
    included = tmp_path / "included.cfg"
    included.write_text("[core]\n\thooksPath = /elsewhere\n")
    global_config = tmp_path / "global.cfg"
    global_config.write_text(f"[include]\n\tpath = {included}\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(global_config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    project = find_project(repo)
    assert "core.hooksPath is set to /elsewhere" in (hooks_status(project).problem or "")
    global_config.write_text("[core]\n\tHooksPath = /other\n")
    assert "core.hooksPath is set to /other" in (hooks_status(project).problem or "")
    global_config.write_text("[user]\n\tname = someone\n")
    assert hooks_status(project).problem is None

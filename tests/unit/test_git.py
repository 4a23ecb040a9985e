"""The one git module: repository formats it refuses, HEAD read without a git library, git run
with a scrubbed environment, and git's numbers kept without loading pygit2."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pygit2
import pytest

from pyro_loop import git
from pyro_loop.project.discovery import find_project, head_commit, head_tree
from tests.helpers.project import GIT_ENV
from tests.helpers.project import git as run


def _repo(path: Path, *init: str) -> Path:
    path.mkdir()
    run(path, "init", "-q", *init)
    (path / "a.txt").write_text("a\n")
    run(path, "add", "-A")
    run(path, "commit", "-qm", "a")
    return path


def _supports(*init: str) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        probe = subprocess.run(["git", "init", "-q", *init, tmp], capture_output=True, check=False)
    return probe.returncode == 0


def test_the_numbers_kept_without_pygit2_are_pygit2s() -> None:
    assert git.MODE_TREE == pygit2.GIT_FILEMODE_TREE
    assert git.MODE_BLOB == pygit2.GIT_FILEMODE_BLOB
    assert git.MODE_EXECUTABLE == pygit2.GIT_FILEMODE_BLOB_EXECUTABLE
    assert git.MODE_LINK == pygit2.GIT_FILEMODE_LINK
    assert git.MODE_SUBMODULE == pygit2.GIT_FILEMODE_COMMIT
    assert git.STATUS_IGNORED == pygit2.GIT_STATUS_IGNORED
    assert git.DELTA_DELETED == pygit2.GIT_DELTA_DELETED


def test_head_is_read_by_hand_as_git_reads_it(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "r")
    project = find_project(repo)
    assert head_commit(project) == run(repo, "rev-parse", "HEAD").strip()
    run(repo, "pack-refs", "--all")  # the branch now lives in packed-refs only
    assert head_commit(project) == run(repo, "rev-parse", "HEAD").strip()
    # HEAD -> refs/heads/alias -> refs/heads/main: git follows the chain, and so does pyro.
    run(repo, "symbolic-ref", "refs/heads/alias", "refs/heads/main")
    run(repo, "symbolic-ref", "HEAD", "refs/heads/alias")
    assert head_commit(project) == run(repo, "rev-parse", "HEAD").strip()


@pytest.mark.skipif(not _supports("--object-format=sha256"), reason="git without SHA-256")
def test_a_sha256_repository_is_refused_in_one_line(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "r", "--object-format=sha256")
    project = find_project(repo)
    with pytest.raises(git.UnsupportedRepositoryError, match=r"SHA256.*cannot read"):
        head_commit(project)
    with pytest.raises(git.UnsupportedRepositoryError, match="SHA256"):
        head_tree(project)
    # Through the command: one line that says what is wrong, exit status 1, no traceback.
    env = {**os.environ, "PYRO_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "pyro_loop", "prepare"], cwd=repo, env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "SHA256" in done.stderr and "Traceback" not in done.stderr


def _reftable(path: Path) -> Path:
    """A repository whose refs are in reftable storage: made by git where it can (2.45+);
    else the layout such a git writes (the format declared in the config, HEAD pointing at
    an invalid branch for older tools, the refs themselves in `reftable/`)."""
    if _supports("--ref-format=reftable"):
        return _repo(path, "--ref-format=reftable")
    repo = _repo(path)
    run(repo, "config", "core.repositoryformatversion", "1")
    run(repo, "config", "extensions.refStorage", "reftable")
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/.invalid\n")
    for ref in (repo / ".git" / "refs" / "heads").iterdir():
        ref.unlink()
    (repo / ".git" / "reftable").mkdir()
    return repo


def test_a_reftable_repository_is_refused_not_reported_as_empty(tmp_path: Path) -> None:
    project = find_project(_reftable(tmp_path / "r"))
    with pytest.raises(git.UnsupportedRepositoryError, match="reftable"):
        head_commit(project)  # by hand, its HEAD names no branch: "no commits" was the answer
    with pytest.raises(git.UnsupportedRepositoryError, match="reftable"):
        git.open_repository(tmp_path / "r" / ".git")


def test_an_extension_libgit2_cannot_read_is_named(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "r")
    run(repo, "config", "extensions.partialClone", "origin")
    assert head_commit(find_project(repo)) is not None  # format 0: git ignores extensions
    run(repo, "config", "core.repositoryformatversion", "1")
    assert run(repo, "rev-parse", "HEAD")  # git reads it
    with pytest.raises(git.UnsupportedRepositoryError, match="'partialclone'"):
        head_commit(find_project(repo))
    run(repo, "config", "core.repositoryformatversion", "2")
    with pytest.raises(git.UnsupportedRepositoryError, match="format version 2"):
        git.check_format(repo / ".git")


def test_extensions_libgit2_reads_are_accepted(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "r")
    run(repo, "config", "core.repositoryformatversion", "1")
    run(repo, "config", "extensions.worktreeConfig", "true")
    run(repo, "config", "extensions.objectFormat", "sha1")
    project = find_project(repo)
    assert head_commit(project) == run(repo, "rev-parse", "HEAD").strip()
    assert head_tree(project) == run(repo, "rev-parse", "HEAD^{tree}").strip()


def test_git_runs_on_the_repository_it_is_given_whatever_the_hook_exported(
    tmp_path: Path,
) -> None:
    repo = _repo(tmp_path / "r")
    other = _repo(tmp_path / "other")
    hook_env = {**os.environ, **GIT_ENV, "GIT_DIR": str(other / ".git"),
                "GIT_INDEX_FILE": str(other / ".git" / "index")}  # fmt: skip
    out = git.git_output(["rev-parse", "--absolute-git-dir"], cwd=repo, env=hook_env,
                         what="find the git dir")  # fmt: skip
    assert Path(out) == repo / ".git"
    clean = git.without_git_env(hook_env)
    assert "GIT_DIR" not in clean and "GIT_INDEX_FILE" not in clean
    assert clean["GIT_CONFIG_GLOBAL"] == os.devnull  # the user's configuration choices stay
    with pytest.raises(Exception, match="cannot find commit nope: no such revision"):
        git.git_output(["rev-parse", "--verify", "--quiet", "nope"], cwd=repo,
                       what="find commit nope", silent_failure="no such revision")  # fmt: skip


def test_a_setting_is_read_as_git_reads_it_files_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo(tmp_path / "r")
    for name, value in GIT_ENV.items():
        monkeypatch.setenv(name, value)
    assert git.config_value(repo, repo / ".git", "core.hooksPath") is None
    # Handed down by `git -c` in a hook's environment: only git itself sees it.
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.hooksPath")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "from-env")
    assert git.config_value(repo, repo / ".git", "core.hooksPath") == "from-env"
    monkeypatch.delenv("GIT_CONFIG_COUNT")
    run(repo, "config", "core.hooksPath", ".githooks")
    assert git.config_value(repo, repo / ".git", "core.hooksPath") == ".githooks"


def test_git_missing_from_the_host_is_one_line_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no git on it
    with pytest.raises(git.GitMissingError, match="needs git on the host") as caught:
        git.run_git(["--version"], cwd=tmp_path)
    assert caught.value.hint == "apt-get install git"

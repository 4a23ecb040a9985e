"""The version a project versioned by git tags gets in sandboxes, which have no `.git`."""

from __future__ import annotations

from pathlib import Path

from pyro_loop.project.scmversion import described_version, pretend_version_env
from tests.helpers.project import git

SETUPTOOLS_SCM = """\
[build-system]
requires = ["setuptools>=64", "setuptools-scm>=8"]
build-backend = "setuptools.build_meta"

[project]
name = "My.Tool_kit"
dynamic = ["version"]
"""
HATCH_VCS = """\
[build-system]
requires = ["hatchling", "hatch-vcs"]
build-backend = "hatchling.build"

[project]
name = "hatched"
dynamic = ["version"]

[tool.hatch.version]
source = "vcs"
"""


def _repo(path: Path, pyproject: str) -> Path:
    path.mkdir()
    git(path, "init", "-q")
    (path / "pyproject.toml").write_text(pyproject)
    return path


def _commit(repo: Path, name: str) -> str:
    (repo / name).write_text(name)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", name)
    return git(repo, "rev-parse", "--short=7", "HEAD").strip()


def test_the_version_follows_setuptools_scms_default_scheme(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo", SETUPTOOLS_SCM)
    assert described_version(repo) is None  # no commit yet
    first = _commit(repo, "a")
    assert described_version(repo) == f"0.1.dev0+g{first}"  # no tag reachable
    git(repo, "tag", "v2.3.9")
    assert described_version(repo) == "2.3.9"  # on the tag
    _commit(repo, "b")
    head = _commit(repo, "c")
    assert described_version(repo) == f"2.3.10.dev2+g{head}"  # past it: the next patch
    git(repo, "tag", "release-4.0")
    assert described_version(repo) == "4.0"  # a prefix ending in "-" is not the version
    assert pretend_version_env(repo) == {"SETUPTOOLS_SCM_PRETEND_VERSION_FOR_MY_TOOL_KIT": "4.0"}


def test_hatch_vcs_gets_the_version_without_a_distribution_name_too(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo", HATCH_VCS)
    _commit(repo, "a")
    git(repo, "tag", "1.0.0")
    assert pretend_version_env(repo) == {
        "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_HATCHED": "1.0.0",
        "SETUPTOOLS_SCM_PRETEND_VERSION": "1.0.0",
    }


def test_projects_that_do_not_take_the_version_from_git_get_nothing(tmp_path: Path) -> None:
    static = SETUPTOOLS_SCM.replace('dynamic = ["version"]', 'version = "1.0"')
    hostile = SETUPTOOLS_SCM.replace('"My.Tool_kit"', '"x=y\\u0000 z"')
    odd = 'build-system = 5\ntool = "x"\n[project]\nname = "x"\ndynamic = "version"\n'
    cases = {"static": static, "plain": '[project]\nname = "x"\n', "bad": "[x", "hostile": hostile,
             "odd": odd}  # fmt: skip
    for name, text in cases.items():
        repo = _repo(tmp_path / name, text)
        _commit(repo, "a")
        assert pretend_version_env(repo) == {}, name
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "pyproject.toml").write_text(SETUPTOOLS_SCM)
    assert pretend_version_env(outside) == {}  # no repository


def test_a_linked_pyproject_is_not_read(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo", "")
    (tmp_path / "elsewhere.toml").write_text(SETUPTOOLS_SCM)
    (repo / "pyproject.toml").unlink()
    (repo / "pyproject.toml").symlink_to(tmp_path / "elsewhere.toml")
    _commit(repo, "a")
    assert pretend_version_env(repo) == {}

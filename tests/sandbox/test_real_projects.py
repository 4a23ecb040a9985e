"""Real projects made with the real tools, then used as an ordinary user would: `pyro init`,
`pyro exec -- <the ecosystem's usual test command>` with no edit of `.pyro.toml`, the
project's own package importable, a lockfile change seen by the next exec, nothing that
prepare installed lost.

As root (CI), pyro itself runs as `nobody` (uid 65534) through setpriv, with a copy of the
package and its dependencies every user can read. Needs PyPI and the npm registry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.nobody import SYSTEM_PYTHON, _commit, _project, _write, nobody

pytestmark = pytest.mark.slow

# The host's proxy, certificate and index settings, as a user's shell would have them.


def _no_prepare_sandbox_left(user: dict[str, Path]) -> None:
    listed = nobody(["workspace", "list", "--json"], cwd=user["projects"], user=user)
    assert '"prepare"' not in listed.stdout


def test_a_requirements_project_with_its_own_package_editable(user: dict[str, Path]) -> None:
    repo = _project(user, "pipapp")
    _write(repo, {
        "pyproject.toml": "[build-system]\nrequires = ['setuptools>=61']\n"
                          "build-backend = 'setuptools.build_meta'\n\n"
                          "[project]\nname = 'pipapp'\nversion = '0.1'\n"
                          "dependencies = ['iniconfig']\n\n"
                          "[project.optional-dependencies]\ntest = ['pytest']\n\n"
                          "[tool.pytest.ini_options]\ntestpaths = ['tests']\n",
        "README.md": "# pipapp\n",
        "src/pipapp/__init__.py": "def answer():\n    return 42\n",
        "tests/test_app.py": "import iniconfig\nimport pipapp\n\n\n"
                             "def test_answer():\n    assert pipapp.answer() == 42\n",
        "requirements.txt": "-e .[test]\n",
        ".gitignore": ".venv/\n*.egg-info/\n",
    })  # fmt: skip
    _commit(repo, user)
    init = nobody(["init"], cwd=repo, user=user)
    assert "pip" in init.stdout + init.stderr
    assert '"pytest' in (repo / ".pyro.toml").read_text()  # [check] run: the usual command
    out = nobody(["exec", "--", "pytest", "-q"], cwd=repo, user=user)
    assert "1 passed" in out.stdout
    # The project's own package is importable, from the workspace's sources (editable).
    out = nobody(["exec", "--", "python", "-c", "import pipapp; print(pipapp.__file__)"],
                 cwd=repo, user=user)  # fmt: skip
    assert out.stdout.strip() == "/workspace/src/pipapp/__init__.py"
    # A source edit is seen at once, with no new install.
    (repo / "src/pipapp/__init__.py").write_text("def answer():\n    return 43\n")
    out = nobody(["exec", "--", "python", "-c", "import pipapp; print(pipapp.answer())"],
                 cwd=repo, user=user)  # fmt: skip
    assert out.stdout.strip() == "43"
    # A new dependency in the requirements: the next exec has it.
    (repo / "requirements.txt").write_text("-e .[test]\npluggy\nsix\n")
    out = nobody(["exec", "--", "python", "-c", "import six; print(six.__name__)"],
                 cwd=repo, user=user)  # fmt: skip
    assert out.stdout.strip() == "six"
    _no_prepare_sandbox_left(user)


def test_an_npm_project_with_a_test_script(user: dict[str, Path]) -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed on this host")
    repo = _project(user, "npmapp")
    nobody(["npm", "init", "-y"], cwd=repo, user=user, tool=True)
    nobody(["npm", "install", "--no-audit", "--no-fund", "is-number"], cwd=repo, user=user,
           tool=True)  # fmt: skip
    test = "const isNumber = require('is-number');\nif (!isNumber(5)) process.exit(1);\n"
    _write(repo, {"test.js": test, ".gitignore": "node_modules/\n"})
    nobody(["npm", "pkg", "set", "scripts.test=node test.js"], cwd=repo, user=user, tool=True)
    _commit(repo, user)
    nobody(["init"], cwd=repo, user=user)
    assert "npm ci" in (repo / ".pyro.toml").read_text()
    out = nobody(["exec", "--", "npm", "test"], cwd=repo, user=user)
    assert "node test.js" in out.stdout
    # A lockfile change (a new dependency): the next exec sees it.
    nobody(["npm", "install", "--no-audit", "--no-fund", "is-odd"], cwd=repo, user=user,
           tool=True)  # fmt: skip
    out = nobody(["exec", "--", "node", "-e", "console.log(require('is-odd')(3))"],
                 cwd=repo, user=user)  # fmt: skip
    assert out.stdout.strip() == "true"
    _no_prepare_sandbox_left(user)


def test_what_the_projects_downloaded_is_in_the_pyro_homes_cache(user: dict[str, Path]) -> None:
    """After the projects above: npm's downloads are in the pyro home, for the next prepare.
    (pip keeps only what its index lets it cache, which may be nothing.)"""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed on this host")
    npm = user["home"] / "downloads" / "npm"
    assert any(f.is_file() for f in (npm / "_cacache").rglob("*"))


# -- projects made with uv, poetry and pnpm ---------------------------------------------------
# The tools that create the projects come from the registries into a directory of the test's
# (as a user's pipx or npm -g would put them); the ones pyro runs inside come from its own
# tools layer, declared by `pyro init` from what the project pins.


@pytest.fixture(scope="module")
def registry_tools(user: dict[str, Path]) -> str:
    """uv and poetry from PyPI, pnpm 9 and yarn 1 from npm, readable by every user: their
    bin dirs."""
    base = user["base"]
    venv = base / "pytools"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "uv", "poetry"], check=True, timeout=600)
    dirs = [str(venv / "bin")]
    if shutil.which("npm") is not None:
        node = base / "nodetools"
        subprocess.run(
            ["npm", "install", "--global", "--no-fund", "--no-audit", "--prefix", str(node),
             "pnpm@9", "yarn@1"],
            check=True, timeout=600, capture_output=True,
        )  # fmt: skip
        dirs.append(str(node / "bin"))
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    return ":".join(dirs)


def _tools_of(repo: Path) -> dict[str, str]:
    import tomllib

    config = tomllib.loads((repo / ".pyro.toml").read_text())
    return {k: v for k, v in config.get("tools", {}).items() if k != "host"}


def _check_run(repo: Path) -> list[str]:
    import tomllib

    run: list[str] = tomllib.loads((repo / ".pyro.toml").read_text())["check"]["run"]
    return run


TEST_PY = "import six\nimport {package}\n\n\ndef test_it():\n    assert six.PY3\n"


def test_a_uv_project(user: dict[str, Path], registry_tools: str) -> None:
    repo = _project(user, "uvapp")

    def uv(*args: str) -> None:
        nobody(["uv", *args], cwd=repo, user=user, tool=True, path=registry_tools)

    uv("init", "-q", "--name", "uvapp", "--package", ".")
    uv("add", "-q", "six")
    uv("add", "-q", "--dev", "pytest")
    _write(repo, {"tests/test_app.py": TEST_PY.format(package="uvapp")})
    _commit(repo, user)
    nobody(["init"], cwd=repo, user=user)
    # uv.lock names no uv version: the latest goes into pyro's tools layer (the user's own
    # uv is not on the workspace's PATH). pytest is locked, so it is the check.
    assert _tools_of(repo) == {"uv": "latest"}
    assert _check_run(repo) == ["pytest"]
    out = nobody(["exec", "--", "pytest", "-q"], cwd=repo, user=user)
    assert "1 passed" in out.stdout
    out = nobody(["exec", "--", "sh", "-c", "command -v uv; command -v pytest"], cwd=repo,
                 user=user)  # fmt: skip
    assert out.stdout.split() == ["/run/pyro/tools/uv/bin/uv", "/workspace/.venv/bin/pytest"]
    # As natively: `uv run` runs in the environment prepare synced, with no network.
    out = nobody(["exec", "--", "uv", "run", "pytest", "-q"], cwd=repo, user=user)
    assert "1 passed" in out.stdout
    # A new dependency in the lockfile: the next exec has it.
    uv("add", "-q", "iniconfig")
    out = nobody(["exec", "--", "python", "-c", "import iniconfig; print('ok')"], cwd=repo,
                 user=user)  # fmt: skip
    assert out.stdout.strip() == "ok"
    _no_prepare_sandbox_left(user)


def test_a_poetry_project(user: dict[str, Path], registry_tools: str) -> None:
    repo = user["projects"] / "poetryapp"

    def poetry(*args: str) -> None:
        where = repo if repo.is_dir() else user["projects"]
        nobody(["poetry", *args], cwd=where, user=user, tool=True, path=registry_tools)

    poetry("new", "-q", "poetryapp")
    nobody(["git", "init", "-q"], cwd=repo, user=user, tool=True)
    poetry("add", "-q", "six")
    poetry("add", "-q", "--group", "dev", "pytest")
    _write(repo, {"tests/test_app.py": TEST_PY.format(package="poetryapp")})
    _commit(repo, user)
    nobody(["init"], cwd=repo, user=user)
    # poetry.lock's header names the poetry that wrote it: the same one runs in the sandbox.
    header = (repo / "poetry.lock").read_text().splitlines()[0]
    assert _tools_of(repo) == {"poetry": header.split("Poetry ")[1].split()[0]}
    assert _check_run(repo) == ["pytest"]
    out = nobody(["exec", "--", "pytest", "-q"], cwd=repo, user=user)
    assert "1 passed" in out.stdout
    # The project's own package, editable: its sources in the workspace.
    out = nobody(["exec", "--", "python", "-c", "import poetryapp; print(poetryapp.__file__)"],
                 cwd=repo, user=user)  # fmt: skip
    assert out.stdout.strip() == "/workspace/src/poetryapp/__init__.py"
    poetry("add", "-q", "iniconfig")
    out = nobody(["exec", "--", "python", "-c", "import iniconfig; print('ok')"], cwd=repo,
                 user=user)  # fmt: skip
    assert out.stdout.strip() == "ok"


# pnpm 9 writes lockfile format 9.0 and no packageManager field: the 9.x line; yarn 1 a
# "yarn lockfile v1".
@pytest.mark.parametrize(
    ("manager", "init", "declared"),
    [("pnpm", ["init"], "9.x"), ("yarn", ["init", "-y"], "1.x")],
)
def test_a_node_project(
    user: dict[str, Path], registry_tools: str, manager: str, init: list[str], declared: str
) -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed on this host")
    repo = _project(user, f"{manager}app")

    def tool(*args: str) -> None:
        nobody(list(args), cwd=repo, user=user, tool=True, path=registry_tools)

    tool(manager, *init)
    tool(manager, "add", "is-number")
    test = "const isNumber = require('is-number');\nif (!isNumber(5)) process.exit(1);\n"
    _write(repo, {"test.js": test, ".gitignore": "node_modules/\n"})
    tool("npm", "pkg", "set", "scripts.test=node test.js")
    _commit(repo, user)
    nobody(["init"], cwd=repo, user=user)
    assert _tools_of(repo) == {manager: declared}
    assert _check_run(repo) == [f"{manager} test"]
    out = nobody(["exec", "--", manager, "test"], cwd=repo, user=user)
    assert "node test.js" in out.stdout
    if manager == "pnpm":
        # pnpm's store is the pyro home's download cache (the next relock downloads only what
        # is new), not a .pnpm-store on the workspace's filesystem frozen into the snapshot.
        listed = nobody(["exec", "--", "ls", "-A"], cwd=repo, user=user)
        assert ".pnpm-store" not in listed.stdout.split()
        assert any(f.is_file() for f in (user["home"] / "downloads" / "pnpm").rglob("*"))
    tool(manager, "add", "is-odd")
    out = nobody(["exec", "--", "node", "-e", "console.log(require('is-odd')(3))"], cwd=repo,
                 user=user)  # fmt: skip
    assert out.stdout.strip() == "true"


def test_a_project_versioned_by_git_tags_with_no_lock(user: dict[str, Path]) -> None:
    """hatch-vcs takes the version from git, and a workspace has no `.git`: pyro tells the
    build the version git gives on the host. With no lock file, uv installs what
    pyproject.toml declares (its test group too), then the project, editable."""
    repo = _project(user, "taggedapp")
    _write(repo, {
        "pyproject.toml": "[build-system]\nrequires = ['hatchling', 'hatch-vcs']\n"
                          "build-backend = 'hatchling.build'\n\n"
                          "[project]\nname = 'tagged-app'\ndynamic = ['version']\n"
                          "dependencies = ['six']\n\n"
                          "[dependency-groups]\ntest = ['pytest']\n\n"
                          "[tool.hatch.version]\nsource = 'vcs'\n\n"
                          "[tool.hatch.build.targets.wheel]\npackages = ['src/tagged_app']\n",
        "README.md": "# tagged\n",
        "src/tagged_app/__init__.py": "",
        "tests/test_app.py": TEST_PY.format(package="tagged_app"),
        ".gitignore": ".venv/\n",
    })  # fmt: skip
    _commit(repo, user)
    nobody(["git", "tag", "v1.4.0"], cwd=repo, user=user, tool=True)
    _write(repo, {"CHANGES.md": "next\n"})
    _commit(repo, user)
    short = nobody(["git", "rev-parse", "--short=7", "HEAD"], cwd=repo, user=user, tool=True)
    init = nobody(["init"], cwd=repo, user=user)
    assert "pyproject" in init.stdout + init.stderr
    assert _tools_of(repo) == {"uv": "latest"}
    assert _check_run(repo) == ["pytest"]
    out = nobody(["exec", "--", "pytest", "-q"], cwd=repo, user=user)
    assert "1 passed" in out.stdout
    script = "import importlib.metadata as m, tagged_app; print(m.version('tagged-app'))"
    out = nobody(["exec", "--", "python", "-c", script], cwd=repo, user=user)
    assert out.stdout.strip() == f"1.4.1.dev1+g{short.stdout.strip()}"
    _no_prepare_sandbox_left(user)


@pytest.mark.parametrize(
    ("prepare", "dev"),
    [("lefthook install", ["lefthook"]), ("node build.js", [])],
    ids=["installs-git-hooks", "builds-from-sources"],
)
def test_a_pnpm_project_whose_root_package_has_a_prepare_script(
    user: dict[str, Path], registry_tools: str, prepare: str, dev: list[str]
) -> None:
    """pnpm runs the root's `prepare` after installing: lefthook's fails where there is no
    .git (a sandbox has none), and a build needs the sources the dependency install lacks."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed on this host")
    repo = _project(user, "pnpm-" + prepare.split(maxsplit=1)[0])

    def tool(*args: str) -> None:
        nobody(list(args), cwd=repo, user=user, tool=True, path=registry_tools)

    build = "require('fs').mkdirSync('dist');require('fs').copyFileSync('src/m.js','dist/m.js')\n"
    _write(repo, {
        "package.json": json.dumps({"name": "app", "version": "1.0.0",
                                    "scripts": {"prepare": prepare, "test": "node t.js"}}),
        "lefthook.yml": "pre-commit:\n  commands:\n    t:\n      run: true\n",
        "build.js": build,
        "src/m.js": "module.exports = 1\n",
        "t.js": "require('is-number'); console.log('tested')\n",
        ".gitignore": "node_modules/\ndist/\n",
    })  # fmt: skip
    # --ignore-scripts: the lock alone, no hooks in the test's repository.
    tool("pnpm", "add", "--ignore-scripts", "is-number")
    if dev:
        tool("pnpm", "add", "--ignore-scripts", "--save-dev", *dev)
    _commit(repo, user)
    nobody(["init"], cwd=repo, user=user)
    out = nobody(["exec", "--", "pnpm", "test"], cwd=repo, user=user)
    assert "tested" in out.stdout
    listed = nobody(["exec", "--", "ls", "-A"], cwd=repo, user=user).stdout.split()
    assert ".git" not in listed
    assert ("dist" in listed) == (prepare == "node build.js")


def test_an_npm_library_that_commits_no_lock(user: dict[str, Path]) -> None:
    """Many libraries commit no lock (`package-lock=false` in .npmrc): npm installs what
    package.json allows, and the `prepare` build runs once the sources are there."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed on this host")
    repo = _project(user, "nolock")
    _write(repo, {
        "package.json": json.dumps({
            "name": "nolock", "version": "1.0.0",
            "scripts": {"prepare": "node build.js", "test": "node dist/m.js"},
            "dependencies": {"is-number": "^7.0.0"},
        }),
        ".npmrc": "package-lock=false\n",
        "build.js": "require('fs').mkdirSync('dist');"
                    "require('fs').copyFileSync('src/m.js','dist/m.js')\n",
        "src/m.js": "console.log(require('is-number')(5) ? 'built and tested' : 'no')\n",
        ".gitignore": "node_modules/\ndist/\n",
    })  # fmt: skip
    _commit(repo, user)
    init = nobody(["init"], cwd=repo, user=user)
    assert "package.json has no lock beside it" in init.stdout
    out = nobody(["exec", "--", "npm", "test"], cwd=repo, user=user)
    assert "built and tested" in out.stdout
    listed = nobody(["exec", "--", "ls", "-A"], cwd=repo, user=user).stdout.split()
    assert "package-lock.json" not in listed

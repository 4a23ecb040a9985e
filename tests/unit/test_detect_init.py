"""Ecosystem detection and `pyro init`, on real files in real git repositories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from pyro_loop import records
from pyro_loop.errors import ConflictError, InvalidInputError
from pyro_loop.project import detect
from pyro_loop.project.config import ProjectConfig, load_config
from pyro_loop.project.detect import CARGO_FETCH, Ecosystem, detect_ecosystems, keying_files
from pyro_loop.project.scaffold import find_project_root, init_project, render_config, template_text
from tests.helpers.project import git, run_pyro

ROOT = Path(__file__).resolve().parents[2]


def make_repo(path: Path, files: dict[str, str], *, commit: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    for name, content in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(content)
    if commit:
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", "initial")
    return path


PIP_RUN = (
    "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt -r requirements-dev.txt"
)
CASES: dict[str, tuple[list[str], list[Ecosystem]]] = {
    "uv": (["uv.lock", "pyproject.toml"],
           [Ecosystem("uv", ".", ("uv.lock", "pyproject.toml"),
                      ("uv sync --frozen --no-install-workspace",), ("uv sync --frozen",),
                      ("pyproject.toml",))]),
    "poetry": (["poetry.lock", "pyproject.toml"],
               [Ecosystem("poetry", ".", ("poetry.lock", "pyproject.toml"),
                          ("poetry install --no-root --no-interaction",),
                          ("poetry install --only-root --no-interaction",),
                          ("pyproject.toml",))]),
    "pip": (["requirements-dev.txt", "requirements.txt", "setup.py"],
            [Ecosystem("pip", ".", ("requirements.txt", "requirements-dev.txt"), (PIP_RUN,))]),
    "pipenv": (["Pipfile", "Pipfile.lock"],
               [Ecosystem("pipenv", ".", ("Pipfile", "Pipfile.lock"), ("pipenv sync",))]),
    "npm": (["package.json", "package-lock.json"],
            [Ecosystem("npm", ".", ("package.json", "package-lock.json"), ("npm ci",))]),
    "pnpm": (["package.json", "pnpm-lock.yaml"],
             [Ecosystem("pnpm", ".", ("package.json", "pnpm-lock.yaml"),
                        ("pnpm install --frozen-lockfile",))]),
    "yarn": (["package.json", "yarn.lock"],
             [Ecosystem("yarn", ".", ("package.json", "yarn.lock"),
                        ("yarn install --frozen-lockfile",))]),
    "cargo": (["Cargo.toml", "Cargo.lock"],
              [Ecosystem("cargo", ".", ("Cargo.toml", "Cargo.lock"), (CARGO_FETCH,))]),
    "go": (["go.mod", "go.sum"],
           [Ecosystem("go", ".", ("go.mod", "go.sum"), ("go mod download",))]),
    "npm without a lock": (["package.json", ".npmrc"],
                           [Ecosystem("npm", ".", ("package.json", ".npmrc"),
                                      ("npm install --no-package-lock",), locked=False)]),
    "none": (["README.md", "main.c", "Makefile"], []),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_each_ecosystem(tmp_path: Path, case: str) -> None:
    names, expected = CASES[case]
    repo = make_repo(tmp_path / case, {name: "x\n" for name in names})
    assert detect_ecosystems(repo) == expected

    result = init_project(repo)
    assert result.written and result.path == repo / ".pyro.toml"
    assert list(result.ecosystems) == expected
    loaded = load_config(result.path)
    assert loaded.warnings == ()
    config = loaded.config
    assert list(config.prepare_run) == [c for e in expected for c in e.run]
    if expected:
        assert config.prepare_keys == tuple(sorted(k for e in expected for k in e.keys))
        for command in config.prepare_run:
            assert json.dumps(command) in result.path.read_text()
    else:
        # Nothing detected: `keys` is left out, so prepare keeps looking for new lock files.
        assert config.prepare_keys is None
    assert config.environment == "host" and config.network == "off"


def test_a_kept_walk_sees_every_listing_change(tmp_path: Path) -> None:
    """Detection keeps its last walk while the directories' times hold: a manifest added,
    removed or renamed below the root is seen at once."""
    root = tmp_path / "mono"
    (root / "api").mkdir(parents=True)
    (root / "requirements.txt").write_text("requests\n")

    def names() -> list[tuple[str, str]]:
        return [(e.name, e.directory) for e in detect_ecosystems(root)]

    def settled() -> None:  # past the racy window: the next walk is kept
        time.sleep(2 * detect.RACY_NS / 1e9)
        assert names() and str(root) in detect._WALKS

    settled()
    assert names() == [("pip", ".")]
    (root / "api" / "package.json").write_text("{}")
    (root / "api" / "package-lock.json").write_text("{}")
    assert names() == [("pip", "."), ("npm", "api")]
    settled()
    (root / "api" / "package-lock.json").rename(root / "api" / "yarn.lock")
    assert names() == [("pip", "."), ("yarn", "api")]
    settled()
    (root / "web").mkdir()
    (root / "web" / "Cargo.lock").write_text("")
    assert ("cargo", "web") in names()
    settled()
    (root / "requirements.txt").unlink()
    assert ("pip", ".") not in names()


def test_requirements_naming_the_project_install_it_after_its_dependencies(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "r", {
        "requirements.txt": "-e .[test]\nrequests==2.32.0\n",
        "requirements-dev.txt": "-r requirements.txt\n./\npytest\n",
        "pyproject.toml": "", "setup.cfg": "",
    })  # fmt: skip
    (eco,) = detect_ecosystems(repo)
    assert eco.project == (".venv/bin/pip install -r requirements.txt -r requirements-dev.txt",)
    assert eco.project_keys == ("pyproject.toml", "setup.cfg")
    (run,) = eco.run
    strip = run.split(" && python3 -m venv")[0]
    out = tmp_path / "out"
    subprocess.run(["sh", "-c", strip.replace("/tmp/pyro-deps", str(out))], cwd=repo, check=True)
    assert (out / "requirements.txt").read_text() == "requests==2.32.0\n"
    assert (out / "requirements-dev.txt").read_text() == "-r requirements.txt\npytest\n"
    assert run.endswith(
        ".venv/bin/pip install -r /tmp/pyro-deps/requirements.txt"
        " -r /tmp/pyro-deps/requirements-dev.txt"
    )
    config = load_config(init_project(repo).path).config
    assert config.prepare_project == eco.project and config.prepare_run == eco.run


@pytest.mark.parametrize(
    "prepare", ["husky", "lefthook install", "is-ci || husky install", "simple-git-hooks"]
)
def test_npm_root_scripts_that_only_install_git_hooks_are_not_run(
    tmp_path: Path, prepare: str
) -> None:
    """A `prepare` that installs the repository's git hooks builds nothing, and lefthook's
    fails without a .git (a sandbox has none): the dependencies' install scripts run, it
    does not."""
    package = json.dumps({"scripts": {"prepare": prepare, "test": "node t.js"}})
    repo = make_repo(tmp_path / "n", {"package.json": package, "package-lock.json": "{}"})
    (eco,) = detect_ecosystems(repo)
    assert eco.run == ("npm ci --ignore-scripts && npm rebuild",)
    assert eco.project == ()
    both = json.dumps({"scripts": {"prepare": f"{prepare} && tsc"}})
    (repo / "package.json").write_text(both)
    (eco,) = detect_ecosystems(repo)
    assert eco.project == ("npm rebuild && npm run --if-present prepare",)


def test_the_installers_settings_key_the_snapshot_and_yarn_berry_installs_immutable(
    tmp_path: Path,
) -> None:
    """.yarnrc.yml (cacheKey, nodeLinker), the yarn release it names, .npmrc and
    pnpm-workspace.yaml change what an install writes, and the install sees only the keys:
    without .yarnrc.yml, yarn 4 rewrote the lock's cacheKey and refused to install."""
    yarnrc = "nodeLinker: node-modules\nyarnPath: .yarn/releases/yarn-4.4.1.cjs\n"
    repo = make_repo(
        tmp_path / "y",
        {
            "yarn.lock": "__metadata:\n  version: 8\n", "package.json": "{}",
            ".yarnrc.yml": yarnrc + "plugins:\n  - path: ../outside.cjs\n",
            ".yarn/releases/yarn-4.4.1.cjs": "",
            "v1/yarn.lock": "# yarn lockfile v1\n", "v1/package.json": "{}", "v1/.npmrc": "",
            "p/pnpm-lock.yaml": "", "p/package.json": "{}", "p/pnpm-workspace.yaml": "",
        },
    )  # fmt: skip
    assert detect_ecosystems(repo) == [
        Ecosystem("yarn", ".", ("package.json", "yarn.lock", ".yarnrc.yml",
                                ".yarn/releases/yarn-4.4.1.cjs"),
                  ("yarn install --immutable",)),
        Ecosystem("pnpm", "p", ("p/package.json", "p/pnpm-lock.yaml", "p/pnpm-workspace.yaml"),
                  ("cd p && pnpm install --frozen-lockfile",)),
        Ecosystem("yarn", "v1", ("v1/package.json", "v1/yarn.lock", "v1/.npmrc"),
                  ("cd v1 && yarn install --frozen-lockfile",)),
    ]  # fmt: skip


def test_npm_root_scripts_run_with_the_project(tmp_path: Path) -> None:
    scripts = '{"scripts": {"prepare": "tsc", "test": "node t.js"}}'
    repo = make_repo(tmp_path / "n", {"package.json": scripts, "package-lock.json": "{}"})
    (eco,) = detect_ecosystems(repo)
    assert eco.run == ("npm ci --ignore-scripts",)
    assert eco.project == ("npm rebuild && npm run --if-present prepare",)
    assert eco.project_keys == ("package.json",)


def test_cargo_and_go_manifests_alone(tmp_path: Path) -> None:
    make_repo(tmp_path / "lib", {"Cargo.toml": "", "sub/go.mod": ""})
    assert detect_ecosystems(tmp_path / "lib") == [
        Ecosystem("cargo", ".", ("Cargo.toml",), (CARGO_FETCH,)),
        Ecosystem("go", "sub", ("sub/go.mod",), ("cd sub && go mod download",)),
    ]


def test_requirements_next_to_a_python_lock_are_not_installed_twice(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"uv.lock": "", "pyproject.toml": "", "requirements.txt": ""})
    assert [e.name for e in detect_ecosystems(repo)] == ["uv"]


@pytest.mark.parametrize(
    ("lock", "ecosystem"),
    [("uv.lock", "uv"), ("poetry.lock", "poetry"), ("requirements.txt", "pip")],
)
def test_requirements_of_the_docs_or_below_a_python_project_are_no_second_venv(
    tmp_path: Path, lock: str, ecosystem: str
) -> None:
    """docs/requirements.txt (Read the Docs' Sphinx) beside a root lock belongs to the root
    project: no docs/.venv, no key on it. A subdirectory with its own project file is a
    project of its own, and a service's requirements in a monorepo without a Python root are
    installed."""
    repo = make_repo(
        tmp_path / "r",
        {
            lock: "", "pyproject.toml": "",
            "docs/requirements.txt": "Sphinx==8.2.3\n",
            "benchmarks/requirements-bench.txt": "asv\n",
            "plugins/extra/requirements.txt": "six\n",
            "plugins/extra/setup.py": "",
        },
    )  # fmt: skip
    found = [(e.name, e.directory) for e in detect_ecosystems(repo)]
    assert found == [(ecosystem, "."), ("pip", "plugins/extra")]
    assert not any(k.startswith(("docs/", "benchmarks/")) for k in keying_files(
        repo, ProjectConfig.default()))  # fmt: skip
    config = load_config(init_project(repo).path).config
    assert not any("docs" in command for command in config.prepare_run)

    mono = make_repo(
        tmp_path / "mono",
        {"services/api/requirements.txt": "flask\n", "web/docs/requirements.txt": "Sphinx\n",
         "web/package.json": "{}", "web/package-lock.json": "{}"},
    )  # fmt: skip
    assert [(e.name, e.directory) for e in detect_ecosystems(mono)] == [
        ("pip", "services/api"), ("npm", "web"),
    ]  # fmt: skip


def test_monorepo(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "mono",
        {
            "web/package.json": "{}",
            "web/package-lock.json": "{}",
            "services/api/go.mod": "module api\n",
            "services/api/go.sum": "",
            # Too deep, or where dependencies and build output live: never scanned.
            "services/api/tool/pnpm-lock.yaml": "",
            "web/node_modules/dep/package-lock.json": "",
            ".hidden/yarn.lock": "",
            "vendor/x/go.mod": "",
            "target/Cargo.lock": "",
            "build/requirements.txt": "",
        },
    )
    (repo / "linked").symlink_to(repo / "web")  # symlinked directories are not followed
    found = detect_ecosystems(repo)
    assert found == [
        Ecosystem("go", "services/api", ("services/api/go.mod", "services/api/go.sum"),
                  ("cd services/api && go mod download",)),
        Ecosystem("npm", "web", ("web/package.json", "web/package-lock.json"),
                  ("cd web && npm ci",)),
    ]  # fmt: skip
    assert keying_files(repo, ProjectConfig.default()) == [
        "services/api/go.mod", "services/api/go.sum", "web/package-lock.json", "web/package.json",
    ]  # fmt: skip

    (repo / "uv.lock").write_text("")
    assert [(e.name, e.directory) for e in detect_ecosystems(repo)] == [
        ("uv", "."), ("go", "services/api"), ("npm", "web"),
    ]  # fmt: skip
    config = load_config(init_project(repo / "web").path).config
    assert config.prepare_run == (
        "uv sync --frozen --no-install-workspace",
        "cd services/api && go mod download",
        "cd web && npm ci",
    )


def test_cargo_workspace_members_join_the_root(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "ws",
        {"Cargo.toml": "", "Cargo.lock": "", "crates/a/Cargo.toml": "", "fuzz/Cargo.toml": "",
         "fuzz/Cargo.lock": ""},
    )  # fmt: skip
    assert detect_ecosystems(repo) == [
        Ecosystem("cargo", ".", ("Cargo.toml", "Cargo.lock", "crates/a/Cargo.toml"),
                  (CARGO_FETCH,)),
        Ecosystem("cargo", "fuzz", ("fuzz/Cargo.toml", "fuzz/Cargo.lock"),
                  (f"cd fuzz && {CARGO_FETCH}",)),
    ]  # fmt: skip


def test_directories_are_quoted_for_the_shell(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "q", {"my app/yarn.lock": ""})
    [eco] = detect_ecosystems(repo)
    assert eco.run == ("cd 'my app' && yarn install --frozen-lockfile",)


def test_configured_keys_win(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "k", {"uv.lock": "", "pyproject.toml": ""})
    config = ProjectConfig.default()
    assert keying_files(repo, config) == ["pyproject.toml", "uv.lock"]
    config = records.replace(config, prepare_keys=("b.lock", "a.lock", "b.lock"))
    assert keying_files(repo, config) == ["a.lock", "b.lock"]


def test_init_from_a_subdirectory_writes_at_the_root(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"pyproject.toml": "", "uv.lock": "", "src/pkg/a.py": ""})
    result = init_project(repo / "src" / "pkg")
    assert result.root == repo.resolve()
    assert (repo / ".pyro.toml").is_file()
    assert not (repo / "src" / "pkg" / ".pyro.toml").exists()
    assert find_project_root(repo / "src") == repo.resolve()
    # The write leaves nothing else behind.
    assert sorted(p.name for p in repo.iterdir()) == [
        ".git", ".pyro.toml", "pyproject.toml", "src", "uv.lock"
    ]  # fmt: skip


def test_init_in_a_linked_worktree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "main", {"go.mod": "", "sub/x.go": ""}, commit=True)
    git(repo, "worktree", "add", "-q", str(tmp_path / "feature"))
    result = init_project(tmp_path / "feature" / "sub")
    assert result.path == (tmp_path / "feature" / ".pyro.toml").resolve()
    assert not (repo / ".pyro.toml").exists()


def test_init_outside_git_uses_the_directory(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    (plain / "sub").mkdir(parents=True)
    assert find_project_root(plain / "sub") == (plain / "sub").resolve()
    assert init_project(plain).path == plain.resolve() / ".pyro.toml"
    with pytest.raises(InvalidInputError, match="not a directory"):
        init_project(plain / "missing")


def test_existing_file_is_never_touched_without_force(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"package.json": "", "yarn.lock": ""})
    init_project(repo)
    config = repo / ".pyro.toml"
    edited = config.read_bytes().replace(b'network = "off"', b'network = "egress"  # mine')
    config.write_bytes(edited)
    before = os.stat(config)
    with pytest.raises(ConflictError) as info:
        init_project(repo)
    assert "already exists" in info.value.message and "\n" not in info.value.message
    assert info.value.hint and "--force" in info.value.hint
    assert config.read_bytes() == edited
    assert os.stat(config).st_mtime_ns == before.st_mtime_ns
    assert not (repo / ".pyro.toml.bak").exists()

    result = init_project(repo, force=True)
    assert result.backup == repo.resolve() / ".pyro.toml.bak"
    assert (repo / ".pyro.toml.bak").read_bytes() == edited
    assert config.read_text() == render_config(repo)
    assert load_config(config).config.network == "off"


def test_a_dangling_symlink_counts_as_existing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {})
    (repo / ".pyro.toml").symlink_to("nowhere")
    with pytest.raises(ConflictError):
        init_project(repo)
    assert (repo / ".pyro.toml").is_symlink()
    result = init_project(repo, force=True)
    assert result.backup is None and not (repo / ".pyro.toml").is_symlink()


def test_unwritable_places_are_one_line_errors(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {})
    (repo / ".pyro.toml").mkdir()
    with pytest.raises(InvalidInputError, match=r"cannot write .*\.pyro\.toml: Is a directory"):
        init_project(repo, force=True)


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"go.mod": ""})
    result = init_project(repo, dry_run=True)
    assert not result.written and not result.existed
    assert not (repo / ".pyro.toml").exists()
    assert result.content == render_config(repo)
    (repo / ".pyro.toml").write_text("# mine\n")
    result = init_project(repo, dry_run=True)
    assert result.existed and (repo / ".pyro.toml").read_text() == "# mine\n"


def test_rendering_keeps_the_templates_comments_and_order(tmp_path: Path) -> None:
    template = template_text()
    assert template == (ROOT / "templates" / "pyro.toml").read_text()
    repo = make_repo(tmp_path / "repo", {"uv.lock": "", "pyproject.toml": "", "web/yarn.lock": ""})
    content = render_config(repo)
    assert tomlkit.parse(content).as_string() == content
    comments = [line for line in template.splitlines() if line.lstrip().startswith("#")]
    lines = iter(content.splitlines())
    for comment in comments:  # each comment, in the template's order
        assert comment in lines, comment
    headers = [line for line in template.splitlines() if line.startswith("[")]
    assert [line for line in content.splitlines() if line.startswith("[")] == headers
    assert '    "cd web && yarn install --frozen-lockfile",' in content.splitlines()


# -- the CLI -------------------------------------------------------------------------------


def test_cli_init_writes_and_says_what_is_next(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "repo", {"pyproject.toml": "", "poetry.lock": "", "ui/pnpm-lock.yaml": ""}
    )
    result = run_pyro("init", str(repo / "ui"))
    assert result.returncode == 0, result.stderr
    assert "found: poetry, pnpm in ui" in result.stdout
    assert f"wrote {repo.resolve() / '.pyro.toml'}" in result.stdout
    assert "next: review it, then run: pyro up" in result.stdout
    assert (repo / ".pyro.toml").is_file()

    again = run_pyro("init", str(repo))
    assert again.returncode == 1
    assert again.stdout == ""
    lines = again.stderr.splitlines()
    assert lines[0] == f"pyro: error: {repo.resolve() / '.pyro.toml'} already exists"
    assert lines[1].startswith("  hint: ") and "--force" in lines[1]
    assert len(lines) == 2

    forced = run_pyro("init", str(repo), "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    data = json.loads(forced.stdout)
    assert data["written"] and data["existed"]
    assert data["backup"] == str(repo.resolve() / ".pyro.toml.bak")
    assert [e["name"] for e in data["ecosystems"]] == ["poetry", "pnpm"]


def test_cli_print_writes_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"Cargo.toml": ""})
    result = run_pyro("init", "--print", str(repo))
    assert result.returncode == 0, result.stderr
    assert result.stdout == render_config(repo)
    assert "found: cargo" in result.stderr and "would write" in result.stderr
    assert not (repo / ".pyro.toml").exists()
    data = json.loads(run_pyro("init", "--print", "--json", str(repo)).stdout)
    assert data["written"] is False and data["content"] == result.stdout
    assert not (repo / ".pyro.toml").exists()


def test_cli_init_here_with_nothing_detected(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": ""})
    result = subprocess.run(
        [sys.executable, "-m", "pyro_loop", "init"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "found no lock files" in result.stdout and "[prepare] run" in result.stdout
    assert load_config(repo / ".pyro.toml").config.prepare_run == ()


def test_detection_skips_entries_it_cannot_stat(tmp_path: Path) -> None:
    # /proc/1/cwd and the like: a link whose target cannot even be looked at.
    (tmp_path / "uv.lock").write_text("")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "loop").symlink_to("loop")  # ELOOP when followed
    found = detect_ecosystems(tmp_path)
    assert [e.name for e in found] == ["uv"]


def test_init_on_a_debian_base_adds_python3_venv_where_a_venv_is_made(tmp_path: Path) -> None:
    # Debian's python3 leaves out the venv module's ensurepip (python3-venv): the pip
    # commands init writes (`python3 -m venv .venv && ...`) need it in the environment.
    pip = make_repo(tmp_path / "pip", {"requirements.txt": "x\n"})
    ran = run_pyro("init", "--base", "debian:bookworm", str(pip))
    assert ran.returncode == 0, ran.stderr
    config = load_config(pip / ".pyro.toml").config
    assert (config.environment, config.packages) == ("debian:12", ("python3-venv",))
    npm = make_repo(tmp_path / "npm", {"package.json": "{}\n", "package-lock.json": "{}\n"})
    config = load_config(init_project(npm, base="debian:12").path).config
    assert (config.environment, config.packages) == ("debian:12", ())
    assert load_config(init_project(make_repo(tmp_path / "host", {})).path).config.environment == (
        "host"
    )
    refused = run_pyro("init", "--base", "ubuntu:24.04", str(make_repo(tmp_path / "bad", {})))
    assert refused.returncode == 1 and "unknown environment 'ubuntu:24.04'" in refused.stderr


def test_cargo_and_go_get_their_tests_and_a_host_toolchain_outside_the_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rustup installs cargo under ~/.cargo and ~/.rustup, which a sandbox does not see:
    init exposes them (where the system has no cargo of its own) and checks `cargo test`;
    a Go project gets `go test ./...`."""
    from pyro_loop.project.conventions import detect_host_toolchains

    home = tmp_path / "home"
    (home / ".cargo" / "bin").mkdir(parents=True)
    (home / ".cargo" / "bin" / "cargo").write_text("")
    (home / ".rustup").mkdir()
    repo = make_repo(tmp_path / "r", {"Cargo.toml": "", "Cargo.lock": "", "tool/go.mod": ""})
    found = detect_ecosystems(repo)
    system = (str(tmp_path / "usr-bin"),)
    assert detect_host_toolchains(found, home=home, system=system) == ["~/.cargo", "~/.rustup"]
    (tmp_path / "usr-bin").mkdir()
    (tmp_path / "usr-bin" / "cargo").write_text("")  # the system's own cargo: nothing to expose
    assert detect_host_toolchains(found, home=home, system=system) == []
    assert detect_host_toolchains(found, home=tmp_path / "nobody", system=()) == []

    monkeypatch.setenv("HOME", str(home))  # a private HOME, with rustup's install
    config = load_config(init_project(repo).path).config
    assert config.check_run == ("cargo test", "cd tool && go test ./...")
    if not any(Path(d, "cargo").exists() for d in ("/usr/bin", "/bin", "/usr/local/bin")):
        assert config.host_tools == ("~/.cargo", "~/.rustup")


def test_js_workspace_members_manifests_key_the_snapshot(tmp_path: Path) -> None:
    """A pnpm, npm or yarn workspace installs its members' dependencies from their
    package.json: without them in the install's sandbox, the lock's importers have no
    members (vuejs/pinia: packages/* from pnpm-workspace.yaml)."""
    repo = make_repo(
        tmp_path / "p",
        {
            "pnpm-lock.yaml": "", "package.json": "{}",
            "pnpm-workspace.yaml": "packages:\n  - 'packages/*'\n  - \"!packages/skip\"\n"
                                   "  - ../outside\ncatalog:\n  - not-a-package\n",
            "packages/a/package.json": "{}", "packages/b/package.json": "{}",
            "packages/b/node_modules/x/package.json": "{}",
            "npm/package-lock.json": "{}",
            "npm/package.json": json.dumps({"workspaces": ["libs/**"]}),
            "npm/libs/one/package.json": "{}", "npm/libs/deep/two/package.json": "{}",
            "yarn/yarn.lock": "",
            "yarn/package.json": json.dumps({"workspaces": {"packages": ["w"]}}),
            "yarn/w/package.json": "{}",
        },
    )  # fmt: skip
    (repo / "packages" / "linked").symlink_to(tmp_path)  # a member through a link: left out
    (tmp_path / "package.json").write_text("{}")
    keys = {e.directory: e.keys for e in detect_ecosystems(repo)}
    assert keys["."] == ("package.json", "pnpm-lock.yaml", "pnpm-workspace.yaml",
                         "packages/a/package.json", "packages/b/package.json")  # fmt: skip
    assert keys["npm"] == ("npm/package.json", "npm/package-lock.json",
                           "npm/libs/deep/two/package.json",
                           "npm/libs/one/package.json")  # fmt: skip
    assert keys["yarn"] == ("yarn/package.json", "yarn/yarn.lock", "yarn/w/package.json")


def test_cargo_fetch_runs_over_the_manifests_alone(tmp_path: Path) -> None:
    """The dependency install sees Cargo.toml and Cargo.lock without sources: cargo refused
    the manifest ("no targets specified", sharkdp/hexyl) until an empty src/lib.rs stood in
    for the fetch; none is left behind for the layer."""
    import shutil

    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.skip("cargo is not installed on this host")
    import pwd

    real_home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    crate = tmp_path / "crate"
    member = crate / "crates" / "a"
    member.mkdir(parents=True)
    (crate / "Cargo.toml").write_text(
        '[package]\nname = "app"\nversion = "0.1.0"\nedition = "2021"\n\n'
        '[dependencies]\na = { path = "crates/a" }\n\n[workspace]\nmembers = ["crates/a"]\n'
    )
    (member / "Cargo.toml").write_text('[package]\nname = "a"\nversion = "0.1.0"\n')
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "home"),
        "CARGO_HOME": str(tmp_path / "cargo-home"),
        "RUSTUP_HOME": os.environ.get("RUSTUP_HOME", str(real_home / ".rustup")),
        "CARGO_NET_OFFLINE": "true",  # no dependency from a registry: nothing to download
    }
    options: dict[str, Any] = {"cwd": crate, "env": env, "capture_output": True, "text": True}
    plain = subprocess.run(["cargo", "fetch"], check=False, **options)
    assert "no targets specified" in plain.stderr
    result = subprocess.run(["sh", "-c", CARGO_FETCH], check=False, **options)
    assert result.returncode == 0, result.stderr
    assert sorted(p.relative_to(crate).as_posix() for p in crate.rglob("*")) == [
        "Cargo.lock", "Cargo.toml", "crates", "crates/a", "crates/a/Cargo.toml",
    ]  # fmt: skip


PYPROJECT = """\
[project]
name = "app"
dependencies = ["six"]
{dynamic}
[project.optional-dependencies]
tests = ["pytest"]
docs = ["sphinx"]

[dependency-groups]
dev = ["ruff"]
test = ["pytest-cov"]
"""


def test_a_pyproject_without_a_lock_installs_what_it_declares(tmp_path: Path) -> None:
    """uv reads the declared dependencies (the tests' extra and group too) without building
    the project; the project itself comes after, editable, with its sources there."""
    repo = make_repo(tmp_path / "static", {"pyproject.toml": PYPROJECT.format(dynamic="")})
    [eco] = detect_ecosystems(repo)
    assert (eco.name, eco.keys, eco.project_keys) == ("pyproject", ("pyproject.toml",),
                                                      ("pyproject.toml",))  # fmt: skip
    assert eco.run == (
        "uv venv .venv && uv pip install -r pyproject.toml --extra tests --group test",
    )
    assert eco.project == ("uv pip install --no-deps -e .",)
    config = tomlkit.parse(render_config(repo))
    assert config["tools"]["uv"] == "latest"  # type: ignore[index]
    assert list(config["check"]["run"]) == ["pytest"]  # type: ignore[index]
    said = run_pyro("init", str(repo))
    assert "found: pyproject\nnote: pyproject.toml has no lock beside it" in said.stdout


def test_a_pyproject_whose_dependencies_the_backend_computes_installs_them_with_it(
    tmp_path: Path,
) -> None:
    dynamic = 'dynamic = ["dependencies", "version"]'
    repo = make_repo(tmp_path / "dynamic", {"pyproject.toml": PYPROJECT.format(dynamic=dynamic)})
    [eco] = detect_ecosystems(repo)
    assert eco.run == ("uv venv .venv && uv pip install --group test",)
    assert eco.project == ("uv pip install -e '.[tests]'",)


def test_pyprojects_that_are_no_project_of_their_own_install_nothing(tmp_path: Path) -> None:
    """Tool settings alone, one below a locked project or below another pyproject project,
    one beside requirements files (those win), and a file TOML cannot read."""
    repo = make_repo(tmp_path / "repo", {
        "pyproject.toml": "[tool.black]\nline-length = 100\n",
        "locked/uv.lock": "version = 1\n",
        "locked/pyproject.toml": '[project]\nname = "locked"\n',
        "locked/plugin/pyproject.toml": '[project]\nname = "plugin"\n',
        "app/pyproject.toml": '[project]\nname = "app"\n',
        "app/sub/pyproject.toml": '[project]\nname = "sub"\n',
        "reqs/pyproject.toml": '[project]\nname = "reqs"\n',
        "reqs/requirements.txt": "six\n",
        "broken/pyproject.toml": "[project\n",
    })  # fmt: skip
    found = [(e.name, e.directory) for e in detect_ecosystems(repo)]
    assert found == [("pyproject", "app"), ("uv", "locked"), ("pip", "reqs")]


def test_pnpm_and_yarn_root_scripts(tmp_path: Path) -> None:
    """pnpm and yarn run the root package's install scripts too: hook installers get a
    throwaway repository (removed after the install), and pnpm's scripts that build wait
    for the sources, in `pnpm rebuild` (the dependencies' build scripts, then the root's)."""
    hooks = json.dumps({"scripts": {"prepare": "lefthook install"}})
    builds = json.dumps({"scripts": {"prepare": "node build.js"}})
    repo = make_repo(tmp_path / "r", {
        "hooks/package.json": hooks, "hooks/pnpm-lock.yaml": "",
        "builds/package.json": builds, "builds/pnpm-lock.yaml": "",
        "yarn/package.json": hooks, "yarn/yarn.lock": "# yarn lockfile v1\n",
    })  # fmt: skip
    found = {e.directory: (e.run, e.project) for e in detect_ecosystems(repo)}
    assert found == {
        "hooks": (("cd hooks && (git init -q 2>/dev/null; pnpm install --frozen-lockfile; "
                   "s=$?; rm -rf .git; exit $s)",), ()),
        "builds": (("cd builds && pnpm install --frozen-lockfile --ignore-scripts",),
                   ("cd builds && pnpm rebuild",)),
        "yarn": (("cd yarn && (git init -q 2>/dev/null; yarn install --frozen-lockfile; "
                  "s=$?; rm -rf .git; exit $s)",), ()),
    }  # fmt: skip


def test_a_package_json_below_a_js_project_is_a_member_not_a_project(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {
        "package.json": '{"workspaces": ["packages/*"]}', "pnpm-lock.yaml": "",
        "packages/a/package.json": "{}", "tools/package.json": "{}",
        "tools/sub/package.json": "{}",
    })  # fmt: skip
    found = [(e.name, e.directory, e.run) for e in detect_ecosystems(repo)]
    assert found == [("pnpm", ".", ("pnpm install --frozen-lockfile",))]
    alone = make_repo(tmp_path / "alone", {
        "lib/package.json": '{"scripts": {"prepare": "tsc"}}', "lib/inner/package.json": "{}",
    })  # fmt: skip
    [eco] = detect_ecosystems(alone)
    assert (eco.directory, eco.run, eco.project) == (
        "lib", ("cd lib && npm install --no-package-lock --ignore-scripts",),
        ("cd lib && npm rebuild && npm run --if-present prepare",),
    )  # fmt: skip

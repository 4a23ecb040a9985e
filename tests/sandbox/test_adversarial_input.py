"""Hostile input: ids, names, layer keys, mount options and argv that looks like options.

Each case goes through the real entry point (the CLI, or the library where the CLI cannot
express it), checks that it is refused with a one-line error before anything touches a
path or a mount, and that nothing on the host changed: no workspace made, no file removed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from pyro_loop.errors import InvalidInputError
from pyro_loop.fs.safetar import Rules, UnsafeArchiveError, extract
from pyro_loop.project.discovery import find_project, tree_changes, write_changes, write_tree
from pyro_loop.store.layers import check_key
from pyro_loop.store.overlay import overlay_options
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.nobody import NOBODY, _commit, _project, _write, nobody
from tests.helpers.project import commit_project, git, run_pyro
from tests.helpers.sandbox import tree_state


@pytest.fixture
def canary(tmp_path: Path, pyro_home: Path) -> Path:
    """A directory beside the store (and one inside it) that traversal would reach."""
    pyro_home.mkdir(parents=True, exist_ok=True)
    (pyro_home / "workspaces").mkdir(exist_ok=True)
    (pyro_home / "workspaces" / "victim").mkdir()
    (pyro_home / "workspaces" / "victim" / "keep").write_text("keep\n")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "workspace.json").write_text("{}\n")
    return tmp_path


def _no_workspaces() -> bool:
    return json.loads(run_pyro("workspace", "list", "--json").stdout)["workspaces"] == []


@pytest.mark.parametrize(
    "ref",
    ["..", "../..", "../../precious", "/etc", ".", "victim/../..", "", ".hidden", "a/b"],
)
@pytest.mark.parametrize("command", ["delete", "status", "stop"])
def test_workspace_refs_that_traverse_are_refused(
    canary: Path, pyro_home: Path, command: str, ref: str
) -> None:
    victim, precious = pyro_home / "workspaces" / "victim", canary / "precious"
    before = (tree_state(victim), tree_state(precious))
    result = run_pyro("workspace", command, ref)
    assert result.returncode in (1, 2), result  # refused (or a usage error), never a crash
    assert "Traceback" not in result.stderr
    assert (tree_state(victim), tree_state(precious)) == before


@pytest.mark.parametrize(
    "name", ["../x", "-rf", "a,b", "a:b", "a\\b", "a\nb", "abc\n", "x" * 65, "", "/etc", "a b"]
)
def test_bad_workspace_names_are_refused_before_anything_is_made(seed_dir: Path, name: str) -> None:
    result = run_pyro("workspace", "create", "--seed-path", str(seed_dir), f"--name={name}")
    assert result.returncode == 1, result
    assert result.stderr.startswith("pyro: error: invalid workspace name")
    assert _no_workspaces()


@pytest.mark.parametrize(
    "key",
    ["abc,lowerdir=/", "../../../etc", "a" * 16 + ":/", "A" * 64, "0" * 15, "0" * 65,
     "0" * 16 + "\n", "0" * 16 + "\\"],
)  # fmt: skip
def test_layer_keys_that_would_inject_mount_options_are_refused(
    workspaces: Workspaces, key: str
) -> None:
    with pytest.raises(InvalidInputError, match="not a layer key"):
        check_key(key)
    with pytest.raises(InvalidInputError):
        workspaces.create(layers=[key])
    assert workspaces.list() == []


@pytest.mark.parametrize("package", ["git\n", "-oAPT::x=1", "git,evil", "../x", ""])
def test_bad_package_names_are_refused_before_any_build(
    workspaces: Workspaces, package: str
) -> None:
    with pytest.raises(InvalidInputError):
        workspaces.create(environment="debian:bookworm", packages=[package])
    assert workspaces.list() == []
    assert not workspaces.store.layers_dir.exists() or not any(
        workspaces.store.layers_dir.iterdir()
    )


@pytest.mark.parametrize("bad", ["a,upperdir=/", "a:b", "a\\b", "a\nb", ""])
def test_overlay_options_refuse_separator_characters(bad: str) -> None:
    for lowers, upper, work in (([bad], "u", "w"), (["l"], bad, "w"), (["l"], "u", bad)):
        with pytest.raises(ValueError, match="overlay mount"):
            overlay_options(lowers, upper, work)


@pytest.mark.parametrize("name", ["../up", "a/b", "-x", "baseline", ".", "x" * 65])
def test_bad_snapshot_names_are_refused(workspaces: Workspaces, seed_dir: Path, name: str) -> None:
    ws = workspaces.create(seed=seed_dir)
    layers_before = sorted(p.name for p in workspaces.store.layers_dir.iterdir())
    with pytest.raises(InvalidInputError):
        workspaces.snapshot_create(ws.id, name)
    assert workspaces.snapshot_list(ws.id)[-1].name == "baseline"
    assert sorted(p.name for p in workspaces.store.layers_dir.iterdir()) == layers_before


def test_argv_that_looks_like_options_reaches_the_workspace_verbatim(
    seed_dir: Path, tmp_path: Path
) -> None:
    ws = run_pyro("workspace", "create", "--seed-path", str(seed_dir), "--id-only")
    assert ws.returncode == 0, ws.stderr
    ws_id = ws.stdout.strip()
    try:
        # After `--`, nothing is a pyro option: `--version` is the command's own argv.
        echoed = run_pyro("workspace", "exec", ws_id, "--", "echo", "--json", "--help", "-rf")
        assert echoed.returncode == 0 and echoed.stdout == "--json --help -rf\n"
        missing = run_pyro("workspace", "exec", ws_id, "--", "--version")
        assert missing.returncode == 127  # run as a program named --version: not found
        # Bad environment names and labels are refused before the command starts.
        bad_env = run_pyro("workspace", "exec", ws_id, "--env", "A B=1", "--", "true")
        assert bad_env.returncode == 1 and "invalid environment variable" in bad_env.stderr
    finally:
        run_pyro("workspace", "delete", ws_id)
    bad_label = run_pyro("workspace", "create", "--label", "=x", "--seed-path", str(seed_dir))
    assert bad_label.returncode == 1 and "invalid label" in bad_label.stderr
    assert _no_workspaces()


# -- a repository's symlinks (keying files) ----------------------------------------------------


def _repo_with_links(tmp_path: Path, config: str, links: dict[str, str]) -> Path:
    """A committed project whose files in `links` are symlinks (path -> target)."""
    repo = commit_project(tmp_path / "repo", config, {"app.py": "print('hello')\n"})
    for rel, target in links.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).symlink_to(target)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "links")
    return repo


def _files_holding(root: Path, needle: bytes) -> list[str]:
    """Every regular file below `root` (links not followed) whose content has `needle`."""
    found = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as f:
                        if needle in f.read():
                            found.append(path)
    return found


SECRET = b"aws_secret_access_key = pyro-test-not-a-real-key-7f3a\n"
COPY_KEYS = 'run = ["mkdir -p .deps && cat {key} > .deps/seen"]\n'


@pytest.mark.parametrize(
    ("key", "declared", "target"),
    [
        ("requirements.txt", True, "../secret/credentials"),  # relative, climbing out
        ("package-lock.json", False, "{secret}"),  # absolute, found by npm's detection
        ("requirements.txt", True, ".git/config"),  # inside, but git's own (remote tokens)
    ],
)
def test_a_keying_file_linked_out_of_the_repository_is_never_read(
    tmp_path: Path, pyro_home: Path, key: str, declared: bool, target: str
) -> None:
    (tmp_path / "secret").mkdir()
    secret = tmp_path / "secret" / "credentials"
    secret.write_bytes(SECRET)
    config = "[prepare]\n" + (f'keys = ["{key}"]\n' if declared else "")
    config += COPY_KEYS.format(key=key)
    repo = _repo_with_links(tmp_path, config, {key: target.format(secret=secret)})
    if target.startswith(".git"):
        git(repo, "config", "remote.origin.url", "https://u:" + SECRET.decode().strip() + "@x")
    result = run_pyro("prepare", "-C", str(repo))
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"pyro: error: {key} is a symbolic link to "), lines
    assert lines[0].endswith(": pyro never reads through it"), lines
    assert "Traceback" not in result.stderr
    assert _files_holding(pyro_home, SECRET.strip()) == []


def test_a_keying_file_linked_inside_the_repository_is_read_from_its_target(
    tmp_path: Path,
) -> None:
    config = '[prepare]\nkeys = ["requirements.txt"]\n' + COPY_KEYS.format(key="requirements.txt")
    repo = _repo_with_links(tmp_path, config, {"requirements.txt": "reqs/base.txt"})
    (repo / "reqs").mkdir()
    (repo / "reqs" / "base.txt").write_text("requests==2.32.0\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    result = run_pyro("prepare", "-C", str(repo))
    assert result.returncode == 0, result.stderr
    up = run_pyro("exec", "-C", str(repo), "--", "cat", ".deps/seen")
    assert up.returncode == 0 and up.stdout == "requests==2.32.0\n", up


# -- what a workspace hands back: never a link the host writes through ------------------------

HOOK_LINK = (
    "mkdir -p .git/hooks && printf '#!/bin/sh\\necho owned\\n' > .git/hooks/pre-commit"
    " && chmod 755 .git/hooks/pre-commit && ln -s /proc/self/cwd/.git/hooks lib"
)
HOOK_PATCH = """\
diff --git a/lib b/lib
deleted file mode 120000
--- a/lib
+++ /dev/null
@@ -1 +0,0 @@
-/proc/self/cwd/.git/hooks
\\ No newline at end of file
diff --git a/lib/pre-commit b/lib/pre-commit
--- a/lib/pre-commit
+++ b/lib/pre-commit
@@ -1,2 +1,2 @@
 #!/bin/sh
-echo owned
+echo owned twice
"""


# The same in one patch: it creates the link and a file below it.
LINK_AND_FILE_PATCH = """\
diff --git a/lib2 b/lib2
new file mode 120000
--- /dev/null
+++ b/lib2
@@ -0,0 +1 @@
+/proc/self/cwd/.git/hooks
\\ No newline at end of file
diff --git a/lib2/pre-commit b/lib2/pre-commit
new file mode 100755
--- /dev/null
+++ b/lib2/pre-commit
@@ -0,0 +1,2 @@
+#!/bin/sh
+echo owned
"""


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """The caller's own git repository: the directory pyro is run from."""
    repo = commit_project(tmp_path / "victim", "", {"README.md": "mine\n"})
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()
    return repo


def _pyro_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyro_loop", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=120, check=False)  # fmt: skip


@pytest.mark.parametrize(
    ("patch", "refusal"),
    [(HOOK_PATCH, "the patch touches lib/pre-commit, below the symbolic link lib"),
     (LINK_AND_FILE_PATCH, "patch does not apply")],
)  # fmt: skip
def test_a_patch_through_a_workspace_link_never_writes_the_host(
    victim: Path, seed_dir: Path, tmp_path: Path, patch: str, refusal: str
) -> None:
    ws_id = run_pyro("workspace", "create", "--seed-path", str(seed_dir), "--id-only")
    assert ws_id.returncode == 0, ws_id.stderr
    ws = ws_id.stdout.strip()
    try:
        made = run_pyro("workspace", "exec", ws, "--", "sh", "-c", HOOK_LINK)
        assert made.returncode == 0, made.stderr
        (tmp_path / "hook.patch").write_text(patch)
        before = tree_state(victim)
        applied = _pyro_in(victim, "workspace", "patch", "apply", ws,
                           "--patch-file", str(tmp_path / "hook.patch"))  # fmt: skip
        assert not (victim / ".git" / "hooks" / "pre-commit").exists()
        assert tree_state(victim) == before
        assert applied.returncode == 1, applied
        assert applied.stderr.startswith(f"pyro: error: {refusal}"), applied.stderr
        assert "Traceback" not in applied.stderr
    finally:
        run_pyro("workspace", "delete", ws)


def test_apply_never_writes_through_a_link_nor_brings_back_one_that_leaves(
    tmp_path: Path,
) -> None:
    """The repository holds `docs -> ../outside` (committed); the workspace puts a real
    directory there, and a link out of the tree. `pyro apply` writes neither through the
    host's link nor a link that leaves the repository."""
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = _repo_with_links(tmp_path, "", {"docs": "../outside"})
    try:
        made = run_pyro("exec", "-C", str(repo), "--", "sh", "-c",
                        "rm docs && mkdir docs && echo planted > docs/notes.md")  # fmt: skip
        assert made.returncode == 0, made.stderr
        before = tree_state(repo)
        one = run_pyro("apply", "-C", str(repo), "docs/notes.md")
        assert one.returncode == 1, one
        assert one.stderr.startswith("pyro: error: docs/notes.md: docs is a symbolic link on ")
        assert list(outside.iterdir()) == []
        assert tree_state(repo) == before
        # All changes at once: the link goes first, and the file lands in the repository.
        everything = run_pyro("apply", "-C", str(repo))
        assert everything.returncode == 0, everything.stderr
        assert (repo / "docs" / "notes.md").read_text() == "planted\n"
        assert list(outside.iterdir()) == []
        made = run_pyro("exec", "-C", str(repo), "--", "ln", "-s", "../../outside", "away")
        assert made.returncode == 0, made.stderr
        away = run_pyro("apply", "-C", str(repo), "away")
        assert away.returncode == 1, away
        assert away.stderr.startswith("pyro: error: away is a symbolic link to ../../outside,")
        assert not (repo / "away").is_symlink()
    finally:
        run_pyro("down", "--delete", "-C", str(repo))


def _archive(members: list[tuple[str, bytes, str]]) -> io.BytesIO:
    """A tar of (name, type flag, link name or content) members, as a workspace could send."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o6777 if kind == tarfile.REGTYPE else 0o755
            data = extra.encode() if kind == tarfile.REGTYPE else b""
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = extra
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out.seek(0)
    return out


@pytest.mark.parametrize(
    "members",
    [
        [("t", tarfile.DIRTYPE, ""), ("t/lib", tarfile.SYMTYPE, "{outside}")],
        [("t", tarfile.DIRTYPE, ""), ("t/up", tarfile.SYMTYPE, "../../outside")],
        [("t", tarfile.DIRTYPE, ""), ("t/lib", tarfile.SYMTYPE, "."),
         ("t/lib/pre-commit", tarfile.REGTYPE, "planted")],
        [("t", tarfile.DIRTYPE, ""), ("t/f", tarfile.REGTYPE, "x"), ("t/f/g", tarfile.REGTYPE, "")],
        [("t", tarfile.DIRTYPE, ""), ("t/h", tarfile.LNKTYPE, "{outside}/keep")],
        [("t", tarfile.DIRTYPE, ""), ("t/h", tarfile.LNKTYPE, "../outside/keep")],
        [("t", tarfile.DIRTYPE, ""), ("t/dev", tarfile.CHRTYPE, "")],
        [("../outside/planted", tarfile.REGTYPE, "planted")],
        [("/tmp/planted", tarfile.REGTYPE, "planted")],
        [("t", tarfile.DIRTYPE, ""), ("t/sib", tarfile.SYMTYPE, "../t2")],  # beside the output
    ],
)  # fmt: skip
def test_a_hostile_export_archive_writes_nothing_outside_its_directory(
    tmp_path: Path, members: list[tuple[str, bytes, str]]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    filled = [(n, k, e.format(outside=outside)) for n, k, e in members]
    before = tree_state(tmp_path / "outside")
    with pytest.raises(UnsafeArchiveError), tarfile.open(fileobj=_archive(filled)) as tar:
        extract(tar, dest, Rules("to export t", links_within="t"))
    assert tree_state(outside) == before
    assert not (tmp_path / "planted").exists() and not Path("/tmp/planted").exists()


def test_an_export_archive_unpacks_links_inside_and_hard_links_as_copies(tmp_path: Path) -> None:
    members = [("t", tarfile.DIRTYPE, ""), ("t/f", tarfile.REGTYPE, "content"),
               ("t/h", tarfile.LNKTYPE, "t/f"), ("t/l", tarfile.SYMTYPE, "f")]  # fmt: skip
    with tarfile.open(fileobj=_archive(members)) as tar:
        extract(tar, tmp_path, Rules("to export t", links_within="t"))
    assert (tmp_path / "t" / "h").read_text() == "content"
    assert os.readlink(tmp_path / "t" / "l") == "f"
    assert stat.S_IMODE((tmp_path / "t" / "f").stat().st_mode) == 0o755  # no set-id bits


def test_a_crafted_tree_with_a_link_and_a_directory_of_one_name_writes_nothing_outside(
    tmp_path: Path,
) -> None:
    """git refuses such a tree (fsck: duplicateEntries) but fetch does not check by
    default: `lib` is a symlink out of the tree and also a directory holding a file."""
    import pygit2

    outside = tmp_path / "outside"
    outside.mkdir()
    repo_dir = commit_project(tmp_path / "repo", "", {"README.md": "hi\n"})
    repo = pygit2.Repository(str(repo_dir))
    blob = repo.create_blob(b"planted\n")
    inner = repo.TreeBuilder()
    inner.insert("authorized_keys", blob, pygit2.GIT_FILEMODE_BLOB)
    link = repo.create_blob(os.fsencode(outside))
    raw = b"120000 lib\0" + link.raw + b"40000 lib\0" + inner.write().raw
    crafted = repo.odb.write(pygit2.GIT_OBJECT_TREE, raw)
    dest = tmp_path / "layer"
    dest.mkdir()
    write_tree(find_project(repo_dir), str(crafted), dest)
    changes = tree_changes(find_project(repo_dir), str(repo.head.peel(pygit2.Tree).id),
                           str(crafted))  # fmt: skip
    later = tmp_path / "later"
    later.mkdir()
    write_changes(find_project(repo_dir), changes, later)
    assert list(outside.iterdir()) == []
    assert os.readlink(dest / "lib") == str(outside)


def test_detection_reads_no_file_through_a_link_out_of_the_repository(tmp_path: Path) -> None:
    """package.json linked to a host file with install scripts: detection must not read it
    (it would choose `npm ci --ignore-scripts` from the host file's content)."""
    from pyro_loop.project.detect import detect_ecosystems

    host = tmp_path / "host-package.json"
    host.write_text('{"scripts": {"postinstall": "echo from the host"}}\n')
    repo = _repo_with_links(tmp_path, "", {"package.json": str(host)})
    (repo / "package-lock.json").write_text("{}\n")
    (repo / "inside.json").write_text('{"scripts": {"postinstall": "echo inside"}}\n')
    found = [e for e in detect_ecosystems(repo) if e.name == "npm"]
    assert found and found[0].run == ("npm ci",), found
    (repo / "package.json").unlink()
    (repo / "package.json").symlink_to("inside.json")  # a link inside is followed
    assert [e.run for e in detect_ecosystems(repo) if e.name == "npm"] == [
        ("npm ci --ignore-scripts",)
    ]


def test_init_reads_the_tools_and_tests_of_no_file_through_a_link_out_of_the_repository(
    tmp_path: Path,
) -> None:
    """What `pyro init` writes down (tool versions, test commands) comes from the
    repository's own files: a package.json linked to a host file pins nothing and names no
    test script."""
    from pyro_loop.project.conventions import detect_checks, detect_tools
    from pyro_loop.project.detect import detect_ecosystems

    host = tmp_path / "host-package.json"
    host.write_text('{"packageManager": "pnpm@8.15.0", "scripts": {"test": "from-host"}}\n')
    repo = _repo_with_links(tmp_path, "", {"package.json": str(host)})
    (repo / "pnpm-lock.yaml").write_text("lockfileVersion: '9.0'\n")
    ecosystems = detect_ecosystems(repo)
    assert detect_tools(repo, ecosystems) == {"pnpm": "9.x"}  # the lock's, not the host's
    assert detect_checks(repo, ecosystems) == []


@pytest.mark.parametrize(
    "files",
    [
        {"pyproject.toml": 'tool = 3\n[project]\nname = "x"\n', "uv.lock": "version = 1\n"},
        {"pyproject.toml": 'project = "x"\ntool = ["pytest"]\n', "poetry.lock": ""},
        {"pyproject.toml": "[tool.uv]\nrequired-version = 7\n", "uv.lock": ""},
        {"package.json": "[1, 2]", "package-lock.json": "{}"},
        {"package.json": '{"scripts": "test", "packageManager": 3}', "pnpm-lock.yaml": ""},
        {"package.json": '{"workspaces": {"packages": 1}}', "yarn.lock": ""},
        {"pyproject.toml": b"\xff\xfe not toml [", "uv.lock": ""},
    ],
)
def test_odd_values_in_a_repository_s_manifests_never_break_detection(
    tmp_path: Path, files: dict[str, str | bytes]
) -> None:
    """A repository may put any value anywhere: detection reads a value of the wrong type as
    absent, as if the table were empty."""
    from pyro_loop.project.conventions import detect_checks, detect_tools
    from pyro_loop.project.detect import detect_ecosystems

    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    ecosystems = detect_ecosystems(tmp_path)
    assert ecosystems
    assert set(detect_tools(tmp_path, ecosystems).values()) <= {"latest", "9.x", "8.x", "1.x",
                                                                 "4.x"}  # fmt: skip
    assert detect_checks(tmp_path, ecosystems) in ([], ["pytest"])


# -- the same, as an ordinary user -------------------------------------------------------------


@pytest.mark.slow
def test_as_an_ordinary_user_no_repository_link_or_workspace_link_reaches_the_host(
    user: dict[str, Path],
) -> None:
    """uid 65534 owns the secret, the repositories and the store, so no permission stands
    in the way: what stops each attack is how pyro resolves paths. A keying file linked to
    the user's credentials, a directory turned into a link to their ~/.ssh, and a workspace
    link to the calling repository's .git/hooks handed to `patch apply`."""
    projects = user["projects"]
    secret = user["user_home"] / "credentials"
    secret.write_bytes(SECRET)
    os.chown(secret, NOBODY, NOBODY)

    keyed = _project(user, "keyed")
    _write(keyed, {".pyro.toml": '[prepare]\nkeys = ["requirements.txt"]\n'
                   + COPY_KEYS.format(key="requirements.txt")})  # fmt: skip
    nobody(["ln", "-s", str(secret), "requirements.txt"], cwd=keyed, user=user, tool=True)
    _commit(keyed, user)
    nobody(["trust"], cwd=keyed, user=user)  # the user approves the file: the link is the test
    refused = nobody(["prepare"], cwd=keyed, user=user, check=False)
    assert refused.returncode == 1, refused
    assert refused.stderr.startswith("pyro: error: requirements.txt is a symbolic link to ")

    synced = _project(user, "synced")
    _write(synced, {".pyro.toml": '[sync]\nexclude = ["a", "!a/"]\n', "a/credentials": "x\n"})
    _commit(synced, user)
    nobody(["exec", "--", "true"], cwd=synced, user=user)
    nobody(["git", "rm", "-rq", "a"], cwd=synced, user=user, tool=True)
    nobody(["ln", "-s", str(secret.parent), "a"], cwd=synced, user=user, tool=True)
    _commit(synced, user)
    seen = nobody(["exec", "--", "sh", "-c", "cat a/* 2>/dev/null; true"], cwd=synced, user=user)
    assert SECRET.decode().strip() not in seen.stdout

    victim = _project(user, "victim")
    _write(victim, {"README.md": "mine\n"})
    _commit(victim, user)
    seed = _project(user, "seed")
    ws = nobody(["workspace", "create", "--seed-path", str(seed), "--id-only"],
                cwd=projects, user=user).stdout.strip()  # fmt: skip
    nobody(["workspace", "exec", ws, "--", "sh", "-c", HOOK_LINK], cwd=projects, user=user)
    patch = user["user_home"] / "hook.patch"
    patch.write_text(HOOK_PATCH)
    os.chown(patch, NOBODY, NOBODY)
    applied = nobody(["workspace", "patch", "apply", ws, "--patch-file", str(patch)],
                     cwd=victim, user=user, check=False)  # fmt: skip
    assert applied.returncode == 1, applied
    assert not (victim / ".git" / "hooks" / "pre-commit").exists()
    for done in ("synced",):
        nobody(["down", "--delete"], cwd=projects / done, user=user, check=False)
    nobody(["workspace", "delete", ws], cwd=projects, user=user, check=False)
    assert _files_holding(user["home"], SECRET.strip()) == []

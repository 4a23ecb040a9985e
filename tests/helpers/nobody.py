"""pyro installed for uid 65534 (nobody), run through setpriv: the unprivileged user's view.

Fixtures: `user` (a home and a copy of pyro that nobody can read, with its dependencies),
`nobody_env` (the same for the library-level lifecycle script).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

NOBODY = 65534


SYSTEM_PYTHON = "/usr/bin/python3"


PACKAGE = Path(__file__).resolve().parents[2] / "src" / "pyro_loop"


GIT_ENV = {
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
}  # fmt: skip


PASSED = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "PIP_CERT", "CURL_CA_BUNDLE",
          "NODE_EXTRA_CA_CERTS", "PIP_INDEX_URL", "PIP_FIND_LINKS", "HTTPS_PROXY", "HTTP_PROXY",
          "NO_PROXY", "npm_config_registry")  # fmt: skip


def _distributions(name: str, seen: set[str]) -> None:
    """`name` and every distribution it requires (extras left out), by normalized name."""
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        return
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return
    seen.add(key)
    for requirement in dist.requires or ():
        if "extra ==" in requirement:
            continue
        _distributions(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0], seen)


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Where `nobody` works: a library copy of pyro and its dependencies, a pyro home, a
    directory for projects; all under a world-searchable temporary directory."""
    if os.getuid() != 0:
        pytest.skip("not root: the suite runs as an ordinary user already")
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to drop to an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="pyro-real-", dir="/tmp"))
    base.chmod(0o755)
    lib = base / "lib"
    shutil.copytree(PACKAGE, lib / "pyro_loop", ignore=shutil.ignore_patterns("__pycache__"))
    for shipped in ("templates", "hooks"):  # where a wheel has them
        shutil.copytree(PACKAGE.parent.parent / shipped, lib / "pyro_loop" / shipped)
    seen: set[str] = set()
    for name in ("typer", "platformdirs", "pygit2", "tomlkit", "watchfiles", "inotify_simple"):
        _distributions(name, seen)
    for name in seen:
        dist = importlib.metadata.distribution(name)
        for file in dist.files or ():
            source = Path(str(dist.locate_file(file)))
            if source.is_file() and not str(file).startswith(".."):
                (lib / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, lib / file)
    subprocess.run(["chmod", "-R", "a+rX", str(lib)], check=True)
    home, projects, own = base / "pyro-home", base / "projects", base / "home"
    for path in (home, projects, own):
        path.mkdir()
        os.chown(path, NOBODY, NOBODY)
    try:
        yield {"lib": lib, "home": home, "projects": projects, "user_home": own, "base": base}
    finally:
        subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
             SYSTEM_PYTHON, "-c", "from pyro_loop.workspace.manager import Workspaces as W\n"
             "w = W()\n[w.delete(s.record.id) for s in w.list()]"],
            env={"PYTHONPATH": str(lib), "PYRO_HOME": str(home), "PATH": "/usr/bin:/bin"},
            check=False, capture_output=True, timeout=120,
        )  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def nobody(
    args: list[str],
    *,
    cwd: Path,
    user: dict[str, Path],
    tool: bool = False,
    check: bool = True,
    timeout: float = 600,
    path: str = "",
) -> subprocess.CompletedProcess[str]:
    """`pyro ARGS` (or, with `tool`, the command ARGS itself) as uid 65534 in `cwd`; `path`:
    directories before the system's on PATH (where the test installed uv, poetry, pnpm)."""
    env = {
        "PATH": f"{path}:/usr/local/bin:/usr/bin:/bin" if path else "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(user["user_home"]),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYRO_HOME": str(user["home"]),
        # As in every test (conftest): `down --delete` keeps no standby sandbox running.
        "PYRO_POOL_SECONDS": "0",
        **GIT_ENV,
        **{name: os.environ[name] for name in PASSED if name in os.environ},
    }
    if not tool:
        env["PYTHONPATH"] = str(user["lib"])
        args = [SYSTEM_PYTHON, "-c", "from pyro_loop.cli.app import main; main()", *args]
    result = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


def _commit(repo: Path, user: dict[str, Path]) -> None:
    nobody(["git", "add", "-A"], cwd=repo, user=user, tool=True)
    nobody(["git", "commit", "-qm", "change"], cwd=repo, user=user, tool=True)


def _project(user: dict[str, Path], name: str) -> Path:
    repo = user["projects"] / name
    repo.mkdir()
    os.chown(repo, NOBODY, NOBODY)
    nobody(["git", "init", "-q"], cwd=repo, user=user, tool=True)
    return repo


def _write(repo: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(repo)], check=True)


LIFECYCLE = r"""
import json, os, stat, sys, time
from pathlib import Path

from pyro_loop.runtime import Limits
from pyro_loop.workspace.manager import Workspaces

seed, mark, fork_probe = Path(sys.argv[1]), sys.argv[2], sys.argv[3]


def tree(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            body = p.read_bytes().hex() if stat.S_ISREG(st.st_mode) else None
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else None
            out[str(p.relative_to(root))] = [st.st_mode, st.st_uid, st.st_mtime_ns, body, link]
    return out


def marked():
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():  # argv has the mark too
            try:
                if mark.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


with open("/proc/self/status") as f:
    status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
out = {
    "uid": os.getuid(),
    "euid": os.geteuid(),
    "gid": os.getgid(),
    "groups": os.getgroups(),
    "cap_eff": status["CapEff"].strip(),
}
seed_before = tree(seed)
ws = Workspaces()
rec = ws.create(seed=seed, limits=Limits(processes=64))


def run(*argv):
    r = ws.exec(rec.id, list(argv), timeout=30)
    return {"exit": r.exit_code, "out": r.stdout.decode(), "err": r.stderr.decode()}


try:
    out["id"] = run("id", "-u")
    out["edit"] = run("sh", "-c", "touch /workspace/x && echo edited > /workspace/README.md"
                      " && mkdir /workspace/d && echo f > /workspace/d/f && echo via > src/link")
    wdir = ws.resolve(rec.id)
    upper = wdir.upper(wdir.load().generation)
    out["upper_owners"] = {
        str(p.relative_to(upper)): [p.lstat().st_uid, p.lstat().st_gid]
        for p in sorted(upper.rglob("*"))
    }
    out["escape"] = run("python3", "-c", sys.stdin.read())
    out["fork"] = run("python3", "-c", fork_probe, "200", mark)
    out["seed_unchanged_after_edit"] = tree(seed) == seed_before
    ws.snapshot_create(rec.id, "edited")
    ws.reset(rec.id)
    out["after_reset"] = run("sh", "-c", "ls /workspace; cat /workspace/README.md")
    ws.reset(rec.id, snapshot="edited")
    out["after_snapshot_reset"] = run("sh", "-c", "ls /workspace; cat /workspace/README.md")
    started = run("sh", "-c", "setsid -f python3 -c 'import time; time.sleep(300)' %s"
                  " >/dev/null 2>&1 </dev/null" % mark)
    deadline = time.monotonic() + 5
    while not marked() and time.monotonic() < deadline:
        time.sleep(0.02)
    out["daemon_seen"] = bool(marked()) and started["exit"] == 0
finally:
    ws.delete(rec.id)

# Files the workspace made unreadable to their owner (chmod 000): root reads them anyway, an
# ordinary user must too, or the snapshot cannot be taken.
other = ws.create(seed=seed)
try:
    made = ws.exec(other.id, ["sh", "-c", "echo key > key && chmod 000 key && mkdir locked"
                              " && echo precious > locked/f && chmod 000 locked"])
    out["unreadable_made"] = made.exit_code
    try:
        ws.snapshot_create(other.id, "unreadable")
        ws.reset(other.id)
        ws.reset(other.id, snapshot="unreadable")
        back = ws.exec(other.id, ["sh", "-c", "chmod 700 locked key; cat key locked/f"])
        out["unreadable_snapshot"] = back.stdout.decode()
    except Exception as exc:
        out["unreadable_snapshot"] = "%s: %s" % (type(exc).__name__, exc)
    # A tree deeper than Python's recursion limit, with a directory its owner cannot write:
    # the agent removes it without privileges to override that.
    nest = ("import os\nos.mkdir('deep')\nos.chdir('deep')\nfor _ in range(1200):\n"
            "    os.mkdir('d')\n    os.chdir('d')\nos.chmod('/workspace/deep/d/d', 0o500)")
    made = ws.exec(other.id, ["python3", "-c", nest])
    try:
        removed = ws.client(other.id).remove_many(["deep"])
    except Exception as exc:
        removed = "%s: %s" % (type(exc).__name__, exc)
    left = ws.exec(other.id, ["test", "-e", "deep"]).exit_code
    out["deep_tree_removed"] = [made.exit_code, removed, left]
    # A file pyro put there is written again in its own inode while nothing else runs in the
    # workspace (agent/quiet.py): the gate's lock and its look at /proc need no privileges.
    import io, tarfile

    def one_file(data):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo("put.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    client = ws.client(other.id)
    client.put_tar(one_file(b"first\n"))
    before = ws.exec(other.id, ["stat", "-c", "%i", "put.txt"]).stdout.decode()
    again = client.put_tar(one_file(b"second, longer\n"), reuse=["put.txt"])
    after = ws.exec(other.id, ["sh", "-c", "stat -c %i put.txt; cat put.txt"]).stdout.decode()
    out["put_in_place"] = [again.get("rewritten"), after == before + "second, longer\n"]
finally:
    ws.delete(other.id)
deadline = time.monotonic() + 5
while marked() and time.monotonic() < deadline:
    time.sleep(0.02)
out["left_after_delete"] = marked()
out["listed_after_delete"] = [s.record.id for s in ws.list()]
out["seed_unchanged"] = tree(seed) == seed_before
print(json.dumps(out))
"""


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(Path(dirpath, name), uid, gid, follow_symlinks=False)


@pytest.fixture(scope="module")
def nobody_env() -> Iterator[dict[str, Path]]:
    """A world-readable copy of the library, plus a home and a seed owned by `nobody`."""
    base = Path(tempfile.mkdtemp(prefix="pyro-unprivileged-", dir="/tmp"))
    try:
        base.chmod(0o755)
        lib = base / "lib"
        shutil.copytree(PACKAGE, lib / "pyro_loop", ignore=shutil.ignore_patterns("__pycache__"))
        for dirpath, dirnames, filenames in os.walk(lib):
            for name in dirnames:
                Path(dirpath, name).chmod(0o755)
            for name in filenames:
                Path(dirpath, name).chmod(0o644)
        lib.chmod(0o755)
        home = base / "pyro-home"
        home.mkdir(mode=0o700)
        os.chown(home, NOBODY, NOBODY)
        seed = base / "seed"
        (seed / "src").mkdir(parents=True)
        (seed / "README.md").write_text("hello\n")
        (seed / "src" / "app.py").write_text("print('app')\n")
        (seed / "src" / "link").symlink_to("../README.md")
        _chown_tree(seed, NOBODY, NOBODY)
        script = base / "lifecycle.py"
        script.write_text(LIFECYCLE)
        script.chmod(0o644)
        yield {"base": base, "lib": lib, "home": home, "seed": seed, "script": script}
    finally:
        # Whatever a failed run left running is deleted through the API, as its owner.
        _as_nobody(
            ["-c", "from pyro_loop.workspace.manager import Workspaces as W\n"
             "w = W()\n[w.delete(s.record.id) for s in w.list()]"],
            lib=base / "lib", home=base / "pyro-home", timeout=60,
        )  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def _as_nobody(
    args: list[str], *, lib: Path, home: Path, stdin: str = "", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the system python as uid/gid 65534, no supplementary groups, a minimal environment."""
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
         SYSTEM_PYTHON, *args],
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(lib),
            "PYRO_HOME": str(home),
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
        },
        cwd="/",
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )  # fmt: skip

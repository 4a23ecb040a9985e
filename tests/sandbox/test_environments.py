"""Debian environments: names and keys, the build into the layer store, workspaces on them.

The fast tests drive the build through a stand-in for mmdebstrap (a script that writes a
tiny tarball). The slow ones build the real `debian:12` once per run, with mmdebstrap and
the Debian mirror: as the user running the suite, and, when that is root, also as `nobody`
(uid 65534, no privileges) with the system python, as tests/sandbox/test_unprivileged.py does. A
build that must fail (an unknown package) runs at the same time, in its own store.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pyro_loop.errors import HostUnsupportedError, InvalidInputError, PyroError
from pyro_loop.identity import sandbox_owner
from pyro_loop.runtime.doctor import mmdebstrap_mode
from pyro_loop.store import environments
from pyro_loop.store.environments import (
    EnvironmentSpec,
    ensure_environment,
    environment_key,
    extract_root_tar,
    parse_environment,
)
from pyro_loop.store.layers import LayerStore, check_key
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.project import commit_project, owners_below, run_pyro, trust_config

NOBODY = 65534
PACKAGE = Path(__file__).resolve().parents[2] / "src" / "pyro_loop"
MISSING_PACKAGE = "pyro-no-such-package"

# -- names and keys ----------------------------------------------------------------------------


def test_names_map_numbers_and_codenames_to_one_spec() -> None:
    assert parse_environment("host") == EnvironmentSpec("host")
    assert parse_environment("host").name == "host"
    twelve = parse_environment("debian:12")
    assert twelve == parse_environment("debian:bookworm")
    assert (twelve.base, twelve.release, twelve.name) == ("debian", "bookworm", "debian:12")
    assert twelve.packages == ("ca-certificates", "python3")  # always there
    assert twelve.extra_packages == ()
    assert parse_environment("debian:11").release == "bullseye"
    assert parse_environment("debian:trixie").name == "debian:13"
    spec = parse_environment("debian:12", ["git", "curl", "git", "python3"])
    assert spec.packages == ("ca-certificates", "curl", "git", "python3")
    assert spec.extra_packages == ("curl", "git")
    assert spec.describe() == "debian:12 (+curl, git)"


@pytest.mark.parametrize(
    "name", ["ubuntu:22.04", "debian", "debian:", "debian:10", "debian:sid", "Debian:12",
             "host:12", "", "debian:12:x", "debian:12 "],
)  # fmt: skip
def test_unknown_environments_are_refused_with_what_is_supported(name: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        parse_environment(name)
    message = str(err.value)
    assert "\n" not in message
    assert repr(name) in message
    for supported in ("host", "debian:11", "debian:12 (bookworm)", "debian:13"):
        assert supported in message


@pytest.mark.parametrize("package", ["Git", "-rf", "a", "foo bar", "x,y", "pkg=1.0", "../x", ""])
def test_bad_package_names_are_refused(package: str) -> None:
    with pytest.raises(InvalidInputError, match="not a Debian package name"):
        parse_environment("debian:12", [package])


def test_packages_need_a_debian_environment() -> None:
    with pytest.raises(InvalidInputError, match="need a Debian environment"):
        parse_environment("host", ["git"])


def test_keys_depend_on_the_inputs_only() -> None:
    key = environment_key(parse_environment("debian:12", ["git", "curl"]))
    assert check_key(key) == key and len(key) == 64
    assert environment_key(parse_environment("debian:bookworm", ["curl", "git", "git"])) == key
    assert environment_key(parse_environment("debian:12", ["curl", "git", "python3"])) == key
    others = {
        environment_key(parse_environment("debian:12")),
        environment_key(parse_environment("debian:12", ["git"])),
        environment_key(parse_environment("debian:12", ["git", "curl", "make"])),
        environment_key(parse_environment("debian:11", ["git", "curl"])),
    }
    assert key not in others and len(others) == 4
    assert environment_key(parse_environment("debian:12")) == environment_key(
        parse_environment("debian:12")
    )


def test_host_needs_no_layer(pyro_home: Path) -> None:
    store = LayerStore(pyro_home)
    assert ensure_environment(store, parse_environment("host")) is None
    assert store.list() == []


def test_invalid_environment_fails_create_before_anything_exists(pyro_home: Path) -> None:
    ws = Workspaces(home=pyro_home)
    with pytest.raises(InvalidInputError) as err:
        ws.create(environment="debian:99")
    assert "\n" not in str(err.value) and "debian:12" in str(err.value)
    with pytest.raises(InvalidInputError):
        ws.create(environment="debian:12", packages=["Bad Name"])
    assert ws.list() == [] and LayerStore(pyro_home).list() == []


def test_cli_refuses_an_unknown_environment_in_one_line() -> None:
    result = run_pyro("workspace", "create", "--env", "ubuntu:22.04")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown environment 'ubuntu:22.04'" in lines[0], result.stderr
    assert "debian:12 (bookworm)" in lines[0]


def test_missing_mmdebstrap_names_the_fix(pyro_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda cmd: None if cmd == "mmdebstrap" else which(cmd))
    with pytest.raises(HostUnsupportedError) as err:
        ensure_environment(LayerStore(pyro_home), parse_environment("debian:12"))
    assert err.value.hint is not None and "apt-get install mmdebstrap uidmap" in err.value.hint


# -- unpacking a root filesystem tarball ---------------------------------------------------------


def _tar(*members: tuple[str, str, Any]) -> io.BytesIO:
    """(name, kind, arg): kind dir | file (arg: bytes) | sym | hard (arg: target) | chr."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, arg in members:
            info = tarfile.TarInfo(name)
            data = None
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, arg or 0o755
            elif kind == "file":
                info.size, info.mode, data = len(arg), 0o6755, io.BytesIO(arg)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, arg
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, arg
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            info.uid = info.gid = 42
            tar.addfile(info, data)
    buf.seek(0)
    return buf


def test_unpacking_keeps_absolute_symlinks_and_skips_devices(tmp_path: Path) -> None:
    dest = tmp_path / "tree"
    dest.mkdir()
    extract_root_tar(
        _tar(
            ("./", "dir", None), ("./dev", "dir", None), ("./dev/null", "chr", None),
            ("./dev/fd", "sym", "/proc/self/fd"), ("./usr", "dir", None),
            ("./usr/bin", "dir", None), ("./usr/bin/su", "file", b"su"),
            ("./usr/bin/su2", "hard", "./usr/bin/su"), ("./etc", "dir", 0o700),
            ("./etc/awk", "sym", "/usr/bin/mawk"), ("./bin", "sym", "usr/bin"),
        ),
        dest,
    )  # fmt: skip
    assert os.readlink(dest / "etc" / "awk") == "/usr/bin/mawk"
    assert os.readlink(dest / "bin") == "usr/bin"
    assert sorted(os.listdir(dest / "dev")) == []
    su = (dest / "usr" / "bin" / "su").lstat()
    assert su.st_mode & 0o7777 == 0o755  # no set-id bits
    assert su.st_nlink == 2
    assert su.st_uid == os.getuid()  # the caller's, whatever the archive says
    assert (dest / "etc").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "members",
    [
        [("/etc", "dir", None)],
        [("../escape", "file", b"x")],
        [("./a/../../escape", "file", b"x")],
        [("./link", "sym", "/tmp"), ("./link/escape", "file", b"x")],
        [("./link", "sym", "/tmp"), ("./link", "file", b"x")],
        [("./etc", "dir", None), ("./etc/passwd", "hard", "/etc/passwd")],
        [("./link", "sym", "/etc/passwd"), ("./hard", "hard", "./link")],
        [("./etc", "dir", None), ("./etc/null", "chr", None)],
        [("./missing/file", "file", b"x")],
    ],
)
def test_unpacking_refuses_what_could_leave_the_tree(
    tmp_path: Path, members: list[tuple[str, str, Any]]
) -> None:
    dest = tmp_path / "tree"
    dest.mkdir()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(PyroError, match="refusing the root filesystem"):
        extract_root_tar(_tar(*members), dest)
    assert sorted(os.listdir(tmp_path)) == before
    assert not Path("/tmp/escape").exists()


# -- the build, with a stand-in for mmdebstrap ----------------------------------------------------

FAKE_MMDEBSTRAP = r"""
import io, os, sys, tarfile, time
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "calls"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
packages = next(a for a in sys.argv if a.startswith("--include=")).split("=", 1)[1].split(",")
say = lambda line: print(line, file=sys.stderr, flush=True)
say("I: automatically chosen mode: fake")
say("I: running apt-get update...")
if "fake-slow" in packages:
    time.sleep(1)
if "pyro-no-such-package" in packages:
    say("E: Unable to locate package pyro-no-such-package")
    say("E: mmdebstrap failed to run")
    sys.exit(25)
say("I: creating tarball...")
out = sys.stdout.buffer
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as tar:
    def add(name, kind="dir", data=b""):
        info = tarfile.TarInfo(name)
        if kind == "dir":
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        else:
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    for d in ("./", "./etc", "./usr", "./usr/bin", "./run"):
        add(d)
    add("./etc/debian_version", "file", b"12.99\n")
    add("./etc/resolv.conf", "file", b"nameserver 192.0.2.1\n")
    if "fake-escape" in packages:
        add("./../escaped", "file", b"x")
data = buf.getvalue()
if "fake-truncated" in packages:
    out.write(data[: 5 * 512 + 512 + 3])  # five directories, then a file cut short
    out.flush()
    os._exit(0)
out.write(data)
"""


@pytest.fixture
def fake_mmdebstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for mmdebstrap; returns the file listing its calls."""
    bindir = tmp_path / "fake-bin"
    bindir.mkdir()
    script = bindir / "mmdebstrap"
    script.write_text(f"#!{sys.executable}\n{FAKE_MMDEBSTRAP}")
    script.chmod(0o755)
    which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda cmd: str(script) if cmd == "mmdebstrap" else which(cmd)
    )
    return bindir / "calls"


def test_build_publishes_a_tree_with_the_mount_points(
    pyro_home: Path, fake_mmdebstrap: Path
) -> None:
    store = LayerStore(pyro_home)
    spec = parse_environment("debian:12", ["git"])
    seen: list[str] = []
    layer = ensure_environment(store, spec, on_progress=lambda e: seen.append(e.text()))
    assert layer is not None and layer.key == environment_key(spec)
    tree = layer.tree
    assert (tree / "etc" / "debian_version").read_text() == "12.99\n"
    for rel in environments.MOUNT_POINTS:
        assert (tree / rel).is_dir() and not (tree / rel).is_symlink(), rel
    assert (tree / "etc" / "resolv.conf").read_text() == ""  # not the build host's
    assert (tree / "etc" / "hostname").read_text() == "pyro\n"
    assert (tree / "etc" / "ssl" / "certs" / "ca-certificates.crt").is_file()
    assert layer.meta()["kind"] == "environment"
    assert layer.meta()["inputs"]["packages"] == ["ca-certificates", "git", "python3"]
    assert "environment: debian:12: updating package lists" in seen
    assert "environment: debian:12: unpacking into the layer store" in seen
    calls = fake_mmdebstrap.read_text().splitlines()
    assert calls == ["--variant=apt --format=tar --include=ca-certificates,git,python3 bookworm -"]
    # Cached from now on: no second run, no progress.
    again: list[str] = []
    assert ensure_environment(store, spec, on_progress=again.append) == layer
    assert again == [] and len(fake_mmdebstrap.read_text().splitlines()) == 1


def test_concurrent_builds_of_one_key_build_once(pyro_home: Path, fake_mmdebstrap: Path) -> None:
    store = LayerStore(pyro_home)
    spec = parse_environment("debian:12", ["fake-slow"])
    barrier = threading.Barrier(2)

    def build() -> str:
        barrier.wait()
        layer = ensure_environment(LayerStore(pyro_home), spec)
        assert layer is not None
        return layer.key

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        keys = list(pool.map(lambda _: build(), range(2)))
    assert keys == [environment_key(spec)] * 2
    assert len(fake_mmdebstrap.read_text().splitlines()) == 1
    assert [layer.key for layer in store.list()] == keys[:1]


@pytest.mark.parametrize(
    ("package", "expected"),
    [
        (MISSING_PACKAGE, "mmdebstrap exited with 25"),
        ("fake-truncated", "unpacking"),
        ("fake-escape", "escapes the tree"),
    ],
)
def test_failed_builds_leave_nothing(
    pyro_home: Path, fake_mmdebstrap: Path, package: str, expected: str
) -> None:
    store = LayerStore(pyro_home)
    spec = parse_environment("debian:12", [package])
    log = pyro_home / "build.log"
    with pytest.raises(PyroError) as err:
        ensure_environment(store, spec, log=log)
    message = str(err.value)
    assert expected in message and str(log) in message and "\n" not in message
    if package == MISSING_PACKAGE:
        assert f"E: Unable to locate package {MISSING_PACKAGE}" in message
    assert log.is_file() and "I: running apt-get update" in log.read_text()
    assert store.get(environment_key(spec)) is None and store.list() == []
    assert list(store.tmp_dir.iterdir()) == []
    assert not (pyro_home.parent / "escaped").exists()


# -- the real thing: debian:12 built with mmdebstrap -------------------------------------------

# Runs as `nobody` with the system python: builds debian:12 into its own store, starts a
# workspace on it. Prints one JSON document.
NOBODY_BUILD = r"""
import json, os, sys, time
from pyro_loop.runtime.doctor import mmdebstrap_mode
from pyro_loop.workspace.manager import Workspaces

out = {"mode": mmdebstrap_mode()}
ws = Workspaces()
started = time.monotonic()
record = ws.create(environment="debian:12")
out["build_seconds"] = time.monotonic() - started
try:
    r = ws.exec(record.id, ["sh", "-c", "cat /etc/debian_version; id -u; python3 -c 'print(6*7)';"
                            " echo hi > /workspace/f && cat /workspace/f"])
    out["exec"] = [r.exit_code, r.stdout.decode(), r.stderr.decode()]
finally:
    ws.delete(record.id)
print(json.dumps(out))
"""


@dataclass
class Built:
    home: Path
    key: str
    progress: list[str]
    failure: concurrent.futures.Future[Any]
    nobody: subprocess.Popen[str] | None
    nobody_skip: str | None
    failed_home: Path
    workspaces: list[Workspaces] = field(default_factory=list)


def _nobody_can_build() -> str | None:
    """Why `nobody` cannot build here (None: it can)."""
    if os.getuid() != 0:
        return "not root: the build above already ran as an ordinary user"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is missing"
    subuid = Path("/etc/subuid").read_text() if Path("/etc/subuid").exists() else ""
    has_range = any(line.split(":")[0] in ("nobody", str(NOBODY)) for line in subuid.splitlines())
    if not has_range and not (shutil.which("fakechroot") and shutil.which("fakeroot")):
        return "nobody has no /etc/subuid range and fakechroot/fakeroot are not installed"
    return None


@pytest.fixture(scope="module")
def debian() -> Iterator[Built]:
    """debian:12, built once for this module, with two other builds running meanwhile."""
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (apt-get install mmdebstrap uidmap)")
    if mmdebstrap_mode() is None:
        pytest.skip("mmdebstrap cannot run for this user: no /etc/subuid range, no fakechroot")
    base = Path(tempfile.mkdtemp(prefix="pyro-debian-", dir="/tmp"))
    base.chmod(0o755)
    home, failed_home, nobody_home = base / "home", base / "failed", base / "nobody-home"
    nobody_skip = _nobody_can_build()
    nobody = None
    if nobody_skip is None:
        lib = base / "lib"
        shutil.copytree(PACKAGE, lib / "pyro_loop", ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["chmod", "-R", "a+rX", str(lib)], check=True)
        nobody_home.mkdir(mode=0o700)
        os.chown(nobody_home, NOBODY, NOBODY)
        nobody = subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
             "/usr/bin/python3", "-c", NOBODY_BUILD],
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(lib),
                 "PYRO_HOME": str(nobody_home), "PYTHONDONTWRITEBYTECODE": "1",
                 "LANG": "C.UTF-8"},
            cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    pool = concurrent.futures.ThreadPoolExecutor(1)
    failure = pool.submit(
        ensure_environment,
        LayerStore(failed_home),
        parse_environment("debian:12", [MISSING_PACKAGE]),
    )
    progress: list[str] = []
    built = None
    try:
        layer = ensure_environment(
            LayerStore(home),
            parse_environment("debian:12"),
            on_progress=lambda e: progress.append(e.message),
        )
        assert layer is not None
        built = Built(
            home, layer.key, progress, failure, nobody, nobody_skip, failed_home,
        )  # fmt: skip
        yield built
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for ws in built.workspaces if built else []:
            for status in ws.list():
                ws.delete(status.record.id)
        if nobody is not None:
            with contextlib.suppress(ProcessLookupError):
                nobody.kill()
            nobody.communicate()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def debian_ws(debian: Built) -> Iterator[Workspaces]:
    ws = Workspaces(home=debian.home)
    yield ws
    for status in ws.list():
        ws.delete(status.record.id)


def _sh(ws: Workspaces, ref: str, script: str) -> str:
    result = ws.exec(ref, ["sh", "-c", script], timeout=60)
    assert result.exit_code == 0, result.stderr.decode()
    return result.stdout.decode()


@pytest.mark.slow
def test_debian_build_is_in_the_store(debian: Built) -> None:
    layer = LayerStore(debian.home).require(debian.key)
    meta = layer.meta()
    assert meta["kind"] == "environment" and meta["inputs"]["release"] == "bookworm"
    assert meta["size"] > 100_000_000
    assert "debian:12: installing packages" in debian.progress
    assert (layer.tree / "usr" / "bin" / "python3").exists()
    owner = sandbox_owner() or os.getuid()
    strangers = [
        os.path.join(d, n)
        for d, ds, fs in os.walk(layer.tree)
        for n in ds + fs
        if os.lstat(os.path.join(d, n)).st_uid != owner
    ]
    assert strangers == []


@pytest.mark.slow
def test_workspace_on_debian(debian_ws: Workspaces, seed_dir: Path) -> None:
    progress: list[str] = []
    record = debian_ws.create(environment="debian:bookworm", seed=seed_dir,
                              on_progress=progress.append)  # fmt: skip
    assert progress == []  # reused, not rebuilt: no phase was reported
    assert record.environment == "debian:12"
    debian_ws.store.require(record.environment_layer or "")
    out = _sh(debian_ws, record.id, "cat /etc/debian_version; python3 -c 'print(6*7)'; hostname")
    version, answer, hostname = out.split()
    assert version.startswith("12.") and answer == "42" and hostname == "pyro"
    # Not the host's /usr: bubblewrap is on the host (it runs this sandbox), not in the image.
    assert Path("/usr/bin/bwrap").exists()
    assert _sh(debian_ws, record.id, "test -e /usr/bin/bwrap || echo absent") == "absent\n"
    # The seed is at /workspace, writable; the root is read-only; /tmp is private.
    assert _sh(debian_ws, record.id, "cat README.md; echo new > new.txt; cat new.txt") == (
        "hello\nnew\n"
    )
    denied = debian_ws.exec(record.id, ["sh", "-c", "touch /usr/x || touch /etc/x || echo ok"])
    assert b"Read-only file system" in denied.stderr
    _sh(debian_ws, record.id, "echo t > /tmp/t && echo t > /var/tmp/t && touch $HOME/h")
    # Snapshot and reset work as on host.
    debian_ws.snapshot_create(record.id, "with-new")
    debian_ws.reset(record.id)
    assert _sh(debian_ws, record.id, "ls; ls /tmp") == "README.md\nrun.sh\nsrc\n"
    debian_ws.reset(record.id, snapshot="with-new")
    assert _sh(debian_ws, record.id, "cat new.txt; cat /etc/debian_version").startswith("new\n12.")
    debian_ws.stop(record.id)
    debian_ws.start(record.id)
    assert _sh(debian_ws, record.id, "cat new.txt") == "new\n"
    status = debian_ws.status(record.id).to_json()
    assert status["environment"] == "debian:12"
    assert status["environment_layer"] == record.environment_layer


@pytest.mark.slow
def test_second_debian_create_is_as_fast_as_host(debian_ws: Workspaces) -> None:
    timings: dict[str, list[float]] = {"host": [], "debian:12": []}
    for _ in range(3):
        for env, samples in timings.items():
            started = time.monotonic()
            record = debian_ws.create(environment=env, standby=False)
            samples.append(time.monotonic() - started)
            debian_ws.delete(record.id)
    best = {env: min(t) for env, t in timings.items()}
    print(f"create: host {best['host'] * 1000:.0f} ms, debian:12 {best['debian:12'] * 1000:.0f} ms")
    assert best["debian:12"] < 1.0, best
    built = [layer.key for layer in debian_ws.store.list() if layer.meta()["kind"] == "environment"]
    assert built == [environment_key(parse_environment("debian:12"))]  # built once, reused


@pytest.mark.slow
def test_debian_egress_uses_the_hosts_resolver(debian_ws: Workspaces) -> None:
    record = debian_ws.create(environment="debian:12", network=True, standby=False)
    seen = _sh(debian_ws, record.id, "cat /etc/resolv.conf")
    assert seen == Path("/etc/resolv.conf").read_text()
    offline = debian_ws.create(environment="debian:12", standby=False)
    assert _sh(debian_ws, offline.id, "cat /etc/resolv.conf") == ""


@pytest.mark.slow
def test_failing_debian_build_names_the_log_and_leaves_no_layer(debian: Built) -> None:
    with pytest.raises(PyroError) as err:
        debian.failure.result(timeout=300)
    message = str(err.value)
    assert f"Unable to locate package {MISSING_PACKAGE}" in message
    assert "; log: " in message and "\n" not in message
    log = Path(message.rsplit("; log: ", 1)[1])
    assert log.is_file() and MISSING_PACKAGE in log.read_text()
    store = LayerStore(debian.failed_home)
    assert store.list() == []
    assert list(store.tmp_dir.iterdir()) == []


@pytest.mark.slow
def test_nobody_builds_and_uses_debian(debian: Built) -> None:
    if debian.nobody is None:
        pytest.skip(f"cannot build as nobody: {debian.nobody_skip}")
    stdout, stderr = debian.nobody.communicate(timeout=300)
    assert debian.nobody.returncode == 0, stderr
    seen = json.loads(stdout)
    assert seen["mode"] in ("unshare", "fakechroot")
    code, out, err = seen["exec"]
    assert code == 0, err
    version, uid, answer, hi = out.split()
    assert version.startswith("12.") and uid == str(NOBODY) and answer == "42" and hi == "hi"
    nobody_home = debian.home.parent / "nobody-home"
    assert owners_below(nobody_home) == {NOBODY}


@pytest.mark.slow
def test_switching_the_base_and_back_moves_the_workspace_and_gc_keeps_its_layers(
    debian_ws: Workspaces, tmp_path: Path
) -> None:
    from pyro_loop.loop.gc import gc
    from pyro_loop.loop.live import ProjectLoop
    from pyro_loop.project.config import load_project_config
    from pyro_loop.project.discovery import find_project

    repo = commit_project(tmp_path / "repo", '[environment]\nbase = "debian:12"\n', {})

    def loop() -> ProjectLoop:
        project = find_project(repo)
        return ProjectLoop(project, load_project_config(repo).config, debian_ws)

    # bubblewrap is on the host (it runs the sandbox), not in the Debian image.
    where = [
        "sh",
        "-c",
        "echo work >> work.txt; test -e /usr/bin/bwrap && echo host || echo debian",
    ]
    first = loop().up()
    assert first.record.environment == "debian:12"
    assert loop().exec(where).stdout == b"debian\n"
    (repo / ".pyro.toml").write_text('[environment]\nbase = "host"\n')
    assert loop().exec(where).stdout == b"host\n"
    (repo / ".pyro.toml").write_text('[environment]\nbase = "debian:12"\n')
    back = loop().up()
    assert back.action == "moved" and back.record.id == first.record.id
    assert loop().exec(where).stdout == b"debian\n"
    assert _sh(debian_ws, back.record.id, "cat work.txt") == "work\n" * 3  # its changes kept
    debian_ws.delete(back.record.id)
    gc(debian_ws)  # no workspace uses debian:12 now, but the project's configuration does
    assert debian_ws.store.get(environment_key(parse_environment("debian:12"))) is not None


def _debian_project(root: Path, packages: str = "[]", run: str = "[]") -> Path:
    config = f'[environment]\nbase = "debian:12"\npackages = {packages}\n[prepare]\nrun = {run}\n'
    return commit_project(root, config, {"requirements.txt": "x==1\n"})


def test_prepare_on_a_debian_base_shows_the_environment_phases(
    tmp_path: Path, fake_mmdebstrap: Path
) -> None:
    repo = _debian_project(tmp_path / "repo")
    path = f"{fake_mmdebstrap.parent}:{os.environ['PATH']}"
    done = run_pyro("prepare", "-C", str(repo), env={"PATH": path})
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "prepare: environment: debian:12: updating package lists" in lines
    assert any(line.startswith("prepare: environment: building debian:12") for line in lines)
    assert "\r" not in done.stderr  # piped: plain lines, no redrawing
    again = run_pyro("prepare", "-C", str(repo), env={"PATH": path})
    assert "prepare: environment: debian:12: cached" in again.stderr.splitlines()

    # On a terminal, the current phase is one line redrawn with its time so far.
    repo = _debian_project(tmp_path / "slow", packages='["fake-slow"]')
    primary, secondary = os.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "pyro_loop", "prepare", "-C", str(repo)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=secondary,
        env={**os.environ, "PATH": path},
    ) as proc:  # fmt: skip
        os.close(secondary)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the process closed the terminal
            while chunk := os.read(primary, 4096):
                shown += chunk
        assert proc.wait(timeout=60) == 0, shown
    os.close(primary)
    text = shown.decode()
    assert "\r\x1b[Kprepare: environment: debian:12: updating package lists (" in text
    assert " s)\r\n" in text or " s)\n" in text


@pytest.mark.slow
def test_a_venv_on_a_debian_base_without_python3_venv_says_what_to_add(
    debian_ws: Workspaces, tmp_path: Path
) -> None:
    from pyro_loop.errors import PrepareFailedError
    from pyro_loop.loop.prepare import prepare
    from pyro_loop.project.config import load_project_config
    from pyro_loop.project.discovery import find_project

    repo = _debian_project(tmp_path / "repo", run='["python3 -m venv .venv"]')
    trust_config(repo, debian_ws.home)
    project = find_project(repo)
    with pytest.raises(PrepareFailedError) as failed:
        prepare(project, load_project_config(repo).config, workspaces=debian_ws)
    assert failed.value.hint is not None
    assert 'add packages = ["python3-venv"] under [environment]' in failed.value.hint

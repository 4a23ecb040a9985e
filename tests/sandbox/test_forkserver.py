"""The fork server (cli/starter.py, cli/forkserver.py): the daily commands run through it give
the full CLI's output, errors and exit codes, the `pyro` process stays lean, signals reach the
command, and the server serves only its own user."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyro_loop.cli import forkserver, starter
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.sides import Side, agreeing, run

ON = {"PYRO_FORK_SERVER": "1"}


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Where this test's fork servers keep their sockets; every server there is stopped
    after the test."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    yield runtime
    for lock in runtime.glob("pyro-*/forkserver-*.lock"):
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(lock.read_text()), signal.SIGTERM)


def wait_for_server(side: Side) -> None:
    """The first command starts the server in the background (and runs in full)."""
    path = Path(server_socket(side))
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, "the fork server did not start"
        time.sleep(0.05)


def server_socket(side: Side) -> str:
    env = {**os.environ, "PYRO_HOME": str(side.home)}
    code = "from pyro_loop.cli.starter import socket_path; print(socket_path())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True)  # fmt: skip
    return done.stdout.strip()


@pytest.fixture
def sides(tmp_path: Path, runtime_dir: Path) -> Iterator[tuple[Side, Side]]:
    pair = (Side(tmp_path / "server", True, ON), Side(tmp_path / "full", False))
    try:
        yield pair
    finally:
        for side in pair:
            side.cleanup()


def test_through_the_fork_server_the_daily_commands_answer_as_the_full_cli(
    sides: tuple[Side, Side], tmp_path: Path
) -> None:
    served, full = sides
    same = agreeing(served, full)

    c = ("-C", "REPO")
    same("status", *c)  # not warm: exit 1; starts the server
    wait_for_server(served)
    same("retry", *c)  # nothing to retry yet
    same("up", "--no-prepare", *c)
    same("prepare", *c)
    same("status", "--json", *c)
    same("up", *c)
    for side in sides:
        (side.repo / "app.py").write_text("print(2)\n")
    assert same("exec", *c, "--", "sh", "-c", "cat app.py; echo err >&2; exit 7") == (
        7, "print(2)\n", "err\n")  # fmt: skip
    same("retry", *c)
    assert same("exec", *c, "--", "cat", input="piped\n") == (0, "piped\n", "")
    out = same("exec", *c, "--env", "A=1", "--cwd", ".deps", "--", "sh", "-c", "echo $A; pwd")
    assert out[1] == "1\n/workspace/.deps\n"
    assert same("exec", *c, "--timeout", "0.3", "--", "sleep", "5")[0] != 0
    assert same("exec", *c, "--", "no-such-command")[0] == 127
    assert same("exec", *c, "--env", "NOEQUALS", "--", "true")[0] == 1
    plain = tmp_path / "plain"
    plain.mkdir()
    assert same("exec", "--", "true", cwd=plain)[0] == 1  # not a pyro project


def test_a_served_command_leaves_the_pyro_process_lean(
    sides: tuple[Side, Side], runtime_dir: Path
) -> None:
    served, _full = sides
    assert served("up", "-C", "REPO")[0] == 0
    wait_for_server(served)
    env = {**os.environ, **ON, "PYRO_HOME": str(served.home), "PYTHONPROFILEIMPORTTIME": "1"}
    for args in (["exec", "--", "true"], ["status"], ["retry"]):
        done = subprocess.run([sys.executable, "-m", "pyro_loop", *args], cwd=served.repo,
                              env=env, capture_output=True, text=True, timeout=60,
                              check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        loaded = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                  if line.startswith("import time:")}  # fmt: skip
        # The command ran in the server's child: this process loaded none of pyro's loop.
        assert "pyro_loop.cli.starter" in loaded, args
        assert not loaded & {"pyro_loop.cli.daily", "pyro_loop.loop.live", "pathlib"}, args
    # A pyro started with another priority (or limits, control groups, namespaces, groups)
    # than the server's runs its command itself: what it starts must inherit its own.
    done = subprocess.run(["nice", "-n", "3", sys.executable, "-m", "pyro_loop", "status"],
                          cwd=served.repo, env=env, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "pyro_loop.loop.status" in done.stderr
    # So does one whose text encoding differs from the server's.
    ascii_env = {**env, "PYTHONIOENCODING": "ascii"}
    done = subprocess.run([sys.executable, "-m", "pyro_loop", "status"], cwd=served.repo,
                          env=ascii_env, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "pyro_loop.loop.status" in done.stderr
    # `pyro doctor` names it, by the pid in its lock file.
    doctor = run(
        True, "doctor", "--json", cwd=served.repo, env={**ON, "PYRO_HOME": str(served.home)}
    )
    check = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "fork server")
    pid = int(Path(server_socket(served) + ".lock").read_text())
    assert check["ok"] and check["detail"].startswith(f"running (pid {pid})"), check


def _served_sleep(side: Side, marker: str) -> subprocess.Popen[str]:
    """`pyro exec` of a long sleep through the server, once the command runs."""
    env = {**os.environ, **ON, "PYRO_HOME": str(side.home)}
    child = subprocess.Popen(
        [sys.executable, "-m", "pyro_loop", "exec", "--", "sh", "-c",
         f"echo started; exec sleep {marker}"],
        cwd=side.repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None
    assert child.stdout.readline() == "started\n"
    return child


def _no_process_with(marker: str) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True,
                               check=False)  # fmt: skip
        if found.returncode == 1:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGKILL, -9)])
def test_a_signal_to_pyro_ends_the_served_command(
    sides: tuple[Side, Side], sig: signal.Signals, code: int
) -> None:
    served, _full = sides
    assert served("up", "-C", "REPO")[0] == 0
    wait_for_server(served)
    marker = f"{3000 + sig}.25"
    with _served_sleep(served, marker) as child:
        child.send_signal(sig)
        assert child.wait(timeout=30) == code
        assert child.stderr is not None
        said = child.stderr.read()
    if sig == signal.SIGINT:
        assert "pyro: interrupted" in said
    assert _no_process_with(marker), "the command outlived its pyro"


def test_the_socket_directory_must_be_the_users_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    mine = tmp_path / f"pyro-{os.getuid()}"
    path = starter.socket_path()
    assert path is not None and Path(path).parent == mine
    assert mine.stat().st_mode & 0o777 == 0o700
    mine.chmod(0o755)  # others could reach the socket
    assert starter.socket_path() is None
    mine.rmdir()
    other = tmp_path / "elsewhere"
    other.mkdir(mode=0o700)
    mine.symlink_to(other)  # a link put there by someone else
    assert starter.socket_path() is None


def test_only_commands_that_read_no_terminal_are_served() -> None:
    assert starter.eligible(["exec", "--", "pytest", "-t"])
    assert starter.eligible(["status", "--json"])
    assert not starter.eligible(["exec", "-t", "--", "bash"])
    assert not starter.eligible(["exec", "--interactive", "--", "cat"])
    assert not starter.eligible(["shell"])
    assert not starter.eligible([])


def test_a_server_whose_sources_changed_is_stale(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("x = 1\n")
    known = {str(source): source.stat().st_mtime}
    assert not forkserver._stale(known)
    os.utime(source, (1, 1))
    assert forkserver._stale(known)
    source.unlink()
    assert forkserver._stale(known)


def test_with_the_switch_off_no_server_is_started(tmp_path: Path, runtime_dir: Path) -> None:
    side = Side(tmp_path / "off", True, {"PYRO_FORK_SERVER": "0"})
    assert side("status", "-C", "REPO")[0] == 1
    time.sleep(0.5)
    assert not list(runtime_dir.glob("pyro-*/forkserver-*"))
    done = run(True, "status", "-C", str(side.repo), env={"PYRO_HOME": str(side.home)})
    assert done.returncode == 1  # conftest's switch is off too


PRELOADED_CHECK = """
import re, sys
from pyro_loop.cli import forkserver
forkserver.preload()
from pyro_loop.cli.entry import dispatch
compiled = []
original = re._compile
def counting(pattern, flags):
    if (type(pattern), pattern, flags) not in re._cache:
        compiled.append(pattern)
    return original(pattern, flags)
re._compile = counting
before = set(sys.modules)
for argv in (["exec", "--", "true"], ["retry"], ["status"], ["up"], ["prepare"]):
    assert dispatch(argv) == 0, argv
print(sorted(set(sys.modules) - before), compiled)
"""


def test_the_server_loads_all_that_the_daily_commands_need(
    sides: tuple[Side, Side],
) -> None:
    """What a command loads or compiles at its first use, each forked child would again."""
    served, _full = sides
    assert served("up", "-C", "REPO")[0] == 0
    env = {**os.environ, "PYRO_HOME": str(served.home)}
    done = subprocess.run([sys.executable, "-c", PRELOADED_CHECK], cwd=served.repo, env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[] []"


def _processes_naming(text: str) -> list[int]:
    """The processes whose command line names `text`, but for the trash's removers (they
    wait for what held a deleted tree, by design)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if text.encode() in cmdline and b"/trash/" not in cmdline:
                    found.append(int(entry.name))
    return found


def test_what_a_served_command_hands_to_the_background_is_finished(
    sides: tuple[Side, Side],
) -> None:
    """A workspace made through the server boots its standby in the background of the
    server's child: the child finishes that before it ends, so nothing runs unrecorded."""
    served, _full = sides
    served("status", "-C", "REPO")
    wait_for_server(served)
    assert served("up", "-C", "REPO")[0] == 0
    assert served("exec", "-C", "REPO", "--", "true")[0] == 0
    time.sleep(1)  # whatever the child still had to finish
    served.cleanup()
    Workspaces(home=served.home).pool.drain()
    deadline = time.monotonic() + 10
    while _processes_naming(str(served.home)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _processes_naming(str(served.home))
    assert left == [], [Path(f"/proc/{p}/cmdline").read_bytes()[:300] for p in left]

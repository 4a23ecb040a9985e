"""`pyro workspace shell open|read|write|signal|close`: a shell that outlives each `pyro`
command, driven through the real CLI against a real workspace, as a script or an agent
without a terminal does."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from pyro_loop.workspace.manager import Workspaces
from pyro_loop.workspace.shells import plain_text
from tests.helpers.nobody import NOBODY, nobody
from tests.helpers.project import commit_project, run_pyro
from tests.helpers.secrets import VALUE, everything_under


def pyro_ok(*args: str, env: dict[str, str] | None = None) -> str:
    result = run_pyro(*args, env=env)
    assert result.returncode == 0, f"pyro {' '.join(args)}: {result.stderr}"
    return result.stdout


def pyro_json(*args: str) -> Any:
    return json.loads(pyro_ok(*args, "--json"))


def read_until(ws: str, shell: str, text: str, cursor: int) -> tuple[str, int]:
    """What the shell printed from `cursor` until `text` appears, and the cursor after it."""
    seen = ""
    for _ in range(60):
        out = pyro_json("workspace", "shell", "read", ws, shell, "--cursor", str(cursor))
        seen += out["output"]
        cursor = out["next_cursor"]
        if text in seen:
            return seen, cursor
    raise AssertionError(f"{text!r} not seen in the shell; it showed:\n{seen}")


def keepers(home: Path) -> list[int]:
    """The pids of the shell keepers of workspaces under `home` (their stderr is a log
    there)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"pyro_loop.workspace.shellkeeper" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            if os.readlink(f"/proc/{pid}/fd/2").startswith(str(home)):
                found.append(int(pid))
        except OSError:
            continue
    return found


def gone(home: Path) -> bool:
    for _ in range(50):
        if not keepers(home):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def ws(workspaces: Workspaces, seed_dir: Path) -> str:
    workspaces.create(seed=seed_dir, name="sess")
    return "sess"


def test_a_session_across_commands(ws: str, pyro_home: Path) -> None:
    opened = run_pyro("workspace", "shell", "open", ws)
    assert opened.returncode == 0, opened.stderr
    shell = opened.stdout.split()[1]
    assert opened.stdout.startswith(f"shell {shell} open in workspace ")
    assert "(120x30, /workspace)" in opened.stdout
    assert len(keepers(pyro_home)) == 1
    written = pyro_ok("workspace", "shell", "write", ws, shell, "--input", "echo M-$((6*7)) $PWD")
    assert written == f"wrote 21 bytes to shell {shell}\n"
    _seen, cursor = read_until(ws, shell, "M-42 /workspace", 0)

    # Human output: what it printed on stdout, where to go on from on stderr.
    human = run_pyro("workspace", "shell", "read", ws, shell, "--cursor", "0")
    assert "M-42 /workspace" in human.stdout
    assert human.stderr == f"pyro: shell {shell} running; next cursor {cursor}\n"

    # A foreground command interrupted (the predecessor's SIGINT spelling), the shell goes on.
    pyro_ok("workspace", "shell", "write", ws, shell, "--input", "sh -c 'echo UP; exec sleep 60'")
    _seen, cursor = read_until(ws, shell, "UP", cursor)
    signalled = pyro_json("workspace", "shell", "signal", ws, shell, "--signal", "SIGINT")
    assert signalled["signal"] == "INT" and signalled["state"] == "running"
    pyro_ok("workspace", "shell", "write", ws, shell, "--input", "echo RC-$?")
    _seen, cursor = read_until(ws, shell, "RC-130", cursor)

    # Keys without Enter, then Enter on its own.
    pyro_ok("workspace", "shell", "write", ws, shell, "--input", "echo PART", "--no-newline")
    pyro_ok("workspace", "shell", "write", ws, shell, "--input", "-TWO")
    _seen, cursor = read_until(ws, shell, "PART-TWO", cursor)

    # It ends: its exit code is read, it takes no more input, close forgets it.
    pyro_ok("workspace", "shell", "write", ws, shell, "--input", "exit 3")
    for _ in range(60):
        out = pyro_json("workspace", "shell", "read", ws, shell, "--cursor", str(cursor))
        if out["state"] == "exited":
            break
    assert out["exit_code"] == 3
    ended = run_pyro("workspace", "shell", "write", ws, shell, "--input", "true")
    assert ended.returncode == 1
    assert ended.stderr.startswith(f"pyro: error: shell {shell} has ended (exit code 3)\n")
    closed = pyro_json("workspace", "shell", "close", ws, shell)
    assert closed["closed"] is True and closed["exit_code"] == 3
    assert gone(pyro_home)
    again = run_pyro("workspace", "shell", "read", ws, shell)
    assert again.returncode == 1
    assert again.stderr.startswith(f"pyro: error: no open shell {shell} in workspace ")


def test_bad_ids_and_signals_are_one_line(ws: str) -> None:
    unknown = run_pyro("workspace", "shell", "read", ws, "0123456789ab")
    assert unknown.returncode == 1 and "no open shell 0123456789ab" in unknown.stderr
    assert "`pyro workspace shell open" in unknown.stderr
    bogus = run_pyro("workspace", "shell", "close", ws, "../../x")
    assert bogus.returncode == 1
    assert bogus.stderr == "pyro: error: '../../x' is not a shell id (shell open prints one)\n"
    shell = pyro_ok("workspace", "shell", "open", ws, "--id-only").strip()
    wrong = run_pyro("workspace", "shell", "signal", ws, shell, "--signal", "SIGFOO")
    assert wrong.returncode == 1 and "cannot send 'SIGFOO' to a shell" in wrong.stderr
    outside = run_pyro("workspace", "shell", "open", ws, "--cwd", "/tmp")
    assert outside.returncode == 1
    assert outside.stderr.startswith("pyro: error: path is outside /workspace: /tmp\n")
    no_ws = run_pyro("workspace", "shell", "open", "nowhere")
    assert no_ws.returncode == 1 and "no workspace with id or name 'nowhere'" in no_ws.stderr


def test_stop_and_delete_end_the_shells(ws: str, pyro_home: Path) -> None:
    first = pyro_json("workspace", "shell", "open", ws)
    second = pyro_json("workspace", "shell", "open", ws, "--cwd", "src", "--cols", "90")
    assert (second["cwd"], second["cols"], second["rows"]) == ("src", 90, 30)
    pyro_ok("workspace", "shell", "write", ws, second["shell_id"], "--input", "stty size; pwd")
    read_until(ws, second["shell_id"], "30 90\r\n/workspace/src", 0)
    assert len(keepers(pyro_home)) == 2
    pyro_ok("workspace", "stop", ws)
    assert gone(pyro_home)
    for shell in (first["shell_id"], second["shell_id"]):
        assert "no open shell" in run_pyro("workspace", "shell", "read", ws, shell).stderr
    stopped = run_pyro("workspace", "shell", "open", ws)
    assert stopped.returncode == 1 and "is stopped" in stopped.stderr
    pyro_ok("workspace", "start", ws)
    # A reset (a fresh sandbox) ends the shell: it says so, and still closes.
    shell = pyro_ok("workspace", "shell", "open", ws, "--id-only").strip()
    pyro_ok("workspace", "reset", ws)
    lost = pyro_json("workspace", "shell", "read", ws, shell)
    assert lost["state"] in ("lost", "exited"), lost  # killed with its sandbox
    human = run_pyro("workspace", "shell", "read", ws, shell)
    assert human.returncode == 0 and f"pyro: shell {shell} {lost['state']}" in human.stderr
    refused = run_pyro("workspace", "shell", "write", ws, shell, "--input", "true")
    assert refused.returncode == 1 and f"shell {shell} has ended (" in refused.stderr
    assert "closed shell" in pyro_ok("workspace", "shell", "close", ws, shell)
    pyro_ok("workspace", "shell", "open", ws)
    pyro_ok("workspace", "delete", ws)
    assert gone(pyro_home)


def test_a_secret_reaches_the_shell_and_nothing_else(ws: str, pyro_home: Path) -> None:
    opened = run_pyro("workspace", "shell", "open", ws, "--secret-env", "API_KEY", "--id-only",
                      env={"API_KEY": VALUE})  # fmt: skip
    assert opened.returncode == 0, opened.stderr
    shell = opened.stdout.strip()
    pyro_ok("workspace", "shell", "write", ws, shell, "--input", 'echo "key:$API_KEY"')
    seen, _cursor = read_until(ws, shell, "key:[REDACTED]", 0)
    assert VALUE not in seen
    # Not on the keeper's command line nor in its environment, not in any file of the home.
    (pid,) = keepers(pyro_home)
    for what in ("cmdline", "environ"):
        assert VALUE.encode() not in Path(f"/proc/{pid}/{what}").read_bytes()
    assert VALUE not in everything_under(pyro_home)


@pytest.mark.parametrize(
    ("raw", "plain"),
    [
        ("\x1b[01;32mroot@pyro\x1b[00m:/workspace# ls\r\n", "root@pyro:/workspace# ls\n"),
        ("50%\r100%\r\n", "100%\n"),
        ("abc\rX\r\n", "Xbc\n"),  # a CR returns over the line, it does not erase it
        ("ab\bc\x07\x9b\r\n", "ac\n"),
        ("\x1b]0;title\x07a\x1b]2;t\x1b\\b\x1b(Bc\x1b[?2004hd", "abcd"),
        ("caf\u00e9\ttab", "caf\u00e9\ttab"),
    ],
)
def test_plain_text(raw: str, plain: str) -> None:
    assert plain_text(raw) == plain


def test_plain_reads_that_wait_for_quiet(ws: str) -> None:
    """The predecessor's `read --plain --wait-for-idle-ms N`: one read brings the whole
    answer of a command that prints in bursts, as plain lines."""
    shell = pyro_ok("workspace", "shell", "open", ws, "--id-only").strip()
    _seen, cursor = read_until(ws, shell, "# ", 0)  # the prompt
    script = "printf '\\033[31mA-1\\033[0m\\n'; sleep 0.3; echo B-2"
    pyro_ok("workspace", "shell", "write", ws, shell, "--input", script)
    out = pyro_json("workspace", "shell", "read", ws, shell, "--cursor", str(cursor), "--wait",
                    "10", "--wait-for-idle-ms", "3000", "--plain")  # fmt: skip
    assert "\nA-1\nB-2\n" in out["output"], out
    assert "\x1b" not in out["output"] and "\r" not in out["output"]
    human = run_pyro("workspace", "shell", "read", ws, shell, "--cursor", str(cursor), "--plain")
    assert "\nA-1\nB-2\n" in human.stdout


@pytest.mark.slow
def test_a_session_as_an_ordinary_user(user: dict[str, Path]) -> None:
    """uid 65534 opens, drives and closes a shell: the keeper runs as that user, and its
    socket is that user's."""
    projects = user["projects"]

    def as_user(*args: str) -> str:
        return nobody(list(args), cwd=projects, user=user).stdout

    seed = projects / "seed"
    seed.mkdir()
    (seed / "note.txt").write_text("from the seed\n")
    ws = as_user("workspace", "create", "--seed-path", str(seed), "--id-only").strip()
    try:
        shell = as_user("workspace", "shell", "open", ws, "--id-only").strip()
        (keeper,) = keepers(user["home"])
        assert Path(f"/proc/{keeper}").stat().st_uid == NOBODY
        sockets = list(user["home"].glob(f"workspaces/*/shells/{shell}.sock"))
        assert [s.stat().st_uid for s in sockets] == [NOBODY]
        as_user("workspace", "shell", "write", ws, shell, "--input", "cat note.txt; echo E-$?")
        seen = ""
        for _ in range(60):
            seen += as_user("workspace", "shell", "read", ws, shell, "--cursor",
                            str(len(seen.encode())), "--plain")  # fmt: skip
            if "E-0" in seen:
                break
        assert "from the seed\nE-0" in seen
        assert "closed shell" in as_user("workspace", "shell", "close", ws, shell)
        assert gone(user["home"])
    finally:
        nobody(["workspace", "delete", ws], cwd=projects, user=user, check=False)


def test_a_whole_mebibyte_of_undecodable_output_in_one_read(ws: str) -> None:
    shell = pyro_ok("workspace", "shell", "open", ws, "--id-only").strip()
    pyro_ok("workspace", "shell", "write", ws, shell, "--input",
            "head -c 1200000 /dev/zero | tr '\\0' '\\377'; echo; echo END-$((1+1))")  # fmt: skip
    for _ in range(200):
        out = pyro_json("workspace", "shell", "read", ws, shell, "--max-bytes", "1048576")
        if "END-2" in out["output"]:
            break
    # The latest 1 MiB is kept; as JSON each byte that is not UTF-8 takes six.
    assert out["dropped_bytes"] > 0 and out["next_cursor"] - out["cursor"] == 1048576
    assert out["output"].count("\ufffd") > 1_000_000


def test_a_session_in_the_project_s_workspace(tmp_path: Path, pyro_home: Path) -> None:
    """`pyro shell open|read|write|signal|close`: the same, in the project's workspace,
    with host edits synced before the shell opens."""
    repo = commit_project(tmp_path / "repo", "", {"note.txt": "committed\n"})
    c = ("-C", str(repo))
    none_yet = run_pyro("shell", "read", "0123456789ab", *c)
    assert none_yet.returncode == 1 and "`pyro up` creates it" in none_yet.stderr
    (repo / "note.txt").write_text("edited on the host\n")
    shell = pyro_ok("shell", "open", *c, "--id-only").strip()
    pyro_ok("shell", "write", shell, *c, "--input", "cat note.txt; sleep 60")
    seen = ""
    for _ in range(60):
        out = json.loads(pyro_ok("shell", "read", shell, *c, "--json", "--plain"))
        seen += out["output"]
        if "edited on the host\n" in seen:
            break
    assert "edited on the host\n" in seen
    assert pyro_ok("shell", "signal", shell, *c) == f"sent SIGINT to shell {shell}\n"
    project_ws = json.loads(pyro_ok("shell", "close", shell, *c, "--json"))["workspace_id"]
    workspaces = json.loads(pyro_ok("status", *c, "--json"))["workspaces"]
    assert [w["id"] for w in workspaces] == [project_ws]
    assert gone(pyro_home)

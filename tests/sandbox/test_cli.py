"""The real `pyro` CLI, run as a subprocess against the test's own PYRO_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyro_loop import __version__
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.project import run_pyro


def _ok(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = run_pyro(*args, input=input)
    assert result.returncode == 0, f"pyro {' '.join(args)}: {result.stderr}"
    return result


def _json(*args: str) -> Any:
    return json.loads(_ok(*args, "--json").stdout)


def _assert_error(result: subprocess.CompletedProcess[str], exit_code: int = 1) -> str:
    """Exactly one `pyro: error:` line (and at most one hint) on stderr; returns the message."""
    assert result.returncode == exit_code, result.stderr
    lines = result.stderr.splitlines()
    assert 1 <= len(lines) <= 2, result.stderr
    assert lines[0].startswith("pyro: error: "), result.stderr
    if len(lines) == 2:
        assert lines[1].startswith("  hint: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0].removeprefix("pyro: error: ")


@pytest.fixture
def named(workspaces: Workspaces, seed_dir: Path) -> dict[str, Any]:
    """A workspace created through the CLI, named `x`; the JSON that `create --json` printed.

    Depends on `workspaces` so that the fixture deletes it (and its processes) afterwards.
    """
    data: dict[str, Any] = _json("workspace", "create", "--seed-path", str(seed_dir), "--name", "x")
    return data


def test_create_json_and_id_only(
    named: dict[str, Any], workspaces: Workspaces, seed_dir: Path
) -> None:
    assert named["name"] == "x"
    assert named["state"] == "running"
    assert named["network"] == "off"
    assert len(named["id"]) == 12
    assert named["base_layers"] == named["layers"]
    assert workspaces.status("x").record.id == named["id"]

    result = _ok("workspace", "create", "--seed-path", str(seed_dir), "--id-only")
    new_id = result.stdout.strip()
    assert result.stdout == new_id + "\n"
    assert len(new_id) == 12
    assert workspaces.status(new_id).state == "running"
    assert workspaces.resolve(new_id).load().base_layers == named["base_layers"]


def test_exec_passes_exit_codes_and_output_through(named: dict[str, Any]) -> None:
    result = run_pyro("workspace", "exec", "x", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert result.returncode == 7
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert _ok("workspace", "exec", "x", "--", "cat", "README.md").stdout == "hello\n"
    assert run_pyro("workspace", "exec", named["id"], "--", "false").returncode == 1

    data = json.loads(
        run_pyro("workspace", "exec", "x", "--json", "--", "sh", "-c", "echo hi; exit 4").stdout
    )
    assert data["exit_code"] == 4
    assert data["stdout"] == "hi\n"
    assert data["timed_out"] is False

    timed = run_pyro("workspace", "exec", "x", "--timeout", "0.2", "--", "sleep", "30")
    assert timed.returncode == 124
    assert "timed out" in timed.stderr

    env = _ok(
        "workspace",
        "exec",
        "x",
        "--cwd",
        "src",
        "--env",
        "A=b c",
        "--",
        "sh",
        "-c",
        'pwd; echo "$A"',
    )
    assert env.stdout == "/workspace/src\nb c\n"


def test_exec_streams_output(named: dict[str, Any], workspaces: Workspaces) -> None:
    script = "echo first; while [ ! -e go ]; do sleep 0.01; done; echo second"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyro_loop", "workspace", "exec", "x", "--timeout", "20", "--",
         "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == "first\n"
        assert proc.poll() is None, "the first line arrived while the command still ran"
        workspaces.client("x").write("go", b"")
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert rest == "second\n"


def test_list_and_status_json(named: dict[str, Any], workspaces: Workspaces) -> None:
    listed = _json("workspace", "list")
    assert list(listed) == ["workspaces"]
    (row,) = listed["workspaces"]
    assert row["id"] == named["id"]
    assert row["name"] == "x"
    assert row["state"] == "running"
    assert {"environment", "network", "layers", "snapshots", "limits", "created"} <= set(row)

    status = _json("workspace", "status", "x")
    assert status["id"] == named["id"]
    assert status["state"] == "running"
    assert status["snapshots"] == []
    assert status["limits"]["enforced_by"] == "rlimit"
    assert isinstance(status["changed_bytes"], int)

    human = _ok("workspace", "list").stdout
    assert named["id"] in human and "running" in human

    _ok("workspace", "stop", "x")
    stopped = run_pyro("workspace", "status", "x", "--json")
    assert stopped.returncode == 1, "status fails when the workspace is not running"
    assert json.loads(stopped.stdout)["state"] == "stopped"
    _ok("workspace", "start", "x")
    assert _json("workspace", "status", "x")["state"] == "running"


def test_file_read_and_write(named: dict[str, Any], tmp_path: Path) -> None:
    assert _ok("workspace", "file", "read", "x", "README.md").stdout == "hello\n"
    written = _json("workspace", "file", "write", "x", "notes.txt", "--content", "abc")
    assert written["written"] == 3
    assert _ok("workspace", "file", "read", "x", "notes.txt").stdout == "abc"

    source = tmp_path / "source.txt"
    source.write_text("from a host file\n")
    _ok("workspace", "file", "write", "x", "dir/from-file.txt", "--text-file", str(source))
    _ok("workspace", "file", "write", "x", "stdin.txt", input="from stdin\n")
    assert _ok("workspace", "exec", "x", "--", "cat", "dir/from-file.txt", "stdin.txt").stdout == (
        "from a host file\nfrom stdin\n"
    )

    truncated = _ok("workspace", "file", "read", "x", "notes.txt", "--max-bytes", "2")
    assert truncated.stdout == "ab"
    assert "truncated" in truncated.stderr
    read_json = _json("workspace", "file", "read", "x", "notes.txt")
    assert read_json["content"] == "abc"
    assert read_json["size"] == 3

    entries = _json("workspace", "file", "list", "x", "--recursive")["entries"]
    paths = {e["path"] for e in entries}
    assert {"/workspace/notes.txt", "/workspace/dir/from-file.txt", "/workspace/src/link"} <= paths


@pytest.mark.slow
def test_patch_diff_export_snapshot_reset_delete(
    named: dict[str, Any], tmp_path: Path, workspaces: Workspaces
) -> None:
    patch = tmp_path / "change.patch"
    patch.write_text("--- a/README.md\n+++ b/README.md\n@@ -1 +1,2 @@\n hello\n+patched\n")
    applied = _json("workspace", "patch", "apply", "x", "--patch-file", str(patch))
    assert applied["files"] == ["README.md"]
    assert _ok("workspace", "file", "read", "x", "README.md").stdout == "hello\npatched\n"

    diff = _ok("workspace", "diff", "x").stdout
    assert "diff --git a/README.md b/README.md" in diff
    assert "+patched" in diff
    assert _ok("workspace", "diff", "x", "--stat").stdout.split() == ["modified", "README.md"]
    diff_json = _json("workspace", "diff", "x")
    assert [c["path"] for c in diff_json["changes"]] == ["README.md"]

    out = tmp_path / "exported"
    outward = run_pyro("workspace", "export", "x", "src", "--output", str(out))
    assert "link 'src/link' points outside the tree ('../README.md')" in _assert_error(outward)
    exported = _json("workspace", "export", "x", "/workspace", "--output", str(out))
    assert exported["output"] == str(out)
    assert (out / "src" / "app.py").read_text() == "print('app')\n"
    assert os.readlink(out / "src" / "link") == "../README.md"
    again = run_pyro("workspace", "export", "x", "README.md", "-o", str(out))
    assert "exists already" in _assert_error(again)
    assert out.is_dir(), "the refused export left the output alone"
    _ok("workspace", "export", "x", "README.md", "-o", str(out), "--force")
    assert out.read_text() == "hello\npatched\n"
    small = run_pyro(
        "workspace", "export", "x", "src", "-o", str(tmp_path / "s"), "--max-size", "1K"
    )
    assert "is larger than 1.0 KB; nothing was written" in _assert_error(small)
    typo = run_pyro(
        "workspace", "export", "x", "src", "-o", str(tmp_path / "s"), "--max-size", "lots"
    )
    assert typo.returncode == 2 and "not a size: 'lots'" in typo.stderr
    assert not (tmp_path / "s").exists()

    snap = _json("workspace", "snapshot", "create", "x", "patched")
    assert snap["name"] == "patched"
    assert len(snap["layer"]) == 64
    listed = _json("workspace", "snapshot", "list", "x")["snapshots"]
    assert [s["name"] for s in listed] == ["baseline", "patched"]

    _ok("workspace", "reset", "x")
    assert _ok("workspace", "file", "read", "x", "README.md").stdout == "hello\n"
    assert _ok("workspace", "diff", "x").stdout == ""
    reset = _json("workspace", "reset", "x", "--snapshot", "patched")
    assert reset["snapshot"] == "patched"
    assert _ok("workspace", "file", "read", "x", "README.md").stdout == "hello\npatched\n"

    bad = tmp_path / "bad.patch"
    bad.write_text("--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-nothing like it\n+x\n")
    assert "does not apply" in _assert_error(
        run_pyro("workspace", "patch", "apply", "x", "--patch-file", str(bad))
    )

    deleted = _json("workspace", "delete", "x")
    assert deleted["id"] == named["id"]
    assert _json("workspace", "list") == {"workspaces": []}
    assert workspaces.list() == []


def test_errors_are_one_line_with_exit_code_1(named: dict[str, Any]) -> None:
    assert "no workspace" in _assert_error(run_pyro("workspace", "status", "nonexistent"))
    assert "no workspace" in _assert_error(
        run_pyro("workspace", "exec", "nonexistent", "--", "true")
    )
    for path in ["../etc/passwd", "/etc/passwd"]:
        message = _assert_error(run_pyro("workspace", "file", "read", "x", path))
        assert "outside /workspace" in message
    message = _assert_error(
        run_pyro("workspace", "file", "write", "x", "../escape.txt", "--content", "x")
    )
    assert "outside /workspace" in message
    _assert_error(run_pyro("workspace", "create", "--name", "x"))  # the name is taken
    _assert_error(run_pyro("workspace", "create", "--name", "bad name"))
    _assert_error(run_pyro("workspace", "reset", "x", "--snapshot", "never-made"))


def test_missing_command_exits_127(named: dict[str, Any]) -> None:
    result = run_pyro("workspace", "exec", "x", "--", "no-such-command-anywhere")
    assert "command not found" in _assert_error(result, exit_code=127)
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ("workspace", "exec"),
        ("workspace", "create", "--no-such-option"),
        ("workspace", "no-such-subcommand"),
        ("workspace", "exec", "x", "--timeout", "soon", "--", "true"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = run_pyro(*args)
    assert result.returncode == 2, result.stderr
    assert "Usage" in result.stderr or "Error" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_read_by_a_pager_that_quits_early_is_not_an_error() -> None:
    # `pyro --help | head -1`: the reader closes the pipe after the first line, while the
    # root help still has its "Here:" line (the project's state) to print.
    pyro = subprocess.Popen(
        [sys.executable, "-m", "pyro_loop", "--help"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert pyro.stdout is not None and pyro.stderr is not None
    assert pyro.stdout.readline().startswith(b"Usage")
    pyro.stdout.close()
    stderr = pyro.stderr.read().decode()
    pyro.stderr.close()
    assert pyro.wait(timeout=60) == 0, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr


def test_doctor_reports_ready() -> None:
    data = _json("doctor")
    assert data["ready"] is True
    checks = {c["name"]: c for c in data["checks"]}
    assert checks
    assert all(c["ok"] for c in checks.values() if c["required"])
    assert checks["GNU tar and setpriv"]["ok"]  # what a team-cache pull needs (.ci/run installs)


def test_version() -> None:
    result = _ok("--version")
    assert result.stdout == f"pyro {__version__}\n"


def test_demo_runs_the_daily_loop_and_leaves_no_workspace(pyro_home: Path) -> None:
    result = run_pyro("demo", "--json", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = json.loads(result.stdout)["steps"]
    assert all(step["ok"] for step in steps), steps
    titles = " | ".join(step["step"] for step in steps)
    for command in ("pyro up", "pyro exec", "pyro diff", "pyro reset", "pyro retry"):
        assert command in titles
    assert Workspaces(home=pyro_home).list() == []
    assert not list((pyro_home / "projects").glob("*.json"))  # the sample project forgotten

"""Secrets reach the command's environment and nothing else: not the record, the history,
retry's record, .pyro.toml, logs, crash logs or MCP results; what a command echoes back is
masked. Each place is checked for the value itself."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import anyio
import pytest

from pyro_loop.guard import masked_argv
from pyro_loop.workspace.manager import Workspaces
from pyro_loop.workspace.secrets import Redactor
from tests.helpers.mcp import connect
from tests.helpers.project import commit_project, run_pyro
from tests.helpers.secrets import VALUE, everything_under

DIGEST = hashlib.sha256(VALUE.encode()).hexdigest()
# Echoes the secret, and proves the command had it (by its digest: the value itself must not
# be on the command line, which the history keeps).
SHOW = 'echo "out:$TOKEN"; echo "err:$TOKEN" >&2; printf %s "$TOKEN" | sha256sum | cut -c1-64'


def test_a_workspace_secret(seed_dir: Path, workspaces: Workspaces, pyro_home: Path) -> None:
    created = run_pyro("workspace", "create", "--seed-path", str(seed_dir), "--name", "sec",
                       "--secret", f"TOKEN={VALUE}", "--json")  # fmt: skip
    assert created.returncode == 0, created.stderr
    result = run_pyro("workspace", "exec", "sec", "--", "sh", "-c", SHOW)
    assert result.stdout == f"out:[REDACTED]\n{DIGEST}\n"  # the command had it, the output masks it
    assert result.stderr == "err:[REDACTED]\n"
    as_json = run_pyro("workspace", "exec", "sec", "--json", "--", "sh", "-c", SHOW)
    assert "[REDACTED]" in as_json.stdout and VALUE not in as_json.stdout
    # A service has it too, and its log masks it.
    run_pyro("workspace", "service", "start", "sec", "svc", "--", "sh", "-c",
             'echo "svc:$TOKEN"; exec sleep 60')  # fmt: skip
    logs = run_pyro("workspace", "service", "logs", "sec", "svc")
    while "svc:" not in logs.stdout:
        logs = run_pyro("workspace", "service", "logs", "sec", "svc")
    assert logs.stdout == "svc:[REDACTED]\n"
    for args in (("status", "sec"), ("logs", "sec"), ("list",)):
        shown = run_pyro("workspace", *args, "--json").stdout
        assert VALUE not in shown
    assert VALUE not in created.stdout
    # On disk: only in secrets.json, which only its owner can read.
    record = workspaces.resolve("sec")
    stored = record.root / "secrets.json"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert json.loads(stored.read_text()) == {"TOKEN": VALUE}
    stored_text = stored.read_text()
    stored.unlink()  # what remains of the home must not hold the value anywhere
    try:
        assert VALUE not in everything_under(pyro_home)
    finally:
        stored.write_text(stored_text)


def test_secret_env_on_exec_and_retry(tmp_path: Path, workspaces: Workspaces,
                                      pyro_home: Path) -> None:  # fmt: skip
    config = '[workspace]\nnetwork = "off"\n'
    repo = commit_project(tmp_path / "repo", config, {"a.txt": "a\n"})
    c = ("-C", str(repo))
    show = SHOW.replace("TOKEN", "API_KEY")
    missing = run_pyro("exec", *c, "--secret-env", "API_KEY", "--", "true")
    assert missing.returncode == 1
    assert missing.stderr.startswith(
        "pyro: error: --secret-env API_KEY: API_KEY is not set in this environment"
    )
    result = run_pyro("exec", *c, "--secret-env", "API_KEY", "--", "sh", "-c", show,
                      env={"API_KEY": VALUE})  # fmt: skip
    assert result.stdout == f"out:[REDACTED]\n{DIGEST}\n"
    assert result.stderr.endswith("err:[REDACTED]\n")  # after the first prepare's progress
    # retry's record names the variable; retry reads its value again from the environment.
    again = run_pyro("retry", *c, env={"API_KEY": VALUE})
    assert again.returncode == 0 and again.stdout.endswith(f"out:[REDACTED]\n{DIGEST}\n")
    gone = run_pyro("retry", *c)
    assert gone.returncode == 1 and "API_KEY is not set" in gone.stderr
    # A detached service gets it, its log masks it.
    run_pyro("exec", *c, "--detach", "--name", "svc", "--secret-env", "API_KEY", "--", "sh",
             "-c", 'echo "svc:$API_KEY"; exec sleep 60', env={"API_KEY": VALUE})  # fmt: skip
    logs = run_pyro("logs", *c, "svc")
    while "svc:" not in logs.stdout:
        logs = run_pyro("logs", *c, "svc")
    assert logs.stdout == "svc:[REDACTED]\n"
    assert (repo / ".pyro.toml").read_text() == config
    assert VALUE not in everything_under(pyro_home) + everything_under(repo)
    last = next(pyro_home.glob("projects/*/last-command.json"))
    assert json.loads(last.read_text())["secret_env"] == ["API_KEY"]


def test_mcp_results_mask_secrets(tmp_path: Path, workspaces: Workspaces, seed_dir: Path,
                                  pyro_home: Path) -> None:  # fmt: skip
    record = workspaces.create(seed=seed_dir, name="mcp-sec", secrets={"TOKEN": VALUE})
    repo = commit_project(tmp_path / "repo", "", {})

    async def scenario() -> None:
        async with connect(repo, "--profile", "workspace-full") as client:
            short = await client.call("workspace_exec", command=SHOW, workspace_id=record.id)
            assert short["stdout"] == f"out:[REDACTED]\n{DIGEST}\n"
            # Long output is saved for workspace_logs: masked before it is written.
            long = await client.call("workspace_exec", workspace_id=record.id,
                                     command='yes "$TOKEN" | head -n 20000')  # fmt: skip
            assert long["stdout_truncated"] is True
            shell = await client.call("workspace_shell_open", workspace_id=record.id)
            await client.call("workspace_shell_write", shell_id=shell["shell_id"],
                              input='echo "sh:$TOKEN"')  # fmt: skip
            seen = ""
            for _ in range(100):
                out = await client.call("workspace_shell_read", shell_id=shell["shell_id"],
                                        cursor=len(seen.encode()))  # fmt: skip
                seen += out["output"]
                if "sh:[REDACTED]" in seen:
                    break
            assert "sh:[REDACTED]" in seen and VALUE not in seen

    anyio.run(scenario)
    saved = workspaces.resolve(record.id).root / "outputs"
    assert "[REDACTED]" in everything_under(saved) and VALUE not in everything_under(saved)


def test_mcp_create_takes_secrets(tmp_path: Path, pyro_home: Path) -> None:
    repo = commit_project(tmp_path / "repo", "", {})

    async def scenario() -> list[str]:
        async with connect(repo, "--profile", "workspace-full") as client:
            created = await client.call("workspace_create", name="mcp-made",
                                        secrets={"TOKEN": VALUE})  # fmt: skip
            shown = [json.dumps(created)]
            ran = await client.call("workspace_exec", command=SHOW, workspace_id="mcp-made")
            assert ran["stdout"] == f"out:[REDACTED]\n{DIGEST}\n"
            assert ran["stderr"] == "err:[REDACTED]\n"
            shown.append(json.dumps(ran))
            for tool in ("workspace_status", "workspace_logs"):
                shown.append(json.dumps(await client.call(tool, workspace_id="mcp-made")))
            shown.append(json.dumps(await client.call("workspace_list")))
            # Mistakes name the variable, never quote a value back.
            for bad in ({"TOKEN": [VALUE]}, {"9x": VALUE}, [VALUE], {"TOKEN": ""}, VALUE):
                error = await client.error("workspace_create", secrets=bad)
                assert "secrets" in error
                shown.append(error)
            return shown + client.logs

    shown = anyio.run(scenario)
    assert VALUE not in "\n".join(shown)
    assert VALUE not in (tmp_path / "server.log").read_text()
    stored = Workspaces(home=pyro_home).resolve("mcp-made").root / "secrets.json"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert json.loads(stored.read_text()) == {"TOKEN": VALUE}
    stored.unlink()  # nothing else in the home holds it
    assert VALUE not in everything_under(pyro_home)


def test_the_mask_holds_across_chunks() -> None:
    redactor = Redactor([VALUE, "other"])
    pieces = [b"a ", VALUE[:5].encode(), VALUE[5:11].encode(), (VALUE[11:] + " b s3").encode(),
              b"x oth", b"er"]  # fmt: skip
    out = b"".join(redactor.feed(p) for p in pieces) + redactor.flush()
    assert out == b"a [REDACTED] b s3x [REDACTED]"
    # Nothing is held back that cannot begin a secret (a terminal shows it at once).
    assert Redactor([VALUE]).feed(b"plain text\r\n") == b"plain text\r\n"


@pytest.mark.parametrize(
    ("argv", "masked"),
    [
        (["pyro", "workspace", "create", "--secret", f"T={VALUE}"],
         ["pyro", "workspace", "create", "--secret", "T=[REDACTED]"]),
        (["pyro", "workspace", "create", f"--secret=T={VALUE}", "--name", "x"],
         ["pyro", "workspace", "create", "--secret=T=[REDACTED]", "--name", "x"]),
    ],
)  # fmt: skip
def test_crash_logs_mask_secret_arguments(argv: list[str], masked: list[str]) -> None:
    assert masked_argv(argv) == masked

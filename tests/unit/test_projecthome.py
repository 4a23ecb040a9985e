"""One owner for a project's files in the pyro home: the layout existing homes already have."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyro_loop import records
from pyro_loop.errors import DamagedFileError
from pyro_loop.loop.prepare import PrepareInputs
from pyro_loop.loop.projecthome import (
    _INPUT_CHECKS,
    _STATE_CHECKS,
    ProjectHome,
    ProjectState,
    load_state,
    prepared_projects,
    read_state,
)


def test_the_layout_is_the_one_existing_homes_have(tmp_path: Path) -> None:
    files = ProjectHome(tmp_path, "0123456789abcdef")
    rel = {name: str(getattr(files, name).relative_to(tmp_path)) for name in (
        "state_file", "last_command_file", "sync_manifest", "host_scan", "watch_status",
        "key_digests", "background_prepare", "background_log", "untrusted_noted", "lock",
    )}  # fmt: skip
    assert rel == {
        "state_file": "projects/0123456789abcdef.json",
        "last_command_file": "projects/0123456789abcdef/last-command.json",
        "sync_manifest": "projects/0123456789abcdef/sync-manifest.json",
        "host_scan": "projects/0123456789abcdef/host-scan",
        "watch_status": "projects/0123456789abcdef/watch.json",
        "key_digests": "projects/0123456789abcdef/key-digests.json",
        "background_prepare": "projects/0123456789abcdef/background-prepare.json",
        "background_log": "logs/background-prepare-0123456789abcdef.log",
        "untrusted_noted": "projects/0123456789abcdef/untrusted-noted.json",
        "lock": "locks/project-0123456789abcdef.lock",
    }


def test_a_state_an_earlier_prepare_wrote_is_read_and_listed(tmp_path: Path) -> None:
    written = {  # as `pyro prepare` has written it since tool layers were added
        "root": "/src/app", "key": "k1", "inputs": {"run": ["true"]},
        "dependencies_layer": "d1", "project_layer": None, "project_keys": {},
        "baseline_commit": "c" * 40, "baseline_tree": "t" * 40, "baseline_layer": "b1",
        "prepared_at": 1.5, "tool_layers": {"uv": "u1"},
    }  # fmt: skip
    (tmp_path / "projects").mkdir()
    (tmp_path / "projects" / "aaaa.json").write_text(json.dumps(written))
    (tmp_path / "projects" / "bbbb.json").write_text("{not json")  # a torn write: skipped
    (tmp_path / "projects" / "cccc.json").write_text('{"unknown_field": 1}')
    (tmp_path / "projects" / "aaaa").mkdir()  # a project's directory is not a state
    state = ProjectHome(tmp_path, "aaaa").load_state()
    assert state == ProjectState(**written)
    assert list(prepared_projects(tmp_path)) == [state]
    assert ProjectHome(tmp_path, "bbbb").load_state() is None


def test_saved_state_and_last_command_round_trip_and_forget_removes_both(tmp_path: Path) -> None:
    files = ProjectHome(tmp_path, "p1")
    assert files.load_state() is None and files.last_command() is None
    files.save_state(ProjectState(root="/src/app", key="k"))
    files.dir.mkdir(parents=True)
    files.save_last_command({"argv": ["pytest"]})
    assert files.load_state() == ProjectState(root="/src/app", key="k")
    assert files.last_command() == {"argv": ["pytest"]}
    files.forget()
    assert not files.dir.exists() and not files.state_file.exists()
    assert list(prepared_projects(tmp_path)) == []


def test_a_damaged_or_planted_state_is_refused_in_one_line(tmp_path: Path) -> None:
    """The state is what `save_state` writes, field by field, or a damaged file: named in one
    line by `load_state`, and a cold project (None) to the daily commands."""
    files = ProjectHome(tmp_path, "cccc")
    inputs = PrepareInputs(
        "host", [], {"uv.lock": "ab" * 32}, ["uv sync"], ["CI"],
        tools={"uv": "0.5"}, host_tools=["/opt/go"], path=["/x/bin"],
    )  # fmt: skip
    files.save_state(ProjectState(root="/src/app", key=inputs.key, inputs=inputs.to_json(),
                                  tool_layers={"uv": "u1"}))  # fmt: skip
    assert load_state(files.state_file).inputs == inputs.to_json()
    # Every field and every input is checked: none left to pass through unseen.
    assert set(_STATE_CHECKS) == {f.name for f in records.fields(ProjectState)}
    assert set(_INPUT_CHECKS) == set(inputs.to_json())

    good = json.loads(files.state_file.read_text())
    hostile = {
        "cut short": files.state_file.read_text()[:-10],
        "not a JSON object": "[]",
        "unknown field 'evil'": json.dumps({**good, "evil": 1}),
        "root is missing": json.dumps({k: v for k, v in good.items() if k != "root"}),
        "root is not a string": json.dumps({**good, "root": ["/"]}),
        "key is not a string or null": json.dumps({**good, "key": 7}),
        "prepared_at is not a number or null": json.dumps({**good, "prepared_at": "soon"}),
        "tool_layers is not an object of strings": json.dumps({**good, "tool_layers": {"uv": 1}}),
        "inputs is not an object": json.dumps({**good, "inputs": []}),
        "inputs.run is not a list of strings": json.dumps(
            {**good, "inputs": {**good["inputs"], "run": "rm -rf /"}}
        ),
        "unknown input 'later'": json.dumps({**good, "inputs": {"later": 1}}),
        "larger than": " " * (5 * 1024 * 1024),
        "deep": "[" * 100000 + "]" * 100000,
    }
    for expected, text in hostile.items():
        files.state_file.write_text(text)
        with pytest.raises(DamagedFileError) as caught:
            load_state(files.state_file)
        message = caught.value.message
        assert "\n" not in message and str(files.state_file) in message, message
        if expected not in ("cut short", "deep"):
            assert expected in message
        assert read_state(files.state_file) is None and files.load_state() is None
    assert list(prepared_projects(tmp_path)) == []

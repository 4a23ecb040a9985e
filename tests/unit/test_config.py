"""`.pyro.toml`: defaults, every key, one-line errors with the right line, warnings, the docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pyro_loop import __version__, records
from pyro_loop.errors import PyroError
from pyro_loop.project.config import (
    SETTINGS,
    ConfigResult,
    InvalidConfigError,
    ProjectConfig,
    load_config,
    load_project_config,
    render_markdown,
)

ROOT = Path(__file__).resolve().parents[2]

FULL = """\
min_version = "0.0.1"

[environment]
base = "debian:12"
packages = ["libpq-dev", "g++"]

[prepare]
keys = ["uv.lock", "web/package-lock.json"]
run = [
    "uv sync --frozen",
    "cd web && npm ci",
]
env = ["UV_INDEX_URL", "PIP_INDEX_URL"]
timeout = 90.5

[workspace]
network = "egress"
processes = 512
open_files = 1024

[sync]
exclude = ["*.log", "data/raw/"]

[check]
run = ["pytest -q", "ruff check ."]
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages name the file relative to the cwd, as the user would type it."""
    monkeypatch.chdir(tmp_path)


def load(tmp_path: Path, text: str) -> ConfigResult:
    path = tmp_path / ".pyro.toml"
    path.write_text(text)
    return load_config(path)


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(InvalidConfigError) as info:
        load(tmp_path, text)
    message = info.value.message
    assert "\n" not in message
    assert isinstance(info.value, PyroError)
    return message


def test_defaults_without_a_file(tmp_path: Path) -> None:
    result = load_project_config(tmp_path)
    assert result.config == ProjectConfig.default()
    assert result.warnings == ()
    config = result.config
    assert config.path is None
    assert config.environment == "host"
    assert config.packages == ()
    assert config.prepare_keys is None
    assert config.prepare_run == () and config.prepare_env == ()
    assert config.prepare_timeout == 1800
    assert (config.network, config.processes, config.open_files) == ("off", 4096, 65536)
    assert config.sync_exclude == () and config.check_run == ()
    assert config.min_version is None


def test_an_empty_file_is_the_defaults(tmp_path: Path) -> None:
    result = load(tmp_path, "# nothing yet\n")
    assert result.config == records.replace(ProjectConfig.default(), path=tmp_path / ".pyro.toml")
    assert result.warnings == ()


def test_every_key_is_parsed(tmp_path: Path) -> None:
    result = load(tmp_path, FULL)
    assert result.warnings == ()
    config = result.config
    assert config.path == tmp_path / ".pyro.toml"
    assert config.min_version == "0.0.1"
    assert config.environment == "debian:12"
    assert config.packages == ("libpq-dev", "g++")
    assert config.prepare_keys == ("uv.lock", "web/package-lock.json")
    assert config.prepare_run == ("uv sync --frozen", "cd web && npm ci")
    assert config.prepare_env == ("UV_INDEX_URL", "PIP_INDEX_URL")
    assert config.prepare_timeout == 90.5
    assert (config.network, config.processes, config.open_files) == ("egress", 512, 1024)
    assert config.sync_exclude == ("*.log", "data/raw/")
    assert config.check_run == ("pytest -q", "ruff check .")
    assert load_project_config(tmp_path) == result


def test_each_field_is_declared_once() -> None:
    fields = {f.name for f in records.fields(ProjectConfig)} - {"path", "digest"}
    declared = [s.field for s in SETTINGS]
    assert sorted(declared) == sorted(fields)
    assert len({(s.table, s.name) for s in SETTINGS}) == len(SETTINGS)


def test_dotted_keys_and_inline_tables_count_too(tmp_path: Path) -> None:
    text = 'workspace.network = "egress"\ncheck = { run = ["make test"] }\n'
    config = load(tmp_path, text).config
    assert config.network == "egress"
    assert config.check_run == ("make test",)


def test_integer_timeout_becomes_seconds(tmp_path: Path) -> None:
    assert load(tmp_path, "[prepare]\ntimeout = 60\n").config.prepare_timeout == 60.0


def test_malformed_toml_names_line_and_column(tmp_path: Path) -> None:
    message = error(tmp_path, '[workspace]\nnetwork = "off"\nprocesses = = 4\n')
    assert message.startswith(".pyro.toml:3: not valid TOML: ")
    assert "column" in message


def test_duplicate_key_is_malformed(tmp_path: Path) -> None:
    message = error(tmp_path, '[workspace]\nnetwork = "off"\nnetwork = "egress"\n')
    assert message.startswith(".pyro.toml:3: not valid TOML: Cannot overwrite a value")
    message = error(tmp_path, '[[a]]\nk = 1\n[[a]]\nk = 2\n[b]\nx = 1\n"x" = 2\n')
    assert message.startswith(".pyro.toml:7: not valid TOML: Cannot overwrite a value")
    message = error(tmp_path, "a = 1\n\na = 2\n")
    assert message.startswith(".pyro.toml:3: not valid TOML: ")


def test_bad_choice(tmp_path: Path) -> None:
    text = '# comment\n\n[environment]\nbase = "host"\n\n[workspace]\nnetwork = "on"\n'
    message = error(tmp_path, text)
    assert message == '.pyro.toml:7: [workspace] network: expected "off" or "egress", got "on"'


def test_wrong_type(tmp_path: Path) -> None:
    message = error(tmp_path, '[workspace]\nprocesses = "many"\n')
    assert message == '.pyro.toml:2: [workspace] processes: expected a positive integer, got "many"'
    message = error(tmp_path, '[check]\nrun = "pytest"\n')
    assert message == '.pyro.toml:2: [check] run: expected a list of strings, got "pytest"'
    message = error(tmp_path, "[prepare]\ntimeout = -1\n")
    assert (
        message == ".pyro.toml:2: [prepare] timeout: expected a positive number of seconds, got -1"
    )
    message = error(tmp_path, "[workspace]\nopen_files = 1.5\n")
    assert message.startswith(".pyro.toml:2: [workspace] open_files: expected a positive integer")


def test_bool_is_not_an_int(tmp_path: Path) -> None:
    message = error(tmp_path, '[workspace]\nnetwork = "off"\nprocesses = true\n')
    assert message == ".pyro.toml:3: [workspace] processes: expected a positive integer, got true"
    message = error(tmp_path, "[prepare]\n\ntimeout = false\n")
    assert message.startswith(".pyro.toml:3: [prepare] timeout: expected a positive number")


def test_list_items_must_be_strings(tmp_path: Path) -> None:
    text = '[prepare]\nrun = [\n    "make deps",\n    3,\n]\n'
    message = error(tmp_path, text)
    assert message == ".pyro.toml:2: [prepare] run: item 2: expected a string, got 3"


def test_strings_are_never_empty_and_never_nul(tmp_path: Path) -> None:
    message = error(tmp_path, '[check]\nrun = ["pytest", ""]\n')
    assert message == '.pyro.toml:2: [check] run: item 2: expected a non-empty string, got ""'
    message = error(tmp_path, '[check]\nrun = ["a\\u0000b"]\n')
    assert message.startswith(".pyro.toml:2: [check] run: item 1: expected a non-empty string")


def test_values_that_look_wrong(tmp_path: Path) -> None:
    message = error(tmp_path, '[environment]\nbase = "ubuntu:24.04"\n')
    assert message.startswith('.pyro.toml:2: [environment] base: expected "host" or')
    message = error(tmp_path, '[prepare]\nenv = ["UV_INDEX_URL", "1BAD"]\n')
    assert message.endswith('env: item 2: expected an environment variable name, got "1BAD"')
    message = error(tmp_path, '[prepare]\nkeys = ["../outside.lock"]\n')
    assert "expected a path relative to the project root" in message
    message = error(tmp_path, '[prepare]\nkeys = ["/etc/passwd"]\n')
    assert "expected a path relative to the project root" in message
    message = error(tmp_path, '[environment]\nbase = "debian:12"\npackages = ["--force-yes"]\n')
    assert message.startswith(".pyro.toml:3: [environment] packages: item 1: expected a Debian")


def test_a_table_that_is_not_a_table(tmp_path: Path) -> None:
    message = error(tmp_path, 'min_version = "0.0.1"\nworkspace = "off"\n')
    assert message == '.pyro.toml:2: [workspace]: expected a table, got "off"'


def test_lines_stay_right_after_multiline_values(tmp_path: Path) -> None:
    text = (
        '[check]\nrun = [\n  """\nnetwork = 1\n[workspace]\n""",  # ] not a key\n]\n'
        "[workspace]\nprocesses = 1\nopen_files = 0\n"
    )
    message = error(tmp_path, text)
    assert message == ".pyro.toml:10: [workspace] open_files: expected a positive integer, got 0"


def test_min_version_too_high(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError) as info:
        load(tmp_path, "\n[workspace]\nprocesses = true\n\n[x]\n" + 'min_version = "99.0"\n')
    # min_version inside [x] is an unknown key, so the bad type wins here ...
    assert "processes" in info.value.message
    # ... but at the top level the version is checked before anything else.
    message = error(tmp_path, '# header\nmin_version = "99.0"\n[workspace]\nprocesses = true\n')
    assert message == (
        f".pyro.toml:2: min_version: this project needs pyro 99.0 or newer, this is pyro "
        f"{__version__}"
    )
    with pytest.raises(InvalidConfigError) as info:
        load(tmp_path, 'min_version = "99.0"\n')
    assert info.value.hint and "upgrade" in info.value.hint


def test_min_version_met_and_malformed(tmp_path: Path) -> None:
    assert load(tmp_path, f'min_version = "{__version__}"\n').config.min_version == __version__
    assert load(tmp_path, 'min_version = "0.1"\n').warnings == ()
    message = error(tmp_path, "min_version = 1\n")
    assert message == '.pyro.toml:1: min_version: expected a version such as "0.1.0", got 1'


def test_unknown_keys_warn_with_a_suggestion(tmp_path: Path) -> None:
    text = (
        '[workspace]\nnetwork = "off"\nnetwrok = "egress"\n\n'
        '[enviroment]\nbase = "host"\n\nnetwork = "off"\n'
    )
    result = load(tmp_path, text)
    assert result.config.network == "off"
    assert result.warnings == (
        ".pyro.toml:3: unknown key [workspace] netwrok (did you mean network?)",
        ".pyro.toml:5: unknown table [enviroment] (did you mean [environment]?)",
    )


def test_top_level_key_in_the_wrong_place(tmp_path: Path) -> None:
    result = load(tmp_path, 'network = "egress"\nzzz = 1\n')
    assert result.warnings == (
        ".pyro.toml:1: unknown key network (did you mean [workspace] network?)",
        ".pyro.toml:2: unknown key zzz",
    )
    assert result.config.network == "off"


def test_packages_with_host_warn(tmp_path: Path) -> None:
    result = load(tmp_path, '[environment]\n\npackages = ["libpq-dev"]\n')
    assert result.config.packages == ("libpq-dev",)
    assert result.warnings == (
        ".pyro.toml:3: [environment] packages: only used with a debian:<release> base; "
        'ignored with "host"',
    )


def test_unreadable_and_non_utf8(tmp_path: Path) -> None:
    (tmp_path / ".pyro.toml").mkdir()
    with pytest.raises(InvalidConfigError, match="cannot read it"):
        load_config(tmp_path / ".pyro.toml")
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[check]\nrun = ["\xff"]\n')
    with pytest.raises(InvalidConfigError, match=r"bad.toml:2: not UTF-8 text"):
        load_config(path)


def test_absolute_path_outside_cwd_is_named_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    path = tmp_path / "repo" / ".pyro.toml"
    path.parent.mkdir()
    path.write_text('[workspace]\nnetwork = "on"\n')
    with pytest.raises(InvalidConfigError) as info:
        load_config(path)
    assert info.value.message.startswith(f"{path}:2: ")


def test_docs_match_the_declarations() -> None:
    docs = (ROOT / "docs" / "config.md").read_text()
    assert docs == render_markdown(), "regenerate: python -m pyro_loop.project.config --markdown"
    for setting in SETTINGS:
        assert f"| `{setting.name}` |" in docs


def test_markdown_from_the_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pyro_loop.project.config", "--markdown"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == render_markdown()
    usage = subprocess.run(
        [sys.executable, "-m", "pyro_loop.project.config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert usage.returncode == 2


def test_the_template_holds_the_defaults() -> None:
    config = load_config(ROOT / "templates" / "pyro.toml").config
    default = ProjectConfig.default()
    # The template spells out every default, except `keys`, which `pyro init` fills in.
    assert records.replace(config, path=None, prepare_keys=None) == default


def test_a_cached_parse_gives_what_parsing_gives(tmp_path: Path, pyro_home: Path) -> None:
    """The second load of the same bytes reads the parse from pyro's home, with the same
    config, warnings and error lines; a date (which JSON would not give back) or an entry this
    pyro did not write means a fresh parse."""
    from pyro_loop.project import config as module

    text = FULL + "colour = 'red'\n"
    first = load(tmp_path, text)
    kept = list((pyro_home / module.PARSE_CACHE).glob("*.json"))
    assert [p.stem for p in kept] == [first.config.digest]
    second = load(tmp_path, text)
    assert second == first
    assert second.warnings == first.warnings != ()
    assert second.config.digest == first.config.digest

    kept[0].write_text(kept[0].read_text().replace('"pyro ', '"other '))
    assert load(tmp_path, text) == first  # not this pyro's: parsed again, and kept anew
    assert module._cached_parse(first.config.digest) is not None

    bad = FULL.replace("processes = 512", "processes = 'many'")
    with pytest.raises(InvalidConfigError) as fresh:
        load(tmp_path, bad)
    with pytest.raises(InvalidConfigError) as cached:
        load(tmp_path, bad)
    assert str(cached.value) == str(fresh.value)
    assert ".pyro.toml:18: [workspace] processes" in str(fresh.value)

    dated = FULL + "when = 1979-05-27\n"
    assert load(tmp_path, dated).warnings == load(tmp_path, dated).warnings
    digest = load(tmp_path, dated).config.digest
    assert digest is not None and module._cached_parse(digest) is None

"""`.pyro.toml`: the project's configuration, each setting declared once.

The loader, its validation and docs/config.md (`python -m pyro_loop.project.config --markdown`)
all come from SETTINGS, so the reference cannot drift from what the loader accepts. Unknown keys are
warnings, not errors, so a file written for a newer pyro still loads here; `min_version` is how a
project says it really needs that newer pyro.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

from pyro_loop import __version__
from pyro_loop.digest import sha256_hex
from pyro_loop.errors import PyroError
from pyro_loop.names import ENV_NAME
from pyro_loop.records import dataclass, field, replace
from pyro_loop.runtime.limits import DEFAULT_LIMITS, Limits

FILENAME = ".pyro.toml"

Kind = Literal["string", "strings", "integer", "seconds", "ports"]
TYPE_NAMES = {
    "string": "string",
    "strings": "list of strings",
    "integer": "integer",
    "seconds": "number (seconds)",
    "ports": "list of ports",
}


class InvalidConfigError(PyroError):
    """`.pyro.toml` is not valid TOML, or a setting has the wrong type or value."""


@dataclass(frozen=True)
class Rule:
    """What a string (or each string of a list) must look like: a full-match regex."""

    pattern: str
    expected: str

    def matches(self, value: str) -> bool:
        return re.fullmatch(self.pattern, value) is not None


@dataclass(frozen=True)
class Setting:
    table: str  # "" for the top level
    name: str
    field: str  # the ProjectConfig attribute it fills
    kind: Kind
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    rule: Rule | None = None
    # Whether a value widens the sandbox or runs commands, so that it takes effect only once
    # the user trusts the file (project/trust.py): "set" (any value but the default), "raised" (a
    # limit above its default), or "" (never: the setting only narrows or selects).
    widens: Literal["", "set", "raised"] = ""

    @property
    def label(self) -> str:
        return f"[{self.table}] {self.name}" if self.table else self.name

    def widened(self, value: Any) -> bool:
        """True when `value` needs the user's trust (see `widens`)."""
        if self.widens == "set":
            return bool(value != self.default)
        if self.widens == "raised":
            # An unset default is no limit at all: any value narrows it.
            return value is not None and self.default is not None and value > self.default
        return False


# Paths stay inside the project: relative, with no `..` component.
RELATIVE_PATH = Rule(r"(?!/)(?!(?:.*/)?\.\.(?:/|$))[^\n]+", "a path relative to the project root")
SINGLE_LINE = Rule(r"[^\n]+", "a single-line pattern")
TOOL_VERSION = Rule(
    r"latest|\d+(?:\.\d+)*(?:\.x|[a-z0-9.+-]*)",
    'a version: exact ("1.8.3"), a line ("1.8.x") or "latest"',
)
# A host directory, by absolute path or below the user's home; never through `..`.
HOST_DIRECTORY = Rule(
    r"(?:/|~/)(?!(?:.*/)?\.\.(?:/|$))[^\n]*", 'an absolute path or one below "~/"'
)
# PATH entries: below /workspace when relative, never through `..`; no ":" (PATH's separator).
PATH_ENTRY = Rule(r"(?!(?:.*/)?\.\.(?:/|$))[^\n:]+", 'a directory without ":" or ".."')
# The tools pyro can build from the package registries (see loop/tools.py), in the order they show.
TOOL_NAMES = ("uv", "poetry", "pipenv", "pdm", "pnpm", "yarn")

SETTINGS: tuple[Setting, ...] = (
    Setting("", "min_version", "min_version", "string", None,
            "The oldest pyro that can use this file; an older pyro stops with an error naming it.",
            rule=Rule(r"\d+(?:\.\d+)*", 'a version such as "0.1.0"')),
    Setting("environment", "base", "environment", "string", "host",
            "The root filesystem of workspaces: the host's (read-only) or a Debian image.",
            rule=Rule(r"host|debian:[a-z0-9][a-z0-9.+~-]*",
                      '"host" or "debian:<release>" (such as "debian:12")')),
    # Debian's package name policy; it also keeps option-like strings out of apt's command line.
    Setting("environment", "packages", "packages", "strings", (),
            "Extra Debian packages installed in the environment; only used with a debian base.",
            rule=Rule(r"[a-z0-9][a-z0-9+.-]+", "a Debian package name")),
    Setting("prepare", "keys", "prepare_keys", "strings", None,
            "Files whose contents key the dependency snapshot, relative to the project root. "
            "When omitted, pyro detects them (lock files and manifests).",
            rule=RELATIVE_PATH),
    Setting("prepare", "run", "prepare_run", "strings", (),
            "Shell command lines that install dependencies, run in /workspace with the network "
            "on; their result is snapshotted and reused until a key file changes.",
            widens="set"),
    Setting("prepare", "project", "prepare_project", "strings", (),
            "Shell command lines that install the project itself (an editable install), run "
            "in /workspace over HEAD's files and the installed dependencies, network on; "
            "redone when the dependencies or the project's metadata (pyproject.toml, "
            "setup.cfg, setup.py, package.json) change, never for a source edit.",
            widens="set"),
    Setting("prepare", "env", "prepare_env", "strings", (),
            "Names of more host environment variables passed through to the prepare "
            "commands, such as a token; the standard proxy, certificate and index variables "
            "are passed through without being listed (docs/prepare.md).",
            rule=Rule(ENV_NAME.pattern, "an environment variable name"), widens="set"),
    Setting("prepare", "timeout", "prepare_timeout", "seconds", 1800.0,
            "Seconds the prepare commands may run before they are stopped.", widens="raised"),
    Setting("workspace", "path", "workspace_path", "strings", None,
            "Directories put first on PATH in workspaces and prepare, relative to /workspace "
            "or absolute, as activating an environment would. When omitted: the detected "
            "virtualenvs' bin and node_modules/.bin directories.",
            rule=PATH_ENTRY),
    Setting("workspace", "network", "network", "string", "off",
            "Network access inside workspaces: none, or outbound connections.",
            choices=("off", "egress"), widens="set"),
    # Listeners on the host's loopback, reachable by every local program and browser tab.
    Setting("workspace", "ports", "ports", "ports", (),
            "Ports of the workspace published at 127.0.0.1 on the host while it runs: 5173, "
            'or "8080:80" for host port 8080 to port 80 inside.', widens="set"),
    Setting("workspace", "processes", "processes", "integer", DEFAULT_LIMITS.processes,
            "The most processes a workspace may run at once.", widens="raised"),
    Setting("workspace", "open_files", "open_files", "integer", DEFAULT_LIMITS.open_files,
            "The most files a process in a workspace may have open.", widens="raised"),
    Setting("workspace", "file_size_mib", "file_size_mib", "integer",
            DEFAULT_LIMITS.file_size_mib,
            "The largest file (MiB) a process in a workspace may write; a write past it "
            "fails (the process gets SIGXFSZ).", widens="raised"),
    Setting("workspace", "address_space_mib", "address_space_mib", "integer",
            DEFAULT_LIMITS.address_space_mib,
            "The most virtual memory (MiB) each process in a workspace may map. Unset by "
            "default: runtimes such as V8, Go and the JVM reserve far more than they use.",
            widens="raised"),
    Setting("sync", "exclude", "sync_exclude", "strings", (),
            "gitignore-style patterns of files not synced into workspaces.", rule=SINGLE_LINE),
    Setting("check", "run", "check_run", "strings", (),
            "The project's checks (tests, linters), shell command lines run in /workspace; "
            "used by retry, hooks and CI.", widens="set"),
    # Only where layers come from: the login never comes from this file (docs/cache.md).
    # Layers pulled from it become workspaces' files and run there: it needs trust.
    Setting("cache", "remote", "cache_remote", "string", None,
            "An OCI registry repository that shares prepared layers, such as "
            '"ghcr.io/acme/pyro-cache"; prepare pulls from it on a miss. PYRO_CACHE_REMOTE '
            "overrides it.",
            rule=Rule(r"(?:https?://)?[^/\s]+/[a-z0-9._/-]+", "<registry>/<repository>"),
            widens="set"),
    *(Setting("tools", name, f"tool_{name}", "string", None,
              f"The {name} version pyro installs from the package registry into a shared, "
              "cached tools layer, on PATH in prepare and workspaces.",
              rule=TOOL_VERSION) for name in TOOL_NAMES),
    Setting("tools", "host", "host_tools", "strings", (),
            "Host directories exposed read-only in prepare and workspaces, such as rustup's "
            '"~/.cargo" and "~/.rustup" or a Go root: "~/" paths appear below the sandbox\'s '
            "home, others at the same path; a bin directory inside goes on PATH. "
            "They widen the sandbox: list only toolchains you trust.",
            rule=HOST_DIRECTORY, widens="set"),
)  # fmt: skip
TABLES = tuple(dict.fromkeys(s.table for s in SETTINGS if s.table))


@dataclass(frozen=True)
class ProjectConfig:
    """A project's settings; `path` is the file they came from (None: the defaults)."""

    path: Path | None
    min_version: str | None
    environment: str
    packages: tuple[str, ...]
    prepare_keys: tuple[str, ...] | None
    prepare_run: tuple[str, ...]
    prepare_project: tuple[str, ...]
    prepare_env: tuple[str, ...]
    prepare_timeout: float
    network: str
    ports: tuple[str, ...]
    processes: int
    open_files: int
    file_size_mib: int
    address_space_mib: int | None
    sync_exclude: tuple[str, ...]
    check_run: tuple[str, ...]
    cache_remote: str | None
    workspace_path: tuple[str, ...] | None
    tool_uv: str | None
    tool_poetry: str | None
    tool_pipenv: str | None
    tool_pdm: str | None
    tool_pnpm: str | None
    tool_yarn: str | None
    host_tools: tuple[str, ...]
    # The sha256 of the bytes these settings were parsed from: what `pyro trust` approves
    # (None for the defaults, and for a configuration built in code). Not part of equality:
    # two files with the same settings configure the same thing.
    digest: str | None = field(default=None, compare=False)

    @classmethod
    def default(cls) -> ProjectConfig:
        return cls(path=None, **{s.field: s.default for s in SETTINGS})

    @property
    def tools(self) -> dict[str, str]:
        """The declared tools: name -> version, in TOOL_NAMES order."""
        versions = {name: getattr(self, f"tool_{name}") for name in TOOL_NAMES}
        return {name: version for name, version in versions.items() if version is not None}

    def limits(self) -> Limits:
        """The workspace limits these settings ask for."""
        return Limits(
            processes=self.processes,
            open_files=self.open_files,
            file_size_mib=self.file_size_mib,
            address_space_mib=self.address_space_mib,
        )

    def widening(self) -> list[str]:
        """The settings that widen the sandbox or run commands, as written: what needs trust."""
        return [s.label for s in SETTINGS if s.widened(getattr(self, s.field))]


@dataclass(frozen=True)
class ConfigResult:
    config: ProjectConfig
    warnings: tuple[str, ...] = ()


def compile_rules() -> None:
    """Compile every setting's pattern now, into `re`'s cache (a process compiles each at its
    first use; the fork server does it once for the commands it forks)."""
    for setting in SETTINGS:
        if setting.rule is not None:
            re.compile(setting.rule.pattern)


def load_project_config(root: Path) -> ConfigResult:
    """The configuration of the project at `root`: its `.pyro.toml`, or the defaults."""
    path = root / FILENAME
    return load_config(path) if os.path.lexists(path) else ConfigResult(ProjectConfig.default())


def load_config(path: Path) -> ConfigResult:
    """Load and validate one `.pyro.toml`; raises InvalidConfigError on the first bad value."""
    where = display_path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidConfigError(f"{where}: cannot read it: {exc.strerror}") from None
    digest = sha256_hex(raw)
    parsed = _cached_parse(digest)
    if parsed is None:
        parsed = _parse(raw, where)
        _remember_parse(digest, parsed)
    data, lines = parsed
    result = _Loader(path, where, lines).load(data)
    # The digest of exactly the bytes parsed: trust is checked against what is in effect.
    return replace(result, config=replace(result.config, digest=digest))


def _parse(raw: bytes, where: str) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """The file's TOML and the line of each key; InvalidConfigError when it is not TOML."""
    # The standard library's parser: it loads in a fraction of tomlkit's time. tomlkit is used
    # where files are written (pyro init).
    import tomllib

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidConfigError(f"{where}:{line}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        position = re.search(r"\s*\(at line (\d+), column (\d+)\)$", str(exc))
        reason = str(exc)[: position.start()] if position else str(exc)
        if position is None:
            twice = _key_lines(text)[1]
            at = f":{twice}" if twice else ""
            raise InvalidConfigError(f"{where}{at}: not valid TOML: {reason}") from None
        raise InvalidConfigError(
            f"{where}:{position[1]}: not valid TOML: {reason} (column {position[2]})"
        ) from None
    return data, _key_lines(text)[0]


# Parsed files, by the sha256 of their bytes, in pyro's home: a daily command reads its
# .pyro.toml on every start, and the TOML parser's import and regexes cost more than the rest
# of the load. Only what parses is kept, as JSON, and only values JSON gives back unchanged
# (a TOML date is not): the cached parse is the parse. Tagged with the versions that made it.
PARSE_CACHE = "parsed"
PARSE_CACHE_KEEP = 64  # files: past that, the least recently written go
_PARSE_TAG = f"pyro {__version__}; python {sys.version_info[:3]}; 1"


def _parse_cache_path(digest: str) -> Path:
    from pyro_loop.home import pyro_home

    return pyro_home() / PARSE_CACHE / f"{digest}.json"


def _cached_parse(digest: str) -> tuple[dict[str, Any], dict[tuple[str, ...], int]] | None:
    try:
        kept = json.loads(_parse_cache_path(digest).read_bytes())
        if (
            kept["tag"] == _PARSE_TAG
            and kept["digest"] == digest
            and isinstance(kept["data"], dict)
        ):
            return kept["data"], {tuple(key): line for key, line in kept["lines"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none kept, or not one this pyro wrote: parse again
    return None


def _remember_parse(digest: str, parsed: tuple[dict[str, Any], dict[tuple[str, ...], int]]) -> None:
    data, lines = parsed
    record = {"tag": _PARSE_TAG, "digest": digest, "data": data,
              "lines": [[list(key), line] for key, line in lines.items()]}  # fmt: skip
    try:
        if not _plain(data):
            return
        text = json.dumps(record)
    except (RecursionError, ValueError):
        return  # nested deeper than the encoder goes: parse every time
    path = _parse_cache_path(digest)
    tmp = path.with_name(f".{digest}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True, mode=0o700)
        tmp.write_text(text)
        os.replace(tmp, path)
        kept = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-PARSE_CACHE_KEEP]:
            old.unlink(missing_ok=True)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only or full home: parse every time


def _plain(value: Any) -> bool:
    """True when JSON gives `value` back equal and of the same types (no dates, no tuples)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


class _Loader:
    def __init__(self, path: Path, where: str, lines: dict[tuple[str, ...], int]) -> None:
        self.path, self.where, self.lines = path, where, lines
        self.warnings: list[str] = []
        self.values: dict[str, Any] = {s.field: s.default for s in SETTINGS}
        self.by_key = {(s.table, s.name): s for s in SETTINGS}

    def load(self, data: dict[str, Any]) -> ConfigResult:
        # The version check comes first: a file for a newer pyro may well fail validation here,
        # and "upgrade pyro" is then the message that helps.
        if "min_version" in data:
            self._set(self.by_key["", "min_version"], data["min_version"])
            self._check_version(data["min_version"])
        for key, value in data.items():
            if key in TABLES:
                if not isinstance(value, dict):
                    self._fail((key,), f"[{key}]: expected a table, got {_show(value)}")
                for name, item in value.items():
                    self._visit(key, name, item)
            elif key != "min_version":
                self._visit("", key, value)
        if self.values["packages"] and self.values["environment"] == "host":
            note = 'only used with a debian:<release> base; ignored with "host"'
            self._warn(("environment", "packages"), f"[environment] packages: {note}")
        return ConfigResult(ProjectConfig(path=self.path, **self.values), tuple(self.warnings))

    def _visit(self, table: str, name: str, value: Any) -> None:
        setting = self.by_key.get((table, name))
        if setting is not None:
            self._set(setting, value)
            return
        key: tuple[str, ...]
        if table:
            what, key = f"key [{table}] {name}", (table, name)
        else:
            what, key = (f"table [{name}]" if isinstance(value, dict) else f"key {name}"), (name,)
        self._warn(key, f"unknown {what}{_suggest(table, name)}")

    def _set(self, setting: Setting, value: Any) -> None:
        try:
            self.values[setting.field] = _convert(setting, value)
        except _Bad as bad:
            self._fail(_path(setting), f"{setting.label}: {bad}")

    def _check_version(self, wanted: str) -> None:
        if _version_tuple(wanted) > _version_tuple(__version__):
            self._fail(
                ("min_version",),
                f"min_version: this project needs pyro {wanted} or newer, this is pyro "
                f"{__version__}",
                hint="upgrade pyro (pip install --upgrade pyro-loop)",
            )

    def _line(self, key: tuple[str, ...]) -> int:
        # The longest prefix that was written out: an inline table has no line per key.
        for n in range(len(key), 0, -1):
            if key[:n] in self.lines:
                return self.lines[key[:n]]
        return 1

    def _fail(self, key: tuple[str, ...], message: str, *, hint: str | None = None) -> None:
        raise InvalidConfigError(f"{self.where}:{self._line(key)}: {message}", hint=hint)

    def _warn(self, key: tuple[str, ...], message: str) -> None:
        self.warnings.append(f"{self.where}:{self._line(key)}: {message}")


class _Bad(Exception):
    def __init__(self, expected: str, got: Any, *, item: int | None = None) -> None:
        where = f"item {item}: " if item is not None else ""
        super().__init__(f"{where}expected {expected}, got {_show(got)}")


def _convert(setting: Setting, value: Any) -> Any:
    if setting.kind == "ports":
        return _ports(value)
    if setting.kind == "strings":
        if not isinstance(value, list):
            raise _Bad("a list of strings", value)
        return tuple(_string(setting, v, item=i) for i, v in enumerate(value, 1))
    if setting.kind == "string":
        return _string(setting, value)
    # bool is an int in Python, never in TOML: `processes = true` is a mistake, not 1.
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if setting.kind == "integer":
        if not numeric or not isinstance(value, int) or value <= 0:
            raise _Bad("a positive integer", value)
        return value
    if not numeric or not 0 < value < float("inf"):
        raise _Bad("a positive number of seconds", value)
    return float(value)


def _ports(value: Any) -> tuple[str, ...]:
    from pyro_loop.workspace.ports import parse_publish

    if not isinstance(value, list):
        raise _Bad('a list of ports such as [5173, "8080:80"]', value)
    ports = []
    for i, item in enumerate(value, 1):
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise _Bad('a port (5173) or "HOST_PORT:PORT"', item, item=i)
        try:
            ports.append(str(parse_publish(item)))
        except PyroError as exc:
            raise _Bad(f"a port 1-65535 ({exc.message})", item, item=i) from None
    return tuple(ports)


def _string(setting: Setting, value: Any, *, item: int | None = None) -> str:
    if setting.choices:
        expected = " or ".join(json.dumps(c) for c in setting.choices)
    elif setting.rule is not None:
        expected = setting.rule.expected
    else:
        expected = "a non-empty string" if isinstance(value, str) else "a string"
    if (
        not isinstance(value, str)
        or not value
        or "\0" in value
        or (setting.choices and value not in setting.choices)
        or (setting.rule is not None and not setting.rule.matches(value))
    ):
        raise _Bad(expected, value, item=item)
    return value


def _path(setting: Setting) -> tuple[str, ...]:
    return (setting.table, setting.name) if setting.table else (setting.name,)


def _suggest(table: str, name: str) -> str:
    here = {s.name: s.name for s in SETTINGS if s.table == table}
    if not table:
        here.update({t: f"[{t}]" for t in TABLES})
    import difflib  # only for a misspelt key: not on every command's path

    close = difflib.get_close_matches(name, list(here), n=1)
    if close:
        return f" (did you mean {here[close[0]]}?)"
    # Right name, wrong table: `network = "off"` at the top level, say.
    elsewhere = [s.label for s in SETTINGS if s.name == name and s.table != table]
    return f" (did you mean {elsewhere[0]}?)" if elsewhere else ""


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"  # dates and times


def _version_tuple(version: str) -> tuple[int, ...]:
    # The leading numeric release only: "0.2.0.dev1" counts as 0.2.0, which errs on the side of
    # letting a development build load the file. Padded so that "0.1" equals "0.1.0".
    match = re.match(r"\d+(?:\.\d+)*", version)
    parts = [int(p) for p in match.group().split(".")] if match else []
    return tuple(parts + [0] * (8 - len(parts)))


def display_path(path: Path) -> str:
    """The path as the user most likely typed it: relative when it is below the cwd."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel == ".." or rel.startswith("../") else rel


# -- where each key is written -------------------------------------------------------------

# The tokens of TOML that matter for finding keys: strings (whose contents never count), comments,
# newlines and punctuation. Alternatives are tried in order; each string form consumes whole.
TOKEN: tuple[str, int] = (
    r""""{3}(?:[^"\\]|\\.|"(?!""))*"{3,5}
      | '{3}(?:[^']|'(?!''))*'{3,5}
      | "(?:[^"\\\n]|\\.)*"
      | '[^'\n]*'
      | \#[^\n]*
      | [\[\]{}=.\n]
      | [^\s"'\#\[\]{}=.,]+
    """,
    re.VERBOSE | re.DOTALL,
)  # compiled when a file is parsed: a cached parse needs no regex (see _cached_parse)


def _key_lines(text: str) -> tuple[dict[tuple[str, ...], int], int | None]:
    """The 1-based line of each table header and key, by its full dotted path, and the line of
    the first key assigned twice (None if none is).

    tomlkit keeps no positions, so this tokenizes text that tomlkit has already accepted as valid
    TOML and reads only statement starts: a key or `[header]` at bracket depth 0 at the start of a
    line. Nothing inside a value (a multi-line string or array) can pass for a key.
    """
    lines: dict[tuple[str, ...], int] = {}
    assigned: set[tuple[str, ...]] = set()
    duplicate: int | None = None
    table: tuple[str, ...] = ()
    key: list[str] | None = []  # the key being read; None while inside a value
    header, array, depth, line = False, False, 0, 1
    for match in re.finditer(TOKEN[0], text, TOKEN[1]):
        tok = match.group()
        if key is None:
            if tok == "\n" and depth == 0:
                key = []
            elif tok in ("[", "{"):
                depth += 1
            elif tok in ("]", "}"):
                depth -= 1
        elif tok == "[":
            array, header = header, True  # a second "[": an [[array of tables]]
        elif tok == "]" and header:
            table, key, header = tuple(key), [], False
            lines.setdefault(table, line)
        elif tok == "=":
            full = (*table, *key)
            for n in range(len(table) + 1, len(full) + 1):
                lines.setdefault(full[:n], line)
            # Keys repeat legitimately in each entry of an array of tables.
            if full in assigned and not array and duplicate is None:
                duplicate = line
            assigned.add(full)
            key, depth = None, 0
        elif tok[0] in "\"'":
            key.append(tok[1:-1])
        elif tok not in (".", "\n", "]") and tok[0] != "#":
            key.append(tok)
        line += tok.count("\n")
    return lines, duplicate


# -- the reference -------------------------------------------------------------------------

INTRO = """\
# `.pyro.toml` reference

<!-- Generated from the declarations in src/pyro_loop/project/config.py by
     `python -m pyro_loop.project.config --markdown`; edit those, not this file. -->

`.pyro.toml`, at the root of the repository, tells pyro how to build workspaces for the
project. Every setting is optional. `pyro init` writes a commented one with the dependency files
and install commands it detects (uv, poetry, pip, pipenv, npm, pnpm, yarn, cargo, go).

A value of the wrong type or outside its allowed values is an error naming the file, the line
and the key, such as `.pyro.toml:7: [workspace] network: expected "off" or "egress", got "on"`.
Unknown keys and tables are warnings with a suggestion, never errors, so that a file written
for a newer pyro still loads; set `min_version` when the project really needs that newer pyro.
Strings are never empty and never contain NUL; `true` and `false` are not numbers.

Settings that run commands or widen the sandbox (marked below) take effect only once you have
reviewed the file and run `pyro trust` in the project: a cloned repository's `.pyro.toml` is
someone else's code. A change to the file asks again. See [security](security.md#trust).
"""


def render_markdown() -> str:
    out = [INTRO]
    for table in ("", *TABLES):
        out.append(f"\n## {f'`[{table}]`' if table else 'Top level'}\n\n")
        out.append("| key | type | default | description |\n| --- | --- | --- | --- |\n")
        for s in (s for s in SETTINGS if s.table == table):
            text = s.description
            if s.choices:
                text += " One of " + ", ".join(json.dumps(c) for c in s.choices) + "."
            elif s.rule is not None:
                text += f" {'Each value' if s.kind == 'strings' else 'Allowed'}: {s.rule.expected}."
            # Quoted values as code, which also keeps "debian:<release>" from reading as HTML.
            text = re.sub(r'"[^"]*"', lambda m: f"`{m.group()}`", text)
            if s.widens == "set":
                text += " Takes effect once the file is trusted (`pyro trust`)."
            elif s.widens == "raised" and s.default is not None:
                text += " A value above the default takes effect once the file is trusted."
            default = "unset" if s.default is None else f"`{_toml(s.default)}`"
            out.append(f"| `{s.name}` | {TYPE_NAMES[s.kind]} | {default} | {text} |\n")
    return "".join(out)


def _toml(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value)


def _main(argv: list[str]) -> int:
    if argv != ["--markdown"]:
        sys.stderr.write("usage: python -m pyro_loop.project.config --markdown\n")
        return 2
    sys.stdout.write(render_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

"""The version a project that takes it from git tags would have, for sandboxes without `.git`.

setuptools-scm and hatch-vcs (which uses it) read a Python project's version from git when
it is built; a workspace holds the repository's files, not its `.git`, so building such a
project there fails ("unable to detect version"), and so does `pyro prepare` installing it.
setuptools-scm's documented way out is a pretended version for one distribution,
`SETUPTOOLS_SCM_PRETEND_VERSION_FOR_<NAME>`; hatch-vcs does not tell setuptools-scm the
distribution's name, so for it the version goes in `SETUPTOOLS_SCM_PRETEND_VERSION` too, which
every setuptools-scm build in that sandbox would take (a dependency built from an sdist with
it is rare: sdists carry their version). This module computes it on the host, from the
nearest tag the way setuptools-scm's default scheme does (on a tag: the tag; past it: the
next patch version, `.devN` for the N commits since, `+g<hash>`), read by libgit2, which
runs nothing the repository configures. As with an editable install on the host, the
version is the one at install time: it does not follow each new commit.
"""

from __future__ import annotations

import re
from pathlib import Path

from pyro_loop.errors import InvalidInputError
from pyro_loop.project.repofiles import read_toml, table

ENV_NAME = "SETUPTOOLS_SCM_PRETEND_VERSION"
# The build backends that take the version from git through setuptools-scm.
_BACKENDS = re.compile(r"^\s*(setuptools[-_]scm|hatch[-_]vcs|vcs[-_]versioning)\b", re.I)
# setuptools-scm's default tag pattern: an optional prefix ending in "-", an optional "v".
_TAG = re.compile(r"^(?:[\w-]+-)?[vV]?(\d+(?:\.\d+)*)")
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,200}[A-Za-z0-9])?")


def pretend_version_env(root: Path) -> dict[str, str]:
    """`{SETUPTOOLS_SCM_PRETEND_VERSION_FOR_<NAME>: version}` (and, for hatch-vcs,
    `SETUPTOOLS_SCM_PRETEND_VERSION`) when the project at `root` takes its version from git
    through setuptools-scm, else nothing."""
    found = _scm_versioned(root)
    if found is None:
        return {}
    name, hatch = found
    version = described_version(root)
    if version is None:
        return {}
    env = {f"{ENV_NAME}_FOR_{re.sub(r'[-_.]+', '_', name).upper()}": version}
    if hatch:
        env[ENV_NAME] = version
    return env


def _scm_versioned(root: Path) -> tuple[str, bool] | None:
    """(the distribution's name, whether hatch-vcs calls setuptools-scm) when
    pyproject.toml says setuptools-scm sets its version."""
    pyproject = read_toml(root, "pyproject.toml")  # {} when missing, hostile or malformed
    project = table(pyproject, "project")
    dynamic = project.get("dynamic")
    if not isinstance(dynamic, list) or "version" not in dynamic:
        return None
    name = project.get("name")
    requires = table(pyproject, "build-system").get("requires")
    tool = table(pyproject, "tool")
    hatch_vcs = table(tool, "hatch", "version").get("source") == "vcs"
    uses_scm = (
        "setuptools_scm" in tool
        or hatch_vcs
        or (isinstance(requires, list) and any(isinstance(r, str) and _BACKENDS.match(r)
                                               for r in requires))
    )  # fmt: skip
    if not uses_scm or not isinstance(name, str) or not _NAME.fullmatch(name):
        return None  # not a distribution name (PEP 508): nothing to name a variable after
    return name, hatch_vcs


def described_version(root: Path) -> str | None:
    """setuptools-scm's default version for HEAD of the repository at `root`, or None
    without commits. No tag reachable gives 0.1.devN, N being unknown here: 0."""
    from pyro_loop import git

    try:
        described = git.describe_head(root)
    except InvalidInputError:  # a format pyro cannot read, or a broken repository
        return None
    if described is None:
        return None
    tag, distance, short = described
    match = _TAG.match(tag or "")
    if match is None:
        return f"0.1.dev0+g{short}"
    release = match.group(1)
    if distance == 0:
        return release
    parts = release.split(".")
    parts[-1] = str(int(parts[-1]) + 1)
    return f"{'.'.join(parts)}.dev{distance}+g{short}"

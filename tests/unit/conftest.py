"""Unit tests: no sandbox. `bwrap` on PATH is replaced by a stub that fails, so a test here that
starts a workspace fails at once instead of passing on a machine that can run sandboxes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


# Package scope: the stub goes with the last unit test, so tests/sandbox run in the same session
# (in either order) see the real bwrap.
@pytest.fixture(scope="package", autouse=True)
def _no_sandboxes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    stub_dir = tmp_path_factory.mktemp("no-sandbox")
    stub = stub_dir / "bwrap"
    stub.write_text('#!/bin/sh\necho "tests/unit: a unit test started a sandbox" >&2\nexit 99\n')
    stub.chmod(0o755)
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{stub_dir}{os.pathsep}{path}"
    yield
    os.environ["PATH"] = path

"""ManifestFile: what a reader of the manifest's text gets back as records."""

from __future__ import annotations

import json
from pathlib import Path

from pyro_loop.sync.manifest import ManifestFile


def test_the_records_of_a_text_are_the_ones_saved_as_it_else_parsed(tmp_path: Path) -> None:
    manifest = ManifestFile(tmp_path / "manifest.json", tmp_path)
    records = {"a.txt": {"kind": "absent"}, "d": {"kind": "dir", "mode": 0o755}}
    manifest.save({"entries": records, "baseline_tree": None})
    saved = (tmp_path / "manifest.json").read_bytes()
    assert json.loads(saved)["entries"] == records
    assert manifest.entries_of(saved) == records

    other = json.dumps({"entries": {"b.txt": {"kind": "absent"}}}).encode()
    assert manifest.entries_of(other) == {"b.txt": {"kind": "absent"}}
    assert manifest.entries_of(saved[:-1]) == {}  # not JSON: no records
    assert manifest.entries_of(b'{"entries": []}') == {}
    assert manifest.entries_of(None) == {}

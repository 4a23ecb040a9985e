"""How durations and sizes are printed and read back."""

from __future__ import annotations

import pytest

from pyro_loop.units import duration, parse_size, size


def test_sizes_and_durations_read_as_people_expect() -> None:
    assert [size(512), size(21_700_000), size(8 * 1000**3)] == ["512 B", "21.7 MB", "8.0 GB"]
    assert [duration(0.031), duration(74.24)] == ["31 ms", "74.2 s"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1024", 1024), ("500M", 500_000_000), ("8G", 8_000_000_000), ("8gb", 8_000_000_000),
     ("1.5K", 1500), (" 2T ", 2 * 1000**4), ("0", 0)],
)  # fmt: skip
def test_parse_size_reads_what_size_prints(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "lots", "-1G", "1X", "1.2.3M", "8 G B"])
def test_parse_size_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="expected a number with K, M, G or T"):
        parse_size(text)

"""pyro's data classes behave as the standard library's: same construction, defaults,
equality, hashing, repr, frozenness, replace and asdict, class by class side by side."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pyro_loop import records


def twins(frozen: bool) -> tuple[type[Any], type[Any]]:
    """The same class, once through dataclasses and once through records."""
    made = []
    for module in (dataclasses, records):

        @module.dataclass(frozen=frozen)
        class Item:
            name: str
            size: int = 0
            tags: tuple[str, ...] = module.field(default_factory=tuple)
            note: str | None = module.field(default=None, compare=False)
            secret: str = module.field(default="", repr=False)

            def label(self) -> str:
                return f"{self.name}:{self.size}"

        made.append(Item)
    return made[0], made[1]


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    (("a",), {}),
    (("a", 3), {}),
    (("a",), {"size": 3, "tags": ("x",)}),
    ((), {"name": "b", "note": "n", "secret": "s"}),
    (("a", 1, ("t",), "n", "s"), {}),
]
BAD_CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((), {}),  # a required argument missing
    (("a",), {"name": "b"}),  # one argument twice
    (("a",), {"colour": 1}),  # no such field
    (("a", 1, (), None, "", 9), {}),  # too many
]


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("frozen", [False, True])
def test_construction_repr_equality_and_hash_match_dataclasses(
    frozen: bool, compiled: bool
) -> None:
    """`compiled`: after enough instances the class has its own compiled __init__; it must
    behave as the shared one did."""
    std, ours = twins(frozen)
    if compiled:
        for _ in range(records.COMPILE_AFTER):
            ours("warm")
        assert ours.__dict__["__init__"] is not records._init
    for args, kwargs in CALLS:
        a, b = std(*args, **kwargs), ours(*args, **kwargs)
        assert vars(a) == vars(b)
        assert repr(a).replace("twins.<locals>.", "") == repr(b).replace("twins.<locals>.", "")
        assert a.label() == b.label()
        assert (b == ours(*args, **kwargs)) is True
        assert hash(a) == hash(std(*args, **kwargs)) if frozen else True
        assert (b == records.replace(b, note="other")) is True  # compare=False
        assert (b == ours("zzz")) is (a == std("zzz"))
        assert b != a  # another class is never equal
        if frozen:
            assert hash(b) == hash(ours(*args, **kwargs)) == hash(a)
            with pytest.raises(AttributeError):
                b.name = "c"
            with pytest.raises(dataclasses.FrozenInstanceError):
                a.name = "c"
        else:
            assert std.__hash__ is None
            assert ours.__hash__ is None
            b.size = 7
            assert b.size == 7
    for args, kwargs in BAD_CALLS:
        with pytest.raises(TypeError):
            std(*args, **kwargs)
        with pytest.raises(TypeError):
            ours(*args, **kwargs)
    assert ours("a").tags == std("a").tags == ()


def test_replace_fields_and_asdict_match_dataclasses() -> None:
    std, ours = twins(True)
    a, b = std("a", 2, ("t",)), ours("a", 2, ("t",))
    assert vars(dataclasses.replace(a, size=5)) == vars(records.replace(b, size=5))
    assert [f.name for f in dataclasses.fields(std)] == [f.name for f in records.fields(ours)]
    assert [f.name for f in dataclasses.fields(a)] == [f.name for f in records.fields(b)]
    assert std.__match_args__ == ours.__match_args__

    @dataclasses.dataclass
    class StdOuter:
        inner: Any
        items: list[Any]
        table: dict[str, Any]
        pair: tuple[Any, ...]

    @records.dataclass
    class Outer:
        inner: Any
        items: list[Any]
        table: dict[str, Any]
        pair: tuple[Any, ...]

    nested = ({"k": [1, 2]}, (3, [4]))
    x = StdOuter(a, [a, 1], {"a": a, "n": nested[0]}, (a, nested[1]))
    y = Outer(b, [b, 1], {"a": b, "n": nested[0]}, (b, nested[1]))
    assert dataclasses.asdict(x) == records.asdict(y)
    copied = records.asdict(y)
    assert copied["table"]["n"] is not nested[0]  # copied, as dataclasses copies
    assert copied["items"][0]["tags"] == b.tags


def test_misuse_is_refused_as_dataclasses_refuses_it() -> None:
    with pytest.raises(TypeError):

        @records.dataclass
        class Order:
            a: int = 0
            b: int

    with pytest.raises(ValueError):

        @records.dataclass
        class Shared:
            items: list[int] = []  # noqa: RUF012 (the mistake this refuses)

    with pytest.raises(ValueError):
        records.field(default=1, default_factory=list)


def test_post_init_and_fresh_defaults_hold_before_and_after_compiling() -> None:
    seen = []

    @records.dataclass
    class Bag:
        name: str
        items: list[int] = records.field(default_factory=list)

        def __post_init__(self) -> None:
            seen.append(self.name)

    bags = [Bag(str(i)) for i in range(records.COMPILE_AFTER * 2)]
    assert seen == [str(i) for i in range(records.COMPILE_AFTER * 2)]
    assert len({id(b.items) for b in bags}) == len(bags)  # a fresh list for each
    assert Bag("x", [1]).items == [1]


def test_a_method_the_class_writes_is_kept() -> None:
    @records.dataclass(frozen=True)
    class Point:
        x: int
        y: int

        def __repr__(self) -> str:
            return f"<{self.x},{self.y}>"

    assert repr(Point(1, 2)) == "<1,2>"
    assert {Point(1, 2), Point(1, 2)} == {Point(1, 2)}

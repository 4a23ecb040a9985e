"""The tools' return types as pydantic reads them, so that each publishes its output schema.

The public shapes (pyro_loop.shapes) are the standard library's TypedDicts, which cost the
daily commands nothing to import. Below Python 3.12 pydantic refuses those, and the SDK
rebuilds only the outermost one: a tool returning a shape with another nested in it (a
workspace's mounts) would publish no output schema and no structured result at all. So
before a tool is registered, its return type is rebuilt, nested shapes included, from
`typing_extensions.TypedDict`, which pydantic reads on every version.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, cast

import typing_extensions

_rebuilt: dict[Any, Any] = {}


def with_output_schema(tool: Callable[..., Any]) -> Callable[..., Any]:
    """`tool` with its return type rebuilt for pydantic (as its `__signature__`)."""
    if sys.version_info >= (3, 12):
        return tool
    signature = inspect.signature(tool, eval_str=True)
    returns = for_pydantic(signature.return_annotation)
    tool.__signature__ = signature.replace(return_annotation=returns)  # type: ignore[attr-defined]
    return tool


def for_pydantic(annotation: Any) -> Any:
    """`annotation` with every standard-library TypedDict in it (in lists, dicts, unions)
    rebuilt as a typing_extensions one; anything else is kept as it is."""
    if typing.is_typeddict(annotation):
        if annotation not in _rebuilt:
            _rebuilt[annotation] = _rebuild(annotation)
        return _rebuilt[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if not args or origin is typing.Literal or origin is typing.Annotated:
        return annotation
    rebuilt = tuple(for_pydantic(arg) for arg in args)
    if rebuilt == args:
        return annotation
    if origin is typing.Union or origin is types.UnionType:
        return typing.Union[rebuilt]  # noqa: UP007 - a runtime tuple of arms
    return origin[rebuilt]


def _rebuild(shape: Any) -> Any:
    items: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(shape, include_extras=True).items():
        qualifier, bare = typing.get_origin(hint), hint
        if qualifier in (typing.NotRequired, typing.Required):
            bare = typing.get_args(hint)[0]
        item = for_pydantic(bare)
        # The qualifier wins: with postponed annotations (strings when the class is made),
        # Python 3.11 counts a NotRequired key among `__required_keys__`.
        required = qualifier is typing.Required or (
            qualifier is not typing.NotRequired and name in shape.__required_keys__
        )
        items[name] = item if required else typing_extensions.NotRequired[item]
    # The functional form: the class is made at run time, under the shape's own name.
    make = cast("Callable[[str, dict[str, Any]], Any]", typing_extensions.TypedDict)
    rebuilt = make(shape.__name__, items)
    for attr in ("__doc__", "__module__", "__qualname__"):
        setattr(rebuilt, attr, getattr(shape, attr))
    return rebuilt

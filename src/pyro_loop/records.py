"""Data classes that cost nothing to define: `@dataclass`, `field`, `replace`, `asdict`.

The standard `dataclasses` writes each class's `__init__`, `__repr__`, `__eq__` (and, frozen,
`__setattr__`, `__hash__`) as source text and compiles it, and imports `inspect` to do so:
about 0.7 ms a class and 9 ms for the import on a 2-core machine, which the daily commands
(some 30 classes on their path) paid on every start. Here the methods are shared functions
that read the class's field list, so defining a class is a dictionary walk. The subset pyro
uses is kept, with the same meaning: `frozen`, defaults, `field(default=, default_factory=,
repr=, compare=)`, field order checks, eq, hash (frozen only, as dataclasses does for eq and
frozen), repr, `__match_args__`, `replace`, `asdict`, `fields`. Type checkers see it as a
dataclass through `dataclass_transform`. A class instantiated often (a sync makes one per path
and file state) gets, after COMPILE_AFTER instances, the compiled `__init__` dataclasses would
have written; equality and hashing read the compared fields with one `attrgetter`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T")
_MISSING: Any = object()
_FIELDS = "__record_fields__"


class FrozenInstanceError(AttributeError):
    """An assignment to a field of a frozen record."""


class Field:
    __slots__ = ("compare", "default", "default_factory", "name", "repr")

    def __init__(self, default: Any, default_factory: Any, repr: bool, compare: bool) -> None:
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.repr = repr
        self.compare = compare

    def __repr__(self) -> str:
        return f"Field(name={self.name!r})"


def field(
    *,
    default: Any = _MISSING,
    default_factory: Callable[[], Any] = _MISSING,
    repr: bool = True,
    compare: bool = True,
) -> Any:
    """A field's options, as `dataclasses.field` takes them."""
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return Field(default, default_factory, repr, compare)


@overload
def dataclass(cls: type[T], /) -> type[T]: ...
@overload
def dataclass(*, frozen: bool = False) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(field_specifiers=(field,))
def dataclass(cls: Any = None, /, *, frozen: bool = False) -> Any:
    """Make `cls` a data class, as `dataclasses.dataclass` does with its default options."""

    def wrap(cls: type[T]) -> type[T]:
        return _process(cls, frozen)

    return wrap if cls is None else wrap(cls)


def _process(cls: type[T], frozen: bool) -> type[T]:
    fields = _collect(cls)
    setattr(cls, _FIELDS, fields)
    setattr(cls, _KEY, _key(fields))
    setattr(cls, "__match_args__", tuple(fields))  # noqa: B010 (a class attribute of the record)
    own = cls.__dict__
    explicit_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
    _set(cls, "__init__", _init)
    _set(cls, "__repr__", _repr)
    _set(cls, "__eq__", _eq)
    if frozen:
        for name, method in (("__setattr__", _frozen_setattr), ("__delattr__", _frozen_delattr)):
            if name in own:
                raise TypeError(f"cannot overwrite attribute {name} in class {cls.__name__}")
            setattr(cls, name, method)
        if not explicit_hash:
            cls.__hash__ = _hash  # type: ignore[method-assign]
    elif not explicit_hash:
        cls.__hash__ = None  # type: ignore[assignment]
    return cls


def _collect(cls: type) -> dict[str, Field]:
    """The fields of `cls` (its bases' first), each class attribute set as dataclasses does."""
    fields: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        fields.update(getattr(base, _FIELDS, {}))
    own = cls.__dict__
    for name, annotation in own.get("__annotations__", {}).items():
        if isinstance(annotation, str) and annotation.split("[")[0] in (
            "ClassVar", "typing.ClassVar", "InitVar", "dataclasses.InitVar"
        ):  # fmt: skip
            raise TypeError(f"{cls.__name__}.{name}: ClassVar and InitVar are not supported")
        value = own.get(name, _MISSING)
        spec = value if isinstance(value, Field) else Field(value, _MISSING, True, True)
        spec.name = name
        if isinstance(spec.default, (list, dict, set)):
            raise ValueError(f"mutable default {type(spec.default)} for field {name} is not "
                             "allowed: use default_factory")  # fmt: skip
        if isinstance(value, Field):
            if spec.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, spec.default)
        fields[name] = spec
    seen_default = False
    for spec in fields.values():
        has_default = spec.default is not _MISSING or spec.default_factory is not _MISSING
        if seen_default and not has_default:
            raise TypeError(f"non-default argument {spec.name!r} follows default argument")
        seen_default |= has_default
    return fields


def _set(cls: type, name: str, method: Callable[..., Any]) -> None:
    if name not in cls.__dict__:  # a method the class writes itself stays (as dataclasses)
        setattr(cls, name, method)


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    fields: dict[str, Field] = getattr(cls, _FIELDS)
    made = cls.__dict__.get(_MADE, 0) + 1
    setattr(cls, _MADE, made)
    if made == COMPILE_AFTER and cls.__dict__.get("__init__") is _init:
        # A class made this often is on a hot path (a walk, a sync): from now on it gets the
        # compiled __init__ dataclasses would have given it from the start.
        cls.__init__ = _compiled_init(cls, fields)
    if len(args) > len(fields):
        raise TypeError(f"{cls.__name__}() takes {len(fields)} positional arguments "
                        f"but {len(args)} were given")  # fmt: skip
    values = self.__dict__
    names = iter(fields)
    for value, name in zip(args, names, strict=False):  # args first: no name taken unused
        values[name] = value
    for name, value in kwargs.items():
        if name not in fields:
            raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {name!r}")
        if name in values:
            raise TypeError(f"{cls.__name__}() got multiple values for argument {name!r}")
        values[name] = value
    for name in names:
        if name in values:
            continue
        spec = fields[name]
        if spec.default is not _MISSING:
            values[name] = spec.default
        elif spec.default_factory is not _MISSING:
            values[name] = spec.default_factory()
        else:
            raise TypeError(f"{cls.__name__}() missing required argument: {name!r}")
    post_init = getattr(self, "__post_init__", None)
    if post_init is not None:
        post_init()


# Instances of a class made through the shared __init__ before it gets a compiled one.
COMPILE_AFTER = 32
_MADE = "__record_made__"


def _compiled_init(cls: type, fields: dict[str, Field]) -> Callable[..., None]:
    """The class's own __init__, as source compiled once: what dataclasses writes."""
    namespace: dict[str, Any] = {"_MISSING": _MISSING}
    params, body = [], []
    for i, (name, spec) in enumerate(fields.items()):
        if spec.default is not _MISSING:
            namespace[f"_default{i}"] = spec.default
            params.append(f"{name}=_default{i}")
        elif spec.default_factory is not _MISSING:
            namespace[f"_factory{i}"] = spec.default_factory
            params.append(f"{name}=_MISSING")
            body.append(f"    if {name} is _MISSING:\n        {name} = _factory{i}()")
        else:
            params.append(name)
    body.append("    _record_values = _record_self.__dict__")
    body += [f"    _record_values[{name!r}] = {name}" for name in fields]
    if hasattr(cls, "__post_init__"):
        body.append("    _record_self.__post_init__()")
    source = f"def __init__(_record_self, {', '.join(params)}):\n" + "\n".join(body) + "\n"
    exec(source, namespace)  # the names and defaults of the class's own fields only
    init: Callable[..., None] = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def _repr(self: Any) -> str:
    fields: dict[str, Field] = getattr(type(self), _FIELDS)
    inner = ", ".join(f"{n}={getattr(self, n)!r}" for n, f in fields.items() if f.repr)
    return f"{type(self).__qualname__}({inner})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    key = getattr(self.__class__, _KEY)
    return key(self) == key(other)


def _hash(self: Any) -> int:
    return hash(getattr(self.__class__, _KEY)(self))


_KEY = "__record_key__"


def _key(fields: dict[str, Field]) -> Callable[[Any], tuple[Any, ...]]:
    """The fields that take part in equality and hashing, as one tuple (read in C)."""
    names = [name for name, spec in fields.items() if spec.compare]
    if len(names) >= 2:
        return operator.attrgetter(*names)
    if names:
        one = operator.attrgetter(names[0])
        return lambda obj: (one(obj),)
    return lambda obj: ()


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def is_record(obj: Any) -> bool:
    return hasattr(type(obj) if not isinstance(obj, type) else obj, _FIELDS)


def fields(obj: Any) -> tuple[Field, ...]:
    """The fields of a record or record class, in order."""
    cls = obj if isinstance(obj, type) else type(obj)
    return tuple(getattr(cls, _FIELDS).values())


def replace(obj: T, /, **changes: Any) -> T:
    """A copy of the record `obj` with `changes`, made through its `__init__`."""
    for name in getattr(type(obj), _FIELDS):
        changes.setdefault(name, getattr(obj, name))
    return type(obj)(**changes)


def asdict(obj: Any) -> dict[str, Any]:
    """The record as a dict, records, lists, tuples and dicts within it converted and copied
    (as `dataclasses.asdict`)."""
    if not is_record(obj) or isinstance(obj, type):
        raise TypeError("asdict() should be called on record instances")
    result: dict[str, Any] = _convert(obj)
    return result


def _convert(value: Any) -> Any:
    if is_record(value) and not isinstance(value, type):
        return {name: _convert(getattr(value, name)) for name in getattr(type(value), _FIELDS)}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*[_convert(v) for v in value])
    if isinstance(value, (list, tuple)):
        return type(value)(_convert(v) for v in value)
    if isinstance(value, dict):
        return type(value)((_convert(k), _convert(v)) for k, v in value.items())
    if value is None or isinstance(value, (str, int, float, bool, bytes)):
        return value
    import copy

    return copy.deepcopy(value)

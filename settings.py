"""Strict construction of frozen config dataclasses from plain mappings.

Every config section in the project is a frozen dataclass that validates
itself in ``__post_init__``. ``build`` turns a mapping (parsed YAML, keyword
arguments) into one, rejecting unknown keys with a message that names the key,
where it came from (``where``: a file and a dotted path), and the keys that are
allowed. Nested dataclass fields are built recursively.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def build(cls: type[T], value: Any, where: str) -> T:
    """Build dataclass ``cls`` from ``value`` (a mapping or an instance)."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} keys, got {value!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in value if k not in fields)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}"
            f" (allowed: {', '.join(sorted(fields))})"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, raw in value.items():
        sub = dataclass_in(hints.get(name))
        # None passes through only where the hint allows it (``Foo | None``); for a plain
        # ``Foo`` section (an empty ``consistency:`` in YAML) build rejects it, naming the key.
        optional = type(None) in typing.get_args(hints.get(name))
        kwargs[name] = build(sub, raw, f"{where}.{name}") if sub and not (raw is None and optional) else raw
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except TypeError as e:  # a value of a type the dataclass cannot take
        raise ConfigError(f"{where}: {e}") from None


def dataclass_in(hint: Any) -> type | None:
    """The dataclass type in a hint such as ``Foo`` or ``Foo | None``."""
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def require(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``ok``: a check that survives ``python -O``."""
    if not ok:
        raise ConfigError(message)


def every_steps(value: Any, name: str, *, minimum: int) -> None:
    """Check a cadence in steps: ``"auto"`` (the job's size decides) or an integer >= ``minimum``."""
    if value != "auto":
        if isinstance(value, str):
            raise ConfigError(f"{name} ({value!r}) must be auto or an integer")
        number(value, name, minimum=minimum, integer=True)


def resolve_every(value: Any, auto: int) -> int:
    """A cadence in steps: ``auto`` stands for ``auto`` (at least 1), a number for itself."""
    return max(1, int(auto)) if value == "auto" else int(value)


def number(value: Any, name: str, *, minimum: float | None = None, integer: bool = False,
           exclusive: bool = False) -> None:
    """Check that ``value`` is a number (an int when ``integer``) above ``minimum``."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{name} ({value!r}) must be {'an integer' if integer else 'a number'}")
    if minimum is not None:
        bad = value <= minimum if exclusive else value < minimum
        if bad:
            raise ConfigError(f"{name} ({value!r}) must be {'>' if exclusive else '>='} {minimum}")

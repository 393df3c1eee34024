"""Resolve ``"module:callable"`` strings, the way YAML names models and data."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError

#: The folders' names before they were installed under rayps: configs written
#: then (``model: worker.models:mlp``) keep working when no such module exists.
_RENAMED = ("ps", "worker", "protos", "launcher")


def import_object(spec: str, what: str = "object") -> Any:
    """Import ``"package.module:attr.sub"`` and return the attribute.

    ``what`` names the role (``"model"``, ``"data"``) in the error message.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"{what} ({spec!r}) must be a 'module:callable' string")
    module_name, _, attr_path = spec.partition(":")
    try:
        obj: Any = _import(module_name)
    except ImportError as e:
        raise ConfigError(f"{what} ({spec!r}): cannot import module {module_name!r}: {e}") from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{what} ({spec!r}): module {module_name!r} has no {attr_path!r}") from None
    return obj


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        top = module_name.split(".", 1)[0]
        # Only when the old top-level name itself is missing: a user's own
        # package of that name (or an error inside it) is never second-guessed.
        if top in _RENAMED and e.name == top:
            return importlib.import_module(f"rayps.{module_name}")
        raise

"""Resolve ``"module:callable"`` strings, the way YAML names models and data."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

from ..errors import ConfigError

#: The folders' names before they were installed under rayps: configs written
#: then (``model: worker.models:mlp``) keep working when no such module exists.
_RENAMED = ("ps", "worker", "protos", "launcher")


def import_object(spec: str, what: str = "object") -> Any:
    """Import ``"package.module:attr.sub"`` and return the attribute.

    ``what`` names the role (``"model"``, ``"data"``) in the error message.
    """
    module_name, attr_path = split_spec(spec, what)
    try:
        obj: Any = importlib.import_module(current_name(module_name))
    except ImportError as e:
        raise ConfigError(f"{what} ({spec!r}): cannot import module {module_name!r}: {e}") from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{what} ({spec!r}): module {module_name!r} has no {attr_path!r}") from None
    return obj


def split_spec(spec: str, what: str = "object") -> tuple[str, str]:
    """``("package.module", "attr.sub")`` of ``"package.module:attr.sub"``."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"{what} ({spec!r}) must be a 'module:callable' string")
    module_name, _, attr_path = spec.partition(":")
    return module_name, attr_path


def current_name(module_name: str) -> str:
    """The module ``import_object`` imports for ``module_name``: an old folder name's module
    (``worker.models``) is rayps's (``rayps.worker.models``) when no module of the old top-level name
    exists here. A user's own package of that name is never second-guessed.

    It only looks (a top-level name is found without running any code), so it may be asked about a
    name before that name is trusted to run (worker/trust.py).
    """
    top = module_name.split(".", 1)[0]
    if top in _RENAMED and top not in sys.modules:
        try:
            found = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            found = None
        if found is None:
            return f"rayps.{module_name}"
    return module_name

"""Whether a ``module:callable`` read from a run or model directory may run: bundled or the user's own.

A run directory's ``config.json`` and a model directory's ``model.json`` name
the code that built the job (``model: mypkg.nets:resnet``, with its
arguments), and loading one again (``psctl run --resume``, ``psctl export``,
``rayps.load_model``) imports and calls what they name. For one's own runs
that is the point; a directory from elsewhere could name anything: a module
of its own beside its files, or ``subprocess:run`` with a command for its
arguments. So a name read from such a file runs, unless the user trusts the
directory on purpose, only when it is

- rayps's bundled models, data sets and losses (``BUNDLED``), or
- the user's own code: ``__main__``, or a module importable here whose file
  is not in Python's own library, not in an installed package's folder
  (site-packages: given arguments from a file, their functions can do
  anything, ``pip``'s main or ``torch.hub.load`` among them) and not inside
  the directory being loaded (nor is any package on the way to it): the
  working directory's code, a project on ``sys.path`` or installed editable;

and the object it names is defined in such a module too, reached through no
``__dunder__`` attribute and no other module on the way (``mypkg.nets:os.system``,
or ``mypkg.nets:system`` after ``from os import system``, is refused).

Nothing named is imported before its module has passed: a dotted name's
packages are looked at from the top, and each is imported (to find the next)
only once it passed itself.
"""

from __future__ import annotations

import importlib.util
import inspect
import site
import sys
import sysconfig
from pathlib import Path

from ..errors import UntrustedCodeError
from .imports import current_name, import_object, split_spec

#: rayps's own models, data sets and losses: what its examples and default job name. The rest of rayps
#: is not here: its launcher, for one, runs commands.
BUNDLED = ("rayps.worker.models", "rayps.worker.datasets", "rayps.worker.ctr", "rayps.worker.loop.losses")

HOW_TO_TRUST = ("If you trust that directory's code, say so: psctl run --resume RUN_DIR --trust, psctl export"
                " RUN_DIR --trust, rayps.load_model(directory, trust=True), rayps.export_run(run_dir, trust=True)")


def check_trusted(spec: str, directory: str | Path, what: str) -> None:
    """Raise UntrustedCodeError unless ``spec``, read from a file in ``directory``, names bundled code
    or the user's own. ``what`` says where the name was read (``"config.json: model"``).

    A module that passes is imported (its code is the user's own); one that cannot be imported at all
    raises import_object's ConfigError, as loading it would.
    """
    module_name, attr_path = split_spec(spec, what)
    name = current_name(module_name)
    root = Path(directory).resolve()
    why = _module_refusal(name, root)
    if why is None:
        import_object(spec, what)
        why = _object_refusal(name, attr_path, root)
    if why is not None:
        raise UntrustedCodeError(
            f"{directory}: {what} names {spec!r}, and {why}. Loading a run or model directory runs only"
            " rayps's bundled models, data and losses, or your own code (a module importable here from"
            " outside that directory, Python's standard library and installed packages). " + HOW_TO_TRUST)


def _module_refusal(name: str, root: Path) -> str | None:
    """Why module ``name`` is not bundled or the user's own; None when it is, or when it cannot be found."""
    if name == "__main__" or any(name == b or name.startswith(b + ".") for b in BUNDLED):
        return None
    if name.split(".", 1)[0] == "rayps":
        return f"module {name!r} is a part of rayps other than its bundled models, data and losses"
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        try:  # a dotted name imports its parent to look: that parent has passed already
            spec = importlib.util.find_spec(prefix)
        except (ImportError, ValueError):  # ValueError: in sys.modules without a spec
            spec = None
        if spec is None:
            if prefix in sys.modules:  # made at run time, from no file: nothing says whose it is
                return f"module {prefix!r} has no file to tell whose code it is"
            return None  # not importable here: import_object says so, as loading it would
        places = _places(spec)
        if not places:
            return f"module {prefix!r} is part of Python itself (built in or frozen)"
        for place in places:
            if _inside(place, [root]):
                return f"module {prefix!r} lives inside that directory ({place})"
            if _inside(place, _installed_roots()) or any(p.name in _INSTALLED for p in place.parents):
                return f"module {prefix!r} is an installed package ({place})"
            if _inside(place, _stdlib_roots()):
                return f"module {prefix!r} is in Python's standard library ({place})"
    return None


def _object_refusal(name: str, attr_path: str, root: Path) -> str | None:
    """Why the object at ``attr_path`` in the (imported, trusted) module ``name`` is not its own."""
    obj = sys.modules[name]
    for part in attr_path.split("."):
        if part.startswith("__"):
            return f"{part!r} is one of Python's internal attributes"
        obj = getattr(obj, part)
        if inspect.ismodule(obj):
            why = _module_refusal(obj.__name__, root)
            if why is not None:
                return f"{attr_path!r} goes through another module: {why}"
    if inspect.isclass(obj) or inspect.isroutine(obj):  # defined somewhere: there must pass too
        home = getattr(obj, "__module__", None)
        if not isinstance(home, str):
            return f"{attr_path!r} is built into Python"
        if home != name:
            why = _module_refusal(home, root)
            if why is not None:
                return f"{attr_path!r} is imported from elsewhere: {why}"
    return None


def _places(spec) -> list[Path]:
    """Where a module's code is: its file, and a package's folders; none for built-in and frozen ones."""
    places = [Path(spec.origin).resolve()] if spec.has_location and spec.origin else []
    places += [Path(p).resolve() for p in (spec.submodule_search_locations or [])]
    return places


def _inside(place: Path, roots: list[Path]) -> bool:
    return any(place == r or r in place.parents for r in roots)


_INSTALLED = ("site-packages", "dist-packages")  # the folders pip installs into, wherever they are


def _installed_roots() -> list[Path]:
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    roots.update(getattr(site, "getsitepackages", lambda: [])())  # absent in some old virtualenvs
    roots.add(site.getusersitepackages())
    return [Path(r).resolve() for r in roots if r]


def _stdlib_roots() -> list[Path]:
    """Python's own library: its folders, and the zip of it some builds put on sys.path."""
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")}
    roots.update(p for p in sys.path if p.endswith(".zip") and Path(p).resolve().is_relative_to(
        Path(sys.base_prefix).resolve()))
    return [Path(r).resolve() for r in roots if r]

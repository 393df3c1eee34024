"""rayps: a parameter server for PyTorch on Ray. This module is the public API.

The code lives in four folders at the repository's top level, installed under
this one name so that none of them shadows another distribution's package:

- ``rayps.launcher`` (launcher/): ``psctl``, config, the job driver.
- ``rayps.worker`` (worker/): the training loop, data, flat buffers, losses.
- ``rayps.ps`` (ps/): the parameter shard, its client, optimizers, consistency.
- ``rayps.protos`` (protos/): the wire protocol and the flat-buffer layout.
- ``rayps.errors`` (rayps/errors.py): the error tree, a leaf every layer imports.

Example::

    import rayps
    result = rayps.Job(model=make_model, data=(x, y), epochs=5).run()
"""

from __future__ import annotations

import os as _os

_here = _os.path.dirname(_os.path.abspath(__file__))
_checkout = _os.path.dirname(_here)
# A source checkout that is not installed (a Ray job's uploaded working_dir, or
# python run from the checkout without `pip install`): the four folders sit
# beside this one, not inside it. Installed, they are inside and this is skipped.
if not _os.path.isdir(_os.path.join(_here, "ps")) and all(
        _os.path.isfile(_os.path.join(_checkout, name, "__init__.py"))
        for name in ("ps", "worker", "protos", "launcher")):
    __path__.append(_checkout)  # noqa: F821 (a package's __path__)

# The public names resolve on first use: `import rayps.protos.codec` (a gRPC
# client, psctl serve) should not pay for importing torch and Ray.
_PUBLIC = {
    "Job": "rayps.launcher.job", "JobConfig": "rayps.launcher.config",
    "load_job_config": "rayps.launcher.config", "JobResult": "rayps.launcher.driver",
    "run_job": "rayps.launcher.driver", "scale_job": "rayps.launcher.driver",
    "Embedding": "rayps.worker.embedding", "EmbeddingBag": "rayps.worker.embedding",
    "DataConfig": "rayps.worker.dataconfig", "load_transform": "rayps.launcher.dataprep",
    "load_model": "rayps.launcher.exported", "export_run": "rayps.launcher.export",
    "ExportConfig": "rayps.launcher.export_config",
    **{name: "rayps.errors" for name in ("PSError", "ConfigError", "ShapeError", "JobError", "ClusterError",
                                         "StallError")},
}

__version__ = "0.1.0"
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rayps' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

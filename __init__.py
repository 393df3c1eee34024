"""rayps: a parameter server for PyTorch on Ray. This module is the public API.

The repository's root is the package: installed, ``rayps.ps`` is ps/,
``rayps.errors`` is errors.py, so every import inside it is relative and
names the file it reaches (``from ...protos.codec`` in ps/core/ is
protos/codec.py). Its layers, each importing only those below it:

- ``rayps.launcher`` (launcher/): ``psctl``, the job's config, driver and
  controller, clusters, the bench, export.
- ``rayps.worker`` (worker/): the training loop, the work queue, the data
  pipeline, model compression.
- ``rayps.ps`` (ps/): the parameter shard and its client: consistency,
  optimizers, sparse tables, transports, gradient compression.
- ``rayps.protos`` (protos/): the wire protocol and the byte layouts.
- errors.py: the error tree; settings.py: strict frozen-dataclass configs;
  runtime.py: how code waits on and kills actors (Ray's, or an in-process
  stand-in in tests). The leaves every layer shares.

Example::

    import rayps
    result = rayps.Job(model=make_model, data=(x, y), epochs=5).run()

or a loop of one's own on every worker (``rayps.train``, worker/loop/context.py)::

    def loop():
        ctx = rayps.get_context()
        for x, y in ctx.batches():
            ctx.backward(loss_fn(ctx.model(x), y))
            ctx.step()
    rayps.train(loop, model=make_model, data=(x, y), epochs=5)
"""

from __future__ import annotations


# The public names resolve on first use: `import rayps.protos.codec` (a gRPC
# client, psctl serve) should not pay for importing torch and Ray.
_PUBLIC = {
    "Job": "rayps.launcher.job.api", "train": "rayps.launcher.job.api",
    "get_context": "rayps.worker.loop.context", "report": "rayps.worker.loop.context",
    "TrainContext": "rayps.worker.loop.context", "JobConfig": "rayps.launcher.job.config",
    "load_job_config": "rayps.launcher.job.config", "JobResult": "rayps.launcher.job.driver",
    "run_job": "rayps.launcher.job.driver", "scale_job": "rayps.launcher.job.driver",
    "Embedding": "rayps.worker.loop.embedding", "EmbeddingBag": "rayps.worker.loop.embedding",
    "DataConfig": "rayps.worker.data.config", "load_transform": "rayps.launcher.job.dataprep",
    "load_model": "rayps.launcher.job.saved_model", "export_run": "rayps.launcher.export.variants",
    "ExportConfig": "rayps.launcher.export.config",
    **{name: "rayps.errors" for name in ("PSError", "ConfigError", "ShapeError", "JobError", "ClusterError",
                                         "StallError", "UntrustedCodeError")},
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

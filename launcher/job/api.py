"""The Python API: ``Job(model=..., data=..., ...).run()``."""

from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError
from ...runtime import RAY, Runtime
from .config import JobConfig
from .driver import JobResult, run_job
from .terminal import ProgressLine
from ...settings import build


class Job:
    """A training job. Keyword arguments are the keys of ``JobConfig``.

    ``model`` is a callable returning a ``torch.nn.Module`` (or a
    ``"module:callable"`` string); ``data`` is arrays ``(x, y)``, a torch
    ``Dataset``, ``.npy``/``.parquet`` files, a callable returning any of
    these, or ``{"train": ..., "test": ...}``. Sections such as
    ``optimizer`` and ``consistency`` take dicts.
    """

    def __init__(self, config: JobConfig | None = None, **kwargs):
        if config is not None and kwargs:
            raise ConfigError("pass either a JobConfig or keyword arguments, not both")
        self.config = config if config is not None else build(JobConfig, kwargs, "Job")

    def run(self, output: str | Path | None = None, progress: bool = True, dashboard: bool = True,
            report: bool = True, on_start=None, runtime: Runtime = RAY) -> JobResult:
        """Train to the end (blocks); write the run directory; return the result.

        Starts a local single-node Ray instance when none is running. ``report``
        draws the plots and TensorBoard events into the run directory. An
        ``output`` that holds checkpoints of an earlier run of this job resumes
        it. ``on_start(name)`` is called once the job runs, with the name
        ``rayps.scale_job(name, workers)`` takes (from another thread or process).
        ``runtime`` is where the actors run: Ray's, unless a test runs the job in one process.
        """
        return run_job(self.config, output=output, progress=ProgressLine() if progress else None,
                       dashboard=dashboard, report=report, on_start=on_start, runtime=runtime)


def train(train_loop_per_worker, *, train_loop_config: dict | None = None, output: str | Path | None = None,
          progress: bool = True, dashboard: bool = True, report: bool = True, on_start=None,
          runtime: Runtime = RAY, **job) -> JobResult:
    """Run a training loop of your own on every worker, the parameter server behind it; block until done.

    ``train_loop_per_worker`` takes nothing or one argument, ``train_loop_config``
    (as in Ray Train). Inside it, ``rayps.get_context()`` is the worker's
    ``TrainContext``: its ``model``, its ``batches()`` from the job's work queue,
    ``backward(loss)``, ``step()`` (the push and the pull) and ``report(metrics)``
    (worker/loop/context.py says the contract). The other keyword arguments are
    ``Job``'s: the model, the data, the consistency mode, checkpoints,
    ``clip_grad_norm``, ``accumulate``, ``precision``, ``compile``; and the
    result, the run directory and the failure handling are a ``Job``'s.
    """
    if "train_loop_per_worker" in job:
        raise ConfigError("train_loop_per_worker is train()'s first argument; do not pass it again")
    loop_job = Job(train_loop_per_worker=train_loop_per_worker, train_loop_config=dict(train_loop_config or {}),
                   **job)
    return loop_job.run(output, progress=progress, dashboard=dashboard, report=report, on_start=on_start,
                        runtime=runtime)

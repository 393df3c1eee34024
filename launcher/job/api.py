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

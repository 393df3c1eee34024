"""The launcher: how a user starts a job.

- ``Job`` (job.py): the Python API, ``Job(model=..., data=...).run()``.
- ``JobConfig``, ``load_job_config`` (config.py): the job's frozen config tree,
  from YAML, keyword arguments and ``--set`` overrides.
- ``run_job``, ``JobResult`` (driver.py): place shard and worker actors, watch
  them, evaluate, write the run directory.
- ``psctl`` (cli.py): the command line; ``python -m launcher`` is the same.
"""

from launcher.config import JobConfig, load_job_config
from launcher.driver import JobResult, run_job
from launcher.job import Job

__all__ = ["Job", "JobConfig", "JobResult", "load_job_config", "run_job"]

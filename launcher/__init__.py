"""The launcher: how a user starts a job.

- ``Job`` (job.py): the Python API, ``Job(model=..., data=...).run()``.
- ``JobConfig``, ``load_job_config`` (config.py): the job's frozen config tree,
  from YAML, keyword arguments and ``--set`` overrides.
- ``run_job``, ``JobResult`` (driver.py): place shard and worker actors, watch
  them, evaluate, write the run directory.
- ``psctl`` (cli.py): the command line; ``python -m rayps`` is the same.

The public API is re-exported by ``rayps`` itself (rayps/__init__.py).
- ``load_cluster_file``, ``up``, ``down`` (cluster.py): cluster.yaml's Ray half,
  checked against Ray's schema and handed to ``ray up`` with token auth on.
- ``Jobs`` (jobs.py): submit, follow, list and stop jobs through the Ray Jobs
  API; ``find_token`` (auth.py): the token Ray uses, sent with every request;
  cluster_cli.py: the ``psctl up/down/submit/status/logs/stop`` commands.
"""

from rayps.launcher.config import JobConfig, load_job_config
from rayps.launcher.driver import JobResult, run_job
from rayps.launcher.job import Job

__all__ = ["Job", "JobConfig", "JobResult", "load_job_config", "run_job"]

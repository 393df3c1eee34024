"""The launcher: how a user starts, watches and ships a job.

- ``job/``: one job's life: the config, the driver (prepare, start, train,
  summarize), the controller and its policies, checkpointing, progress, the
  run directory. ``Job`` (job/api.py) is the Python API.
- ``cluster/``: Ray clusters from cluster.yaml: up, down, SSH machines,
  submitting jobs and following them.
- ``bench/``: ``psctl bench``: rayps beside its peers on this machine.
- ``export/``: ``psctl export``: the trained model as files, and its
  compressed variants.
- ``data/``: synthetic data sets and the data quality report.
- ``psctl`` (cli.py): the command line; ``python -m rayps`` is the same.
  ``psctl serve`` (serve.py): one shard as a plain gRPC server, outside Ray.

The public API is re-exported by ``rayps`` itself (the root __init__.py).
"""

from .job.api import Job
from .job.config import JobConfig, load_job_config
from .job.driver import JobResult, run_job

__all__ = ["Job", "JobConfig", "JobResult", "load_job_config", "run_job"]

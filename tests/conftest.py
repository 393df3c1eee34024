"""One Ray instance for the whole test session, started on first use.

Unit tests never touch it; tests that train take the ``ray_session`` fixture, or
``in_process`` where the claim is about training rather than processes.
The instance is our own (``address="local"``): it never joins another Ray
cluster on the machine, and ``ray.shutdown`` ends only what it started.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# The repository's root is the package rayps, so pytest names a test module after the checkout's folder
# (main.tests.test_training when the checkout is main/). Ray's worker processes, and the job processes
# tests start, find only the working directory on their path; a folder holding one link, named as the
# checkout is, lets them import a test's functions and classes by the name pickle gives them.
_ROOT = Path(__file__).resolve().parents[1]
_LINKS = Path(tempfile.mkdtemp(prefix="rayps-tests-"))
(_LINKS / _ROOT.name).symlink_to(_ROOT, target_is_directory=True)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_LINKS), os.environ.get("PYTHONPATH")]))

# Helpers imported by test modules: rewrite their asserts too, as if they sat in the test file.
pytest.register_assert_rewrite("tests.grpc_fixtures")


@pytest.fixture(scope="session")
def ray_session():
    import os

    import ray

    # Metrics reach each node's Prometheus endpoint every second instead of
    # every ten, so the metrics test reads them without a long wait.
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def in_process():
    """A runtime that runs a whole job's actors on threads of this process (tests/local_runtime.py), for
    the job tests whose claim is about training, not about processes: no actor process to start."""
    from tests.local_runtime import local_runtime

    with local_runtime() as runtime:
        yield runtime


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """One ``psctl run`` of the default job, in its own process, for every test of what a newcomer sees
    (tests/default_run.py)."""
    from tests.default_run import DefaultRun

    run = DefaultRun(tmp_path_factory.mktemp("default-run"))
    yield run
    run.close()

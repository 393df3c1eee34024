"""The chaos soak (benchmarks/chaos.py), cut short: real processes SIGKILLed at random, overlapping.

One job per mode, each over another transport, trained for about 12 s while
``chaos.random`` SIGKILLs a random shard or worker every 1.5 s on average
(shards take about a second to come back, so kills land inside recoveries).
Each is held to the soak's own checks: nothing applied twice, every example
exactly once per epoch, the accuracy bar, flat memory. The long form, every
mode over every transport for minutes, is the benchmark; its counts are in
docs/failures.md. The same logic in one process: tests/test_controller.py.
"""

from __future__ import annotations

import pytest

from benchmarks.chaos import soak_config, violations
from rayps.launcher.job.driver import run_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode,transport", [("asp", "shm"), ("ssp", "grpc"), ("bsp", "ray")])
def test_random_overlapping_sigkills_leave_every_example_applied_once_and_the_accuracy_bar_met(
        ray_session, tmp_path, mode, transport):
    config = soak_config(mode, transport, minutes=0.2, mean_gap_s=1.5, seed=7, extra=[])
    s = run_job(config, output=tmp_path / "run", dashboard=False, report=False).summary
    chaos = s["chaos"]
    assert chaos["sent"] >= 4, chaos  # the job lasted long enough for the kills to matter
    assert sum(chaos["killed"].values()) == chaos["sent"] and chaos["samples"] >= 5
    # every kill is a restart the job recovered from (two kills of one shard inside one controller tick
    # are one restart: the controller sees one new life)
    assert 0 < sum(s["restarts"].values()) <= chaos["sent"]
    assert s["workers_replaced"] == s["restarts"].get("worker-0", 0) + s["restarts"].get("worker-1", 0)
    assert violations(s, config.epochs) == []

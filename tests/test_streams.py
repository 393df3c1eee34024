"""Streaming sources (worker/data/stream.py): an IterableDataset and a Ray Data Dataset, replayed by position.

The claim about processes (a worker SIGKILLed mid-epoch, every example still
applied exactly once per epoch) runs on the session's Ray instance; the plan,
the reads and the training run in one process.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import IterableDataset

import rayps
from rayps.errors import ConfigError, ShapeError
from rayps.worker.data.sources import resolve_data
from rayps.worker.data.stream import StreamBatches, StreamSource
from rayps.worker.queue.workqueue import Unit

from tests.counting import Counter, assert_counted_once_per_epoch


class Numbers(IterableDataset):
    """Items ``([i], 0)`` for i < n, in order: replayable (every iter() yields the same); no len()."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        return ((np.array([i], dtype=np.float32), 0) for i in range(self.n))


class Digits(IterableDataset):
    """The digits training split as a stream, shuffled once by a fixed seed, with a len()."""

    def __init__(self):
        from rayps.worker.datasets import digits
        x, y = digits()["train"]
        order = np.random.default_rng(0).permutation(len(x))
        self.x, self.y = x[order], y[order]

    def __len__(self):
        return len(self.x)

    def __iter__(self):
        return ((torch.from_numpy(self.x[i]), int(self.y[i])) for i in range(len(self.x)))


def test_a_streams_epoch_plan_keeps_its_order_with_each_workers_stretch_contiguous():
    plan = StreamBatches(num_examples=105, num_workers=2, batch_size=10)
    assert plan.per_epoch == 11 and plan.stretches == [6, 5]  # sums to the epoch's batches
    batches = plan.batches(Unit(0, 0, 11))
    np.testing.assert_array_equal(np.concatenate(batches), np.arange(105))  # every item once, in order
    assert plan.examples(Unit(3, 6, 11)) == 45


def test_a_stream_is_read_forward_and_opened_again_only_to_go_back():
    source = StreamSource(Numbers(50))
    assert len(source) == 50  # counted by one pass: the stream has no len()
    x, _ = source.batch(np.arange(10, 20))
    assert x[:, 0].tolist() == list(range(10, 20)) and x.dtype == torch.float32
    source.batch(np.arange(30, 40))
    assert source.opened == 1 and source.read == 40  # forward: the same iterator, skipping 20..29
    x, _ = source.batch(np.arange(0, 5))  # behind it (a new epoch, a replayed unit): from the start
    assert x[:, 0].tolist() == [0, 1, 2, 3, 4] and source.opened == 2
    with pytest.raises(ShapeError, match="positions must ascend"):
        source.batch(np.array([3, 2]))
    with pytest.raises(ShapeError, match="past the stream's 50 items"):
        source.batch(np.array([50]))


def test_a_stream_without_a_test_split_is_refused_with_the_way_out():
    with pytest.raises(ConfigError, match="no random access to hold a test part out of"):
        resolve_data(Numbers(20))


def test_a_job_streams_an_iterable_dataset_and_trains_every_example_of_every_epoch(in_process, tmp_path):
    from rayps.worker.datasets import digits

    streamed = rayps.Job(data={"train": Digits(), "test": digits()["test"]}, epochs=15, eval_every_s=0,
                         consistency={"mode": "bsp"}).run(output=tmp_path / "stream", progress=False,
                                                          dashboard=False, report=False, runtime=in_process)
    assert streamed.summary["examples_per_epoch"] == {str(e): 1437 for e in range(15)}
    assert streamed.summary["test_accuracy"] >= 0.93


def stream_counting_job(tmp_path, train, **keys):
    x = np.arange(500, 600, dtype=np.float32).reshape(-1, 1)
    return rayps.Job(model=Counter, data={"train": train, "test": (x, np.zeros(100, np.int64))},
                     loss="tests.counting:minus_sum", optimizer={"name": "sgd", "lr": 1.0},
                     schedule={"name": "constant"}, servers=1,
                     batch_size=10, epochs=4, eval_every_s=0, consistency={"mode": "ssp"},
                     debug={"audit": True, "slow_workers": {0: 0.01, 1: 0.01}}, **keys).run(
        output=tmp_path / "run", progress=False, dashboard=False, report=False)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_an_iterable_dataset_gives_every_example_once_per_epoch_with_a_worker_killed_mid_epoch(ray_session,
                                                                                               tmp_path):
    result = stream_counting_job(tmp_path, Numbers(500), chaos={"kill": ["worker-0@30"]})
    assert result.summary["restarts"] == {"worker-0": 1}  # killed in epoch 1 of 4 (25 batches a worker)
    assert_counted_once_per_epoch(result, epochs=4)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_ray_dataset_gives_every_example_once_per_epoch_with_a_worker_killed_mid_epoch(ray_session, tmp_path):
    import ray.data

    rows = ray.data.from_items([{"x": [float(i)], "y": 0} for i in range(500)])
    result = stream_counting_job(tmp_path, rows, chaos={"kill": ["worker-0@30"]})
    assert result.summary["restarts"] == {"worker-0": 1}
    assert_counted_once_per_epoch(result, epochs=4)

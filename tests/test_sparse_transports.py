"""Sparse rows over every transport: the object store, gRPC and shared memory give the same answers
and refuse the same bad requests, each with a clear status, the shard serving on unchanged.

Real shard actors on the shared Ray instance, two shards, a table of 100 rows x 4 hashed across them.
lr 0.5 and gradients of 2 on rows that start at zero: expected values are exact in float32.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from rayps.launcher.job.transports import make_transport
from rayps.ps.core.consistency import ConsistencyConfig
from rayps.ps.transport.grpc_security import GrpcConfig
from rayps.ps.core.optimizers import OptimizerConfig
from rayps.ps.core.partition import partition
from rayps.ps.sparse.row_optimizers import RowOptimizerConfig
from rayps.ps.core.schedules import ScheduleConfig
from rayps.ps.served import ServedShard
from rayps.ps.sparse.client import SparseRows
from rayps.ps.sparse.table import TableConfig

pytestmark = [pytest.mark.ray]

ROWS, DIM = 100, 4
TRANSPORTS = ["ray", "grpc", "shm"]


class SparseCluster:
    """Two shard actors (dense asp) holding four tables, one per test, so a transport's tests share one
    cluster: ``emb``, ``bad`` and ``ahead`` (asp), and ``held`` (ssp s=0). Each test uses workers of its own."""

    def __init__(self, ray, transport: str, workers: int = 5):
        self.ray = ray
        ranges = partition(4, 2)
        tables = tuple(TableConfig(name, ROWS, DIM, optimizer=RowOptimizerConfig("sgd", lr=0.5), consistency=mode,
                                   init="zeros")
                       for name, mode in (("emb", ConsistencyConfig("asp")), ("bad", ConsistencyConfig("asp")),
                                          ("held", ConsistencyConfig("ssp", staleness=0)),
                                          ("ahead", ConsistencyConfig("asp"))))
        actor = ray.remote(ServedShard).options(num_cpus=0)
        self.shards = [actor.remote(r.shard_id, np.zeros(r.size, np.float32), list(range(workers)),
                                    OptimizerConfig(name="sgd", lr=0.5), ScheduleConfig(), ConsistencyConfig("asp"),
                                    tables=tables, num_shards=2) for r in ranges]
        # served and reached the way a job's driver does it
        self.endpoints = make_transport(transport, self.shards, tuple(ranges), None, workers, GrpcConfig(timeout_s=20.0))

    def rows(self, worker_id: int, table: str) -> tuple[object, SparseRows]:
        client = self.endpoints.connect(worker_id)
        client.register(np.zeros(4, np.float32))
        return client, SparseRows(client, 2, {table: DIM})

    def stats(self) -> list[dict]:
        return self.ray.get([s.stats.remote() for s in self.shards])

    def close(self) -> None:
        self.ray.get([s.stop_serving.remote() for s in self.shards])
        for s in self.shards:
            self.ray.kill(s)



@pytest.fixture(scope="module", params=TRANSPORTS)
def cluster(request, ray_session):
    made = SparseCluster(ray_session, request.param)
    made.transport = request.param
    yield made
    made.close()


def ids(*values) -> np.ndarray:
    return np.array(values, np.int64)


def test_rows_are_pulled_from_their_shards_and_pushes_update_only_them(cluster):
    client, rows = cluster.rows(0, "emb")
    asked = ids(3, 8, 51, 98)  # two on each shard
    rows.clock = 1
    np.testing.assert_array_equal(rows.pull("emb", asked), np.zeros((4, DIM), np.float32))
    grads = np.full((2, DIM), 2.0, np.float32)
    rows.push(1, {"emb": (ids(8, 51), grads)}, num_samples=8)
    rows.flush()
    rows.clock = 2
    got = rows.pull("emb", asked)
    np.testing.assert_array_equal(got, [[0] * DIM, [-1] * DIM, [-1] * DIM, [0] * DIM])
    tables = [s["tables"]["emb"] for s in cluster.stats()]
    assert [t["rows"] for t in tables] == [2, 2]  # created on first touch, on the shard each hashes to
    assert sum(t["rows_pushed"] for t in tables) == 2 and sum(t["pushes_applied"] for t in tables) == 2
    # a retried push of the same clock is a duplicate on every shard, not a second update
    rows.push(1, {"emb": (ids(8, 51), grads)}, num_samples=8)
    rows.flush()
    np.testing.assert_array_equal(rows.pull("emb", ids(8, 51)), np.full((2, DIM), -1.0, np.float32))
    assert sum(s["tables"]["emb"]["duplicates"] for s in cluster.stats()) == 2
    client.finish()


BAD = [
    ("unknown table", lambda c: c.sparse_pull("nope", [ids(2), ids()], 0), "no sparse table 'nope'", "NOT_FOUND"),
    ("negative id", lambda c: c.sparse_pull("bad", [ids(-2), ids()], 0), "out of range", "OUT_OF_RANGE"),
    ("id past the end", lambda c: c.sparse_pull("bad", [ids(), ids(101)], 0), "out of range", "OUT_OF_RANGE"),
    ("id of another shard", lambda c: c.sparse_pull("bad", [ids(3), ids()], 0), "belongs to ps-shard-1",
     "OUT_OF_RANGE"),
    ("wrong dim", lambda c: c.sparse_push_async("bad", 1, [ids(2), ids()],
                                                [np.ones((1, 3), np.float32), np.zeros((0, 3), np.float32)], 1).wait(),
     "row gradients must be float32 of shape", "INVALID_ARGUMENT"),
    ("NaN rows", lambda c: c.sparse_push_async("bad", 1, [ids(2), ids()],
                                               [np.full((1, DIM), np.nan, np.float32), np.zeros((0, DIM), np.float32)],
                                               1).wait(), "NaN", "INVALID_ARGUMENT"),
]


def test_bad_sparse_requests_get_a_clear_status_and_the_shard_serves_on(cluster):
    client, rows = cluster.rows(1, "bad")
    for case, call, message, status in BAD:
        with pytest.raises(Exception) as caught:
            call(client)
        text = str(caught.value)
        assert message in text, case
        if cluster.transport != "ray":  # the object store carries the shard's own exception; wires name a status
            assert status in text, case
        first = cluster.stats()[0]["tables"]["bad"]  # every bad part was shard 0's: it changed nothing
        assert first["rows"] == 0 and first["version"] == 0, case
    rejected: dict = {}
    for s in cluster.stats():
        for reason, n in s["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + n
    assert rejected["unknown_table"] == 1 and rejected["id_range"] == 2 and rejected["non_finite"] == 1
    assert rejected["wrong_shard"] == 1 and rejected["rows_shape"] >= 1
    # the same connection serves on: a good push and pull work, and only they changed anything
    rows.clock = 1
    rows.pull("bad", ids(2))
    rows.push(1, {"bad": (ids(2), np.full((1, DIM), 2.0, np.float32))}, num_samples=1)
    rows.flush()
    np.testing.assert_array_equal(rows.pull("bad", ids(2)), np.full((1, DIM), -1.0, np.float32))
    client.finish()


def test_rows_asked_behind_a_push_are_what_the_next_pull_reads(cluster):
    """The next iteration's rows asked behind a push (one call per shard: the push, then the pull) read
    that push; a pull of those ids (or some of them) is answered from them, one of others is asked anew."""
    client, rows = cluster.rows(4, "ahead")
    rows.clock = 1
    rows.pull("ahead", ids(3, 8))
    rows.push(1, {"ahead": (ids(3, 8), np.full((2, DIM), 2.0, np.float32))}, num_samples=1,
              upcoming={"ahead": ids(3, 8, 51)})
    rows.clock = 2
    np.testing.assert_array_equal(rows.pull("ahead", ids(8, 51)), [[-1] * DIM, [0] * DIM])
    assert rows.pulls_served_ahead == 1 and rows.rows_ahead == 3
    np.testing.assert_array_equal(rows.pull("ahead", ids(3, 98)), [[-1] * DIM, [0] * DIM])  # 98 not foreseen
    assert rows.pulls_served_ahead == 1
    tables = [s["tables"]["ahead"] for s in cluster.stats()]
    assert sum(t["pushes_applied"] for t in tables) == 2 and sum(t["rows_pulled"] for t in tables) == 2 + 3 + 2
    rows.flush()
    client.finish()


def test_a_table_keeps_its_own_bound_while_the_dense_table_runs_asp(cluster):
    """Dense asp, the table ssp s=0: a worker's pull for iteration 2 waits for the other worker's
    sparse push of iteration 1, and no longer."""
    cluster.ray.get([s.finish.remote(w) for s in cluster.shards for w in (0, 1, 4)])  # the other tests' workers
    c0, fast = cluster.rows(2, "held")
    c1, slow = cluster.rows(3, "held")
    for r in (fast, slow):
        r.clock = 1
        r.pull("held", ids(4))
    fast.push(1, {"held": (ids(4), np.full((1, DIM), 2.0, np.float32))}, 1)
    fast.flush()
    got = {}

    def pull_ahead():
        fast.clock = 2
        got["rows"] = fast.pull("held", ids(4))
        got["at"] = time.monotonic()

    t = threading.Thread(target=pull_ahead, daemon=True)
    t.start()
    time.sleep(0.5)
    assert "rows" not in got  # held at the table's bound
    released = time.monotonic()
    slow.push(1, {}, 1)  # the slow worker's empty push of iteration 1 releases it
    slow.flush()
    t.join(10)
    assert got["at"] >= released
    np.testing.assert_array_equal(got["rows"], np.full((1, DIM), -1.0, np.float32))
    tables = [s["tables"]["held"] for s in cluster.stats()]
    assert max(t["max_clock_gap"] for t in tables) == 0
    assert sum(t["wait_s"].get(2, 0) for t in tables) > 0.3
    c0.finish()
    c1.finish()


def test_over_shm_a_pull_right_behind_a_push_reads_it_and_a_refused_push_surfaces_there(ray_session):
    """Over shared memory a pull goes out behind a push not yet answered (one connection, taken in
    order): it reads the pushed rows; a push the shard refused fails that pull, and the connection
    stays in step for the next."""
    made = SparseCluster(ray_session, "shm", workers=1)
    try:
        client, rows = made.rows(0, "emb")
        rows.clock = 1
        rows.pull("emb", ids(8, 51))
        rows.push(1, {"emb": (ids(8, 51), np.full((2, DIM), 2.0, np.float32))}, num_samples=1)
        rows.clock = 2  # no flush: the pull's request follows the push's on each socket
        np.testing.assert_array_equal(rows.pull("emb", ids(8, 51)), np.full((2, DIM), -1.0, np.float32))
        rows.push(2, {"emb": (ids(8), np.full((1, DIM), np.nan, np.float32))}, num_samples=1)
        with pytest.raises(Exception, match="NaN"):
            rows.pull("emb", ids(8, 51))
        rows.drop()
        np.testing.assert_array_equal(rows.pull("emb", ids(8, 51)), np.full((2, DIM), -1.0, np.float32))
        client.finish()
    finally:
        made.close()

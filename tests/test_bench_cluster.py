"""psctl bench --nodes: the namespace cluster (launcher/bench/netns.py) and the rows run across it.

The cluster tests make real network namespaces, veth pairs and tc token
buckets (root only), start real Ray nodes in them, and check what a user of
the bench relies on: a link carries what its rate says and no more, the
rows train across the namespaces (gRPC under the job's mTLS, DDP over TCP),
and nothing the cluster made is left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rayps.errors import ConfigError
from rayps.launcher.bench.cluster import cluster_rows, layout, variants
from rayps.launcher.bench.sparse import SparseRun
from rayps.launcher.bench.netns import NamespaceCluster, parse_rate, rate_name, unavailable


def test_link_rates_read_as_tc_writes_them_and_nonsense_is_refused():
    assert parse_rate("10gbit") == 10_000_000_000
    assert parse_rate("1Gbit/s") == 1_000_000_000
    assert parse_rate("100mbit") == 100_000_000
    assert rate_name(parse_rate("2.5gbit")) == "2.5 Gbit/s"
    with pytest.raises(ConfigError, match=r"--link 'fast' is not a rate"):
        parse_rate("fast")
    with pytest.raises(ConfigError, match="under 1 Mbit/s"):
        parse_rate("10kbit")


def test_both_layouts_train_as_many_workers_and_shards_and_differ_only_in_where_the_shards_are():
    resources, workers, shards = layout("colocated", 2)
    assert resources == [{"ps_server": 1, "ps_worker": 1}] * 2 and workers == [0, 1] and shards == 2
    resources, workers, shards = layout("separate", 2)
    assert resources == [{"ps_server": 2}, {"ps_worker": 1}, {"ps_worker": 1}] and workers == [1, 2] and shards == 2
    with pytest.raises(ValueError, match="must be one of colocated, separate"):
        layout("ring", 2)
    assert variants(["asp", "bsp"], fp16=True) == [("asp", "none", False), ("bsp", "none", False),
                                                   ("asp", "none", True), ("asp", "fp16", False),
                                                   ("bsp", "fp16", False)]


needs_namespaces = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))

# a receiver in one namespace and a sender in another, 2 s of TCP: the Mbit/s that arrived
_RECEIVE = ("import socket, time\ns = socket.socket(); s.bind(('0.0.0.0', 5299)); s.listen(1); print('up', flush=True)\n"
            "c, _ = s.accept(); n = 0; t = time.time()\n"
            "while (b := c.recv(1 << 20)): n += len(b)\nprint(n * 8 / (time.time() - t) / 1e6)")
_SEND = ("import socket, sys, time\nc = socket.create_connection((sys.argv[1], 5299)); b = b'x' * (1 << 16)\n"
         "t = time.time()\nwhile time.time() - t < 2: c.sendall(b)\nc.close()")


def _namespaces() -> set[str]:
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return {line.split()[0] for line in done.stdout.splitlines() if line.strip()}


@pytest.mark.slow
@needs_namespaces
def test_a_namespace_cluster_shapes_its_links_runs_a_ray_node_in_each_and_leaves_nothing_behind():
    with NamespaceCluster(2, parse_rate("100mbit"), [{"ps_server": 1}, {"ps_worker": 1}]) as cluster:
        made = {cluster.hub, *(n.namespace for n in cluster.members)}
        assert made <= _namespaces()
        receiver = subprocess.Popen(cluster.command(1, [sys.executable, "-c", _RECEIVE]), stdout=subprocess.PIPE,
                                    text=True)
        assert receiver.stdout.readline().strip() == "up"
        subprocess.run(cluster.command(0, [sys.executable, "-c", _SEND, cluster.members[1].address]), check=True,
                       timeout=30)
        mbits = float(receiver.communicate(timeout=30)[0])
        assert 60 < mbits < 110, f"a 100 Mbit/s link carried {mbits:.0f} Mbit/s"
        probe = ("import ray; ray.init(address='auto', logging_level='ERROR');"
                 "print(sorted((n['NodeManagerAddress'], n['Resources'].get('ps_server', 0)) for n in ray.nodes()"
                 " if n['Alive']))")
        done = subprocess.run(cluster.command(0, [sys.executable, "-c", probe]), env=cluster.env(),
                              capture_output=True, text=True, timeout=60, check=True)
        assert done.stdout.strip().splitlines()[-1] == str(sorted(
            [(cluster.members[0].address, 1.0), (cluster.members[1].address, 0)]))
        rays = [n.process.pid for n in cluster.members]
    assert not made & _namespaces()
    for pid in rays:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


@pytest.mark.slow
@needs_namespaces
def test_the_cluster_rows_train_rayps_over_mtls_and_ddp_over_the_shaped_links(tmp_path):
    rows = cluster_rows(2, ["1gbit"], ["colocated"], ["small"], ["asp"], tmp_path, steps=60, fp16=False,
                        sparse=SparseRun(steps=30, repeats=1, table_rows=100_000))
    sparse = [r for r in rows if r.model == "sparse-cluster"]
    rows = [r for r in rows if r.model == "cluster"]
    by = {r.system: r for r in rows}
    assert set(by) == {"rayps asp, grpc", "rayps asp, grpc, overlap", "PyTorch DDP (gloo)"}
    mine = by["rayps asp, grpc"]
    assert mine.extra["wire"] == "mtls (job CA)"  # between machines, encrypted with nothing configured
    assert "2 workers, 2 shards, grpc, asp" in mine.extra["config"]
    assert all(r.samples_per_s > 0 and r.extra["link"] == "1 Gbit/s" for r in rows)
    assert mine.extra["x_ddp"] == pytest.approx(mine.samples_per_s / by["PyTorch DDP (gloo)"].samples_per_s)
    # the sparse job across the namespaces: rows made, each worker's own shard over shm, the rest over the link
    single, across = sparse
    assert across.samples_per_s > 0 and across.extra["bytes_per_row"] > 0 and across.extra["link"] == "1 Gbit/s"
    assert "1 shard(s) per worker on its own node over shm" in across.extra["config"]
    assert across.extra["x_single"] == pytest.approx(across.samples_per_s / single.samples_per_s)

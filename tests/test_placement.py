"""Where actors go, and failing fast when the cluster cannot hold them (no Ray: node lists by hand)."""

from __future__ import annotations

import pytest

from rayps.launcher.job.config import JobConfig
from rayps.launcher.job.placement import check_feasible, server_options, worker_options
from rayps.errors import ConfigError, JobError
from rayps.settings import build


def node(alive=True, **resources):
    return {"Alive": alive, "Resources": {"node:127.0.0.1": 1.0, "memory": 1e10, **resources}}


def job(**kwargs) -> JobConfig:
    return build(JobConfig, kwargs, "job")


def test_shards_ask_for_their_custom_resource_and_spread_with_run_unique_names():
    config = job(servers=2, server_cpus=0.5, server_resources={"ps_server": 1})
    options = server_options(config, 1, "rayps-abc")
    assert options == {"name": "ps-shard-1", "namespace": "rayps-abc", "num_cpus": 0.5,
                       "resources": {"ps_server": 1}, "scheduling_strategy": "SPREAD"}
    assert server_options(job(spread_servers=False), 0, "n")["scheduling_strategy"] == "DEFAULT"


def test_workers_ask_for_cpus_gpus_and_their_custom_resource():
    options = worker_options(job(worker_cpus=1, num_gpus=0.5, worker_resources={"ps_worker": 1}), 3, "n")
    assert options == {"name": "worker-3", "namespace": "n", "num_cpus": 1, "num_gpus": 0.5,
                       "resources": {"ps_worker": 1}, "max_concurrency": 2}
    # a replacement is a new actor, under a name of its own
    assert worker_options(job(), 3, "n", incarnation=2)["name"] == "worker-3.2"


def test_a_job_that_fits_passes():
    check_feasible(job(servers=2, workers=2, server_resources={"ps_server": 1}, worker_cpus=1),
                   [node(CPU=2, ps_server=1), node(CPU=2, ps_server=1)])


def test_a_resource_no_node_offers_is_named_with_what_the_nodes_have():
    with pytest.raises(JobError) as info:
        check_feasible(job(server_resources={"ps_server": 1}), [node(CPU=2), node(CPU=4)])
    message = str(info.value)
    assert "each shard asks for {ps_server: 1}, but no node offers that" in message
    assert "{CPU: 2}" in message and "{CPU: 4}" in message


def test_too_few_in_total_names_the_resource_the_need_and_the_supply():
    with pytest.raises(JobError, match=r"the job needs 3 ps_server \(3 shards x 1 \+ 2 workers x 0\)"
                                       r" but the Ray cluster has 2"):
        check_feasible(job(servers=3, server_resources={"ps_server": 1}),
                       [node(CPU=2, ps_server=1), node(CPU=2, ps_server=1)])


def test_gpus_the_cluster_lacks_fail_fast():
    with pytest.raises(JobError, match=r"each worker asks for \{GPU: 1\}, but no node offers that"):
        check_feasible(job(num_gpus=1), [node(CPU=2)])


def test_dead_nodes_do_not_count():
    with pytest.raises(JobError, match="no node offers that"):
        check_feasible(job(server_resources={"ps_server": 1}), [node(alive=False, CPU=2, ps_server=4), node(CPU=2)])


@pytest.mark.parametrize("kwargs, message", [
    ({"server_resources": {"CPU": 1}}, "server_resources key 'CPU' must name a custom resource"),
    ({"worker_resources": {"ps_worker": -1}}, "worker_resources[ps_worker] (-1) must be >= 0"),
    ({"worker_resources": [1]}, "worker_resources ([1]) must be a mapping"),
    ({"spread_servers": "yes"}, "spread_servers ('yes') must be true or false"),
])
def test_bad_placement_keys_are_rejected_by_name(kwargs, message):
    with pytest.raises(ConfigError) as info:
        job(**kwargs)
    assert message in str(info.value)

"""Where actors go: the Ray options of each role, and a check that the cluster can hold them.

Shard actors ask for ``server_cpus`` and the custom ``server_resources`` (for
example ``{ps_server: 1}``, a resource only server nodes carry) and are spread
across nodes; workers ask for ``worker_cpus``, ``num_gpus`` and
``worker_resources``. ``check_feasible`` compares those demands with the live
nodes before any actor starts, so a job that asks for what the cluster cannot
give fails at once with what is missing instead of pending forever.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping

from .config import JobConfig
from ...errors import JobError


def server_demand(config: JobConfig) -> dict[str, float]:
    return _demand(CPU=config.server_cpus, **config.server_resources)


def worker_demand(config: JobConfig) -> dict[str, float]:
    return _demand(CPU=config.worker_cpus, GPU=config.num_gpus, **config.worker_resources)


def _demand(**amounts: float) -> dict[str, float]:
    return {k: float(v) for k, v in amounts.items() if v}


def server_options(config: JobConfig, shard_id: int, namespace: str) -> dict:
    return {
        "name": f"ps-shard-{shard_id}",
        "namespace": namespace,
        "num_cpus": config.server_cpus,
        "resources": dict(config.server_resources),
        # Shards hold the model between them: on separate nodes they do not
        # compete for one node's memory bandwidth and NIC.
        "scheduling_strategy": "SPREAD" if config.spread_servers else "DEFAULT",
    }


def worker_options(config: JobConfig, worker_id: int, namespace: str, incarnation: int = 0) -> dict:
    return {
        # A replacement is a new actor: a name of its own, as the dead one's may not be free yet.
        "name": f"worker-{worker_id}" if incarnation == 0 else f"worker-{worker_id}.{incarnation}",
        "namespace": namespace,
        # Two threads: run() trains in one, and a stall report can still ask for its stack.
        "max_concurrency": 2,
        "num_cpus": config.worker_cpus,
        "num_gpus": config.num_gpus,
        "resources": dict(config.worker_resources),
    }


def check_feasible(config: JobConfig, nodes: list[dict]) -> None:
    """Raise JobError naming what is missing when the live nodes cannot hold the job's actors."""
    live = [n for n in nodes if n.get("Alive")]
    offers = [{k: float(v) for k, v in n.get("Resources", {}).items()} for n in live]
    roles = (("shard", server_demand(config), config.servers), ("worker", worker_demand(config), config.workers))
    for role, demand, count in roles:
        if demand and not any(_fits(demand, offer) for offer in offers):
            raise JobError(
                f"each {role} asks for {_fmt(demand)}, but no node offers that;"
                f" nodes: {'; '.join(_fmt(_public(o)) for o in offers) or 'none'}"
            )
    needed: Counter = Counter()
    for _, demand, count in roles:
        for resource, amount in demand.items():
            needed[resource] += amount * count
    total: Counter = Counter()
    for offer in offers:
        total.update(offer)
    for resource, amount in sorted(needed.items()):
        if amount > total.get(resource, 0.0) + 1e-9:
            raise JobError(
                f"the job needs {amount:g} {resource} ({config.servers} shards x"
                f" {server_demand(config).get(resource, 0):g} + {config.workers} workers x"
                f" {worker_demand(config).get(resource, 0):g}) but the Ray cluster has {total.get(resource, 0):g}"
            )


def _fits(demand: Mapping[str, float], offer: Mapping[str, float]) -> bool:
    return all(offer.get(k, 0.0) + 1e-9 >= v for k, v in demand.items())


def _public(offer: Mapping[str, float]) -> dict[str, float]:
    """A node's resources without Ray's internal per-node labels."""
    return {k: v for k, v in offer.items() if not k.startswith("node:") and "memory" not in k}


def _fmt(resources: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"

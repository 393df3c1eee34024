"""``psctl bench --nodes N --link RATE``: rayps and DDP between machines, on the namespace cluster.

For each link rate, launcher/bench/netns.py builds N "machines" joined by
links shaped to that rate, starts a Ray node in each, and every row trains
the bench's model (2 workers unless the layout says otherwise, batch 128, SGD
lr 0.01, synthetic MNIST-shaped data) across them:

- rayps over gRPC, which between nodes is mutual TLS with the job's own CA
  (the default; nothing configured), in each mode, and with fp16 pushes and
  pulls; each job is driven from node 0, as ``psctl submit`` would from the
  head;
- PyTorch DDP (gloo), one rank per worker node, meeting over TCP on the
  same links, with and without its fp16 compression hook.

Layouts (where the shards live; the workers are always one per node):

- ``colocated``: every node holds one worker and one shard, so a worker's
  own shard is on its loopback and only the others' cross a link;
- ``separate``: one more node holds every shard, the other nodes one worker
  each: every push and pull crosses that node's link.

``--nodes N`` counts the worker machines, so both layouts train with N
workers and N shards, and DDP with N ranks on the same machines.

Each row's samples/s is summed over workers after a warm-up of a tenth of
the steps, as in the one-machine table, and compared with DDP on the same
links (fp16 rows with DDP's fp16 hook).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import peers
from . import sparse as sparse_bench
from .netns import NamespaceCluster, parse_rate, rate_name
from .rows import BATCH, LR, MODELS, MODES, Row, bench_job, peer_config, rayps_config

LAYOUTS = ("colocated", "separate")
CLUSTER_MODES = ("asp", "ssp s=2", "bsp")
DDP_PORT = 29511
ROW_TIMEOUT_S = 900


def layout(name: str, workers: int) -> tuple[list[dict], list[int], int]:
    """For ``workers`` worker machines: each node's custom resources, the nodes that hold a worker, and the
    number of shards (one per worker either way, so the layouts differ only in where the shards live)."""
    if workers < 2:
        raise ValueError(f"--nodes {workers}: between machines needs at least 2 worker machines")
    if name == "colocated":
        return [{"ps_server": 1, "ps_worker": 1}] * workers, list(range(workers)), workers
    if name == "separate":  # one more machine, for the shards
        return [{"ps_server": workers}] + [{"ps_worker": 1}] * workers, list(range(1, workers + 1)), workers
    raise ValueError(f"layout {name!r} must be one of {', '.join(LAYOUTS)}")


def cluster_rows(nodes: int, links: list[str], layouts: list[str], models: list[str], modes: list[str],
                 out: Path, steps: int | None = None, fp16: bool = True,
                 sparse: sparse_bench.SparseRun | None = sparse_bench.SparseRun()) -> list[Row]:
    """Every row, link by link and layout by layout; one namespace cluster per (link, layout). ``nodes``: the
    worker machines (the separate layout adds one for the shards). ``sparse``: how much of the sparse workload
    runs on the colocated layout (None: none)."""
    rows: list[Row] = []
    for link in links:
        bits = parse_rate(link)
        for name in layouts:
            resources, worker_nodes, servers = layout(name, nodes)
            with NamespaceCluster(len(resources), bits, resources) as cluster:
                print(f"{len(resources)} nodes, {rate_name(bits)} links, {name}: cluster up", flush=True)
                for model in models:
                    hidden, default_steps = MODELS[model]
                    where = f"{model}, {rate_name(bits)}, {name}"
                    mine = [_rayps_row(cluster, where, hidden, steps or default_steps, mode, codec, overlap,
                                       len(worker_nodes), servers, out)
                            for mode, codec, overlap in variants(modes, fp16)]
                    theirs = [_ddp_row(cluster, where, hidden, steps or default_steps, worker_nodes, fp16=f)
                              for f in ((False, True) if fp16 else (False,))]
                    for r in mine + theirs:
                        r.extra.update(link=rate_name(bits), layout=name, nodes=len(resources))
                        print(f"  {where}: {r.system}: {r.samples_per_s:,.0f} samples/s", flush=True)
                    _compare(mine, theirs)
                    rows += mine + theirs
                if sparse is not None and name == "colocated":
                    rows += _sparse_rows(cluster, rate_name(bits), len(worker_nodes), servers, out, sparse)
    return rows


def _sparse_rows(cluster: NamespaceCluster, link: str, workers: int, servers: int, out: Path,
                 run: sparse_bench.SparseRun) -> list[Row]:
    """The sparse bench's job (launcher/bench/sparse.py) across the namespaces, over gRPC with each worker's own
    shard through shared memory, against torch's one-process sparse step on the same cores: both run
    ``run.repeats`` times, interleaved, and each row is its median run."""
    singles, mine = [], []
    for attempt in range(run.repeats):
        singles.append(sparse_bench.single_process(run.steps, run.table_rows))
        spec = {"sparse": True, "steps": run.steps, "rows": run.table_rows, "workers": workers, "servers": servers,
                "output": str(out / f"sparse-{link.replace(' ', '').replace('/', '')}-try{attempt}")}
        mine.append(in_node0(cluster, spec, "the sparse row"))
    base, base_runs = sparse_bench.median_run(singles)
    result, runs = sparse_bench.median_run(mine)
    where = f"sparse, {link}, colocated"
    single = Row("sparse-cluster", f"torch EmbeddingBag(sparse) + SparseAdam, one process ({link} rows)",
                 base["rows_per_s"], {"x_single": 1.0, "bytes_per_row": base["table_bytes"] / run.table_rows,
                                      "runs": base_runs, "where": where, "link": link,
                                      "config": f"1 process, median of {run.repeats}"})
    row = Row("sparse-cluster", f"rayps, {workers} workers x {servers} shards, grpc between namespaces at {link}",
              result["rows_per_s"], {"x_single": result["rows_per_s"] / base["rows_per_s"],
                                     "bytes_per_row": result["bytes_per_row"], "runs": runs, "where": where,
                                     "link": link, "config": f"{workers} workers, {servers} shards, one of each per"
                                     f" namespace, grpc (job CA mTLS){_over_shm(result.get('shards_over_shm') or {})},"
                                     f" asp, row Adam lr 0.01, median of {run.repeats}"})
    for r in (single, row):
        print(f"  {where}: {r.system}: {r.samples_per_s:,.0f} rows/s (runs: {r.extra['runs']})", flush=True)
    return [single, row]


def in_node0(cluster: NamespaceCluster, spec: dict, what: str) -> dict:
    """Run ``spec`` through ``_row_main`` inside node 0 (it joins the cluster's Ray there); its JSON result."""
    done = subprocess.run(cluster.command(0, [sys.executable, "-m", __name__, json.dumps(spec)]),
                          env=cluster.env(), capture_output=True, text=True, timeout=ROW_TIMEOUT_S)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


def variants(modes: list[str], fp16: bool) -> list[tuple[str, str, bool]]:
    """(mode, codec, overlap) of each rayps row: every mode as the job runs it by default; asp again with
    overlap on (the step computed while the last one's push and pull cross the link: a knob a user on a slow
    link would turn); and with fp16 pushes and pulls, asp and bsp, beside DDP's fp16 hook."""
    rows = [(mode, "none", False) for mode in modes]
    if "asp" in modes:
        rows.append(("asp", "none", True))
    return rows + [(mode, "fp16", False) for mode in modes if fp16 and mode in ("asp", "bsp")]


def _compare(mine: list[Row], theirs: list[Row]) -> None:
    by = {r.system: r.samples_per_s for r in theirs}
    for r in mine:
        versus = by.get(DDP_FP16 if r.system.endswith("fp16") else DDP)
        if versus:
            r.extra["x_ddp"] = r.samples_per_s / versus


DDP, DDP_FP16 = "PyTorch DDP (gloo)", "PyTorch DDP (gloo), fp16 hook"


def _rayps_row(cluster: NamespaceCluster, where: str, hidden, steps: int, mode: str, codec: str, overlap: bool,
               workers: int, servers: int, out: Path) -> Row:
    """One rayps job, driven from node 0 in a process of its own (it joins the cluster's Ray there)."""
    compression = {"codec": codec, "pull": codec} if codec != "none" else codec  # both ways, as DDP's hook
    name = f"{where.replace(', ', '-').replace(' ', '').replace('/', '')}-{mode.replace(' ', '')}-{codec}"
    spec = {"hidden": list(hidden), "steps": steps, "mode": mode, "compression": compression, "workers": workers,
            "servers": servers, "overlap": overlap, "output": str(out / (name + ("-overlap" if overlap else "")))}
    result = in_node0(cluster, spec, f"the rayps row {mode} {codec}")
    system = f"rayps {mode}, grpc" + (", overlap" if overlap else "") + ("" if codec == "none" else f", {codec}")
    return Row("cluster", system, result["samples_per_s"], {"where": where, "wire": result["wire"],
                                                            "config": result["config"]})


def _ddp_row(cluster: NamespaceCluster, where: str, hidden, steps: int, worker_nodes: list[int],
             fp16: bool) -> Row:
    """DDP with one rank on each worker node, meeting on the first one's address over the shaped links."""
    result = ddp_ranks(cluster, worker_nodes, {"hidden": list(hidden), "batch": BATCH, "lr": LR, "steps": steps,
                                               "fp16": fp16})
    config = peer_config("ddp fp16" if fp16 else "ddp", len(worker_nodes)) + ", one rank per node, tcp on the links"
    return Row("cluster", DDP_FP16 if fp16 else DDP, result["samples_per_s"], {"where": where, "config": config})


def ddp_ranks(cluster: NamespaceCluster, worker_nodes: list[int], spec: dict) -> dict:
    """DDP ranks (launcher/bench/peers.py: ``rank_main`` takes ``spec``), one on each worker node, meeting on the
    first one's address; what they measured together (``peers.summed``)."""
    world = len(worker_nodes)
    master = cluster.members[worker_nodes[0]].address
    with tempfile.TemporaryDirectory() as tmp:
        outs = [os.path.join(tmp, f"rank{r}.npy") for r in range(world)]
        procs = []
        for rank, node in enumerate(worker_nodes):
            ranked = {**spec, "rank": rank, "world": world, "init_method": f"tcp://{master}:{DDP_PORT}",
                      "out": outs[rank]}
            procs.append(subprocess.Popen(cluster.command(node, [sys.executable, "-m", peers.__name__,
                                                                 json.dumps(ranked)]), env=cluster.env()))
        codes = [p.wait(timeout=ROW_TIMEOUT_S) for p in procs]
        if any(codes):
            raise RuntimeError(f"a DDP rank failed: exit codes {codes}")
        return peers.summed([np.load(o) for o in outs])


def cluster_table(rows: list[Row]) -> str:
    lines = ["| model, link, layout | system | samples/s | x DDP (fp16 rows: x DDP's fp16 hook) | configuration |",
             "|---|---|---|---|---|"]
    for r in rows:
        x = r.extra.get("x_ddp")
        lines.append(f"| {r.extra.get('where', '')} | {r.system} | {r.samples_per_s:,.0f} | {'' if x is None else f'{x:.2f}'}"
                     f" | {r.extra.get('config', '')} |")
    return "\n".join(lines)


def run_cluster_bench(nodes: int, links: list[str], layouts: list[str] | None, models: list[str] | None,
                      modes: list[str] | None, output: str | Path | None, command: str,
                      steps: int | None = None, sparse: bool = True) -> tuple[Path, list[Row]]:
    """The cluster rows alone, written as ``psctl bench`` writes its others (bench.json, bench.md)."""
    import time

    from .runner import bench_record

    began = time.gmtime()
    out = Path(output or f"runs/bench-cluster-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    rows = cluster_rows(nodes, links, layouts or list(LAYOUTS),
                        models or ["large"], modes or list(CLUSTER_MODES), out / "jobs", steps,
                        sparse=sparse_bench.SparseRun() if sparse else None)
    dense, sparse_rows = [r for r in rows if r.model == "cluster"], [r for r in rows if r.model == "sparse-cluster"]
    (out / "bench.md").write_text(cluster_table(dense) + "\n"
                                  + (f"\n{sparse_bench.sparse_table(sparse_rows)}\n" if sparse_rows else ""))
    (out / "bench.json").write_text(json.dumps(bench_record(rows, command, began), indent=2))
    return out, rows


def _row_main(argv: list[str]) -> None:
    """Run one rayps row inside node 0 (``RAY_ADDRESS`` names the cluster); print its result as JSON."""
    from ..job.driver import run_job

    spec = json.loads(argv[0])
    placed = {"server_resources": {"ps_server": 1}, "worker_resources": {"ps_worker": 1},
              "server_cpus": 0, "worker_cpus": 0}
    if spec.get("sparse"):
        result = sparse_bench.rayps_rows(spec["steps"], "grpc", Path(spec["output"]), spec["rows"],
                                         workers=spec["workers"], servers=spec["servers"], **placed)
        print(json.dumps(result), flush=True)
        return
    config = bench_job(tuple(spec["hidden"]), spec["steps"], MODES[spec["mode"]], transport="grpc",
                       compression=spec["compression"], workers=spec["workers"], servers=spec["servers"],
                       **({"overlap": True} if spec["overlap"] else {}), **placed, **spec.get("job", {}))
    s = run_job(config, output=spec["output"], dashboard=False, report=False).summary
    print(json.dumps({"samples_per_s": s["steady_samples_per_s"], "wire": s.get("wire"),
                      "time_to_target_s": s.get("time_to_target_s"), "test_accuracy": s.get("test_accuracy"),
                      "bytes_per_example": s["compression"]["bytes_per_example"],
                      "final_train_loss": s.get("final_train_loss"), "local_steps": s.get("local_steps"),
                      "shards_over_shm": s.get("shards_over_shm"),
                      "config": rayps_config(config, s["transport"]) + f", wire {s.get('wire')}"
                                + _over_shm(s.get("shards_over_shm") or {})}), flush=True)


def _over_shm(per_worker: dict) -> str:
    """What the configuration column says of the shards the workers reached on their own node."""
    counts = set(per_worker.values())
    if not counts or counts == {0}:
        return ""
    return f", {'/'.join(map(str, sorted(counts)))} shard(s) per worker on its own node over shm"


if __name__ == "__main__":
    _row_main(sys.argv[1:])

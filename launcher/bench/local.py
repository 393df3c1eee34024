"""``psctl bench --nodes N --link 1gbit,100mbit --local-steps 8,32``: local steps against bsp, asp and DDP.

On the namespace cluster (launcher/bench/netns.py, the ``colocated`` layout:
each machine holds one worker and one shard), every row trains the bench's
small MLP on the synthetic MNIST-shaped data for the same examples
(``--steps`` batches of 128 per worker, default 600) with the same per-batch
optimizer, AdamW at 1e-3:

- PyTorch DDP (gloo), one rank per worker machine, AdamW after each all-reduce;
- rayps bsp and asp over gRPC (mutual TLS, the default between machines), the
  shards applying AdamW;
- rayps with local steps for each H of ``--local-steps``: synchronous (bsp over
  outer steps), asynchronous (asp) and streaming (bsp, the model synced in 4
  fragments in turn), AdamW on the workers and the outer optimizer ``auto``
  on the shards.

Each row says the seconds until every worker's mean training loss over its
last 10 batches fell below ``--target-loss`` (default 0.3; the rule
``time_to_target_s`` keeps for DDP's ranks too), how many times sooner than
DDP that is, samples/s, bytes per example and the test accuracy at the end
(DDP's ranks do not score one). rayps's bytes per example are its summary's:
every push and every pull, a worker's own shard's included (it is on its own
machine). DDP's are computed, not measured: a ring all-reduce sends
2 (W - 1) / W of the gradient from each rank per step.
"""

from __future__ import annotations

from pathlib import Path

from .cluster import ddp_ranks, in_node0, layout
from .netns import NamespaceCluster, parse_rate, rate_name
from .rows import BATCH, MODELS, Row, model_fn

HIDDEN = MODELS["small"][0]
OPTIMIZER = {"name": "adamw", "lr": 1e-3}
DDP = "PyTorch DDP (gloo), AdamW"
STREAMING_FRAGMENTS = 4


def local_rows(nodes: int, links: list[str], inner_steps: list[int], out: Path, steps: int = 600,
               target_loss: float = 0.3) -> list[Row]:
    rows: list[Row] = []
    resources, worker_nodes, servers = layout("colocated", nodes)
    numel = sum(p.numel() for p in model_fn(HIDDEN)().parameters())
    for link in links:
        bits = parse_rate(link)
        where = f"{rate_name(bits)}, {nodes} machines"
        with NamespaceCluster(len(resources), bits, resources) as cluster:
            print(f"{len(resources)} nodes, {rate_name(bits)} links: cluster up", flush=True)
            ddp = ddp_ranks(cluster, worker_nodes, {"hidden": list(HIDDEN), "batch": BATCH, "lr": OPTIMIZER["lr"],
                                                    "steps": steps, "target": target_loss, "optimizer": "adamw"})
            world = len(worker_nodes)
            theirs = Row("local", DDP, ddp["samples_per_s"], {
                "time_to_target_s": ddp["reached_s"], "bytes_per_example": 4 * numel * 2 * (world - 1) / world / BATCH,
                "config": f"{world} ranks, one per machine, gloo ring all-reduce over tcp, batch {BATCH}, AdamW lr"
                          f" {OPTIMIZER['lr']}; bytes per example computed"})
            mine = []
            plans = [("bsp", None, 1), ("asp", None, 1)] + [
                (mode, h, fragments) for h in inner_steps for mode, fragments in
                (("bsp", 1), ("asp", 1), ("bsp", STREAMING_FRAGMENTS))]
            for mode, h, fragments in plans:
                job = {"target_loss": target_loss}
                if h is None:
                    job["optimizer"] = OPTIMIZER
                else:
                    job.update(optimizer={}, local_steps={"inner_steps": h, "inner_optimizer": OPTIMIZER,
                                                          "fragments": fragments})
                name = f"local-{rate_name(bits).replace(' ', '').replace('/', '')}-{mode}-{h or 1}-{fragments}"
                spec = {"hidden": list(HIDDEN), "steps": steps, "mode": mode, "compression": "none",
                        "workers": world, "servers": servers, "overlap": False, "output": str(out / name), "job": job}
                r = in_node0(cluster, spec, f"the rayps row {mode} H={h}")
                form = f"rayps {mode}" if h is None else f"rayps local steps H={h}, " + (
                    f"streaming {fragments} fragments (bsp)" if fragments > 1 else
                    "sync (bsp)" if mode == "bsp" else "async (asp)")
                local = r.get("local_steps") or {}
                mine.append(Row("local", form, r["samples_per_s"], {
                    "time_to_target_s": r["time_to_target_s"], "bytes_per_example": r["bytes_per_example"],
                    "test_accuracy": r["test_accuracy"], "config": f"{world} workers, {servers} shards, grpc,"
                    f" batch {BATCH}, AdamW lr {OPTIMIZER['lr']}"
                    + (f" on the workers, outer {local.get('outer_optimizer')}" if h else " on the shards")}))
            for r in [theirs] + mine:
                r.extra.update(where=where, link=rate_name(bits), target_loss=target_loss, steps=steps)
                t = r.extra["time_to_target_s"]
                r.extra["x_sooner_than_ddp"] = (ddp["reached_s"] / t) if t and ddp["reached_s"] else None
                print(f"  {where}: {r.system}: target in {t if t is None else round(t, 1)} s,"
                      f" {r.samples_per_s:,.0f} samples/s, {r.extra['bytes_per_example']:,.0f} bytes/example",
                      flush=True)
            rows += [theirs] + mine
    return rows


def local_table(rows: list[Row]) -> str:
    lines = ["| link | system | time to target (s) | x sooner than DDP | samples/s | bytes/example | test accuracy |"
             " configuration |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, x, acc = r.extra.get("time_to_target_s"), r.extra.get("x_sooner_than_ddp"), r.extra.get("test_accuracy")
        lines.append(f"| {r.extra.get('where', '')} | {r.system} | {'not reached' if t is None else f'{t:.1f}'} |"
                     f" {'' if x is None else f'{x:.2f}'} | {r.samples_per_s:,.0f} |"
                     f" {r.extra['bytes_per_example']:,.0f} | {'' if acc is None else f'{acc:.3f}'} |"
                     f" {r.extra.get('config', '')} |")
    return "\n".join(lines)


def run_local_bench(nodes: int, links: list[str], inner_steps: list[int], output: str | Path | None, command: str,
                    steps: int | None = None, target_loss: float | None = None) -> tuple[Path, list[Row]]:
    """The local-steps rows alone, written as ``psctl bench`` writes its others (bench.json, bench.md)."""
    import json
    import time

    from .runner import bench_record

    began = time.gmtime()
    out = Path(output or f"runs/bench-local-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    rows = local_rows(nodes, links, inner_steps, out / "jobs", steps or 600, target_loss or 0.3)
    (out / "bench.md").write_text(local_table(rows) + "\n")
    (out / "bench.json").write_text(json.dumps(bench_record(rows, command, began), indent=2))
    return out, rows

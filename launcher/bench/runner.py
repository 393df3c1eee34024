"""``psctl bench``: rayps side by side with its peers on this machine, in one run.

Every row trains the same model on the same synthetic MNIST-shaped data
(``rayps.worker.datasets:synthetic_mnist``) with the same batch per worker,
SGD lr 0.01, 2 workers (and 2 shards for rayps), one configuration at a time,
so no two rows compete for the cores. Each row reports samples/s after its
first tenth of steps (summed over workers). The peers are in
launcher/bench/peers.py. The sparse-table rows (launcher/bench/sparse.py) time
embedding rows per second against torch's sparse EmbeddingBag; the compression rows
(launcher/bench/wire.py) time each codec to a target loss over a 100 Mbit/s link. Output: a Markdown table on stdout and, in the run
directory, ``bench.json`` (the rows, with the command, commit and date that made them:
``bench_record``; launcher/bench/tables.py renders its tables again), ``bench.md`` and ``bench.png``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import time
from pathlib import Path

from . import peers
from .rows import BATCH, LR, MODELS, MODES, WORKERS, Row, bench_job, model_fn, peer_config, rayps_config
from ..job.driver import run_job
from ...runtime import RAY
from ...worker.datasets import synthetic_mnist

def rayps_row(model: str, hidden, steps: int, transport: str, mode: str, out: Path, codec: str = "none") -> Row:
    # fp16 over gRPC: pulls in fp16 too, as DDP's hook all-reduces in fp16 both ways (shm pulls stay float32)
    compression = {"codec": codec, "pull": codec} if codec != "none" and transport == "grpc" else codec
    config = bench_job(hidden, steps, MODES[mode], transport=transport, compression=compression)
    name = f"{model}-{transport}-{mode.replace(' ', '')}" + ("" if codec == "none" else f"-{codec}")
    s = run_job(config, output=out / name, dashboard=False, report=False).summary
    return Row(model, f"rayps {mode}, {transport}" + ("" if codec == "none" else f", {codec}"),
               s["steady_samples_per_s"],
               {"max_clock_gap": s["max_clock_gap"], "transport": s["transport"],
                "config": rayps_config(config, s["transport"])})


def peer_rows(model: str, hidden, steps: int) -> list[Row]:
    net, data_fn = model_fn(hidden), synthetic_mnist
    common = dict(workers=WORKERS, batch=BATCH, lr=LR, steps=steps)

    def row(system: str, key: str, result: dict, workers: int = WORKERS) -> Row:
        return Row(model, system, result["samples_per_s"], {"config": peer_config(key, workers)})
    return [
        row("Ray-docs-style PS, async", "raydocs async", peers.raydocs_ps(net, data_fn, sync=False, **common)),
        row("Ray-docs-style PS, sync", "raydocs sync", peers.raydocs_ps(net, data_fn, sync=True, **common)),
        row(DDP, "ddp", peers.processes(net, data_fn, communicate=True, **common)),
        row(DDP_FP16, "ddp fp16", peers.processes(net, data_fn, communicate=True, fp16=True, **common)),
        row("no communication (ceiling)", "ceiling", peers.processes(net, data_fn, communicate=False, **common)),
        row("single process", "single", peers.processes(net, data_fn, communicate=False, **{**common, "workers": 1}),
            workers=1),
    ]


DDP, DDP_FP16 = "PyTorch DDP (gloo)", "PyTorch DDP (gloo), fp16 hook"


def ratios(rows: list[Row]) -> None:
    """Each row's ratio to DDP, to the better Ray-docs server and to the ceiling; overhead per step."""
    for model in {r.model for r in rows}:
        mine = [r for r in rows if r.model == model]
        by = {r.system: r.samples_per_s for r in mine}
        ddp, ceiling = by.get(DDP), by.get("no communication (ceiling)")
        docs = max((v for k, v in by.items() if k.startswith("Ray-docs")), default=None)
        for r in mine:
            # fp16 pushes against DDP with its fp16 hook: the same compression on both sides
            versus = by.get(DDP_FP16) if r.system.endswith("fp16") or r.system == DDP_FP16 else ddp
            if versus:
                r.extra["x_ddp"] = r.samples_per_s / versus
            if docs:
                r.extra["x_raydocs"] = r.samples_per_s / docs
            if ceiling and r.samples_per_s:
                r.extra["x_ceiling"] = r.samples_per_s / ceiling
                workers = 1 if r.system == "single process" else WORKERS
                step_ms = 1000 * workers * BATCH / r.samples_per_s
                r.extra["overhead_ms"] = step_ms - 1000 * WORKERS * BATCH / ceiling


#: Straggler scenarios: (name, rayps debug knobs, the same for the peers, rayps configurations to run)
STRAGGLERS = [
    ("no stragglers", {}, {}, [("asp", {"mode": "asp"}), ("ssp s=2", {"mode": "ssp", "staleness": 2}),
                               ("bsp", {"mode": "bsp"})]),
    ("worker 1 at half speed", {"slowdown": {1: 1.0}}, {"slow": {1: 1.0}},
     [("asp", {"mode": "asp"}), ("bsp, quorum 1 of 2", {"mode": "bsp", "quorum": 1}),
      ("ssp s=2", {"mode": "ssp", "staleness": 2})]),
    ("transient: p 0.1, 3x compute", {"stragglers": {"probability": 0.1, "factor": 3.0}},
     {"straggle": (0.1, 3.0)},
     [("ssp s=2", {"mode": "ssp", "staleness": 2}), ("asp", {"mode": "asp"}), ("bsp", {"mode": "bsp"})]),
]
# SGD lr 0.01 on the synthetic data: one process needs ~1,600 steps of 128 to reach 1.5
TARGET_LOSS, STRAGGLER_STEPS = 1.5, 2000


def straggler_rows(out: Path, steps: int = STRAGGLER_STEPS, target: float = TARGET_LOSS) -> list[Row]:
    """Seconds to a target training loss for the small model, with stragglers, under one rule for every system:
    a straggler is held back by a multiple of the same compute time (a forward and backward measured once, here,
    with no communication), drawn per step from the same seeded stream; the time to target is the last worker's
    (every worker's mean loss over its last 10 steps below the target), each counted from its own start."""
    net = model_fn((256,))
    compute_s = peers.compute_seconds(net, synthetic_mnist, BATCH)
    rule = f"delays are multiples of {1000 * compute_s:.2f} ms (one forward and backward, measured)"
    rows = []
    for scenario, knobs, peer_knobs, configs in STRAGGLERS:
        ddp = peers.processes(net, synthetic_mnist, WORKERS, BATCH, LR, steps, communicate=True,
                              target=target, compute_s=compute_s, **peer_knobs)
        rows.append(Row("stragglers", f"{scenario}: {DDP}", ddp["samples_per_s"],
                        {"time_to_target_s": ddp["reached_s"], "compute_s": compute_s,
                         "config": f"{peer_config('ddp')}; {rule}"}))
        for name, consistency in configs:
            config = bench_job((256,), steps, consistency, target_loss=target, debug={**knobs, "compute_s": compute_s})
            s = run_job(config, output=out / f"straggle-{len(rows)}", dashboard=False, report=False).summary
            rows.append(Row("stragglers", f"{scenario}: rayps {name}", s["steady_samples_per_s"],
                            {"time_to_target_s": s["time_to_target_s"], "compute_s": compute_s,
                             "config": f"{rayps_config(config, s['transport'])}; {rule}"}))
        for r in rows[-len(configs):]:
            mine, theirs = r.extra["time_to_target_s"], ddp["reached_s"]
            if mine and theirs:
                r.extra["x_ddp_time"] = theirs / mine  # > 1: sooner than DDP
    return rows


def straggler_table(rows: list[Row]) -> str:
    lines = [f"| scenario: system | seconds to training loss {TARGET_LOSS} | x sooner than DDP | samples/s"
             " | configuration |", "|---|---|---|---|---|"]
    for r in rows:
        t, x = r.extra.get("time_to_target_s"), r.extra.get("x_ddp_time")
        lines.append(f"| {r.system} | {'not reached' if t is None else f'{t:.1f}'} | {'' if x is None else f'{x:.2f}'}"
                     f" | {r.samples_per_s:,.0f} | {r.extra.get('config', '')} |")
    return "\n".join(lines)


def transport_rows(megabytes: int = 100, repeats: int = 5) -> list[Row]:
    # (the model field holds "transport"; samples_per_s holds GB/s moved: push and pull bytes over the time)
    """A push and a pull of ``megabytes`` of float32 through each transport, against memcpy, one run."""
    import numpy as np
    import ray

    from ..job.transports import make_transport
    from ...ps.core.consistency import ConsistencyConfig
    from ...ps.core.optimizers import OptimizerConfig
    from ...ps.core.partition import partition
    from ...ps.core.schedules import ScheduleConfig
    from ...ps.served import ServedShard

    n = megabytes * (1 << 20) // 4
    src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
    copies = []
    for _ in range(repeats):
        began = time.perf_counter()
        np.copyto(dst, src)
        copies.append(time.perf_counter() - began)
    memcpy_gbs = n * 4 / sorted(copies)[repeats // 2] / 1e9
    rows = [Row("transport", "memcpy (numpy copyto), one copy", memcpy_gbs,
                {"ms": 1000 * n * 4 / memcpy_gbs / 1e9, "config": f"{megabytes} MB, one thread, median of {repeats}"})]
    ranges = tuple(partition(n, 1))
    # shm twice: asp (the answer written into the worker's segment) and bsp (read where the shard publishes it)
    for name, mode in (("shm", "asp"), ("shm", "bsp"), ("grpc", "asp"), ("ray", "asp")):
        shard = ray.remote(ServedShard).options(num_cpus=0).remote(
            0, np.zeros(n, np.float32), [0], OptimizerConfig(name="sgd", lr=0.01), ScheduleConfig(),
            ConsistencyConfig(mode=mode))
        try:
            spec = make_transport(name, [shard], ranges, None, workers=1)
            if name == "shm":
                spec = dataclasses.replace(spec, published=mode == "bsp")
            client = spec.connect(0)
            # the arrays a worker trains on: the transport's own where it has them (shm), else the worker's
            grads, params = client.shared_buffers() or (np.empty(n, np.float32), np.empty(n, np.float32))
            grads[:] = 1e-3
            client.register(params)
            times = []
            for clock in range(1, repeats + 2):
                began = time.perf_counter()
                client.push_pull(clock, grads, params, 1, 0.0)
                times.append(time.perf_counter() - began)
            client.finish()
        finally:
            ray.get(shard.stop_serving.remote())
            ray.kill(shard)
        step = sorted(times[1:])[repeats // 2]  # the first step also opens streams and maps pages
        gbs = 2 * n * 4 / step / 1e9
        rows.append(Row("transport", f"push + pull through {name}" + (", bsp" if mode == "bsp" else ""), gbs,
                        {"ms": 1000 * step, "x_memcpy": gbs / memcpy_gbs,
                         "config": f"1 worker, 1 shard, {megabytes} MB float32 each way, SGD, {mode},"
                                   f" median of {repeats}"}))
    return rows


def transport_table(rows: list[Row]) -> str:
    lines = ["| what (each way) | ms | GB/s moved | x memcpy | configuration |", "|---|---|---|---|---|"]
    for r in rows:
        x = r.extra.get("x_memcpy")
        lines.append(f"| {r.system} | {r.extra['ms']:.1f} | {r.samples_per_s:.2f} | {'' if x is None else f'{x:.2f}'}"
                     f" | {r.extra.get('config', '')} |")
    return "\n".join(lines)


def table(rows: list[Row]) -> str:
    lines = ["| model | system | samples/s | x DDP (fp16 rows: x DDP's fp16 hook) | x Ray-docs PS | x ceiling"
             " | overhead ms/step | configuration |",
             "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, spec: format(v, spec) if v is not None else ""  # noqa: E731
    for r in rows:
        e = r.extra
        lines.append(f"| {r.model} | {r.system} | {r.samples_per_s:,.0f} | {fmt(e.get('x_ddp'), '.2f')}"
                     f" | {fmt(e.get('x_raydocs'), '.2f')} | {fmt(e.get('x_ceiling'), '.2f')}"
                     f" | {fmt(e.get('overhead_ms'), '.2f')} | {e.get('config', '')} |")
    return "\n".join(lines)


def chart(rows: list[Row], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cost = [r for r in rows if r.model == "cost"]  # the curves of how cost grows, in a row of their own
    rows = [r for r in rows if r.model in MODELS]  # straggler, transport and sparse rows have their own tables
    models = sorted({r.model for r in rows}, key=list(MODELS).index)
    heights = [1 + 0.35 * len([r for r in rows if r.model == m]) for m in models] + ([3.5] if cost else [])
    if not heights:
        return
    fig = plt.figure(figsize=(13 if cost else 9, sum(heights)))
    grid = fig.add_gridspec(len(heights), 3, height_ratios=heights)
    for i, model in enumerate(models):
        ax = fig.add_subplot(grid[i, :])
        mine = [r for r in rows if r.model == model]
        ax.barh([r.system for r in mine], [r.samples_per_s for r in mine],
                color=["tab:blue" if r.system.startswith("rayps") else "tab:gray" for r in mine])
        ax.invert_yaxis()
        ax.set_title(f"{model} MLP: samples/s (2 workers, batch {BATCH})")
    if cost:
        from .cost import cost_axes

        cost_axes(cost, [fig.add_subplot(grid[len(models), j]) for j in range(3)])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_bench(quick: bool = False, output: str | Path | None = None, models: list[str] | None = None,
              transports: list[str] | None = None, modes: list[str] | None = None,
              steps: int | None = None, stragglers: bool | None = None,
              transport_mb: int = 100, sparse: bool = True, sparse_steps: int | None = None,
              sparse_rows_in_table: int | None = None, sparse_repeats: int | None = None,
              wire: bool | None = None, fp16: bool = True,
              command: str | None = None, cost: bool | None = None, only_cost: bool = False) -> tuple[Path, list[Row]]:
    """Every row in turn; ``steps`` (per worker) overrides each model's default, for a short check.
    ``fp16``: each mode again with fp16 pushes on the first transport, beside DDP with its fp16 hook.
    ``command``: the command line bench.json records (psctl passes its own; None: this call).
    ``cost``: the rows of how cost grows with shards, workers and clients (default: in a full run);
    ``only_cost``: those rows alone."""
    if command is None:  # called from Python: the call, with the arguments that differ from the defaults
        command = _call_text(run_bench, locals())
    began = time.gmtime()
    steps_override = steps
    stragglers = (not quick) if stragglers is None else stragglers
    compression_rows = (not quick) if wire is None else wire
    out = Path(output or f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    RAY.start(dashboard=False)
    models = models or (["small"] if quick else list(MODELS))
    transports = transports or (["shm"] if quick else ["shm", "grpc", "ray"])
    modes = modes or (["asp", "bsp"] if quick else list(MODES))
    rows: list[Row] = []
    text = ""
    cost = (not quick) if cost is None else cost
    for model in models if not only_cost else ():
        hidden, default_steps = MODELS[model]
        steps = steps_override or default_steps
        for transport in transports:
            for mode in modes:
                rows.append(rayps_row(model, hidden, steps, transport, mode, out / "jobs"))
                print(f"  {rows[-1].system}: {rows[-1].samples_per_s:,.0f} samples/s", flush=True)
        for mode in modes if fp16 else ():
            rows.append(rayps_row(model, hidden, steps, transports[0], mode, out / "jobs", codec="fp16"))
            print(f"  {rows[-1].system}: {rows[-1].samples_per_s:,.0f} samples/s", flush=True)
        rows += peer_rows(model, hidden, steps)
        for r in rows[-6:]:
            print(f"  {r.system}: {r.samples_per_s:,.0f} samples/s", flush=True)
    if not only_cost:
        ratios(rows)
        text = table(rows)
        wire = transport_rows(transport_mb)
        rows += wire
        text += "\n\n" + transport_table(wire)
    else:
        stragglers = sparse = compression_rows = False
    if stragglers:
        late = straggler_rows(out / "jobs")
        rows += late
        text += "\n\n" + straggler_table(late)
    if sparse:  # embedding rows: a 10M x 16 table, against torch's sparse EmbeddingBag in one process
        from .sparse import ROWS, sparse_rows, sparse_table
        rows_sparse = sparse_rows(out / "jobs", sparse_steps or (100 if quick else 300), transports,
                                  sparse_rows_in_table or ROWS,
                                  repeats=sparse_repeats or (1 if quick else 3))
        rows += rows_sparse
        text += "\n\n" + sparse_table(rows_sparse)
    if compression_rows:  # gradient compression over a 100 Mbit/s link (launcher/bench/wire.py)
        from .wire import wire_rows, wire_table
        rows_wire = wire_rows(out / "jobs")
        rows += rows_wire
        text += "\n\n" + wire_table(rows_wire)
    if cost or only_cost:  # how a step's overhead grows with shards and workers, and a shard's with clients
        from .cost import cost_rows, cost_table
        rows_cost = cost_rows(out / "jobs")
        rows += rows_cost
        text += "\n\n" + cost_table(rows_cost)
    text = text.lstrip("\n")
    (out / "bench.md").write_text(text + "\n")
    (out / "bench.json").write_text(json.dumps(bench_record(rows, command, began), indent=2))
    chart(rows, out / "bench.png")
    return out, rows


def bench_record(rows: list[Row], command: str, began: time.struct_time | None = None) -> dict:
    """What bench.json holds: the rows, and which command at which commit made them on which date
    (UTC), so a number in the docs can say where it came from."""
    return {"command": command, "commit": checkout_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", began or time.gmtime()), "machine": this_machine(),
            "rows": [r.__dict__ for r in rows]}


def this_machine() -> str:
    """The machine a bench ran on, in one line: CPU, cores, memory, OS, and the versions that move the numbers."""
    import platform

    import ray
    import torch

    cpu = platform.processor() or platform.machine()
    memory = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
        with open("/proc/meminfo") as f:
            kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        memory = f", {kib / (1 << 20):.0f} GiB"
    except (OSError, StopIteration, ValueError):  # not Linux: what platform says
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu}, {cores} cores{memory}, {platform.system()} {platform.release()}, Python"
            f" {platform.python_version()}, torch {torch.__version__}, Ray {ray.__version__}")


def checkout_commit() -> str | None:
    """``git rev-parse --short HEAD`` of the checkout this package runs from; None when it runs from an
    installed copy (no checkout of its own, or one that belongs to another repository)."""
    root = Path(__file__).resolve().parents[2]  # launcher/bench/runner.py -> the repository's root

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):  # no git on this machine
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root:
        return None
    return git("rev-parse", "--short", "HEAD")


def _call_text(function, arguments: dict) -> str:
    defaults = {k: p.default for k, p in inspect.signature(function).parameters.items()}
    given = ", ".join(f"{k}={v!r}" for k, v in arguments.items() if k in defaults and v != defaults[k])
    return f"{function.__name__}({given})"

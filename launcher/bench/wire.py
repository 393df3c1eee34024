"""The bench's compression rows: time to a target loss over a slow link, per codec.

Every row trains the bench's small model (784-256-10, 203,530 parameters:
814 KB a push) over gRPC, with the workers reaching the shards through one
throttling proxy link on loopback (launcher/job/throttle.py; 100 Mbit/s each way
by default, shared by both workers, as one machine's NIC would be). A row
stops at the target training loss or at its step limit, so the whole set is
bounded in time. Each row reports seconds to the target loss (the last
worker's to get its mean of 10 steps below it), samples/s, and the bytes a worker sent per step
before and after compression.
"""

from __future__ import annotations

from pathlib import Path

from ..job.driver import run_job
from .rows import Row, bench_job, rayps_config

#: (row name, the job's compression section)
CODECS = [
    ("none", {"codec": "none"}),
    ("fp16, pull fp16", {"codec": "fp16", "pull": "fp16"}),
    ("bf16, pull bf16", {"codec": "bf16", "pull": "bf16"}),
    ("int8, pull fp16", {"codec": "int8", "pull": "fp16"}),
    ("topk 0.1, pull fp16", {"codec": "topk", "fraction": 0.1, "pull": "fp16"}),
    ("topk 0.1, pull float32", {"codec": "topk", "fraction": 0.1}),
]
#: SGD at 10x the other rows' lr, so the target is reached in a few hundred steps and the rows stay short
LINK_MBIT, WIRE_STEPS, WIRE_TARGET, WIRE_LR = 100.0, 500, 1.5, 0.1


def wire_rows(out: Path, steps: int = WIRE_STEPS, mbit: float = LINK_MBIT, target: float = WIRE_TARGET,
              codecs: list[str] | None = None) -> list:

    rows = []
    for name, compression in CODECS:
        if codecs is not None and name.split()[0].rstrip(",") not in codecs:
            continue
        config = bench_job((256,), steps, {"mode": "asp"}, transport="grpc", target_loss=target,
                           compression=compression, debug={"link_mbit": mbit},
                           optimizer={"name": "sgd", "lr": WIRE_LR})
        s = run_job(config, output=out / f"wire-{len(rows)}", dashboard=False, report=False).summary
        c = s["compression"]
        rows.append(Row("compression", f"{name} @ {mbit:g} Mbit/s", s["steady_samples_per_s"], {
            "time_to_target_s": s["time_to_target_s"], "push_bytes": c["dense_bytes_per_step"],
            "push_sent_bytes": c["dense_sent_bytes_per_step"], "pull_sent_bytes": c["pull_sent_bytes_per_step"],
            "encode_ms": c["encode_ms_per_step"], "final_loss": min(s["final_train_loss"].values()),
            "link": s.get("link"), "steps": sum(s["steps"].values()),
            "config": f"{rayps_config(config, s['transport'])}, link {mbit:g} Mbit/s each way, shared"}))
        print(f"  {rows[-1].system}: {rows[-1].samples_per_s:,.0f} samples/s,"
              f" target in {rows[-1].extra['time_to_target_s']}", flush=True)
    base = next((r for r in rows if r.system.startswith("none")), None)
    for r in rows:
        mine, theirs = r.extra["time_to_target_s"], base and base.extra["time_to_target_s"]
        if mine and theirs:
            r.extra["x_sooner"] = theirs / mine
    return rows


def wire_table(rows: list, target: float = WIRE_TARGET) -> str:
    lines = [f"| codec (push, pull) over the link | seconds to training loss {target} | x sooner than none |"
             " push bytes/step | sent | pull bytes/step | encode ms/step | samples/s | configuration |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r.extra
        t, x = e["time_to_target_s"], e.get("x_sooner")
        lines.append(f"| {r.system} | {'not reached' if t is None else f'{t:.1f}'} | {'' if x is None else f'{x:.2f}'}"
                     f" | {e['push_bytes']:,.0f} | {e['push_sent_bytes']:,.0f} | {e['pull_sent_bytes']:,.0f} |"
                     f" {e['encode_ms']:.2f} | {r.samples_per_s:,.0f} | {e.get('config', '')} |")
    return "\n".join(lines)

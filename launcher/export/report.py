"""The export report: each variant, loaded back from its files, on the job's test split.

``measure`` reads a variant the way a user would (``rayps.load_model``) and
times it on this machine's CPU, with one intra-op thread, in this process,
so every variant's latency is measured in the same run under the same load.
``write_report`` writes ``report.json``, ``report.md`` and ``report.png``.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ..job.saved_model import load_model, read_meta
from ...worker.loop.losses import cross_entropy
from ...worker.loop.scoring import score


def measure(directory: Path, test, batch: int, repeats: int) -> dict:
    # trusted: export wrote this directory just now, naming the run's model (checked when export read it)
    # or the student the user asked for
    model = load_model(directory, trust=True)
    meta = read_meta(directory)
    with torch.inference_mode():
        loss, accuracy, _ = score(model, cross_entropy, test)
        x = test.batch(np.arange(min(len(test), batch)))[0]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for _ in range(3):  # warm up: first calls pack weights and allocate
                model(x)
            times = []
            for _ in range(repeats):
                began = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - began)
        finally:
            torch.set_num_threads(threads)
    params = _parameters(directory, meta, model)
    weights = directory / meta["weights"]
    return {"accuracy": accuracy, "loss": round(loss, 6), "parameters": params["total"],
            "nonzero_parameters": params["nonzero"], "bytes": weights.stat().st_size,
            "latency_ms": round(1e3 * statistics.median(times), 4),
            "quantization": (meta.get("quantization") or {}).get("method")}


def _parameters(directory: Path, meta: dict, model) -> dict:
    """Counted on the float weights; an int8 model counts the weights it quantized (its packed ones)."""
    if meta.get("quantization") is None:
        names = {n for n, _ in model.named_parameters()}
        values = [v for n, v in model.state_dict().items() if n in names]
        return {"total": sum(v.numel() for v in values), "nonzero": sum(int((v != 0).sum()) for v in values)}
    total = nonzero = 0
    for m in model.modules():
        if hasattr(m, "weight") and callable(m.weight):  # quantized modules hand their weight out by a call
            w = m.weight()
            total += w.numel()
            nonzero += int((w.int_repr() != w.q_zero_point() if w.qscheme() == torch.per_tensor_affine
                            else w.int_repr() != 0).sum())
            b = m.bias() if callable(getattr(m, "bias", None)) else None
            if b is not None:
                total += b.numel()
                nonzero += int((b != 0).sum())
    return {"total": total, "nonzero": nonzero}


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (out / "report.md").write_text(format_table(report))
    _plot(report, out / "report.png")


def format_table(report: dict) -> str:
    rows = report["variants"]
    teacher = rows.get("teacher", {})
    lines = [f"Test split: {report['test_rows']} rows; latency per batch of {report['latency_batch']} rows on one"
             " CPU thread.", "",
             "| variant | accuracy | Δ vs teacher (pts) | parameters | nonzero | bytes | × teacher bytes |"
             " latency ms | × teacher latency |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        delta = 100 * (r["accuracy"] - teacher["accuracy"]) if teacher.get("accuracy") is not None else 0.0
        lines.append(f"| {name} | {r['accuracy']:.4f} | {delta:+.2f} | {r['parameters']:,} |"
                     f" {r['nonzero_parameters']:,} | {r['bytes']:,} | {r['bytes'] / teacher['bytes']:.3f} |"
                     f" {r['latency_ms']:.3f} | {r['latency_ms'] / teacher['latency_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["variants"]
    names = list(rows)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, title in zip(axes, ("accuracy", "bytes", "latency_ms"),
                              ("test accuracy", "bytes on disk", f"ms per batch of {report['latency_batch']}")):
        values = [rows[n][key] for n in names]
        ax.bar(range(len(names)), values, color=["#4c72b0" if n == "teacher" else "#dd8452" for n in names])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(title)
        if key == "accuracy":
            ax.set_ylim(max(0.0, min(values) - 0.05), 1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

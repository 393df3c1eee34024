"""The data quality report: ``quality.json``, a PNG of every column's histogram, a printout.

Built from the merged statistics of the passes (worker/data/pipeline.py), so it
describes the whole data set (train and test rows) without a row of it in
this process. ``psctl data profile PATH`` prints it without training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...worker.data.fitting import missing_counts
from ...worker.data.pipeline import PreparedData

QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)


def _num(x) -> float | None:
    x = float(x)
    return round(x, 6) if np.isfinite(x) else None


def quality_report(prepared: PreparedData) -> dict:
    """Per column: type, missing, infinite, the finite values' moments, range and quantiles, and what the
    fix did (filled, outliers, clipped); rows read, dropped and kept; the sample; the features kept."""
    first, final, config = prepared.first, prepared.final, prepared.config
    reader = prepared.train.reader
    fix, features = prepared.transform.fix, prepared.transform.features
    columns = first.columns
    missing = missing_counts(first)
    counts = final.counts if prepared.passes == 2 else {}
    train = first.train
    per_column = {}
    for j, name in enumerate(columns):
        entry = {
            "type": reader.types.get(name, "?"),
            "missing": int(missing[j]),
            "infinite": int(train.infinite[j] + (first.test.infinite[j] if first.test is not None else 0)),
            "count": int(train.count[j]), "mean": _num(train.mean[j]), "std": _num(train.std()[j]),
            "min": _num(train.min[j]), "max": _num(train.max[j]),
            "quantiles": {str(q): _num(train.sketches[j].quantile(q)) for q in QUANTILES},
            "constant": bool(not train.max[j] > train.min[j]),
        }
        if fix.fill is not None and np.isfinite(fix.fill[j]):
            entry["fill_value"] = _num(fix.fill[j])
        if fix.lower is not None:
            entry["fences"] = [_num(fix.lower[j]), _num(fix.upper[j])]
        for what in ("filled", "outliers", "clipped"):
            if what in counts:
                entry[what] = int(np.asarray(counts[what])[j])
        per_column[name] = entry
    rows_read = int(first.train.rows + (first.test.rows if first.test is not None else 0) + first.label_missing)
    report = {
        "path": str(reader.path),
        "chunks": len(prepared.train.chunks),
        "rows_read": rows_read,
        "passes": prepared.passes,
        "label": {"column": reader.label, "missing": int(first.label_missing),
                  "classes": {str(k): int(v) for k, v in sorted((first.labels + first.test_labels).items())}},
        "columns": per_column,
        "dropped": {"no_label": int(first.label_missing), "missing": int(counts.get("dropped_missing", 0)),
                    "outliers": int(counts.get("dropped_outliers", 0))},
        "rows": {"train": len(prepared.train), "test": len(prepared.test) if prepared.test is not None else 0},
        "rules": {"missing": config.quality.missing.policy, "outliers": config.quality.outliers.rule,
                  "outlier_policy": config.quality.outliers.policy,
                  "threshold": config.quality.outliers.limit if config.quality.outliers.rule != "none" else None},
        "sketch_rank_error": _num(max((s.rank_error() for s in train.sketches), default=0.0)),
    }
    s = config.sample
    if s.method != "none":
        before = int(final.fixed.n) if final.fixed is not None else None
        report["sample"] = {"method": s.method, "ratio": s.ratio, "rows_before": before,
                            "rows_kept": len(prepared.train),
                            **({"per_class": {str(k): v for k, v in s.per_class.items()}} if s.per_class else {}),
                            **({"weight": s.weight} if s.weight else {})}
    report["features"] = {"in": list(columns), "out": features.out_columns, **_plain_info(features.info)}
    return report


def _plain_info(info: dict) -> dict:
    return json.loads(json.dumps(info, default=float))


def summary_part(report: dict) -> dict:
    """The compact part of the report the job's summary carries."""
    cols = report["columns"]
    out = {"rows_read": report["rows_read"], "rows": report["rows"], "dropped": report["dropped"],
           "passes": report["passes"],
           "missing": {c: e["missing"] for c, e in cols.items() if e["missing"]},
           "filled": {c: e["filled"] for c, e in cols.items() if e.get("filled")},
           "outliers": {c: e["outliers"] for c, e in cols.items() if e.get("outliers")},
           "clipped": {c: e["clipped"] for c, e in cols.items() if e.get("clipped")},
           "features": report["features"]}
    if "sample" in report:
        out["sample"] = report["sample"]
    return out


def write_quality(run_dir: Path, prepared: PreparedData) -> dict:
    """quality.json and quality.png into ``run_dir``; the report."""
    report = quality_report(prepared)
    (run_dir / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_histograms(prepared, report, run_dir / "quality.png")
    return report


def plot_histograms(prepared: PreparedData, report: dict, path: Path) -> Path:
    """One panel per column: its distribution from the merged sketch (each value weighted by what it
    stands for), with its missing count and any outlier fences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sketches = prepared.first.train.sketches
    columns = prepared.first.columns
    cols = min(4, len(columns))
    rows = int(np.ceil(len(columns) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel()[len(columns):]:
        ax.axis("off")
    for ax, name, sketch in zip(axes.ravel(), columns, sketches):
        values = np.concatenate(sketch.levels)
        weights = np.concatenate([np.full(len(lv), 2.0 ** h) for h, lv in enumerate(sketch.levels)])
        entry = report["columns"][name]
        if len(values):
            # the bulk of the values, and the fences: a few far outliers would squash it to one bar
            fences = [f for f in entry.get("fences", []) or [] if f is not None]
            lo, hi = (min(fences), max(fences)) if len(fences) == 2 else (sketch.quantile(0.001),
                                                                          sketch.quantile(0.999))
            pad = 0.05 * (hi - lo)
            lo, hi = max(values.min(), lo - pad), min(values.max(), hi + pad)
            ax.hist(values, bins=40, range=(lo, hi) if hi > lo else None, weights=weights, color="#4c72b0")
        for fence in entry.get("fences", []) or []:
            if fence is not None and len(values) and values.min() <= fence <= values.max():
                ax.axvline(fence, color="#c44e52", linestyle="--", linewidth=1)
        ax.set_title(f"{name}  missing {entry['missing']}" + (f"  out {entry['outliers']}" if "outliers" in entry
                                                              else ""), fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def format_report(report: dict) -> str:
    """The report as text for a terminal."""
    lines = [f"{report['path']}: {report['rows_read']} rows in {report['chunks']} chunks "
             f"({report['rows']['train']} train, {report['rows']['test']} test); label {report['label']['column']!r}"
             f" missing {report['label']['missing']}"]
    if report["label"]["classes"]:
        lines.append("classes: " + ", ".join(f"{k}: {v}" for k, v in report["label"]["classes"].items()))
    lines.append(f"{'column':<16}{'type':<10}{'missing':>8}{'mean':>11}{'std':>11}{'min':>11}{'median':>11}"
                 f"{'max':>11}{'outliers':>9}  notes")
    for name, e in report["columns"].items():
        notes = [n for n, on in (("constant", e["constant"]), (f"filled {e.get('filled')}", e.get("filled")),
                                 (f"clipped {e.get('clipped')}", e.get("clipped"))) if on]

        def f(v):
            return f"{v:>11.4g}" if v is not None else f"{'-':>11}"
        lines.append(f"{name[:15]:<16}{e['type'][:9]:<10}{e['missing']:>8}{f(e['mean'])}{f(e['std'])}{f(e['min'])}"
                     f"{f(e['quantiles']['0.5'])}{f(e['max'])}{e.get('outliers', '-'):>9}  {', '.join(notes)}")
    d = report["dropped"]
    lines.append(f"dropped rows: {d['no_label']} without a label, {d['missing']} with a missing value, "
                 f"{d['outliers']} with an outlier; quantiles within {report['sketch_rank_error']:.2%} in rank")
    return "\n".join(lines)

"""Write a synthetic classification data set as a directory of Parquet files, with known defects.

``psctl data generate OUT --rows 20000000`` writes the large set the README
measures (peak memory per worker against the data set's size); the tests
write small ones. Classes are Gaussian clusters in feature space, so a model
learns them; ``--missing`` and ``--outliers`` inject nulls and far values into
random cells, and ``truth.json`` says exactly how many went where, so a
quality report can be checked against it.

Written file by file and row group by row group: this process never holds
more than one row group either.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def generate(out: str | Path, rows: int, features: int = 16, classes: int = 4, files: int = 8,
             row_group_rows: int = 250_000, missing: float = 0.0, outliers: float = 0.0, seed: int = 0,
             separation: float = 1.5, weight: bool = False) -> dict:
    """Write ``rows`` rows into ``files`` Parquet files under ``out``; returns (and writes) truth.json.
    ``missing``/``outliers``: the fraction of feature cells made null / set 50 std devs out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=separation, size=(classes, features))
    injected_missing = np.zeros(features, dtype=np.int64)
    injected_outliers = np.zeros(features, dtype=np.int64)
    labels = np.zeros(classes, dtype=np.int64)
    per_file = np.array_split(np.arange(rows), files)
    names = [f"f{j}" for j in range(features)]
    for i, span in enumerate(per_file):
        if not len(span):
            continue
        with pq.ParquetWriter(out / f"part-{i:04d}.parquet",
                              pa.schema([*(pa.field(n, pa.float32()) for n in names), pa.field("label", pa.int64())]
                                        + ([pa.field("weight", pa.float32())] if weight else []))) as writer:
            for lo in range(0, len(span), row_group_rows):
                n = min(row_group_rows, len(span) - lo)
                y = rng.integers(classes, size=n)
                x = (centers[y] + rng.normal(size=(n, features))).astype(np.float32)
                far = rng.random((n, features)) < outliers
                x[far] = (50 * np.sign(rng.normal(size=int(far.sum())))).astype(np.float32)
                gone = (rng.random((n, features)) < missing) & ~far
                injected_outliers += far.sum(axis=0)
                injected_missing += gone.sum(axis=0)
                labels += np.bincount(y, minlength=classes)
                columns = {name: pa.array(x[:, j], mask=gone[:, j]) for j, name in enumerate(names)}
                columns["label"] = pa.array(y, pa.int64())
                if weight:
                    columns["weight"] = pa.array(rng.gamma(2.0, size=n).astype(np.float32))
                writer.write_table(pa.table(columns), row_group_size=n)
    truth = {"rows": rows, "features": names, "classes": classes, "files": files, "row_group_rows": row_group_rows,
             "missing": dict(zip(names, injected_missing.tolist())),
             "outliers": dict(zip(names, injected_outliers.tolist())),
             "labels": labels.tolist(), "seed": seed}
    (out / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return truth

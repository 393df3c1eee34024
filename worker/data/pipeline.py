"""Prepare chunked data for a job: the statistics passes, the fitted transform, the sources.

``prepare`` lists the chunks (metadata only), hands groups of them to
``map_groups`` (the launcher passes Ray tasks; the default is threads in this
process), merges what comes back, fits, and returns the train and test
``ChunkedSource``s with everything a report needs.

Passes: the first reads raw values (missing counts, moments, sketches, label
counts). A second runs only where the first cannot be final: the fix changes
rows (fills, fences, drops), mutual information needs counts in bins whose
edges the first pass found, or importance sampling needs the total weight
before it can count the rows it keeps. Every pass reads each chunk once, in
parallel, and no process ever holds more than one chunk of it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from ...errors import ConfigError
from .chunked import ChunkedSource
from .chunkprep import TEST, TRAIN, ChunkPlan, summarize
from .chunks import classifies, open_chunks, open_test_chunks
from .colstats import Summary, merge_all
from .config import DataConfig
from .fitting import bin_edges, fit_features, fit_fix, fix_changes_rows, label_edges
from .transform import DataTransform, FeatureTransform


def summarize_group(readers: dict, items: list, plan: ChunkPlan, columns: list[str], options: dict) -> Summary:
    """One task of a pass: its chunks read one at a time, summarized and merged."""
    return merge_all(summarize(readers[role].read(chunk), chunk, plan, role, columns, **options)
                     for role, chunk in items)


def thread_map(calls: list[tuple]) -> list:
    """Run ``summarize_group(*args)`` for each args, in a few threads of this process."""
    if len(calls) <= 1:
        return [summarize_group(*args) for args in calls]
    with ThreadPoolExecutor(max_workers=min(4, len(calls))) as pool:
        return list(pool.map(lambda args: summarize_group(*args), calls))


def groups_of(items: list, parallel: int) -> list[list]:
    """Split (role, chunk) items into at most ``parallel`` groups of near-equal rows."""
    groups: list[list] = [[] for _ in range(max(1, min(parallel, len(items))))]
    load = np.zeros(len(groups))
    for item in sorted(items, key=lambda it: -it[1].rows):
        g = int(np.argmin(load))
        groups[g].append(item)
        load[g] += item[1].rows
    return [sorted(g, key=lambda it: (it[0], it[1].index)) for g in groups if g]


@dataclass
class PreparedData:
    config: DataConfig
    train: ChunkedSource
    test: ChunkedSource | None
    transform: DataTransform
    first: Summary | None  # the passes' merged statistics (None when restored from a saved state)
    final: Summary | None
    passes: int
    sample_fit: dict
    edges: list | None = None  # mutual information's bin edges per feature (for the report and checks)

    def state(self) -> dict:
        """What a checkpoint and the run directory keep: enough to rebuild both sources, no pass needed."""
        return {"transform": self.transform.to_dict(), "sample_fit": self.sample_fit,
                "kept": {"train": self.train.kept, "test": self.test.kept if self.test is not None else None},
                "chunks": len(self.train.chunks), "passes": self.passes}


def prepare(config: DataConfig, seed: int = 0, parallel: int = 2, map_groups=thread_map,
            saved: dict | None = None) -> PreparedData:
    """The job's train and test sources, fitted from the data (or rebuilt from ``saved``, a
    ``PreparedData.state()``, exactly as they were: a resumed job sees the same rows)."""
    train_reader = open_chunks(config)
    test_reader = open_test_chunks(config, train_reader.columns)
    classify = classifies(train_reader)
    readers = {TRAIN: train_reader, TEST: test_reader}
    plan = ChunkPlan(seed=seed, test_fraction=config.test_fraction if test_reader is None else 0.0,
                     classify=classify, sample=config.sample)
    if config.sample.method == "stratified" and not classify:
        raise ConfigError(f"sample.method stratified needs class labels, and label {train_reader.label!r} holds "
                          f"numbers ({train_reader.types.get(train_reader.label, 'float')}): use uniform")
    if config.sample.method == "importance" and train_reader.weight_column is None:
        raise ConfigError("sample.method importance needs a weight column in Parquet data (sample.weight)")
    if saved is not None:
        return _restored(config, readers, plan, classify, saved)
    items = [(TRAIN, c) for c in train_reader.chunks] + \
            ([(TEST, c) for c in test_reader.chunks] if test_reader is not None else [])
    groups = groups_of(items, parallel)
    columns = train_reader.columns
    options = {"class_cov": config.generate.method == "lda", "weight_column": config.sample.weight}

    def one_pass(plan_now: ChunkPlan, **extra) -> Summary:
        return merge_all(map_groups([(readers, g, plan_now, columns, {**options, **extra}) for g in groups]))

    first = one_pass(plan)
    fix = fit_fix(config, first)
    sample_fit = _sample_fit(config, first)
    passes, final, extra = 1, first, {}
    mutual_info = config.select.method == "mutual_info"
    if fix_changes_rows(fix, first) or mutual_info or config.sample.method == "importance":
        extra = {}
        if mutual_info:
            extra = {"edges": bin_edges(first, config.select.bins),
                     "label_edges": label_edges(first, config.select.bins)}
        final = one_pass(replace(plan, fix=fix, sample_fit=sample_fit), **extra)
        passes = 2
    features = fit_features(config, final) if config.needs_fit or config.normalize != "none" \
        else FeatureTransform(list(columns))
    final_plan = replace(plan, fix=fix, sample_fit=sample_fit)
    kept_train = [final.kept[(TRAIN, c.index)][0] for c in train_reader.chunks]
    train = ChunkedSource(train_reader, train_reader.chunks, kept_train, final_plan, features, TRAIN, TRAIN, classify)
    test = _test_source(readers, final_plan, features, classify,
                        [final.kept[(TEST, c.index)][1] for c in test_reader.chunks] if test_reader is not None
                        else [final.kept[(TRAIN, c.index)][1] for c in train_reader.chunks])
    return PreparedData(config, train, test, DataTransform(fix, features), first, final, passes, sample_fit,
                        extra.get("edges") if passes == 2 else None)


def _test_source(readers: dict, plan: ChunkPlan, features: FeatureTransform, classify: bool, kept: list[int]):
    if not sum(kept):
        return None
    if readers[TEST] is not None:
        return ChunkedSource(readers[TEST], readers[TEST].chunks, kept, plan, features, TEST, TEST, classify)
    return ChunkedSource(readers[TRAIN], readers[TRAIN].chunks, kept, plan, features, TRAIN, TEST, classify)


def _sample_fit(config: DataConfig, first: Summary) -> dict:
    s = config.sample
    if s.method == "importance":
        return {"weight_total": first.weight_total, "train_rows": int(first.train.rows)}
    if s.method == "stratified" and s.per_class:
        # weights 1 / ratio, scaled so that they average 1 over the rows a sample keeps
        counts = {int(c): n for c, n in first.labels.items()}
        total = sum(counts.values())
        kept = sum(n * float(s.per_class.get(c, s.ratio)) for c, n in counts.items())
        return {"scale": kept / total if total else 1.0}
    return {}


def _restored(config: DataConfig, readers: dict, plan: ChunkPlan, classify: bool, saved: dict) -> PreparedData:
    transform = DataTransform.from_dict(saved["transform"])
    train_reader = readers[TRAIN]
    if len(train_reader.chunks) != saved["chunks"]:
        from ...errors import JobError
        raise JobError(f"the data at {train_reader.path} has {len(train_reader.chunks)} chunks, the saved job "
                       f"{saved['chunks']}: it changed since the run began, so the run cannot resume on it")
    final_plan = replace(plan, fix=transform.fix, sample_fit=dict(saved.get("sample_fit", {})))
    train = ChunkedSource(train_reader, train_reader.chunks, saved["kept"]["train"], final_plan, transform.features,
                          TRAIN, TRAIN, classify)
    test_kept = saved["kept"]["test"]
    test = _test_source(readers, final_plan, transform.features, classify, test_kept) if test_kept else None
    return PreparedData(config, train, test, transform, None, None, 0, dict(saved.get("sample_fit", {})))

"""Resharding: the states of N shards, cut at one checkpoint, made into the states of M shards.

A checkpoint's shards stand at the same clocks (the cut, launcher/job/checkpointing.py),
so together they are one model: the flat parameter vector and its optimizer's
per-value state cut into N contiguous ranges, the model buffers likewise, and
every sparse table's rows hashed to shards by ``id % N``. Resharding joins
those and cuts them again the way a job of M shards cuts them
(ps/core/partition.py for ranges, ``id % M`` for rows), so every value, every
row and every optimizer state lands where the new layout looks for it, bit for
bit. The rest of a shard's state is the same on every shard at a cut (clocks,
versions, optimizer step counts, the push ledger) and is checked to be so;
a bsp round gathered part way is cut like the values it holds.

Counters the job summary adds up over shards (pushes applied, rows created,
...) keep their totals: the new shard 0 holds them, the others start at zero.
Counters every shard keeps alike (samples, steps) are copied.

Not resharded: streaming local steps (``local_steps.fragments``), whose
optimizer state is kept per fragment of each shard's own range; refused with a
clear error.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from ..errors import ConfigError, ShapeError
from .core.partition import partition

#: dense counters the summary sums over shards: their totals move to the new shard 0
_SUMMED = ("staleness", "applied", "dropped", "spread_sq", "rejected", "duplicates")
#: a table's counters summed over shards (the rest of its counters are per-shard events too)
_TABLE_SUMMED = ("counters", "staleness")


def reshard(states: list[dict], num_shards: int) -> list[dict]:
    """The states of ``num_shards`` shards holding exactly what ``states`` (every shard of one cut) hold."""
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ConfigError(f"servers ({num_shards!r}) must be an integer >= 1")
    states = sorted(states, key=lambda s: s["shard_id"])
    if [s["shard_id"] for s in states] != list(range(len(states))):
        raise ShapeError(f"resharding needs every shard of the cut; got shards {[s['shard_id'] for s in states]}")
    if any("fragments" in s["optimizer"] for s in states):
        raise ConfigError("a checkpoint of streaming local steps (local_steps.fragments) keeps optimizer state"
                          " per fragment of each shard's range and cannot be resharded; resume it with the"
                          f" servers it was cut with ({len(states)})")
    _same(states, "version", lambda s: s["version"])
    _same(states, "optimizer step", lambda s: s["optimizer"]["step"])
    _same(states, "clocks", lambda s: s["clocks"])
    first = states[0]
    params = np.concatenate([s["params"] for s in states])
    values = np.concatenate([s["buffers"]["values"] for s in states])
    ranges = partition(len(params), num_shards, allow_empty=True)
    buffer_ranges = partition(len(values), num_shards, allow_empty=True)
    optimizer = {k: np.concatenate([s["optimizer"][k] for s in states]) for k, v in first["optimizer"].items()
                 if isinstance(v, np.ndarray)}
    rounds = _joined_rounds([s["round"] for s in states])
    reports = _joined_reports([s["buffers"]["reports"] for s in states])
    integer = np.concatenate([s["buffers"]["integer"] for s in states])
    tables = {name: reshard_table([s["tables"][name] for s in states], num_shards) for name in first["tables"]}
    ledger = _merged_ledger([s["ledger"] for s in states])
    counters = _split_counters([s["counters"] for s in states], num_shards, _SUMMED)
    out = []
    for i, (r, b) in enumerate(zip(ranges, buffer_ranges)):
        span, cut = slice(r.lo, r.hi), slice(b.lo, b.hi)
        out.append({
            **{k: v for k, v in first.items() if k not in ("shard_id", "params", "optimizer", "round", "buffers",
                                                           "ledger", "tables", "counters")},
            "shard_id": i,
            "params": params[span].copy(),
            "optimizer": {**first["optimizer"], **{k: v[span].copy() for k, v in optimizer.items()}},
            "round": {w: {**rec, "grad": rec["grad"][span].copy(),
                          "buffers": None if rec["buffers"] is None or b.size == 0 else rec["buffers"][cut].copy()}
                      for w, rec in rounds.items()},
            "buffers": {"values": values[cut].copy(), "integer": integer[cut].copy(),
                        "reports": {w: (v[cut].copy(), n) for w, (v, n) in reports.items()}},
            "ledger": ledger,
            "tables": {name: shards[i] for name, shards in tables.items()},
            "counters": counters[i],
        })
    return out


def reshard_table(states: list[dict], num_shards: int) -> list[dict]:
    """One sparse table's states on N shards (every one of a cut) as its states on ``num_shards``."""
    old = len(states)
    _same(states, f"table {states[0]['name']!r} version", lambda s: s["version"])
    store = {k: np.concatenate([s["store"][k] for s in states]) for k in ("ids", "weights", "last_seen")}
    store_state = {k: np.concatenate([s["store"]["state"][k] for s in states]) for k in states[0]["store"]["state"]}
    # the frequency filter's counts are kept by local index (id // N on shard id % N)
    touched = np.concatenate([np.asarray(s["touched"], np.int64) * old + i for i, s in enumerate(states)])
    touches = np.concatenate([np.asarray(s["touches"]) for s in states])
    rounds = _joined_table_rounds([s["round"] for s in states])
    pulled_at: dict[int, int] = {}
    for s in states:
        for w, v in s["pulled_at"].items():
            pulled_at[int(w)] = max(pulled_at.get(int(w), 0), int(v))
    summed = _split_counters(states, num_shards, _TABLE_SUMMED)
    out = []
    for i in range(num_shards):
        mine = store["ids"] % num_shards == i
        order = np.argsort(store["ids"][mine], kind="stable")
        here = np.flatnonzero(mine)[order]
        mine_touched = touched % num_shards == i
        out.append({
            **{k: v for k, v in states[0].items() if k not in ("store", "touched", "touches", "round", "pulled_at",
                                                              *_TABLE_SUMMED)},
            "store": {**{k: v[here] for k, v in store.items()}, "state": {k: v[here] for k, v in store_state.items()}},
            "touched": touched[mine_touched] // num_shards,
            "touches": touches[mine_touched],
            "round": {w: _rows_of(rec, num_shards, i) for w, rec in rounds.items()},
            "pulled_at": dict(pulled_at),
            **{k: summed[i][k] for k in _TABLE_SUMMED},
            "max_lead": max(int(s["max_lead"]) for s in states),
        })
    return out


def _same(states: list[dict], what: str, value) -> None:
    """Every shard of a cut stands at the same ``what``; otherwise the states are not one cut."""
    seen = [value(s) for s in states]
    if any(v != seen[0] for v in seen[1:]):
        raise ShapeError(f"the shards' states differ in {what} ({seen}): they are not one checkpoint's cut,"
                         " and cannot be resharded")


def _joined_rounds(rounds: list[dict]) -> dict:
    """A bsp round gathered part way, per worker: its gradient (and buffers) joined over the shards."""
    workers = set(rounds[0])
    if any(set(r) != workers for r in rounds):
        raise ShapeError(f"the shards' gathered rounds hold different workers ({[sorted(r) for r in rounds]})")
    out = {}
    for w in workers:
        parts = [r[w] for r in rounds]
        # a shard holding no model buffers was sent none (None)
        buffers = [p["buffers"] for p in parts if p["buffers"] is not None]
        out[w] = {**parts[0], "grad": np.concatenate([p["grad"] for p in parts]),
                  "buffers": np.concatenate(buffers) if buffers else None}
    return out


def _joined_reports(reports: list[dict]) -> dict:
    workers = set().union(*reports)
    out = {}
    for w in workers:
        parts = [r[w] for r in reports]
        out[w] = (np.concatenate([np.asarray(v) for v, _ in parts]), parts[0][1])
    return out


def _joined_table_rounds(rounds: list[dict]) -> dict:
    """A table's gathered round per worker: its row gradients from every shard, sorted by id."""
    out = {}
    for w in set().union(*rounds):
        parts = [r[w] for r in rounds if w in r]
        ids = np.concatenate([p["ids"] for p in parts])
        grads = np.concatenate([p["grads"] for p in parts])
        order = np.argsort(ids, kind="stable")
        out[w] = {**parts[0], "ids": ids[order], "grads": grads[order]}
    return out


def _rows_of(record: dict, num_shards: int, shard: int) -> dict:
    mine = record["ids"] % num_shards == shard
    return {**record, "ids": record["ids"][mine], "grads": record["grads"][mine]}


def _merged_ledger(ledgers: list[dict]) -> dict:
    """Per worker the newest (incarnation, seq) any shard applied (at a cut they agree)."""
    best: dict[int, tuple[int, int]] = {}
    for ledger in ledgers:
        for w, inc in ledger["incarnation"].items():
            pair = (int(inc), int(ledger["last"][w]))
            best[int(w)] = max(best.get(int(w), pair), pair)
    return {"incarnation": {w: i for w, (i, _) in best.items()}, "last": {w: s for w, (_, s) in best.items()}}


def _split_counters(counters: list[dict], num_shards: int, summed: tuple[str, ...]) -> list[dict]:
    """``summed`` keys: their totals on the new shard 0, zero on the others; every other key as shard 0 had it."""
    totals = {k: _sum([c[k] for c in counters]) for k in summed if k in counters[0]}
    out = []
    for i in range(num_shards):
        keep = {k: v for k, v in counters[0].items() if k not in summed}
        out.append({**keep, **{k: v if i == 0 else _zero(v) for k, v in totals.items()}})
    return out


def _sum(values: list[Any]) -> Any:
    if isinstance(values[0], dict):
        total: Counter = Counter()
        for v in values:
            total.update(v)
        return dict(total)
    return sum(values)


def _zero(value: Any) -> Any:
    return {} if isinstance(value, dict) else type(value)(0)

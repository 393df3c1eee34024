"""What summary.json says of a finished (or failed) job: training, recovery, sparse tables.

Every figure comes from what the shards counted (their stats), what the
workers reported when they finished, and what the controller did; nothing is
estimated.
"""

from __future__ import annotations

from collections import Counter


def sparse_summary(stats: list[dict], reports: list[dict]) -> dict:
    """The sparse tables over every shard: rows and bytes held, rows moved, staleness, waits."""
    tables: dict = {}
    for s in stats:
        for name, t in s.get("tables", {}).items():
            agg = tables.setdefault(name, {"mode": t["mode"], "rows": 0, "bytes": 0, "rows_per_shard": {},
                                           "bytes_per_shard": {}, "staleness_histogram": Counter(),
                                           "max_clock_gap": 0, "updates": {}})
            agg["rows"] += t["rows"]
            agg["bytes"] += t["bytes"]
            agg["rows_per_shard"][str(s["shard_id"])] = t["rows"]
            agg["bytes_per_shard"][str(s["shard_id"])] = t["bytes"]
            agg["updates"][str(s["shard_id"])] = t["version"]
            agg["staleness_histogram"].update({int(k): v for k, v in t["staleness_histogram"].items()})
            agg["max_clock_gap"] = max(agg["max_clock_gap"], t["max_clock_gap"])
            for key in ("rows_pulled", "rows_pushed", "rows_created", "rows_evicted", "rows_filtered",
                        "rows_dropped", "pushes_applied", "pushes_dropped", "duplicates",
                        # a table beyond memory (memory_mb): where its rows are, and what moved between the tiers
                        *(("memory_rows", "memory_budget_rows", "disk_rows", "disk_bytes", "rows_read_from_disk",
                           "rows_written_to_disk") if "memory_rows" in t else ())):
                agg[key] = agg.get(key, 0) + t.get(key, 0)
    for agg in tables.values():
        agg["staleness_histogram"] = {str(k): v for k, v in sorted(agg["staleness_histogram"].items())}
    if not tables:
        return {}
    return {"sparse_tables": tables,
            "sparse_rows_pulled": sum(r.get("rows_pulled", 0) for r in reports),
            "sparse_rows_pushed": sum(r.get("rows_pushed", 0) for r in reports),
            # rows asked behind a push for the next batch, and the forward pulls those answered alone
            "sparse_rows_ahead": sum(r.get("rows_ahead", 0) for r in reports),
            "sparse_pulls_served_ahead": sum(r.get("pulls_served_ahead", 0) for r in reports)}


def job_summary(config, reports, stats, test_loss, test_accuracy, train_s, wall_s) -> dict:
    histogram: Counter = Counter()
    for s in stats:
        histogram.update({int(k): v for k, v in s["staleness_histogram"].items()})
    # what the shards applied (a dead incarnation's pushes included; a rolled-back stretch not)
    samples = sum(stats[0]["samples"].values())
    wait_s = {r["worker_id"]: max(s["wait_s"].get(r["worker_id"], 0.0) for s in stats) for r in reports}
    steps_of_dead = [r for r in reports if r.get("died")]
    reports = [r for r in reports if not r.get("died")]
    steps: Counter = Counter()  # per worker id, summed over its incarnations
    for r in reports + steps_of_dead:
        steps[r["worker_id"]] += r["steps"]
    return {
        "test_accuracy": test_accuracy,
        "test_loss": test_loss,
        "consistency": config.consistency.mode,
        "staleness_bound": config.consistency.bound,
        "quorum": config.consistency.quorum,
        "max_clock_gap": max(s["max_clock_gap"] for s in stats),
        "staleness_histogram": {str(k): histogram[k] for k in sorted(histogram)},
        "steps": {str(w): n for w, n in sorted(steps.items())},
        "pushes_applied": sum(s["pushes_applied"] for s in stats),
        "pushes_dropped": sum(s["pushes_dropped"] for s in stats),
        "pushes_rejected": sum(sum(s["rejected"].values()) for s in stats),
        "optimizer_steps": {str(s["shard_id"]): s["version"] for s in stats},
        "wait_s": {str(k): round(v, 3) for k, v in wait_s.items()},
        "final_train_loss": {str(r["worker_id"]): r["final_loss"] for r in reports},
        "samples": samples,
        "samples_per_s": samples / train_s if train_s > 0 else None,
        # after each worker's first tenth of steps; summed, so a worker that finishes early still counts
        "steady_samples_per_s": sum(r["steady_samples"] / r["steady_s"] for r in reports if r["steady_s"] > 0),
        # seconds until every worker's mean loss over its last 10 steps had fallen below target_loss (the last
        # worker to get there, each counted from its own start): the rule the bench holds DDP's ranks to too
        "time_to_target_s": time_to_target(reports),
        "straggled_s": {str(r["worker_id"]): round(r.get("straggled_s", 0.0), 6) for r in reports},
        "train_s": train_s,
        "wall_s": wall_s,
        "worker_peak_rss_mb": {str(r["worker_id"]): r.get("peak_rss_mb") for r in reports},
        # how many shards each worker reached through shared memory (across nodes: those on its own node)
        "shards_over_shm": {str(r["worker_id"]): r.get("shards_over_shm", 0) for r in reports},
        # fp16: batches computed again at a halved loss scale because their gradient overflowed
        "loss_scale_overflows": sum(r.get("loss_scale_overflows", 0) for r in reports + steps_of_dead),
        "workers": config.workers,
        "servers": config.servers,
    }


def local_steps_summary(config, reports: list[dict], stats: list[dict]) -> dict:
    """Under local steps: H, the outer steps and inner steps taken (the live lives'; a dead incarnation's
    inner steps since its last push were lost with it and are trained again in the outer step it held, which
    went back to the queue: ``batches_returned`` counts those); the root mean square of the pushed
    pseudo-gradients' norms, how far a worker moves from the shared parameters between two pushes; and under
    bsp, over its rounds of more than one push, the root mean square of how far the workers' pushes lie from
    the round's mean (sample-weighted), the drift between workers."""
    if not config.local_steps.enabled:
        return {}
    outer = sum(r["steps"] for r in reports)
    square = sum(r.get("pseudo_gradient_sq", 0.0) for r in reports)
    rounds = max((s.get("spread_rounds", 0) for s in stats), default=0)
    spread = sum(s.get("spread_sq", 0.0) for s in stats)  # a round's spread is the sum of its shards' parts
    optimizer = config.shard_optimizer
    return {"local_steps": {
        "inner_steps": config.local_steps.inner_steps,
        "outer_steps": outer,
        "inner_steps_taken": sum(r.get("inner_steps", 0) for r in reports),
        "inner_optimizer": f"{config.local_steps.inner_optimizer.name} lr {config.local_steps.inner_optimizer.lr}",
        "outer_optimizer": f"{optimizer.name} lr {optimizer.lr} momentum {optimizer.momentum}",
        "pseudo_gradient_rms": round((square / outer) ** 0.5, 6) if outer else None,
        "worker_spread_rms": round((spread / rounds) ** 0.5, 6) if rounds else None,
    }}


def time_to_target(reports: list[dict]) -> float | None:
    """The last worker's seconds to the target loss; None while any worker's last life never reached it."""
    last = {r["worker_id"]: r["reached_target_s"] for r in reports}  # a replacement's report comes after
    if not last or any(reached is None for reached in last.values()):
        return None
    return max(last.values())


def progress_summary(progress) -> dict:
    """Where the job ended, counted as the progress line and the history count (launcher/job/progress.py)."""
    return {**progress.fields(), "epochs": round(progress.epochs, 3), "global_steps": progress.total}


def recovery_summary(controller, checkpointer, coverage, reports, stats) -> dict:
    counts = controller.counts if controller is not None else Counter()
    out = {
        "restarts": dict(controller.budget.restarts) if controller is not None else {},
        "restored_checkpoint": controller.restored_checkpoint if controller is not None else None,
        "steps_lost": counts["steps_lost"],
        "steps_replayed": counts["steps_replayed"],
        "rollbacks": counts["rollbacks"],
        "workers_replaced": counts["replaced"],
        "workers_added": counts["added"],
        "workers_removed": counts["removed"],
        "stalls": controller.stall_reports if controller is not None else [],
        "checkpoints_written": checkpointer.written if checkpointer is not None else 0,
        # of them, those holding only the table rows changed since the checkpoint before
        "checkpoints_incremental": checkpointer.incremental_written if checkpointer is not None else 0,
        "checkpoint_pause_s": round(checkpointer.pause_s, 4) if checkpointer is not None else 0.0,
        "resyncs": sum(r.get("resyncs", 0) for r in reports),
    }
    if controller is not None and controller.monkey is not None:
        out["chaos"] = controller.monkey.summary()
    if stats is not None:
        out["pushes_duplicate"] = sum(s["duplicates"] for s in stats)
    if coverage is not None:
        out["examples_per_epoch"] = coverage["examples_per_epoch"]
        out["epoch_coverage"] = coverage["ranges"]
        out["batches_per_epoch"] = coverage["batches_per_epoch"]
        # units a worker took from another's stretch, and batches leased but handed back untrained
        out["units_stolen"] = coverage.get("stolen_units", 0)
        out["batches_returned"] = coverage.get("returned_batches", 0)
    return out

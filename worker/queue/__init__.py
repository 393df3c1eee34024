"""The work queue: which worker trains on which batches, and what was applied.

- ``WorkQueue``, ``plan_batches`` (workqueue.py): units of batches leased, completed, taken back
  from the dead, stolen by the idle.
- ``WorkCoordinator`` (coordinator.py): the queue as a Ray actor, with rollbacks.
- ``EpochSharder`` (sharder.py): per-epoch disjoint shards of the examples.
- ``JobMetrics`` (metrics.py): restarts, stalls and checkpoints, recorded by the queue's actor.
"""

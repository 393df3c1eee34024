"""One shard's state and the rules it keeps, part by part. Pure logic: no I/O, no Ray, no transport.

- ``Step``, ``Answer`` (step.py): one worker's step as every transport hands it to the shard.
- ``Mode``, ``register_mode``, ``ConsistencyConfig``, ``Consistency`` (consistency.py): asp,
  ssp, bsp and any registered mode; the state a table keeps to ask them (clocks.py: ``ClockTable``).
- ``DenseTable`` (dense.py): the shard's range of the flat parameters, its optimizer and schedule.
- ``PushLedger`` (ledger.py): each ``(worker, incarnation, seq)`` applied once.
- ``BufferTable`` (buffers.py): model buffers (BatchNorm statistics) and their merge.
- ``CheckpointCut`` (cut.py): the gate a checkpoint holds pushes at; ``Changes`` (changes.py):
  waiters woken at each change, and ended by a restore.
- ``CheckpointStore`` (checkpoint.py): checkpoints on disk with a sha256 manifest.
- ``make_optimizer`` (optimizers.py), ``make_schedule`` (schedules.py): server-side optimizers on
  one flat float32 buffer, learning-rate schedules.
- ``partition`` (partition.py): byte-balanced contiguous shard ranges.
- ``StepSeries`` (series.py): a row of the shard's counters every K steps, for the job's history.
- ``ShardMetrics`` (metrics.py): ``ray.util.metrics``, no-ops outside Ray.
- ``this_node``, ``this_pid`` (placement_info.py): which Ray node an actor runs on, which process it is.
"""

"""One shard: the state it holds and the rules it keeps. Pure logic, no I/O, no Ray.

- ``ParameterShard`` (shard.py): one range of the flat parameters; the step
  entry point every transport calls.
- ``ConsistencyConfig``, ``ClockTable`` (consistency.py): asp / ssp / bsp.
- ``PushLedger`` (ledger.py): each ``(worker, incarnation, seq)`` applied once.
- ``BufferTable`` (buffers.py): model buffers (BatchNorm statistics) and their merge.
- ``CutMixin``, ``StateMixin`` (shard_state.py): the checkpoint cut; state out and in.
- ``CheckpointStore`` (checkpoint.py): checkpoints on disk with a sha256 manifest.
- ``make_optimizer`` (optimizers.py), ``make_schedule`` (schedules.py): server-side
  optimizers on one flat float32 buffer, learning-rate schedules.
- ``partition`` (partition.py): byte-balanced contiguous shard ranges.
- ``ShardMetrics`` (metrics.py): ``ray.util.metrics``, no-ops outside Ray.
- ``this_node``, ``this_pid`` (placement_info.py): which Ray node an actor runs on, which process it is.
"""

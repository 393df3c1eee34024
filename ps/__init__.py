"""The parameter server and its client.

- ``ParameterShard`` (shard.py): one range of the flat parameter vector, its
  optimizer and clock table; the fused ``push_pull`` hot path.
- ``ConsistencyConfig``, ``ClockTable``, ``ConsistencyPolicy`` (consistency.py):
  asp / ssp / bsp admission rules, pure logic.
- ``OptimizerConfig``, ``make_optimizer`` (optimizers.py): SGD, AdaGrad, Adam,
  AdamW on one flat float32 buffer, matching ``torch.optim``.
- ``ScheduleConfig``, ``make_schedule`` (schedules.py): constant, piecewise,
  cosine, each with linear warm-up, keyed to the global step.
- ``partition`` (partition.py): byte-balanced contiguous shard ranges.
- ``ShardClient`` (client.py): the worker's side of the object-store transport.
- ``build`` (settings.py): strict frozen-dataclass configs from mappings.
- ``PSError`` and subclasses (errors.py): the error tree.
"""

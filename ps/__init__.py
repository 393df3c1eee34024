"""The parameter server and its client.

- ``ParameterShard`` (shard.py): one range of the flat parameter vector, its
  optimizer and clock table; the fused ``push_pull`` hot path; ``state_dict`` /
  ``load_state_dict``, everything a checkpoint of the shard needs.
- ``ConsistencyConfig``, ``ClockTable``, ``ConsistencyPolicy`` (consistency.py):
  asp / ssp / bsp admission rules, pure logic.
- ``OptimizerConfig``, ``make_optimizer`` (optimizers.py): SGD, AdaGrad, Adam,
  AdamW on one flat float32 buffer, matching ``torch.optim``.
- ``ScheduleConfig``, ``make_schedule`` (schedules.py): constant, piecewise,
  cosine, each with linear warm-up, keyed to the global step.
- ``partition`` (partition.py): byte-balanced contiguous shard ranges.
- ``ShardClient`` (client.py): the worker's side of the object-store transport.
- ``start_grpc_server``, ``ServedShard`` (grpc_server.py): the gRPC front of a
  shard (protos/ps.proto) on the shard's own event loop; the shard actor class.
- ``GrpcShardClient``, ``GrpcEndpoints`` (grpc_client.py): the worker's side of
  the gRPC transport, one persistent Step stream per shard.
- ``TokenAuth``, ``TLSConfig``, ``GrpcConfig`` (grpc_security.py): bearer token,
  mTLS and the job's ``grpc:`` section.
- ``ShardMetrics``, ``WorkerMetrics`` (metrics.py): ``ray.util.metrics`` for the
  dashboard and Prometheus; no-ops outside Ray.
- ``this_node`` (placement_info.py): which node an actor runs on.
- ``build`` (settings.py): strict frozen-dataclass configs from mappings.
- ``CheckpointStore`` (checkpoint.py): checkpoints on disk, safetensors plus a
  manifest of sha256s, written atomically; a damaged one is skipped, never loaded.
- ``BufferTable`` (buffers.py): a shard's slice of the model buffers, each
  worker's latest report and their merge.
- ``keep_freed_memory`` (allocator.py): glibc malloc settings that let a process
  streaming large tensors reuse its message buffers instead of faulting in fresh pages.

The error tree every layer raises from is ``rayps.errors``.
"""

"""The parameter server and its client: everything a gradient meets after the worker computed it.

- ``ParameterShard`` (shard.py): one range of the flat parameters and the tables beside it,
  made of the parts in core/, sparse/ and compression/; ``step`` is the one entry point of a
  step, for every transport.
- ``ServedShard`` (served.py): the shard actor: a shard that also serves gRPC and shared
  memory on its own event loop, and restores its newest checkpoint as it starts.
- ``core/``: the parts and the rules: the Step, consistency modes, the dense range, the push
  ledger, model buffers, the checkpoint cut and files, optimizers, schedules.
- ``sparse/``: embedding tables: row storage, row-wise optimizers, the ``sparse:`` section,
  and the worker's routing of ids to shards.
- ``transport/``: how a worker reaches the shards: the contract, then each transport's
  client and server side by side (object store, gRPC, shared memory).
- ``compression/``: gradient compression: the worker's encoder, the shard's decoder.

Layers: served.py -> shard.py -> sparse/, compression/ -> transport/ -> core/ -> protos/.
"""

"""The parameter server and its client: everything a gradient meets after the worker computed it.

- ``core/``: one shard: its range of the flat parameters, optimizer, schedule,
  clocks and consistency rules, the push ledger, model buffers, the checkpoint
  cut and the checkpoint files.
- ``sparse/``: embedding tables: row storage, row-wise optimizers, the
  ``sparse:`` section, and the worker's routing of ids to shards.
- ``transport/``: how a worker reaches the shards: the contract, then each
  transport's client and server side by side (object store, gRPC, shared memory).
- ``compression/``: gradient compression: the worker's encoder with error
  feedback, the shard's decoder (the byte layouts live in ``protos/``).
- ``ServedShard`` (served.py): the shard actor: a shard that also serves
  gRPC and shared memory on its own event loop, and restores itself.

Layers: served.py -> transport/ -> core/, sparse/, compression/ -> protos/.
"""

"""Sparse embedding tables: rows that live on the shards, hashed by ``id % num_shards``.

- ``SparseTable``, ``TableConfig`` (table.py): one table's part on one shard, with its own mode.
- ``SparseTables`` (tables.py): the tables a shard holds, by name.
- ``RowStore`` (row_store.py): rows created on first touch, evicted when unseen; ``SlotIndex``
  (slot_index.py): which slot holds an id.
- ``strictly_increasing``, ``unique_sorted`` (ids.py): the sorted, unique form ids travel in.
- ``make_row_optimizer`` (row_optimizers.py): SGD, AdaGrad, Adam, FTRL per row.
- ``SparseConfig`` (config.py): the job's ``sparse:`` section.
- ``SparseRows`` (client.py): the worker's side: ids routed to shards, rows back.
"""

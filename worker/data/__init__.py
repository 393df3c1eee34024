"""The data pipeline: from a user's arrays or files to the batches a worker trains on.

- ``resolve_data``, ``Splits`` and the sources (sources.py): data in its accepted forms;
  ``map_tensors`` (structure.py): one walk over a batch of any structure.
- ``DataConfig`` (config.py): the job's ``data:`` section for files read in chunks.
- ``open_chunks`` (chunks.py): Parquet and .npy files as chunks; ``ChunkedSource``
  (chunked.py): what a worker trains from; chunkprep.py: one chunk's rows.
- ``Summary`` (colstats.py), ``QuantileSketch`` (sketch.py): mergeable statistics.
- fitting.py: the transform fitted from merged statistics; ``DataTransform``
  (transform.py): what is applied to raw rows everywhere.
- ``prepare`` (pipeline.py): the statistics passes, the transform, the sources.
"""

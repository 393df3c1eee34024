"""Gradient compression: the worker encodes, the shard decodes; protos/compression.py owns the bytes.

- ``CompressionConfig``, ``GradCompressor``, ``RowCompressor`` (encoding.py): the job's
  ``compression:`` section and the worker's encoder with error feedback.
- ``ShardDecoder`` (decoding.py): the shard's side: blobs back to float32, or refused by name.
"""

"""The training side: what a worker actor runs, and what it trains on.

- ``loop/``: the worker actor and its step: flat parameter buffers, losses,
  ``rayps.Embedding`` modules, pacing, fault injection, evaluation scores.
- ``queue/``: the work queue: units of batches handed out and taken back,
  the coordinator actor that holds it, per-epoch sharding.
- ``data/``: the data pipeline: sources and splits, chunked files, the
  statistics passes, the fitted transform.
- ``compress/``: model compression after training: pruning, int8
  quantization, distillation, and variants as data.
- ``mlp``, ``cnn`` (models.py), ``digits`` (datasets.py), ``ctr.py``: the
  bundled models and data sets that YAML names.
- ``import_object`` (imports.py): ``"module:callable"`` names; trust.py: which of
  them a run or model directory's files may name without the user's word.
"""

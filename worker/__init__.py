"""The training side: what a worker actor runs.

- ``Worker``, ``WorkerPlan`` (trainer.py): the training loop.
- ``FlatParams``, ``ModelBuffers`` (flat.py): a model's trained parameters and
  gradients as views of one flat buffer (float16/bfloat16 through float32
  master copies), and its persistent buffers packed into one float64 vector.
- ``resolve_data``, ``EpochSharder`` and the data sources (data.py): user data
  in its accepted forms, and per-epoch disjoint worker shards.
- ``resolve_loss`` (losses.py): cross-entropy, MSE, KL by name.
- ``mlp``, ``cnn`` (models.py), ``digits`` (datasets.py): bundled models (an MLP; a
  BatchNorm CNN) and the bundled job's data.
- ``seed_worker`` (trainer.py): each worker's generators from (seed, worker id).
- ``import_object`` (imports.py): ``"module:callable"`` names.
"""

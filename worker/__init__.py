"""The training side: what a worker actor runs.

- ``Worker``, ``WorkerPlan`` (trainer.py): the training loop.
- ``FlatParams`` (flat.py): a model's parameters and gradients as views of one
  flat buffer.
- ``resolve_data``, ``EpochSharder`` and the data sources (data.py): user data
  in its accepted forms, and per-epoch disjoint worker shards.
- ``resolve_loss`` (losses.py): cross-entropy, MSE, KL by name.
- ``mlp`` (models.py), ``digits`` (datasets.py): the bundled job's model and data.
- ``import_object`` (imports.py): ``"module:callable"`` names.
"""

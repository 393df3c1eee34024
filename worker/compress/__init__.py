"""Model compression after training, for ``psctl export``.

- pruning.py: magnitude masks and filter pruning.
- quantize.py: int8 with ``torch.ao.quantization``.
- ``Distiller`` (distill.py): a student trained through the shards.
- ``ModelSpec``, ``build_model`` (variants.py): a variant as data, rebuilt anywhere.
"""

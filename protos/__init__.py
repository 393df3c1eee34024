"""Byte layouts: the only code that knows how tensors are laid out.

- ``FlatLayout``, ``TensorSpec`` (layout.py): named tensors packed into one
  flat float32 vector, with shape and offset.
"""

"""Byte layouts: the only code that knows how tensors are laid out.

- ``FlatLayout``, ``TensorSpec`` (layout.py): named tensors packed into one
  flat float32 vector, with shape and offset; ``all_finite``.
- ``chunks``, ``encode_chunks``, ``parse_chunk``, ``Assembler`` (codec.py):
  tensors to and from TensorChunk messages, checked chunk by chunk.
"""

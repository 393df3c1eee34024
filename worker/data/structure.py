"""Walking a batch of any structure: tensors inside tuples (named too), lists and dicts.

A Dataset's items collate into such nests (``default_collate``); the sources
cast them (sources.py), and the worker moves them to its device and cuts
micro-batches from them (worker/loop/batches.py), all through one walk.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """``obj`` with ``fn`` applied to every tensor in it; tuples (named too), lists and dicts kept."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(fn, v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple keeps its type
        return type(obj)(*(map_tensors(fn, v) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(fn, v) for v in obj)
    return obj


def float64_to_float32(obj: Any) -> Any:
    """float64 tensors (what Python floats collate to) to float32, wherever they sit in ``obj``."""
    return map_tensors(lambda x: x.float() if x.dtype == torch.float64 else x, obj)

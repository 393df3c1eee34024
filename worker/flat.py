"""Model parameters and gradients as views of two flat buffers.

``FlatParams`` rebinds every parameter of a model (and its ``.grad``) to a
slice of one contiguous float32 tensor, so the whole model moves in or out
with a single copy per shard and no per-tensor packing. On CUDA, pushes and
pulls go through one pinned host buffer each way.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rayps.protos.layout import FlatLayout
from rayps.errors import ShapeError


class FlatParams:
    def __init__(self, model: nn.Module, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        for name, p in named:
            if p.dtype != torch.float32:
                raise ShapeError(f"parameter {name!r} is {p.dtype}; only float32 models are supported")
        self.layout = FlatLayout.from_shapes((n, tuple(p.shape)) for n, p in named)
        model.to(self.device)
        self.params = torch.empty(self.layout.numel, dtype=torch.float32, device=self.device)
        self.grads = torch.zeros_like(self.params)
        with torch.no_grad():
            for (name, p), spec in zip(named, self.layout.tensors):
                view = self.params[spec.offset:spec.end].view(spec.shape)
                view.copy_(p.detach().to(self.device))
                p.data = view
                p.grad = self.grads[spec.offset:spec.end].view(spec.shape)
        self._params_list = [p for _, p in named]
        on_cpu = self.device.type == "cpu"
        # numpy windows onto the buffers the transport reads and writes
        self._host_params = self.params if on_cpu else torch.empty_like(self.params, device="cpu").pin_memory()
        self._host_grads = self.grads if on_cpu else torch.empty_like(self.grads, device="cpu").pin_memory()

    @property
    def numel(self) -> int:
        return self.layout.numel

    def zero_grad(self) -> None:
        self.grads.zero_()
        # Autograd accumulates into an existing .grad in place, which keeps our
        # views; something that replaced a .grad (a user hook, set_to_none)
        # would silently detach it from the flat buffer, so rebind.
        for p, spec in zip(self._params_list, self.layout.tensors):
            if p.grad is None or p.grad.data_ptr() != self.grads[spec.offset:].data_ptr():
                p.grad = self.grads[spec.offset:spec.end].view(spec.shape)

    def host_grads(self) -> np.ndarray:
        """The gradient as a numpy array on the host (a view on CPU; one copy from CUDA)."""
        if self._host_grads is not self.grads:
            self._host_grads.copy_(self.grads)
        return self._host_grads.numpy()

    def host_params(self) -> np.ndarray:
        """A host numpy array to receive parameters into; call ``params_received`` after."""
        return self._host_params.numpy()

    def params_received(self) -> None:
        if self._host_params is not self.params:
            self.params.copy_(self._host_params, non_blocking=False)

    def load(self, flat: np.ndarray) -> None:
        if flat.shape != (self.numel,):
            raise ShapeError(f"expected {self.numel} parameters, got shape {flat.shape}")
        self.host_params()[:] = flat
        self.params_received()

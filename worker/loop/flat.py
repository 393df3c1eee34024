"""Model state as flat buffers: trained parameters, their gradients, and model buffers.

``FlatParams`` rebinds every trained float32 parameter of a model (and its
``.grad``) to a slice of one contiguous float32 tensor, so the whole model
moves in or out with a single copy per shard and no per-tensor packing. On
CUDA, pushes and pulls go through one pinned host buffer each way.

What counts as what:

- **Trained**: parameters with ``requires_grad=True``, each once (tied
  parameters are one ``Parameter`` object, so they are trained once).
- **Frozen**: parameters with ``requires_grad=False`` are never pushed or
  pulled; they keep the values the model was built with.
- **Low precision**: float16 and bfloat16 parameters train with float32
  master weights on the shards. The flat buffer holds the float32 copy; the
  model's own tensor keeps its dtype and receives the master value cast
  after every pull; its gradient is cast up into the flat buffer before every
  push. Other dtypes (float64, complex) are refused with the parameter named.
- **Buffers** (``ModelBuffers``): the persistent buffers of the model's
  ``state_dict`` (BatchNorm running statistics and the like) travel beside
  the gradients as one float64 vector, which holds float16/32 values and
  integers up to 2**53 exactly. The shards merge them (see ps/core/buffers.py).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from ...protos.layout import FlatLayout
from ...errors import ShapeError

#: Parameter dtypes the shards train: float32 as they are, the others through float32 master weights.
TRAINABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class ModelBuffers:
    """A model's persistent buffers, packed into (and out of) one float64 vector.

    ``integer`` marks the entries of integer and bool buffers (such as
    BatchNorm's ``num_batches_tracked``), which the shards merge by maximum
    instead of by mean. Non-persistent buffers (not in ``state_dict``) are
    derived values a model rebuilds itself and stay on the worker.

    Integer buffers count what this worker did: a worker takes the merged
    value when it registers, and after that only the floating-point ones, so
    the shards' maximum is the most any worker counted (loading the maximum
    back every step would make a counter race ahead under asp).
    """

    def __init__(self, model: nn.Module):
        persistent = set(model.state_dict(keep_vars=True))
        self.named = [(n, b) for n, b in model.named_buffers() if n in persistent and b is not None]
        for name, b in self.named:
            if b.is_complex():
                raise ShapeError(f"buffer {name!r} is {b.dtype}; complex buffers cannot be merged")
        self.layout = FlatLayout.from_shapes((n, tuple(b.shape)) for n, b in self.named)
        self.integer = np.zeros(self.layout.numel, dtype=bool)
        for (_, b), spec in zip(self.named, self.layout.tensors):
            if not b.is_floating_point():
                self.integer[spec.offset:spec.end] = True
        self._floating = [(b, spec) for (_, b), spec in zip(self.named, self.layout.tensors) if b.is_floating_point()]
        self.values = np.zeros(self.layout.numel, dtype=np.float64)  # what goes out
        self.received = np.zeros(self.layout.numel, dtype=np.float64)  # what comes in

    @property
    def numel(self) -> int:
        return self.layout.numel

    def pack(self) -> np.ndarray:
        """The model's current buffers, copied into ``values`` (returned)."""
        for (_, b), spec in zip(self.named, self.layout.tensors):
            self.values[spec.offset:spec.end] = b.detach().reshape(-1).to("cpu", torch.float64).numpy()
        return self.values

    def unpack(self, flat: np.ndarray | None = None, floating_only: bool = False) -> None:
        """Write ``flat`` (default: ``received``) into the model's buffers, cast to each one's dtype.

        ``floating_only`` leaves the integer buffers (this worker's own counts) alone.
        """
        flat = self.received if flat is None else flat
        if flat.shape != (self.numel,):
            raise ShapeError(f"expected {self.numel} buffer values, got shape {flat.shape}")
        targets = self._floating if floating_only else [(b, s) for (_, b), s in zip(self.named, self.layout.tensors)]
        with torch.no_grad():
            for b, spec in targets:
                b.copy_(torch.from_numpy(flat[spec.offset:spec.end]).view(b.shape))


class FlatParams:
    def __init__(self, model: nn.Module, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        for name, p in named:
            if p.dtype not in TRAINABLE_DTYPES:
                raise ShapeError(
                    f"parameter {name!r} is {p.dtype}; trained parameters must be float32, float16 or"
                    " bfloat16 (float16/bfloat16 train with float32 master weights)")
        self.layout = FlatLayout.from_shapes((n, tuple(p.shape)) for n, p in named)
        model.to(self.device)
        self.params = torch.empty(self.layout.numel, dtype=torch.float32, device=self.device)
        self.grads = torch.zeros_like(self.params)
        self._gathered = False  # the low-precision gradients are in the flat buffer for this step
        # Low-precision parameters keep their own tensors; the flat buffer holds their master copy.
        self._cast = []  # (parameter, its spec)
        with torch.no_grad():
            for (name, p), spec in zip(named, self.layout.tensors):
                view = self.params[spec.offset:spec.end].view(spec.shape)
                view.copy_(p.detach().to(self.device))
                if p.dtype == torch.float32:
                    p.data = view
                    p.grad = self.grads[spec.offset:spec.end].view(spec.shape)
                else:
                    self._cast.append((p, spec))
        self._params_list = [p for _, p in named]
        self.buffers = ModelBuffers(model)
        on_cpu = self.device.type == "cpu"
        # numpy windows onto the buffers the transport reads and writes
        self._host_params = self.params if on_cpu else torch.empty_like(self.params, device="cpu").pin_memory()
        self._host_grads = self.grads if on_cpu else torch.empty_like(self.grads, device="cpu").pin_memory()

    @property
    def numel(self) -> int:
        return self.layout.numel

    def adopt(self, grads: np.ndarray, params: np.ndarray | None = None) -> None:
        """Train on these arrays from now on (a transport's own: ``Transport.shared_buffers``): every parameter
        and its gradient become views of them, so a push and its pull copy nothing. Writable arrays take the
        current values; read-only parameters (the shards' own, published under bsp) keep theirs, and nothing
        here writes them again. ``params`` None: only the gradient moves. CPU only (a GPU's host arrays are
        staging copies anyway)."""
        if self.device.type != "cpu":
            raise ShapeError(f"only a CPU model trains on a transport's buffers; this one is on {self.device}")
        for name, array in (("grads", grads), ("params", params)):
            if array is None and name == "params":
                continue
            if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.shape != (self.numel,):
                raise ShapeError(f"{name} to adopt must be float32 of shape ({self.numel},), got"
                                 f" {getattr(array, 'dtype', type(array).__name__)} {getattr(array, 'shape', '')}")
        with warnings.catch_warnings():  # torch warns of read-only arrays: nothing writes these (see above)
            warnings.simplefilter("ignore", UserWarning)
            new_params = self.params if params is None else torch.from_numpy(params)
        new_grads = torch.from_numpy(grads)
        if params is not None and params.flags.writeable:
            new_params.copy_(self.params)
        new_grads.copy_(self.grads)
        self.params, self.grads = new_params, new_grads
        self._host_params, self._host_grads = self.params, self.grads
        with torch.no_grad():
            for p, spec in zip(self._params_list, self.layout.tensors):
                if p.dtype == torch.float32:
                    p.data = self.params[spec.offset:spec.end].view(spec.shape)
                    p.grad = self.grads[spec.offset:spec.end].view(spec.shape)

    def zero_grad(self) -> None:
        self.grads.zero_()
        self._gathered = False
        for p, _ in self._cast:
            p.grad = None
        # Autograd accumulates into an existing .grad in place, which keeps our
        # views; something that replaced a .grad (a user hook, set_to_none)
        # would silently detach it from the flat buffer, so rebind.
        for p, spec in zip(self._params_list, self.layout.tensors):
            if p.dtype != torch.float32:
                continue
            if p.grad is None or p.grad.data_ptr() != self.grads[spec.offset:].data_ptr():
                p.grad = self.grads[spec.offset:spec.end].view(spec.shape)

    def _gather(self) -> None:
        """Low-precision parameters' gradients, cast up into the flat buffer (once a step: clipping may
        scale the buffer after)."""
        if self._gathered:
            return
        for p, spec in self._cast:
            if p.grad is not None:
                self.grads[spec.offset:spec.end].copy_(p.grad.reshape(-1))
        self._gathered = True

    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale the whole gradient down to global norm ``max_norm`` where it is above it, as
        ``torch.nn.utils.clip_grad_norm_`` does; the norm before clipping."""
        self._gather()
        norm = torch.linalg.vector_norm(self.grads)
        coef = max_norm / (float(norm) + 1e-6)
        if coef < 1.0:
            self.grads.mul_(coef)
        return float(norm)

    def unscale_grads(self, scale: float) -> bool:
        """Divide the gradient by a loss ``scale`` (fp16); whether every value of it is finite."""
        self._gather()
        self.grads.mul_(1.0 / scale)
        return bool(torch.isfinite(self.grads).all())

    def host_grads(self) -> np.ndarray:
        """The gradient as a numpy array on the host (a view on CPU; one copy from CUDA).

        Low-precision parameters' gradients are cast up into the flat buffer
        first; a parameter the loss did not reach pushes zeros.
        """
        self._gather()
        if self._host_grads is not self.grads:
            self._host_grads.copy_(self.grads)
        return self._host_grads.numpy()

    def receive_buffer(self) -> np.ndarray:
        """A host array beside the parameters, for pulls that arrive while the model computes."""
        if not hasattr(self, "_inbox"):
            self._inbox = np.empty(self.numel, dtype=np.float32)
        return self._inbox

    def take_received(self) -> None:
        """Copy what arrived in ``receive_buffer`` into the host parameters (call ``params_received`` after)."""
        self.host_params()[:] = self._inbox

    def host_params(self) -> np.ndarray:
        """A host numpy array to receive parameters into; call ``params_received`` after."""
        return self._host_params.numpy()

    def params_received(self, buffers: bool = False, counters: bool = True) -> None:
        """Make the model see what was received: parameters, and (``buffers``) model buffers.

        ``counters=False`` keeps the model's integer buffers (see ``ModelBuffers``).
        """
        if self._host_params is not self.params:
            self.params.copy_(self._host_params, non_blocking=False)
        with torch.no_grad():
            for p, spec in self._cast:
                p.copy_(self.params[spec.offset:spec.end].view(spec.shape))
        if buffers and self.buffers.numel:
            self.buffers.unpack(floating_only=not counters)

    def load(self, flat: np.ndarray, buffers: np.ndarray | None = None) -> None:
        """Set the model's trained parameters (and, given, its buffers) from flat vectors."""
        if flat.shape != (self.numel,):
            raise ShapeError(f"expected {self.numel} parameters, got shape {flat.shape}")
        self.host_params()[:] = flat
        if buffers is not None:
            self.buffers.received[:] = buffers
        self.params_received(buffers=buffers is not None)

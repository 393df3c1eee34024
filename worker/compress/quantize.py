"""Post-training int8 quantization with torch's own tooling (``torch.ao.quantization``).

- ``dynamic``: Linear layers' weights as int8, activations quantized on the
  fly per batch (``quantize_dynamic``). Needs no data; what a model without
  convolutions gets.
- ``static``: FX graph mode (``prepare_fx`` / ``convert_fx``): observers are
  run over calibration batches from the training data to fix every
  activation's scale, then convolutions and Linear layers run in int8. What a
  model with convolutions gets.

``quantized_structure`` rebuilds a quantized model's modules without data, so
its saved state dict (scales and zero points included) loads back into it.
torch marks ``torch.ao.quantization`` deprecated in favour of torchao, which
is not a dependency here; its warnings are silenced around these calls.
"""

from __future__ import annotations

import warnings
from typing import Iterable

import torch
from torch import nn

ENGINE = "x86" if "x86" in torch.backends.quantized.supported_engines else "qnnpack"


def method_for(model: nn.Module) -> str:
    """``static`` for a model with convolutions, else ``dynamic``."""
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return "static" if any(isinstance(m, convs) for m in model.modules()) else "dynamic"


def quantize(model: nn.Module, method: str, calibration: Iterable[torch.Tensor] = (),
             example: torch.Tensor | None = None) -> nn.Module:
    """An int8 copy of ``model`` (float, eval mode). ``static`` runs ``calibration`` batches through it."""
    torch.backends.quantized.engine = ENGINE
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "dynamic":
            return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        if method != "static":
            raise ValueError(f"quantization method ({method!r}) must be dynamic or static")
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        if example is None:
            raise ValueError("static quantization needs an example batch to trace the model with")
        prepared = prepare_fx(model, get_default_qconfig_mapping(ENGINE), (example,))
        seen = 0
        with torch.no_grad():
            for batch in calibration:
                prepared(batch)
                seen += 1
        if not seen and calibration != ():
            raise ValueError("static quantization got no calibration batches")
        return convert_fx(prepared)


def quantized_structure(model: nn.Module, method: str, example: torch.Tensor) -> nn.Module:
    """The quantized modules of ``model`` with placeholder scales, for a saved state dict to load into."""
    return quantize(model, method, (), example)

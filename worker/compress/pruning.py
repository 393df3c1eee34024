"""Pruning a trained model: magnitude masks (sparse) and filter pruning (really smaller).

- ``magnitude_masks(model, sparsity, scope)``: zero the smallest weights of
  every Linear and Conv layer, ``global`` (one threshold over all of them) or
  per ``layer`` (each its own). Biases and normalization are kept. The masks
  are returned so fine-tuning can hold them fixed (``hold_masks``).
- ``filter_prune(model, keep, example)``: remove whole output units of every
  Linear and Conv layer but the last (its outputs are the model's), chosen by
  the L2 norm of their weights, and the matching inputs of the layer that
  reads them (and the BatchNorm channels between). The result has fewer
  parameters and does less work. ``shrink(model, plan)`` rebuilds the same
  shapes on a freshly built model, so a pruned model loads back from its
  weights and its plan.

Filter pruning needs the model's layers to form a chain (each prunable
layer's outputs read only by the next one, through elementwise ops, pooling,
BatchNorm or a flatten), as in ``nn.Sequential`` models. It checks the chain
with a forward pass of ``example`` and names what broke it otherwise.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE)]


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Zero the ``sparsity`` share of the smallest |weight| in place; return each layer's keep-mask."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity ({sparsity!r}) must be in [0, 1)")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope ({scope!r}) must be global or layer")
    layers = prunable_layers(model)
    if not layers:
        raise ValueError("the model has no Linear or Conv layers to prune")
    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if scope == "global":
            magnitudes = torch.cat([m.weight.abs().reshape(-1) for _, m in layers])
            threshold = _kth(magnitudes, sparsity)
        for name, m in layers:
            t = threshold if scope == "global" else _kth(m.weight.abs().reshape(-1), sparsity)
            mask = m.weight.abs() > t
            m.weight.mul_(mask)
            masks[name] = mask
    return masks


def _kth(values: torch.Tensor, share: float) -> float:
    """The magnitude at or below which ``share`` of ``values`` lie (-1 to prune nothing)."""
    k = int(round(share * values.numel()))
    return -1.0 if k == 0 else float(values.kthvalue(k).values)


def sparsity_of(model: nn.Module) -> float:
    """The share of zero weights over the prunable layers."""
    layers = prunable_layers(model)
    total = sum(m.weight.numel() for _, m in layers)
    return sum(int((m.weight == 0).sum()) for _, m in layers) / max(1, total)


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights (after training, whose gradients held them: exactly zero again)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            modules[name].weight.mul_(mask.to(modules[name].weight.device))


def hold_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Keep pruned weights at zero while training: their gradients are masked, so no optimizer (with fresh
    state) moves them, and the weights are masked once more now. The model may move to a GPU after."""
    apply_masks(model, masks)
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        modules[name].weight.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device))


# ---- filter pruning ------------------------------------------------------------------------------

def filter_prune(model: nn.Module, keep: float, example: torch.Tensor) -> tuple[nn.Module, dict]:
    """Keep the ``keep`` share of output units of every prunable layer but the last, in place; return the
    model and its plan ({module name: {"in": n, "out": n}} for every module whose shape changed)."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep ({keep!r}) must be in (0, 1]")
    chain = _chain(model)
    plan: dict[str, dict] = {}
    for i in range(len(chain) - 1):
        (name, _, norms), next_name = chain[i], chain[i + 1][0]
        modules = dict(model.named_modules())  # this layer's inputs may have been cut a step ago
        layer, next_layer = modules[name], modules[next_name]
        units = layer.weight.shape[0]
        kept = max(1, int(round(keep * units)))
        scores = layer.weight.detach().reshape(units, -1).norm(dim=1)
        order = torch.sort(torch.topk(scores, kept).indices).values
        _set(model, name, _cut_outputs(layer, order))
        for norm_name, norm in norms:
            _set(model, norm_name, _cut_norm(norm, order))
            plan[norm_name] = {"features": kept}
        cut = _cut_inputs(next_layer, order, units)
        _set(model, next_name, cut)
        plan.setdefault(name, {})["out"] = kept
        plan.setdefault(next_name, {})["in"] = _in_size(cut)
    _check(model, example)
    return model, plan


def shrink(model: nn.Module, plan: dict) -> nn.Module:
    """The shapes of ``plan`` on a freshly built model (weights to be loaded after)."""
    modules = dict(model.named_modules())
    for name, change in plan.items():
        if name not in modules:
            raise ValueError(f"the pruning plan names module {name!r}, which this model does not have")
        m = modules[name]
        if isinstance(m, NORMS):
            _set(model, name, _norm_like(m, change["features"]))
        else:
            _set(model, name, _like(m, change.get("in", _in_size(m)), change.get("out", m.weight.shape[0])))
    return model


def _chain(model: nn.Module) -> list[tuple[str, nn.Module, list]]:
    """The prunable layers in order, each with the norms that follow it before the next one."""
    chain: list = []
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE):
            if getattr(m, "groups", 1) != 1:
                raise ValueError(f"filter pruning: {name} is a grouped convolution, which it cannot cut")
            chain.append((name, m, []))
        elif isinstance(m, NORMS) and chain:
            chain[-1][2].append((name, m))
    if len(chain) < 2:
        raise ValueError("filter pruning needs at least two Linear or Conv layers (the last one's outputs stay)")
    return chain


def _in_size(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


def _cut_outputs(m: nn.Module, order: torch.Tensor) -> nn.Module:
    new = _like(m, _in_size(m), len(order))
    with torch.no_grad():
        new.weight.copy_(m.weight[order])
        if m.bias is not None:
            new.bias.copy_(m.bias[order])
    return new


def _cut_inputs(m: nn.Module, order: torch.Tensor, units: int) -> nn.Module:
    """The next layer, reading only the kept units. A Linear after a flatten of ``units`` channels reads
    each channel as a block of ``in_features / units`` values."""
    size = _in_size(m)
    if size % units:
        raise ValueError(f"filter pruning: a layer with {size} inputs follows one with {units} outputs; they"
                         " must be a chain (each reads the one before, channel by channel)")
    block = size // units
    columns = (order[:, None] * block + torch.arange(block)[None, :]).reshape(-1)
    new = _like(m, len(columns), m.weight.shape[0])
    with torch.no_grad():
        new.weight.copy_(m.weight[:, columns])
        if m.bias is not None:
            new.bias.copy_(m.bias)
    return new


def _cut_norm(norm: nn.Module, order: torch.Tensor) -> nn.Module:
    new = _norm_like(norm, len(order))
    with torch.no_grad():
        if norm.affine:
            new.weight.copy_(norm.weight[order])
            new.bias.copy_(norm.bias[order])
        if norm.track_running_stats:
            new.running_mean.copy_(norm.running_mean[order])
            new.running_var.copy_(norm.running_var[order])
            new.num_batches_tracked.copy_(norm.num_batches_tracked)
    return new


def _norm_like(norm: nn.Module, features: int) -> nn.Module:
    return type(norm)(features, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                      track_running_stats=norm.track_running_stats)


def _like(m: nn.Module, in_size: int, out_size: int) -> nn.Module:
    if isinstance(m, nn.Linear):
        return nn.Linear(in_size, out_size, bias=m.bias is not None)
    return type(m)(in_size, out_size, m.kernel_size, m.stride, m.padding, m.dilation, 1, m.bias is not None,
                   m.padding_mode)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _check(model: nn.Module, example: torch.Tensor) -> None:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    except RuntimeError as e:
        raise ValueError(f"filter pruning: the pruned model no longer runs ({e}); its layers are not a chain"
                         " this pruning can cut") from None
    finally:
        model.train(was)


def count_parameters(model: nn.Module, names: Iterable[str] | None = None) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if names is None or n in names)

"""A trained model on disk, and ``rayps.load_model`` to read it back in any process.

What a job writes into its run directory (``save_run_model``) and what every
variant ``psctl export`` makes (launcher/export/) is one directory each:

- ``model.safetensors``: the weights (float variants), or ``model.pt``: the
  int8 state dict (torch's quantized modules pack their weights in objects
  safetensors cannot hold);
- ``model.json``: how to rebuild the modules the weights load into: the
  model's import path and arguments, the filter-pruning plan, the
  quantization method and engine, and an example input shape;
- ``transform.json``: the fitted data transform its inputs go through, when
  the job read its data in chunks (``rayps.load_transform`` reads it).

Loading runs the code ``model.json`` names, so ``load_model`` runs it only
when it is rayps's bundled models or the user's own (worker/trust.py), or
when told ``trust=True``. The weights never run code: safetensors, and
``torch.load(weights_only=True)`` for int8.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ...worker.compress.variants import ModelSpec, build_model
from ...worker.trust import check_trusted

FORMAT = "rayps-model/1"


def save_model(directory: Path, model: nn.Module, spec: ModelSpec, example_shape: list[int],
               quantization: dict | None = None, transform: Path | None = None, extra: dict | None = None) -> Path:
    """Write one variant; return the weights file."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    if quantization is None:
        weights = directory / "model.safetensors"
        # copies: a trained model's parameters are views of one flat vector (worker/loop/flat.py), and
        # safetensors stores each tensor whole
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}, str(weights))
    else:
        weights = directory / "model.pt"
        torch.save(model.state_dict(), weights)
    meta = {"format": FORMAT, "model": spec.model or None, "model_args": dict(spec.model_args),
            "filter_plan": {k: dict(v) for k, v in spec.plan.items()}, "quantization": quantization,
            "example_shape": list(example_shape), "weights": weights.name, **(extra or {})}
    (directory / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if transform is not None and transform.exists():
        shutil.copy(transform, directory / "transform.json")
    return weights


def load_model(directory: str | Path, trust: bool = False) -> nn.Module:
    """The model exported in ``directory`` (``psctl export``), in eval mode, ready to predict.

    ``trust``: build it with whatever code model.json names; without it, only rayps's bundled models
    and the user's own code are run, and anything else raises UntrustedCodeError.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = read_meta(directory)
    if not trust and meta.get("model"):  # no name: build_model says why it cannot rebuild it
        check_trusted(meta["model"], directory, "model.json: model")
    model = build_model(ModelSpec(meta["model"], meta.get("model_args") or {}, meta.get("filter_plan") or {}))
    model.eval()
    quantization = meta.get("quantization")
    weights = directory / meta["weights"]
    if not weights.exists():
        raise ConfigError(f"{directory}: model.json names weights {meta['weights']!r}, which are missing")
    if quantization is None:
        model.load_state_dict(load_file(str(weights)))
        return model
    from ...worker.compress.quantize import quantized_structure

    torch.backends.quantized.engine = quantization["engine"]
    quantized = quantized_structure(model, quantization["method"], torch.zeros(meta["example_shape"]))
    with warnings.catch_warnings():  # torch's own quantized modules load through a deprecated storage API
        warnings.simplefilter("ignore")
        quantized.load_state_dict(torch.load(weights, weights_only=True))
    return quantized.eval()


def read_meta(directory: Path) -> dict[str, Any]:
    path = directory / "model.json"
    if not path.exists():
        raise ConfigError(f"{directory} holds no exported model (no model.json): run psctl export on its run")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    return meta


def save_run_model(run_dir: Path, model: nn.Module, config) -> None:
    """The trained model in its run directory: ``model.safetensors`` and ``model.json`` (import path and
    arguments; null where the job's model was a callable with no importable name)."""
    from ...worker.compress.variants import import_path

    args = dict(config.model_args)
    try:
        json.dumps(args)
        rebuildable = True
    except TypeError:  # arguments that are objects (a class, an array): no file can name them again
        from .config import _plain
        args, rebuildable = _plain(args), False
    save_model(run_dir, model, ModelSpec((import_path(config.model) or "") if rebuildable else "", args), [])

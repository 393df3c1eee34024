"""What ``psctl export`` makes: the ``export:`` section of a YAML file, or the command's flags.

Every variant is off unless asked for; the trained model itself is always
written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ...settings import number, require


@dataclass(frozen=True)
class PruneConfig:
    """Magnitude pruning of Linear and Conv weights, then optional fine-tuning with the mask held."""

    sparsity: float = 0.5
    scope: str = "global"  # global (one threshold) | layer (each layer its own)
    finetune_steps: int = 0  # per worker, through the parameter servers

    def __post_init__(self) -> None:
        number(self.sparsity, "prune.sparsity", minimum=0)
        require(self.sparsity < 1, f"prune.sparsity ({self.sparsity!r}) must be < 1")
        require(self.scope in ("global", "layer"), f"prune.scope ({self.scope!r}) must be global or layer")
        number(self.finetune_steps, "prune.finetune_steps", minimum=0, integer=True)


@dataclass(frozen=True)
class FilterPruneConfig:
    """Structured pruning: keep this share of every hidden layer's units or channels, then fine-tune."""

    keep: float = 0.5
    finetune_steps: int = 200

    def __post_init__(self) -> None:
        number(self.keep, "filter_prune.keep", minimum=0, exclusive=True)
        require(self.keep <= 1, f"filter_prune.keep ({self.keep!r}) must be <= 1")
        number(self.finetune_steps, "filter_prune.finetune_steps", minimum=0, integer=True)


@dataclass(frozen=True)
class QuantizeConfig:
    """Post-training int8: dynamic for Linear-only models, static (calibrated) where there are convolutions."""

    method: str = "auto"  # auto | dynamic | static
    calibration_batches: int = 16

    def __post_init__(self) -> None:
        require(self.method in ("auto", "dynamic", "static"),
                f"quantize.method ({self.method!r}) must be auto, dynamic or static")
        number(self.calibration_batches, "quantize.calibration_batches", minimum=1, integer=True)


@dataclass(frozen=True)
class DistillConfig:
    """A smaller student trained through the parameter servers against the teacher's soft targets."""

    model: str = ""  # 'module:callable'
    model_args: Mapping[str, Any] = field(default_factory=dict)
    temperature: float = 4.0
    alpha: float = 0.7  # the soft targets' share of the loss; the rest is the hard labels' cross entropy
    epochs: int | None = None  # None: the teacher job's
    max_steps: int | None = None
    hard_baseline: bool = True  # also train the same student on hard labels alone, for the same steps

    def __post_init__(self) -> None:
        require(isinstance(self.model, str) and ":" in self.model,
                f"distill.model ({self.model!r}) must name the student as 'module:callable'")
        require(isinstance(self.model_args, Mapping), f"distill.model_args ({self.model_args!r}) must be a mapping")
        number(self.temperature, "distill.temperature", minimum=0, exclusive=True)
        number(self.alpha, "distill.alpha", minimum=0)
        require(self.alpha <= 1, f"distill.alpha ({self.alpha!r}) must be <= 1")
        for key in ("epochs", "max_steps"):
            if getattr(self, key) is not None:
                number(getattr(self, key), f"distill.{key}", minimum=1, integer=True)


@dataclass(frozen=True)
class ExportConfig:
    prune: PruneConfig | None = None
    filter_prune: FilterPruneConfig | None = None
    quantize: QuantizeConfig | None = None
    distill: DistillConfig | None = None
    latency_batch: int = 256  # rows per batch when timing CPU inference
    latency_repeats: int = 30

    def __post_init__(self) -> None:
        number(self.latency_batch, "latency_batch", minimum=1, integer=True)
        number(self.latency_repeats, "latency_repeats", minimum=1, integer=True)

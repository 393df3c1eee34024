"""Distillation: a student trained through the parameter servers against a frozen teacher's soft targets.

``Distiller(student, teacher)`` is the model a distillation job trains. It
holds the teacher outside its registered modules, so the teacher's weights
are neither pushed nor pulled: every worker builds the same teacher from its
files, and the shards hold only the student. In training its forward
returns the student's logits and the teacher's side by side; in evaluation
the student's alone, so the job's own scoring scores the student.

``DistillLoss(num_classes, temperature, alpha)`` is Hinton et al.'s loss:
``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) +
(1 - alpha) * cross_entropy(student, label)``; the T^2 keeps the soft term's
gradients on the scale of the hard one's as T grows. Given the student's
logits alone (evaluation) it is the cross entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Distiller(nn.Module):
    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__()
        self.student = student
        teacher.eval()
        teacher.requires_grad_(False)
        object.__setattr__(self, "_teacher", teacher)  # not a submodule: not in the flat vector or state

    def train(self, mode: bool = True):
        super().train(mode)
        self._teacher.eval()  # the teacher's BatchNorm statistics stay as trained
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.student(x)
        if not self.training:
            return logits
        teacher = self._teacher
        if next(teacher.parameters()).device != x.device:
            teacher.to(x.device)
        with torch.no_grad():
            soft = teacher(x)
        return torch.cat([logits, soft], dim=1)


class DistillLoss:
    def __init__(self, num_classes: int, temperature: float = 4.0, alpha: float = 0.7):
        if temperature <= 0:
            raise ValueError(f"temperature ({temperature!r}) must be > 0")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha ({alpha!r}) must be in [0, 1]")
        self.num_classes, self.temperature, self.alpha = num_classes, float(temperature), float(alpha)

    def __call__(self, output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None):
        c = self.num_classes
        if output.shape[1] == c:  # the student alone: evaluation
            per_example = F.cross_entropy(output, target, reduction="none")
        elif output.shape[1] == 2 * c:
            student, teacher = output[:, :c], output[:, c:]
            t = self.temperature
            soft = F.kl_div(F.log_softmax(student / t, dim=1), F.softmax(teacher / t, dim=1),
                            reduction="none").sum(dim=1) * (t * t)
            hard = F.cross_entropy(student, target, reduction="none")
            per_example = self.alpha * soft + (1 - self.alpha) * hard
        else:
            raise ValueError(f"distillation: the model gave {output.shape[1]} outputs; expected {c} (the student)"
                             f" or {2 * c} (student and teacher)")
        if weight is None:
            return per_example.mean()
        return (per_example * weight).sum() / weight.sum()

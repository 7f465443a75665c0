"""The cubic-spline baseline as a "model": the input already is the spline-upsampled signal, so the
prediction is the input itself. Registered beside the networks so eval and bench compare through one
interface."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from afilm_cli.errors import AfilmError
from afilm_cli.registry import MODELS


class Spline(nn.Module):
    """No parameters; forward(x) = x; every length is valid."""

    model_name = "spline"
    length_multiple = 1

    def config_dict(self) -> dict[str, Any]:
        return {}

    def check_length(self, t: int) -> None:
        if t < 1:
            raise AfilmError(f"model spline: input length must be positive, got {t}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != 1:
            raise AfilmError(f"model spline: expected input (batch, 1, samples), got {tuple(x.shape)}")
        self.check_length(x.shape[-1])
        return x.clone()  # a new tensor, like the networks' output (callers may write into it)


@MODELS.register("spline", description="cubic-spline baseline (output = input)")
def spline(**overrides: Any) -> Spline:
    if overrides:
        raise AfilmError(f"model spline takes no options, got {', '.join(sorted(overrides))}")
    return Spline()

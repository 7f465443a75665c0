"""Models: builders registered in MODELS; ``create_model(name, **overrides)`` builds one."""

from __future__ import annotations

from typing import Any

import torch

from afilm_cli.registry import MODELS


def create_model(name: str, **overrides: Any) -> torch.nn.Module:
    """Build a registered model. Overrides left at None are dropped, so CLI defaults never
    override a preset's own values (as timm's create_model)."""
    builder = MODELS.get(name)
    return builder(**{k: v for k, v in overrides.items() if v is not None})

"""Models: builders registered in MODELS; ``create_model(name, **overrides)`` builds one.

Every model has ``model_name``, ``config_dict()`` (``create_model(model_name, **config_dict())``
rebuilds the same architecture), ``length_multiple`` and ``check_length(T)``; forward maps
(B, 1, T) float32 to (B, 1, T). Built-ins: afilm, tfilm (paper size), their _small and _tiny CPU
presets, and spline (output = input).
"""

from __future__ import annotations

from typing import Any

import torch

from afilm_cli.errors import AfilmError
from afilm_cli.registry import MODELS

INTERFACE = ("model_name", "config_dict", "length_multiple", "check_length")  # what every command relies on


def create_model(name: str, **overrides: Any) -> torch.nn.Module:
    """Build a registered model. Overrides left at None are dropped, so CLI defaults never
    override a preset's own values (as timm's create_model); the rest are checked by the model's
    config (UNetConfig: each field's type and range, one AfilmError line naming the field). A
    builder (a plugin's, say) whose model lacks the interface above is refused here, in one line."""
    builder = MODELS.get(name)
    model = builder(**{k: v for k, v in overrides.items() if v is not None})
    missing = [a for a in INTERFACE if not hasattr(model, a)]
    if not isinstance(model, torch.nn.Module) or missing:
        what = ", ".join(missing) if isinstance(model, torch.nn.Module) else "torch.nn.Module"
        raise AfilmError(f"model {name!r} ({getattr(builder, '__module__', '?')}) builds a "
                         f"{type(model).__name__} without {what}: an afilm model is a torch.nn.Module with "
                         "model_name, config_dict(), length_multiple and check_length(T) (README: Plugins)")
    return model


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (works on the meta device)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe_model(name: str, with_model: bool = False) -> dict[str, Any]:
    """Registry meta, parameter count, length multiple, config and modulation plan of a model, built
    on the meta device (no memory, no init: instant even for the 134 M-parameter AFiLM); a pretrained
    model that cannot live there is built for real. A model that cannot be built reports None and the
    error instead of failing the listing."""
    meta = MODELS.meta(name)
    out: dict[str, Any] = {"name": name, "meta": meta, "parameters": None, "length_multiple": None,
                           "config": None, "plan": None, "error": None}
    try:
        if meta.get("pretrained"):
            model = create_model(name)  # loads (and checks) its weights: cannot live on the meta device
        else:
            with torch.device("meta"):
                model = create_model(name)
        out["parameters"] = count_parameters(model)
        out["length_multiple"] = int(model.length_multiple)
        out["config"] = model.config_dict()
        if with_model and hasattr(model, "modulation_plan") and 8192 % model.length_multiple == 0:
            out["plan"] = model.modulation_plan(8192)
    except Exception as exc:  # a broken plugin or a missing pretrained file must not break the listing
        out["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return out


# built-ins register on import (after create_model exists, so they may import it)
from afilm_cli import pretrained  # noqa: E402, F401  (bundled pretrained models register too)
from afilm_cli.models import afilm, spline, tfilm  # noqa: E402, F401

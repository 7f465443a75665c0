"""The afilm checkpoint: one plain dict, saved atomically, loaded with weights_only=True.

Keys: format, format_version, afilm_version, model_name, model_config (plain dict), recipe
(r, sr, degrade, patch), state_dict, plus whatever the writer adds (optimizer, epoch, step, rng,
metrics, train_config). ``upsample``/``eval`` need nothing but the checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from afilm_cli import __version__
from afilm_cli.atomic import atomic_path
from afilm_cli.errors import AfilmError

FORMAT = "afilm-checkpoint"
FORMAT_VERSION = 1
RECIPE_KEYS = ("r", "sr", "degrade", "patch")


def make_checkpoint(model: torch.nn.Module, recipe: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The checkpoint dict for ``model`` (built by afilm_cli.models.create_model) and its data recipe."""
    missing = [k for k in RECIPE_KEYS if recipe.get(k) is None]
    if missing:
        raise ValueError(f"recipe lacks {missing}")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "afilm_version": __version__,
        "model_name": model.model_name,
        "model_config": model.config_dict(),
        "recipe": {k: recipe[k] for k in RECIPE_KEYS},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate; any problem is one AfilmError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise AfilmError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AfilmError(f"{path}: not a loadable afilm checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise AfilmError(f"{path}: not an afilm checkpoint (no '{FORMAT}' marker); "
                         "Keras .h5 files can be imported with 'afilm convert keras'")
    version = ckpt.get("format_version", 0)
    if not isinstance(version, int):
        raise AfilmError(f"{path}: damaged checkpoint (format_version {version!r} is not a number)")
    if version > FORMAT_VERSION:
        raise AfilmError(f"{path}: checkpoint format {version} is newer than this afilm "
                         f"({__version__}) understands; upgrade afilm")
    for key, kind in (("model_name", str), ("model_config", dict), ("recipe", dict), ("state_dict", dict)):
        if key not in ckpt:
            raise AfilmError(f"{path}: incomplete checkpoint (missing {key!r})")
        if not isinstance(ckpt[key], kind):
            raise AfilmError(f"{path}: damaged checkpoint ({key} is a {type(ckpt[key]).__name__}, "
                             f"not a {kind.__name__})")
    if not all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values()):
        raise AfilmError(f"{path}: damaged checkpoint (state_dict holds something other than tensors)")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model the checkpoint describes, load its weights, put it in eval mode."""
    from afilm_cli.models import create_model

    try:
        model = create_model(ckpt["model_name"], **ckpt["model_config"])
    except (TypeError, ValueError, ArithmeticError) as exc:  # a config this afilm's model cannot take
        raise AfilmError(f"checkpoint config does not fit model {ckpt['model_name']!r}: "
                         f"{str(exc).splitlines()[0]}") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise AfilmError(f"checkpoint weights do not fit model {ckpt['model_name']!r}: "
                         f"{str(exc).splitlines()[0]}") from None
    return model.to(device).eval()

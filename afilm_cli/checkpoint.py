"""The afilm checkpoint: one plain dict, saved atomically, loaded with weights_only=True.

Keys: format, format_version, afilm_version, model_name, model_config (plain dict), recipe
(r, sr, degrade, patch), state_dict, plus whatever the writer adds (optimizer, epoch, step, rng,
metrics, train_config). ``upsample``/``eval`` need nothing but the checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import torch

from afilm_cli import __version__
from afilm_cli.atomic import atomic_path, fsync_file
from afilm_cli.errors import AfilmError

FORMAT = "afilm-checkpoint"
FORMAT_VERSION = 1
RECIPE_KEYS = ("r", "sr", "degrade", "patch")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_OTHER_FILES = ((b"RIFF", "a WAV audio file"), (b"fLaC", "a FLAC audio file"), (b"OggS", "an Ogg audio file"),
                (b"ID3", "an MP3 audio file"))


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
        "recipe": {k: _python_scalars(recipe[k]) for k in RECIPE_KEYS},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **{k: _python_scalars(v) for k, v in extra.items()},
    }


def _python_scalars(value: Any) -> Any:
    """``value`` with its numpy scalars (an HDF5 attribute's np.int64, numpy math's np.float64) as the
    Python numbers they hold, in dicts, lists and tuples too: torch.load(weights_only=True), the only
    way afilm loads a checkpoint, refuses a file holding one."""
    if isinstance(value, np.generic):
        return value.item()
    if type(value) is dict:
        return {k: _python_scalars(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_python_scalars(v) for v in value)
    return value


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> Path:
    return save_checkpoints(ckpt, [path])[0]


def save_checkpoints(ckpt: dict[str, Any], paths: list, *, stale: tuple = ()) -> list[Path]:
    """Write ``ckpt`` to each of ``paths`` (a run's last.pt and best.pt), every one in full before any
    name changes; then the ``stale`` files go and the new names take their places, last ``paths[0]``.
    A run killed while saving leaves the files as they were, never a new last.pt beside an old best.pt
    (what is left is a few renames apart, not a save)."""
    paths = [Path(p) for p in paths]
    with contextlib.ExitStack() as renames:  # atomic_path renames on exit, the last entered first
        for path in paths:
            tmp = renames.enter_context(atomic_path(path))
            torch.save(ckpt, tmp)
            fsync_file(tmp)  # now, not between two renames
        # reached once all are written: the stale files go before the renames
        renames.callback(lambda: [Path(p).unlink(missing_ok=True) for p in stale])
    return paths


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate; any problem is one AfilmError line naming the file."""
    path = Path(path)
    if path.is_dir():
        raise AfilmError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise AfilmError(f"{path}: no such checkpoint")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise AfilmError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head == HDF5_SIGNATURE:  # torch.load's own error here suggests an unsafe weights_only=False
        raise AfilmError(f"{path}: not a loadable afilm checkpoint: {_hdf5_kind(path)}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        if not head.startswith((ZIP_SIGNATURE, b"\x80")):  # neither torch.save's zip nor its legacy pickle
            kind = next((what for sig, what in _OTHER_FILES if head.startswith(sig)), None)
            kind = "an empty file" if not head else kind or "not a PyTorch file"
            raise AfilmError(f"{path}: not an afilm checkpoint ({kind})") from None  # torch's text is noise
        if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in str(exc):
            # never relay PyTorch's advice to load with weights_only=False: that runs the file's code
            raise AfilmError(f"{path}: not an afilm checkpoint (it holds Python objects beyond tensors and "
                             "plain data, which afilm never loads)") from None
        # torch.save's zip or pickle, cut short or damaged: torch's own text runs to a paragraph
        raise AfilmError(f"{path}: not a readable afilm checkpoint (truncated or corrupt: "
                         f"{_short_reason(exc)})") from None
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


def _hdf5_kind(path: Path) -> str:
    """What an HDF5 file given as a checkpoint is, and what to do with it."""
    import h5py

    convert = (f"import it first with 'afilm convert keras {shlex.quote(str(path))}' and pass the .pt it "
               "writes")
    try:
        with h5py.File(path, "r") as f:
            keras = "layer_names" in f.attrs or "model_weights" in f or "layers" in f  # Keras 2 / Keras 3
            # afilm prepare's recipe attributes, or the bare data/label pair of the original prep_vctk.py
            patches = ("patch" in f.attrs and "r" in f.attrs) or {"data", "label"} <= set(f.keys())
    except OSError:
        return f"a damaged HDF5 file (if it is a Keras model: {convert})"
    if keras:
        return f"a Keras .h5 (HDF5) file; {convert}"
    if patches:
        return "an HDF5 file of training patches (data and label, as 'afilm prepare' writes), not a model"
    return f"an HDF5 file (if it is a Keras model: {convert})"


def _short_reason(exc: BaseException) -> str:
    """The gist of a load error: its first sentence ("PytorchStreamReader failed reading zip archive:
    failed finding central directory"), without the advice PyTorch appends."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__  # EOFError() from a pickle cut short says nothing more
    first = text.splitlines()[0].split(". ")[0].rstrip(".")
    first = first.removeprefix("PytorchStreamReader ")
    return first if len(first) <= 120 else first[:117] + "..."


def _few(what: str, names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} {what} ({', '.join(names[:shown])}{more})"


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], model_name: str,
                 source: str | os.PathLike | None = None, **kwargs: Any) -> None:
    """``model.load_state_dict(state_dict, strict=True)``; a mismatch is one AfilmError line naming the
    missing and unexpected keys and the shapes that differ (the first few of each, with a count):
    torch's own first line names none of them. ``source``: the checkpoint file, named in the message."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: {_shape(state_dict[k])} vs {_shape(v)} in the model"
              for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    parts = [_few(what, names) for what, names in (("missing", missing), ("unexpected", unexpected),
                                                    ("of another shape", shapes)) if names]
    if not parts:
        try:
            model.load_state_dict(state_dict, strict=True, **kwargs)
            return
        except RuntimeError as exc:  # keys and shapes fit, yet it failed (a dtype that cannot be copied)
            parts = [_short_reason(exc)]
    where = f"{source}: " if source is not None else ""
    raise AfilmError(f"{where}checkpoint weights do not fit model {model_name!r}: {'; '.join(parts)}")


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model the checkpoint describes, load its weights, put it in eval mode."""
    from afilm_cli.infer import resolve_device
    from afilm_cli.models import ModelContractError, create_model
    from afilm_cli.registry import UnknownNameError

    device = resolve_device(device, via="device")  # before building: one line for a device this machine lacks
    try:
        model = create_model(ckpt["model_name"], **ckpt["model_config"])
    except (UnknownNameError, ModelContractError):
        raise  # already one line naming the model and the real cause (a plugin's builder that raised)
    except (AfilmError, TypeError, ValueError, ArithmeticError) as exc:  # a config this model cannot take
        raise AfilmError(f"checkpoint config does not fit model {ckpt['model_name']!r}: "
                         f"{str(exc).splitlines()[0]}") from None
    load_weights(model, ckpt["state_dict"], ckpt["model_name"])
    return model.to(device).eval()

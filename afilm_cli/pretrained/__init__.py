"""Pretrained models shipped inside the package.

Each bundled model is a normal afilm checkpoint (weights stored in fp16 to keep the wheel small)
plus a model card; its SHA-256 is recorded here and checked at every load, so a damaged or
swapped file fails loudly instead of producing quiet garbage.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from afilm_cli.errors import AfilmError
from afilm_cli.registry import MODELS, near_names

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Bundled:
    name: str
    file: str
    sha256: str
    card: str
    description: str
    r: int  # the recipe it was trained for (checked against the file's by the tests):
    sr: int  # real input near sr / r Hz is what it is made for

    @property
    def low_rate(self) -> float:
        return self.sr / self.r


BUNDLED: dict[str, Bundled] = {
    "afilm_speech_r4": Bundled(
        name="afilm_speech_r4",
        file="afilm_speech_r4.pt",
        sha256="f2e3c1a33f415e367bef4ebd9a93ba80d5eef3ab02f40139b2e70cfe15454b4f",
        card="afilm_speech_r4.md",
        description="pretrained: speech 4 kHz -> 16 kHz (afilm_small, LibriSpeech + VCTK)",
        r=4, sr=16000,
    ),
    "afilm_speech_r2": Bundled(
        name="afilm_speech_r2",
        file="afilm_speech_r2.pt",
        sha256="9366c56299132639da0871610ef017979c467e4e64b4ec78cd39fa5d86b1475d",
        card="afilm_speech_r2.md",
        description="pretrained: speech 8 kHz -> 16 kHz (afilm_small, fine-tuned from afilm_speech_r4)",
        r=2, sr=16000,
    ),
}
# the model `eval`, `demo` and `upsample --simulate` use when no --ckpt is given; `upsample` of real
# input takes the bundled model made for the input's rate (for_input_rate)
DEFAULT = "afilm_speech_r4"


def for_input_rate(sr_in: int) -> str:
    """The bundled model for real input at ``sr_in`` Hz: of those made for an input rate at or below
    it, the highest (it resamples away the least of the input's band); below them all, the lowest.
    A rate that is not a positive number is one AfilmError line (0 and -1 picked a model)."""
    if isinstance(sr_in, bool) or not isinstance(sr_in, (int, float, np.number)) or not 0 < sr_in < math.inf:
        raise AfilmError(f"input rate must be a positive number of Hz, not {sr_in!r}")
    if not BUNDLED:
        return DEFAULT
    entries = sorted(BUNDLED.values(), key=lambda b: (b.low_rate, b.name != DEFAULT))
    fits = [b for b in entries if b.low_rate <= sr_in]
    return (fits[-1] if fits else entries[0]).name


def made_for(sr_in: int, sr: int) -> str | None:
    """The bundled model made for input at exactly ``sr_in`` Hz and output at ``sr``, if any."""
    return next((b.name for b in BUNDLED.values() if b.low_rate == sr_in and b.sr == sr), None)


def sha256sum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundled_name(path: str | os.PathLike) -> str | None:
    """The bundled model's name when ``path`` is its file, else None."""
    path = Path(path)
    return next((e.name for e in BUNDLED.values()
                 if path.name == e.file and path.resolve().parent == HERE.resolve()), None)


def bundled_checkpoint_path(name: str | None = None) -> Path:
    """Path of a bundled checkpoint after verifying its SHA-256 (AfilmError if absent or damaged)."""
    name = name or DEFAULT
    if name not in BUNDLED:
        known = ", ".join(sorted(BUNDLED)) or "none"
        raise AfilmError(f"no bundled pretrained model {name!r} (bundled: {known})")
    entry = BUNDLED[name]
    path = HERE / entry.file
    if not path.is_file():
        raise AfilmError(f"{path}: bundled model file is missing; reinstall afilm")
    digest = sha256sum(path)
    if digest != entry.sha256:
        raise AfilmError(f"{path}: SHA-256 {digest[:12]}... does not match the recorded "
                         f"{entry.sha256[:12]}...; the file is damaged, reinstall afilm")
    return path


def checkpoint_path(spec: str | os.PathLike) -> Path:
    """A checkpoint given on the command line: a file, a run folder (its best.pt, else its last.pt),
    or a bundled model's name (no such file). Another model's name (a preset) is refused, naming the
    bundled ones: it has no weights to load."""
    path = Path(spec)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).exists():
                return path / name
        raise AfilmError(f"{path}: a folder with no best.pt or last.pt (a run folder of 'afilm train' holds "
                         "them once its first epoch ends)")
    if not path.exists() and str(spec) in BUNDLED:
        return bundled_checkpoint_path(str(spec))
    if path.is_file() and bundled_name(path):  # the bundled file by its path (as the demo prints it)
        return bundled_checkpoint_path(bundled_name(path))
    if not path.exists() and str(spec) in MODELS:  # a model's name, but one without trained weights
        name = str(spec)
        if name == "spline":
            what = "is the cubic-spline baseline, with no weights ('afilm eval' reports it beside any model)"
        else:
            what = f"is an untrained model preset (train it with 'afilm train --model {name}')"
        bundled = ", ".join(sorted(BUNDLED)) or "none in this build"
        raise AfilmError(f"{name}: no such checkpoint; {name} {what}; bundled pretrained models: {bundled}")
    if not path.exists() and path.name == str(spec) and not path.suffix:  # a bare name: a mistyped model?
        bundled = ", ".join(sorted(BUNDLED)) or "none in this build"
        near = near_names(str(spec), sorted(BUNDLED), most=0)  # close ones are the list that follows
        said = f" (did you mean {near[0]!r}?)" if near else ""
        raise AfilmError(f"{spec}: no such checkpoint file, run folder or bundled model{said} (bundled: "
                         f"{bundled})")
    return path


def compact_checkpoint(src: str | Path, dst: str | Path) -> str:
    """Write a checkpoint for bundling: weights in fp16 (half the size; they are cast back to fp32 on
    load), no optimizer or RNG state. Returns the SHA-256 of the written file."""
    from afilm_cli.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(src)
    keep = {k: ckpt[k] for k in ("format", "format_version", "afilm_version", "model_name", "model_config",
                                 "recipe", "input_level_dbfs", "epoch", "step", "metrics") if k in ckpt}
    keep["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    beyond = [k for k, v in keep["state_dict"].items() if v.is_floating_point() and not v.isfinite().all()]
    if beyond:  # fp16 tops out at 65504: such weights would load as inf
        raise AfilmError(f"{src}: weights beyond fp16's range ({', '.join(beyond[:3])}); keep it in fp32")
    save_checkpoint(dst, keep)
    return sha256sum(Path(dst))


def model_card(name: str) -> str:
    return (HERE / BUNDLED[name].card).read_text(encoding="utf-8")


def _register(entry: Bundled) -> None:
    def build(**overrides: Any) -> torch.nn.Module:
        from afilm_cli.checkpoint import load_checkpoint, model_from_checkpoint

        if overrides:
            raise AfilmError(f"pretrained model {entry.name!r} takes no configuration overrides")
        return model_from_checkpoint(load_checkpoint(bundled_checkpoint_path(entry.name)))

    MODELS.register(entry.name, pretrained=True, description=entry.description,
                    card=lambda: model_card(entry.name))(build)


for _entry in BUNDLED.values():
    _register(_entry)

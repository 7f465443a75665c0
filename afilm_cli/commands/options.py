"""Option aliases and checks shared by several commands, so each is spelled and documented once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from afilm_cli.errors import AfilmError

Device = Annotated[str, typer.Option("--device", help="auto (CUDA if available), cpu or cuda.")]
Force = Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing outputs.")]
_CKPT = ("Checkpoint (.pt) written by 'afilm train' or 'afilm convert', a run folder (its best.pt, else "
         "last.pt), or a bundled model's name. Default: the newest runs/*/best.pt, else ")
Ckpt = Annotated[Path | None, typer.Option("--ckpt", help=_CKPT + "the bundled afilm_speech_r4.")]
UpsampleCkpt = Annotated[Path | None, typer.Option("--ckpt", help=_CKPT + "for real input the bundled model "
                                                   "made for each file's rate (afilm_speech_r2 from 8 kHz "
                                                   "up, afilm_speech_r4 below); with --simulate "
                                                   "afilm_speech_r4.")]
# What a recipe's degrade may be (afilm_cli.audio.degrade_methods): said alike wherever it is an option
DEGRADE_SPEC = ("decimate, resample or subsample, or several of them joined by + (each once: "
                "decimate+resample)")
DEGRADE_METAVAR = "METHOD[+METHOD]"
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Patches per batch.")]
Seed = Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Random seed.")]
Threads = Annotated[str, typer.Option("--threads", metavar="N|auto", help="CPU threads for torch: a number, "
                                      "or auto: the cores no other process is busy on (at least 1).")]
NoMatchLevel = Annotated[bool, typer.Option(
    "--no-match-level", help="Run the model on the input as it is. By default each model window is "
    "scaled to the level of the model's training data (recorded in its checkpoint, e.g. -24.4 dBFS RMS "
    "for afilm_speech_r4) and its DC offset removed before the model, and both are put back after: the "
    "models are not scale-invariant (quiet input came out worse than the spline) and ring on an offset.")]


def refuse_existing(out: Path, force: bool) -> None:
    """Nothing is overwritten without --force; checked before the work that would write ``out``."""
    if out.exists() and not force:
        raise AfilmError(f"{out} exists; pass --force to overwrite it")

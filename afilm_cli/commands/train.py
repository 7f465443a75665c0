"""`afilm train`: build a TrainConfig from the options and call afilm_cli.train.train."""

from __future__ import annotations

import ast
import os
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from afilm_cli.commands.options import DEGRADE_METAVAR, DEGRADE_SPEC, Device, Seed, Threads
from afilm_cli.errors import AfilmError

Opt = typer.Option


def parse_model_args(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; a VALUE that reads as a Python literal (1e-3, 4, [16, 32], true) is one, any
    other stays a word (tfilm, no). Types and ranges are the model config's to check (UNetConfig, when
    the model is built): the model may only be known later, from --init or --resume."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--model-arg")
        literal = {"true": "True", "false": "False"}.get(text.strip().lower(), text)
        try:
            value = ast.literal_eval(literal)
        except (ValueError, SyntaxError):
            value = text  # a plain word, e.g. modulation=tfilm
        out[key.strip()] = value
    return out


def command(
    ctx: typer.Context,
    model: Annotated[str | None, Opt("--model", "-m", help="Model to train ('afilm models' lists them). "
                                     "Default: afilm, or the --init checkpoint's model.")] = None,
    model_arg: Annotated[list[str] | None, Opt("--model-arg", metavar="KEY=VALUE", help="Change one setting "
                                               "of the model's config (repeatable; 'afilm models --info "
                                               "NAME' lists them), e.g. --model-arg final_init_std=1e-3.")
                         ] = None,
    train: Annotated[Path | None, Opt("--train", help="Training patches (HDF5 from 'afilm prepare' or the "
                                      "reference). Default: the newest data/*-train.h5.")] = None,
    val: Annotated[Path | None, Opt("--val", help="Validation patches. Default: the training file's sibling "
                                    "*-val.h5; without one, best.pt follows the training loss.")] = None,
    data_dir: Annotated[Path, Opt("--data-dir", help="Where to look for the default files (not with "
                                  "--resume: the run keeps its own).")] = Path("data"),
    epochs: Annotated[int | None, Opt("--epochs", min=1, help="Epochs in all (default 20).")] = None,
    batch_size: Annotated[int | None, Opt("--batch-size", "-b", min=1,
                                          help="Patches per step (per process under torchrun). "
                                          "(default 16)")] = None,
    lr: Annotated[float | None, Opt("--lr", help="Adam learning rate (default 3e-4).")] = None,
    lr_schedule: Annotated[str | None, Opt("--lr-schedule", help="constant (the reference) or cosine: "
                                           "from --lr down to 0 at the run's last step. (default "
                                           "constant)")] = None,
    loss: Annotated[str | None, Opt("--loss", help="mse (AFiLM) or rmse (TFiLM: mean per-patch RMSE). "
                                    "(default mse)")] = None,
    max_steps: Annotated[int | None, Opt("--max-steps", min=0, help="Stop after N steps in all; 0: no "
                                         "limit (with --resume, drops the run's own).")] = None,
    out: Annotated[Path | None, Opt("--out", "-o", help="Run folder for last.pt, best.pt, log.jsonl. "
                                    "Default: runs/<model>-<time>, or the resumed run's folder.")] = None,
    seed: Seed = 0,
    device: Device = "auto",
    threads: Threads = "auto",
    resume: Annotated[Path | None, Opt("--resume", help="Continue the run in this folder (its last.pt) or "
                                       "from this checkpoint, exactly where it stopped.")] = None,
    init: Annotated[str | None, Opt("--init", metavar="CKPT|NAME", help="Start a new run from these "
                                    "weights (a checkpoint, a run folder's best.pt (else last.pt), or a "
                                    "bundled model "
                                    "such as afilm_speech_r4) "
                                    "with a fresh optimizer: fine-tuning.")] = None,
    compile: Annotated[bool, Opt("--compile", help="torch.compile the model.")] = False,
    precision: Annotated[str, Opt("--precision", help="fp32, or bf16: autocast on CUDA (measured slower "
                                  "than fp32 for these models on an H200; ignored on CPU).")] = "fp32",
    r: Annotated[int | None, Opt("--r", help="Upsampling ratio (for HDF5 files without a recipe).")] = None,
    sr: Annotated[int | None, Opt("--sr", help="High sample rate (for HDF5 files without a recipe).")] = None,
    degrade: Annotated[str | None, Opt("--degrade", metavar=DEGRADE_METAVAR,
                                       help=f"For HDF5 files without a recipe: {DEGRADE_SPEC}.")] = None,
    log_every: Annotated[int, Opt("--log-every", min=1, help="A JSONL step line every N steps.")] = 50,
    no_progress: Annotated[bool, Opt("--no-progress", help="No progress bar (nor, where the output is "
                                     "not a terminal, the plain progress line).")] = False,
    force: Annotated[bool, Opt("--force", "-f", help="Replace the run already in --out. Its files stay "
                               "until this run saves its first checkpoint (then those it does not write "
                               "go), so a run that fails before that leaves it as it was.")] = False,
) -> None:
    """Train a model on HDF5 patches: MSE, Adam, checkpoints every epoch, exact --resume.

    Multi-GPU: torchrun --nproc-per-node N -m afilm_cli train ... (one process per GPU).
    """
    from afilm_cli import train as training
    from afilm_cli.threads import parse_threads
    from afilm_cli.wording import counted

    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "lr_schedule": lr_schedule, "loss": loss,
             "max_steps": max_steps, "r": r, "sr": sr, "degrade": degrade}
    given = {k: v for k, v in given.items() if v is not None}
    if model_arg:
        given["model_args"] = parse_model_args(model_arg)
    common = {"train": str(train) if train else None, "val": str(val) if val else None,
              "out": str(out) if out else None, "device": device, "threads": parse_threads(threads),
              "compile": compile, "precision": precision, "log_every": log_every, "progress": not no_progress,
              "force": force}
    if resume is not None and _typed(ctx, "data_dir"):  # it was taken and never looked in
        raise AfilmError("--data-dir: a resumed run goes on with its own training and validation files; "
                         "to give others, pass --train FILE (and --val FILE)")
    if resume is not None:
        # the run keeps its own settings (threads and precision included: resume is exact at the same
        # ones); only what the user typed is passed on (and checked)
        typed = {k: v for k, v in common.items()
                 if v is not None and _typed(ctx, "no_progress" if k == "progress" else k)}
        changes = {**given, **typed}
        if model is not None:
            changes["model"] = model
        if init is not None:
            changes["init"] = init  # refused by train(): a resumed run keeps its weights
        if _typed(ctx, "seed"):
            changes["seed"] = seed
        cfg = training.resume_config(str(resume), **changes)
    else:
        if init is not None and model is None:
            model = training.init_model_name(init)
        cfg = training.TrainConfig(model=model or "afilm", data_dir=str(data_dir), seed=seed, init=init,
                                   **given, **common)
    result = training.train(cfg)
    if result.interrupted:
        typer.echo(f"interrupted at step {result.step}; checkpoint {result.last}; continue with: "
                   f"afilm train --resume {shlex.quote(str(result.out))}", err=True)
        raise typer.Exit(130)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        # none in a run resumed into a new folder whose epochs never beat the score it resumed with
        best = result.best or "none (no epoch of this run beat the best score it resumed with)"
        typer.echo(f"done: {counted(result.epoch, 'epoch')}, {counted(result.step, 'step')}; best: {best}; "
                   f"last: {result.last}")


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave option ``name`` (rather than it holding its default)."""
    return getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"

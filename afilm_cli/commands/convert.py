"""`afilm convert`: import the original Keras AFiLM / TFiLM weights, and export back to Keras."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from afilm_cli.commands.options import Force, refuse_existing
from afilm_cli.errors import AfilmError

app = typer.Typer(
    help="Convert checkpoints between afilm and the original Keras code (ncarraz/AFILM). "
         "'afilm convert keras MODEL.h5' imports; 'afilm convert to-keras CKPT.pt' exports.",
    no_args_is_help=True,
)


# what each direction writes, and the suffixes its file may have (the first: the one suggested)
WRITES = {".pt": ("convert keras writes an afilm checkpoint", (".pt",)),
          ".h5": ("convert to-keras writes a Keras HDF5 weights file", (".h5", ".hdf5"))}


def refuse_output(out: Path, src: Path, force: bool, suffix: str) -> None:
    """No output over the input (--force or not), nor over another file without --force, nor under a
    suffix that misnames what is written (a checkpoint named .h5 was taken for a Keras file after)."""
    if out.exists() and out.resolve() == src.resolve():
        raise AfilmError(f"{out} is the input file; give the output another name with -o")
    if out.is_dir():  # "pass --force" would not help: the write fails on a folder, said only after the work
        example = out / src.with_suffix(suffix).name
        raise AfilmError(f"{out} is a folder; -o takes the file to write, e.g. {example}")
    above = next((p for p in out.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():  # said by the write before, after the work
        shown = next((p for p in out.parents if p.absolute() == above), above)
        raise AfilmError(f"cannot write {out}: {shown} is a file, not a folder")
    what, suffixes = WRITES[suffix]
    if out.suffix.lower() not in suffixes:
        raise AfilmError(f"{out}: {what}; name it {' or '.join(suffixes)}, e.g. -o {out.with_suffix(suffix)}")
    refuse_existing(out, force)


@app.command("keras")
def keras(
    model_h5: Annotated[Path, typer.Argument(metavar="MODEL.h5", help="Keras .h5: a full model (model.save) "
                                             "or weights only (model.save_weights).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Checkpoint (.pt) to write. Default: "
                                             "MODEL.pt beside the input.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="afilm or tfilm. Default: detected "
                                              "from the file.")] = None,
    r: Annotated[int | None, typer.Option(
        "--r", min=2, help="Upscaling ratio the model was trained for. Keras files do not store it: taken "
        "from a name hint (r4, x4, scale4) or an afilm_r attribute when present, else required. As for "
        "'afilm prepare', it must divide the sample rate and the 8192-sample input.")] = None,
    degrade: Annotated[str | None, typer.Option(
        "--degrade", help="How its training data made the low-rate input: subsample (x[::r], the "
        "published VCTK-Multi models; the default) or decimate (anti-aliased, the reference's "
        "single-speaker recipe). A file written by 'afilm convert to-keras' records it.")] = None,
    sr: Annotated[int | None, typer.Option("--sr", min=1, help="High (output) sample rate of the model "
                                           "(default 16000, or what the file records).")] = None,
    force: Force = False,
) -> None:
    """Import an original Keras AFiLM / TFiLM .h5 as an afilm checkpoint.

    The arrays are matched in the file's order and every shape is checked against the original
    model (n_layers 4, 8192-sample input). The checkpoint then works with 'afilm upsample --ckpt'
    and 'afilm eval --ckpt'. Export back with 'afilm convert to-keras'.
    """
    from afilm_cli.audio import degrade_methods
    from afilm_cli.checkpoint import make_checkpoint, save_checkpoint
    from afilm_cli.keras_io import KERAS_MODELS, check_keras_import, load_keras_model

    if model is not None and model not in KERAS_MODELS:
        raise AfilmError(f"--model must be one of {', '.join(KERAS_MODELS)}, got {model!r}")
    if degrade is not None:
        degrade_methods(degrade)  # a typo is one clear error, before the file is read
    out = out or model_h5.with_suffix(".pt")
    # the input's own faults first (a .pt given here, another model, a missing or refused --r): an existing
    # output said "exists; pass --force", and with --force the file's fault came only then
    check_keras_import(model_h5, model, r, sr=sr, degrade=degrade)
    refuse_output(out, model_h5, force, ".pt")
    net, info = load_keras_model(model_h5, model, r, sr=sr, degrade=degrade)
    recipe = info.pop("recipe")  # r, sr and degrade resolved (given, recorded or default) and checked
    save_checkpoint(out, make_checkpoint(net, recipe, keras_source=info))
    claim = f" (from the {info['r_from']})"
    if info["r_from"] == "user":
        claim = " (your claim: Keras files do not store r)"
    typer.echo(f"{model_h5} [{info['format']}] -> {out}: {info['model']}, r={info['r']}{claim}, "
               f"sr={recipe['sr']}, degrade={recipe['degrade']}")


@app.command("to-keras")
def to_keras(
    ckpt: Annotated[Path, typer.Argument(metavar="CKPT.pt", help="afilm checkpoint of a paper-size afilm or "
                                         "tfilm model (trained here or imported), or a run folder (its "
                                         "best.pt, else last.pt).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Keras .h5 (or .hdf5) to write. Default: "
                                             "CKPT.h5 beside the checkpoint.")] = None,
    force: Force = False,
) -> None:
    """Export an afilm checkpoint to the Keras weights-only layout (model.save_weights).

    The original code loads it with get_afilm().load_weights(path) (or get_tfilm). The file also
    records r, sr and the degradation (attributes afilm_r, afilm_sr, afilm_degrade), which 'afilm
    convert keras' reads back.
    """
    from afilm_cli.checkpoint import load_checkpoint
    from afilm_cli.keras_io import keras_config, model_from_checkpoint_fast, write_keras_h5
    from afilm_cli.pretrained import checkpoint_path

    path = checkpoint_path(ckpt)  # a run folder (its best.pt, else last.pt) or a bundled model, as upsample
    # beside the checkpoint file (a run folder's best.h5); a bundled model's name: NAME.h5 here
    out = out or (path if ckpt.is_dir() else ckpt).with_suffix(".h5")
    data = load_checkpoint(path)  # the input's own faults first: a Keras .h5 given here is not "exists"
    refuse_output(out, path, force, ".h5")
    try:
        net = model_from_checkpoint_fast(data)
        keras_config(net)
    except AfilmError as exc:  # weights that do not fit, a model Keras cannot build: said with the file
        raise AfilmError(f"{path}: {exc}") from None
    recipe = data["recipe"]
    write_keras_h5(out, net, r=recipe["r"], sr=recipe["sr"], degrade=recipe["degrade"],
                   patch=recipe.get("patch"))
    typer.echo(f"{path} -> {out}: Keras {net.config.modulation} weights (save_weights layout), "
               f"r={data['recipe']['r']}")

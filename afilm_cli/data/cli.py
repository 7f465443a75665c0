'''What every `afilm prepare <dataset>` command shares: option aliases, the progress bar, the summary.

A dataset, built-in or plugin, is a Typer command function registered in DATASETS: it becomes
``afilm prepare NAME`` (see afilm_cli/commands/prepare.py), its parameters the options, its docstring
the help, the ``help`` meta the line in ``afilm prepare --help``. A plugin package names a module in
the ``afilm.datasets`` entry-point group; importing that module registers the command (the entry point
is imported, never called: afilm_cli/registry.py). A complete plugin module, runnable as it stands
(tests/plugin_pkg/afilm_example_plugin/datasets.py is this code, and tests/test_registry.py prepares
real audio with it and trains on the result)::

    """A dataset plugin: `afilm prepare mycorpus DIR` turns every audio file under DIR into patches."""

    from pathlib import Path
    from typing import Annotated

    import typer

    from afilm_cli import audio
    from afilm_cli.data import cli
    from afilm_cli.data.recipe import Recipe, SplitPlan, default_output_paths, pick_fraction
    from afilm_cli.registry import DATASETS


    @DATASETS.register("mycorpus", help="Every audio file under a folder, 10% held out for validation.")
    def mycorpus(
        root: Annotated[Path, typer.Argument(help="The corpus folder.")],
        r: cli.R = 4,
        patch: cli.Patch = 8192,
        seed: cli.Seed = 0,
        multiple: cli.Multiple = 128,
        out: cli.Out = Path("data"),
        force: cli.Force = False,
    ) -> None:
        """My corpus (this docstring is the help of `afilm prepare mycorpus --help`)."""
        recipe = Recipe(r=r, patch=patch, seed=seed, multiple=multiple).validate()
        files = [(path, path.parent.name) for path in audio.find_audio_files(root)]  # (file, speaker)
        held_out = pick_fraction([path for path, _ in files], 0.1, seed)
        paths = default_output_paths("mycorpus", recipe.r, recipe.degrade, recipe.sr, out)
        plans = [SplitPlan("train", paths["train"], [f for f in files if f[0] not in held_out]),
                 SplitPlan("val", paths["val"], [f for f in files if f[0] in held_out])]
        cli.run_prepare(recipe, plans, split_info={"val": "fraction 0.1 of files", "seed": seed},
                        root=root, force=force)

The pieces:

- ``Recipe`` (afilm_cli/data/recipe.py): r, sr (16000), patch (8192), stride (4096), degrade
  ("decimate"), sam (1.0), seed (0), multiple (128), speed ("1"): how every file becomes patches.
  ``validate()`` refuses a bad one in one AfilmError line; every field is stored in the outputs and
  compared on a rerun. The aliases below (``cli.R``, ``cli.SR``, ``cli.Patch`` ...) are the built-ins'
  options for them, help text included.
- ``SplitPlan(part, out, sources)``: one output file. ``part`` is "train" or "val"; ``sources`` is a
  list of (audio path, speaker) pairs (the speaker is only counted in the summary). Naming rule, checked
  before anything is written: the training output is ``<stem>-train.h5`` and the validation output
  ``<stem>-val.h5`` beside it, which is how ``afilm train`` finds (``data/*-train.h5``) and pairs them;
  ``default_output_paths(name, r, degrade, sr, out)`` gives ``<out>/<name>-r<r>-<degrade>[-sr<sr>]-
  {train,val}.h5``, so that different recipes never share a file.
- ``run_prepare(recipe, plans, split_info=..., root=..., force=...)`` takes one "train" plan and at most
  one "val" plan (a "val" plan without files is dropped with a warning; without one, only the training
  file is written). ``split_info`` is a JSON-able dict saying how the files were divided: it is stored
  as the outputs' ``split`` attribute and, with the file lists, compared on a rerun. ``root`` is the
  corpus folder: file paths are recorded relative to it, and a training list with no file is refused as
  "ROOT: no audio files found" (or "no such folder"). An output of the same recipe and files, from the
  same ``root``, is kept unless ``force``. Files that cannot be used are skipped with a warning; a
  training split with no patch at all is refused. A ``recipe.patch`` that is not a multiple of 256 (the
  length every built-in network needs; 'afilm train' refuses another) is prepared, with one warning
  naming the nearest valid lengths. A dataset with long work before run_prepare (vctk's download) says
  it first with ``cli.warn_patch(recipe)`` and passes ``patch_checked=True``, so that it is said once.
- Errors: raise ``afilm_cli.errors.AfilmError`` for a one-line message and exit status 2.
'''  # ''' quotes: the example holds docstrings

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import h5py
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from afilm_cli.atomic import missing_folders, remove_empty
from afilm_cli.data.recipe import (
    Recipe,
    SplitPlan,
    SplitResult,
    existing_output_ok,
    patch_warning,
    prepare_split,
    split_fingerprint,
    val_path_for,
)
from afilm_cli.errors import AfilmError
from afilm_cli.wording import counted

R = Annotated[int, typer.Option("--r", min=2, help="Upsampling ratio: low rate = sr / r (paper: 2, 4, 8).")]
SR = Annotated[int, typer.Option("--sr", min=1, help="High sample rate (Hz); files are resampled to it.")]
Patch = Annotated[int, typer.Option("--patch", min=1, help="Patch length in samples (reference: 8192; the "
                                    "built-in models need a multiple of 256).")]
Stride = Annotated[int | None, typer.Option("--stride", min=1, help="Hop between patches in samples "
                                            "(default: 4096; vctk --split multi: 8192).")]
Degrade = Annotated[str | None, typer.Option(
    "--degrade", metavar="METHOD[+METHOD]", help="Low-res recipe: decimate (Chebyshev-I order 8, zero-phase, "
    "then every r-th sample: flat to 0.8 of the low-rate Nyquist), resample (resample_poly, Kaiser FIR: "
    "flat to about 0.9, the resampler afilm upsample applies to real input) or subsample (x[::r], no "
    "filter); several joined by + degrade every file each way (decimate+resample: a model for both "
    "kinds of low-rate input). "
    "Default: decimate; vctk --split multi: subsample, as the reference's multi-speaker data.")]
Sam = Annotated[float | None, typer.Option("--sam", help="Probability of keeping each patch, in (0, 1] "
                                           "(default: 1.0; vctk --split multi: 0.25).")]
Seed = Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1,
                                   help="Seed for patch sampling and validation picks.")]
Multiple = Annotated[int, typer.Option("--multiple", min=1, help="Crop the patch count to a multiple of "
                                       "this (reference: 128, its batch multiple).")]
Speed = Annotated[str, typer.Option(
    "--speed", metavar="F[,F...]", help="Speed perturbation of the training split: every training file "
    "once per factor, resampled to play that much faster (0.9,1,1.1: three voices per speaker, as "
    "Kaldi and lhotse do; pitch and formants move with it). Validation is never perturbed.")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder for the .h5 files.")]
Force = Annotated[bool, typer.Option("--force", "-f", help="Rebuild outputs that already exist.")]
ValFraction = Annotated[float | None, typer.Option(
    "--val-fraction", min=0.0, max=0.99, help="Hold out this fraction for validation, picked by --seed "
    "(default: 0.1 of the files for folder; the reference's files or speakers for vctk).")]

err = Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


def note(message: str) -> None:
    """A progress line on stderr, never wrapped: paths and checksums in it stay copyable."""
    err.print(escape(message), soft_wrap=True)


def warn_patch(recipe: Recipe) -> None:
    """Warn where ``recipe.patch`` is a length the built-in networks cannot train on (not a multiple of
    256), naming the nearest valid ones. :func:`run_prepare` calls it for every dataset, built-in or
    plugin; one with long work before that (vctk's download) calls it first and passes run_prepare
    ``patch_checked=True``, so that the run says it once."""
    if message := patch_warning(recipe):
        warn(message)


def _stale_val(train_out: Path, force: bool) -> None:
    """This run has no validation split, but a -val.h5 beside its train file (from a run that had one)
    would be paired with it by 'afilm train': --force removes it, otherwise the user is told."""
    val = val_path_for(train_out)
    if not val.exists():
        return
    if force:
        val.unlink()
        warn(f"removed {val}: it came from an earlier run's validation split, which this run has none of")
    else:
        raise AfilmError(f"{val} is left from an earlier run with a validation split, and this run has "
                         "none: 'afilm train' would pair it with the new train file (whose files it may "
                         "share); pass --force to remove it")


def check_plans(plans: list[SplitPlan], root: Path | None = None) -> list[SplitPlan]:
    """The plans run_prepare writes, checked before anything is: one ``train`` plan with files, named
    ``<stem>-train.h5``, and at most one ``val`` plan, named ``<stem>-val.h5`` beside it (what ``afilm
    train`` finds and pairs). A val plan without files is dropped with a warning."""
    where = f"{root}: " if root is not None else ""
    parts = [plan.part for plan in plans]
    if parts.count("train") != 1 or parts.count("val") > 1 or set(parts) - {"train", "val"}:
        raise AfilmError(f"{where}{'nothing to prepare: ' * (not parts)}expected one 'train' SplitPlan and "
                         f"at most one 'val', got {parts or 'none'}")
    train = next(plan for plan in plans if plan.part == "train")
    if not train.out.name.endswith("-train.h5"):
        raise AfilmError(f"{train.out}: a training output must be named <stem>-train.h5, and its validation "
                         "file <stem>-val.h5 beside it ('afilm train' finds and pairs them by these names; "
                         "default_output_paths() gives both)")
    val = next((plan for plan in plans if plan.part == "val"), None)
    if val is not None and val.out != val_path_for(train.out):
        raise AfilmError(f"{val.out}: the validation output of {train.out} must be {val_path_for(train.out)} "
                         "('afilm train' pairs them by name)")
    if not train.sources:
        if root is not None and not Path(root).exists():
            raise AfilmError(f"{root}: no such folder")
        if val is not None and val.sources:
            raise AfilmError(f"{where}no files for the training split (all {len(val.sources)} went to "
                             "validation)")
        raise AfilmError(f"{root}: no audio files found" if root is not None
                         else "no audio files found for the training split (its file list is empty)")
    if val is not None and not val.sources:
        warn(f"no validation files: writing {train.out.name} only")
        plans = [train]
    return plans


def run_prepare(recipe: Recipe, plans: list[SplitPlan], *, split_info: dict[str, Any],
                root: Path | None = None, force: bool = False, patch_checked: bool = False
                ) -> list[SplitResult]:
    """Write every plan's output (skipping finished ones unless ``force``), then print a summary.

    A patch length the built-in networks cannot take is warned about first (:func:`warn_patch`), unless
    ``patch_checked``: the caller has called warn_patch already. Refused (AfilmError, nothing written, no
    folder made) for plans :func:`check_plans` refuses, and when the training split gives no patch
    (every file skipped or shorter than one patch)."""
    recipe.validate()
    if not patch_checked:
        warn_patch(recipe)
    plans = check_plans(plans, root)
    extra = {"split": split_info, "split_sources": split_fingerprint(plans, root)}
    checked = {**extra} if root is None else {**extra, "source_root": str(Path(root).resolve())}
    if not any(plan.part == "val" for plan in plans):
        _stale_val(plans[0].out, force)
    results: list[SplitResult] = []
    todo: list[SplitPlan] = []
    for plan in plans:
        if not force and existing_output_ok(plan.out, {**recipe.for_part(plan.part).attrs(), **checked}):
            err.print(f"{escape(str(plan.out))} already exists with this recipe: skipped "
                      "(--force rebuilds it)", soft_wrap=True)
            results.append(_existing(plan))
        else:
            todo.append(plan)
    new_dirs = missing_folders(plan.out.parent for plan in todo)
    # no bar where stderr is no terminal (a pipe, a log file): none would show while it runs, and rich's
    # Progress then printed each split's final bar (its files and time are in the summary table) above
    # the error raised inside it, or a blank line where every output was kept
    with Progress(TextColumn("{task.description:>5}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("files"), TimeElapsedColumn(), console=err,
                  disable=not err.is_interactive) as progress:
        for plan in todo:
            task = progress.add_task(plan.part, total=len(plan.sources))
            try:
                res = prepare_split(plan, recipe, root=root, extra_attrs=extra, warn=warn,
                                    advance=lambda task=task: progress.advance(task))
            except KeyboardInterrupt:  # Ctrl-C: the folders the run made go too, where left empty
                remove_empty(new_dirs)
                raise
            results.append(res)
            if res.status == "empty":
                msg = f"no patches for {plan.part}: {_why_empty(res, plan, recipe)}"
                if plan.part == "train":
                    remove_empty(new_dirs)
                    raise AfilmError(msg)
                warn(msg + f"; {plan.out.name} not written")
                if plan.out.exists():  # an earlier run's (--force): train would pair it with this one's
                    plan.out.unlink()
                    warn(f"removed {plan.out}: it came from an earlier run, and this run's validation split "
                         "has no patches ('afilm train' would have paired it with the new training file)")
    print_summary(results)
    return results


def _why_empty(res: SplitResult, plan: SplitPlan, recipe: Recipe) -> str:
    """Why a split gave no patch: its files were skipped (too short among the reasons, each warned about),
    or --sam kept none of the patches of those that were not (every file used holds one patch at least)."""
    why = []
    if res.skipped:
        why.append(f"{len(res.skipped)} of {len(plan.sources)} files were skipped")
    if res.files:
        usable = counted(res.files, "usable file")
        why.append(f"--sam {recipe.sam:g} kept none of the patches of the {usable}")
    return " and ".join(why)


def _existing(plan: SplitPlan) -> SplitResult:
    res = SplitResult(plan.part, plan.out, status="exists")
    with h5py.File(plan.out, "r") as f:
        res.patches = int(f["data"].shape[0])
    return res


def print_summary(results: list[SplitResult]) -> None:
    """The figures of each split in a table, then each output file's path on a line of its own
    ("train: PATH"): a path is never wrapped or cut, however narrow the terminal or long the path, so a
    script reading stdout (80 columns on a pipe) gets it whole. The table holds short words and
    figures only, about 76 columns wide."""
    # "seconds" beside "hours" read as more audio: it is the time the split took to prepare
    table = Table(title="afilm prepare", title_justify="left", caption_justify="left",
                  caption="hours: audio used; seconds: time taken to prepare it")
    for col in ("split", "files", "skipped", "speakers", "hours", "patches", "seconds", "output"):
        table.add_column(col, justify="left" if col in ("split", "output") else "right", overflow="fold")
    results = sorted(results, key=lambda r: r.part != "train")
    for res in results:
        if res.status == "exists":
            table.add_row(res.part, "-", "-", "-", "-", str(res.patches), "-", "existed")
            continue
        table.add_row(res.part, str(res.files), str(len(res.skipped)), str(res.speakers),
                      f"{res.seconds_audio / 3600:.3f}", str(res.patches), f"{res.seconds:.1f}",
                      "written" if res.status == "written" else "not written")
    console = Console(highlight=False)
    console.print(table)
    width = max((len(res.part) for res in results), default=0) + 1
    for res in results:
        if res.status != "empty":  # not written (no patches): no file to name
            console.print(f"{res.part + ':':<{width}} {res.out}", markup=False, soft_wrap=True)

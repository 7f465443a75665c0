"""Any folder tree of audio files (any format soundfile reads, any sample rate): `afilm prepare folder`.

The same recipe as VCTK (afilm_cli/data/recipe.py); the validation set is, in order of precedence,
a separate folder (``--val-dir``), whole top-level subfolders (``--by-subfolder``: one subfolder =
one speaker, so no speaker is in both sets; files directly in the folder, of no known speaker, always
train), or files, picked deterministically by ``--seed`` for
``--val-fraction`` (default 0.1; 0 writes only the training file). Outputs are named after the
folder: ``<out>/<name>-r<r>-<degrade>-{train,val}.h5``.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Annotated

import typer

from afilm_cli import audio
from afilm_cli.data import cli
from afilm_cli.data.recipe import (
    Recipe,
    SplitPlan,
    check_usable,
    default_output_paths,
    pick_fraction,
)
from afilm_cli.errors import AfilmError
from afilm_cli.registry import DATASETS

Source = tuple[Path, str]


def list_audio(root: str | os.PathLike) -> list[Source]:
    """Sorted (file, speaker) pairs under ``root``; the speaker is the file's folder relative to root."""
    root = Path(root)
    if not root.is_dir():
        raise AfilmError(f"{root}: is a file; afilm prepare folder takes a folder of audio files"
                         if root.is_file() else f"{root}: no such folder")
    out = [(path, path.parent.relative_to(root).as_posix()) for path in audio.find_audio_files(root)]
    if not out:
        raise AfilmError(f"{root}: no audio files (looked for {', '.join(sorted(audio.AUDIO_SUFFIXES))})")
    return out


def folder_splits(root: str | os.PathLike, *, val_fraction: float = 0.1, by_subfolder: bool = False,
                  val_dir: str | os.PathLike | None = None, seed: int = 0,
                  recipe: Recipe | None = None) -> tuple[list[Source], list[Source], dict]:
    """(train sources, val sources, description).

    With ``recipe``, validation is picked among the files it can use (those prepare would not skip), so
    that a skipped file never takes a validation place: by the header of every file (rate, length), then
    by reading the picked ones (silence); files it cannot use stay in training, where they are skipped
    with a warning. With ``by_subfolder``, among the subfolders holding at least one usable file. A
    folder whose files are all usable gets the same split as without ``recipe``."""
    root = Path(root)
    if val_dir is not None:
        val = list_audio(val_dir)
        held = {p.resolve() for p, _ in val}
        train = [s for s in list_audio(root) if s[0].resolve() not in held]  # val_dir may sit inside root
        if not train:
            raise AfilmError(f"{root}: no training files outside --val-dir {val_dir}")
        return train, val, {"val": "folder", "val_dir": str(Path(val_dir).resolve())}
    sources = list_audio(root)
    candidates, usable = [p for p, _ in sources], None
    if recipe is not None and val_fraction > 0:
        val_recipe = recipe.for_part("val")
        candidates = [p for p in candidates if _usable(p, val_recipe, header_only=True)]
        usable = functools.partial(_usable, recipe=val_recipe)
    if by_subfolder:
        members: dict[str, list[Path]] = {}  # a subfolder of unusable files holds none
        for p in candidates:
            if _top(p, root) != ".":  # files directly in root: their speaker is unknown, they train
                members.setdefault(_top(p, root), []).append(p)
        groups = sorted(members)
        # a subfolder is usable when one of its files is (read until one is): silent files pass the header
        usable_group = (lambda g: any(usable(p) for p in members[g])) if usable else None
        picked = pick_fraction(groups, val_fraction, seed, usable=usable_group)
        is_val = [_top(p, root) in picked for p, _ in sources]
    else:
        picked = pick_fraction(candidates, val_fraction, seed, usable=usable)
        is_val = [p in picked for p, _ in sources]
    info = {"val": f"fraction {val_fraction} of {'subfolders' if by_subfolder else 'files'}", "seed": seed}
    train = [s for s, v in zip(sources, is_val, strict=True) if not v]
    val = [s for s, v in zip(sources, is_val, strict=True) if v]
    return train, val, info


def _usable(path: Path, recipe: Recipe, header_only: bool = False) -> bool:
    try:
        check_usable(path, recipe, header_only=header_only)
    except AfilmError:
        return False
    return True


def _top(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else "."


def prepare_folder(root: str | os.PathLike, recipe: Recipe, *, name: str | None = None,
                   val_fraction: float = 0.1, by_subfolder: bool = False,
                   val_dir: str | os.PathLike | None = None, out: str | os.PathLike = "data",
                   force: bool = False):
    """Library entry point of `afilm prepare folder`."""
    recipe.validate()
    if name is not None and ("/" in name or os.sep in name or name in (".", "..")):
        # "a/b" wrote into <out>/a/, where 'afilm train --data-dir <out>' does not look; "/x" outside --out
        raise AfilmError(f"--name {name!r}: a name for the output files, not a path (no '/'); give their "
                         "folder with --out")
    root = Path(root)
    train, val, info = folder_splits(root, val_fraction=val_fraction, by_subfolder=by_subfolder,
                                     val_dir=val_dir, seed=recipe.seed, recipe=recipe)
    name = name or re.sub(r"[^A-Za-z0-9_.-]+", "_", root.resolve().name) or "folder"
    paths = default_output_paths(name, recipe.r, recipe.degrade, recipe.sr, out)
    plans = [SplitPlan("train", paths["train"], train)]
    if val:
        plans.append(SplitPlan("val", paths["val"], val))
    else:
        why = f"--val-fraction {val_fraction}"
        if by_subfolder:
            why += " of the subfolders picked none" if any(_top(p, root) != "." for p, _ in train) else (
                " with --by-subfolder: the folder has no subfolders of audio")
        elif val_fraction > 0:  # a file the recipe cannot use never takes a validation place
            why += ": fewer than 2 usable files"
        cli.warn(f"no validation files ({why}): writing {paths['train'].name} only")
    return cli.run_prepare(recipe, plans, split_info={"dataset": "folder", **info}, root=root, force=force)


@DATASETS.register("folder", help="Any folder tree of audio files at or above the high rate (--sr).")
def folder(
    root: Annotated[Path, typer.Argument(help="Folder of audio files (searched recursively).")],
    r: cli.R = 4,
    sr: cli.SR = 16000,
    patch: cli.Patch = 8192,
    stride: cli.Stride = None,
    degrade: cli.Degrade = None,
    sam: cli.Sam = None,
    seed: cli.Seed = 0,
    multiple: cli.Multiple = 128,
    speed: cli.Speed = "1",
    val_fraction: cli.ValFraction = None,
    by_subfolder: Annotated[bool, typer.Option("--by-subfolder", help="Hold out whole top-level "
                            "subfolders (speakers) instead of files; files directly in the folder "
                            "always train.")] = False,
    val_dir: Annotated[Path | None, typer.Option("--val-dir", help="Use this folder as the validation "
                       "set (instead of --val-fraction or --by-subfolder).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Output name prefix, no '/' (default: the "
                    "folder's name); the folder is --out.")] = None,
    out: cli.Out = Path("data"),
    force: cli.Force = False,
) -> None:
    """Any folder of audio files: same recipe as VCTK, validation by fraction, subfolder or folder."""
    if val_dir is not None and (val_fraction is not None or by_subfolder):  # one was silently dropped
        given = "--val-fraction" if val_fraction is not None else "--by-subfolder"
        raise AfilmError(f"--val-dir names the validation files: {given} would pick others; give one of them")
    recipe = Recipe(r=r, sr=sr, patch=patch, stride=stride or 4096, sam=1.0 if sam is None else sam,
                    degrade=degrade or "decimate", seed=seed, multiple=multiple, speed=speed).validate()
    prepare_folder(root, recipe, name=name, val_fraction=0.1 if val_fraction is None else val_fraction,
                   by_subfolder=by_subfolder, val_dir=val_dir, out=out, force=force)

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

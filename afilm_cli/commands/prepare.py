"""`afilm prepare DATASET`: one subcommand per registered dataset (placeholder)."""

import typer

app = typer.Typer(help="Turn a corpus into HDF5 patches (data = spline-upsampled low-res, label = high-res).",
                  no_args_is_help=True)

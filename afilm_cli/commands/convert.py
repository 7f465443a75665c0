"""`afilm convert` (placeholder)."""

import typer

app = typer.Typer(help="Import checkpoints from other formats (the original Keras models).", no_args_is_help=True)

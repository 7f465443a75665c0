"""`afilm prepare DATASET`: one subcommand per dataset registered in DATASETS.

A DATASETS entry *is* the Typer command function (its parameters are the options, its docstring
the help); the ``help`` meta is the one-liner shown by `afilm prepare --help`. Built-ins live in
afilm_cli/data/{vctk,folder}.py; a plugin registers the same way from its ``afilm.datasets``
entry point (afilm_cli/data/cli.py: a complete plugin module, the shared options, the run/summary helper).
"""

from __future__ import annotations

import typer

from afilm_cli.registry import DATASETS  # its first query imports afilm_cli.data (built-ins) + plugins

app = typer.Typer(help="Turn a corpus into HDF5 patches (data = spline-upsampled low-res, label = high-res).",
                  no_args_is_help=True)


def register_datasets(target: typer.Typer) -> None:
    """Add a subcommand for every registered dataset (plugins load here, lazily, on first query)."""
    for name in DATASETS.names():
        fn = DATASETS.get(name)
        target.command(name, help=fn.__doc__, short_help=DATASETS.meta(name).get("help"))(fn)


register_datasets(app)

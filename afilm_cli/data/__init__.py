"""Datasets: corpus recipes (registered in DATASETS) and the HDF5 patch format."""

# DATASETS imports this package to register the built-ins (registry.py, builtins="afilm_cli.data")
from afilm_cli.data import folder, vctk  # noqa: E402, F401

"""Datasets: corpus recipes (registered in DATASETS) and the HDF5 patch format."""

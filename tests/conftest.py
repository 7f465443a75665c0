"""Shared fixtures. The Triton interpreter must be switched on before kernels/block_film.py is
imported, so it is set here, at collection time, when no CUDA device is present. On CUDA the kernels
are tested with one launch config (AFILM_TRITON_TUNE=0; set it to 1 to test every tuned config):
compiling and autotuning all of them took most of a 200 s device slot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("AFILM_TRITON_TUNE", "0")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
VCTK_MINI = SHARED_DATA / "vctk-mini"
LIBRI_MINI = SHARED_DATA / "librispeech-mini"
KERAS_LAYOUT = ROOT.parent / "shared" / "keras-weights-layout.txt"


@pytest.fixture(scope="session")
def vctk_mini() -> Path:
    if not VCTK_MINI.is_dir():
        pytest.fail(f"test data missing: {VCTK_MINI} (see ../shared/data/SOURCES.md)")
    return VCTK_MINI


@pytest.fixture(scope="session")
def keras_layout() -> str:
    """The original Keras models' weights, in order, with shapes (../shared/keras-weights-layout.txt)."""
    if not KERAS_LAYOUT.is_file():
        pytest.fail(f"test data missing: {KERAS_LAYOUT}")
    return KERAS_LAYOUT.read_text()


@pytest.fixture(scope="session")
def libri_mini() -> Path:
    if not LIBRI_MINI.is_dir():
        pytest.fail(f"test data missing: {LIBRI_MINI}")
    return LIBRI_MINI


@pytest.fixture(autouse=True)
def _no_plugins_by_default(monkeypatch):
    # tests see only built-ins unless a test installs a plugin on purpose
    monkeypatch.setenv("AFILM_DISABLE_PLUGINS", os.environ.get("AFILM_TEST_PLUGINS_ON", "1"))


@pytest.fixture
def plugin_site(tmp_path) -> Path:
    """tests/plugin_pkg as pip would install it, in a folder for PYTHONPATH: the package, and a
    .dist-info naming every entry point its pyproject declares."""
    import shutil

    import tomllib

    pkg, site = ROOT / "tests" / "plugin_pkg", tmp_path / "site"
    project = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]
    shutil.copytree(pkg / "afilm_example_plugin", site / "afilm_example_plugin")
    dist = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                   f"Version: {project['version']}\n")
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in eps.items())
        for group, eps in project["entry-points"].items()))
    return site

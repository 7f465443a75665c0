"""Found by using the registries, plugins, `afilm models` and the bundled weights as a user and a plugin
author would: each test is one defect that was seen through the real CLI or the library."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from afilm_cli import pretrained
from afilm_cli.checkpoint import make_checkpoint, save_checkpoint
from afilm_cli.errors import AfilmError
from afilm_cli.models import create_model

RECIPE = {"r": 4, "sr": 16000, "degrade": "decimate", "patch": 8192}
MODEL_CLASS = """\
import torch

class M(torch.nn.Module):
    length_multiple = 1

    def __init__(self, name):
        super().__init__()
        self.model_name = name

    def forward(self, x):
        return x

    def config_dict(self):
        return {}

    def check_length(self, t):
        return None
"""


def _plugin(site: Path, module: str, group: str, body: str) -> None:
    """A one-module plugin as pip leaves it: the module and a .dist-info naming its entry point."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(MODEL_CLASS + textwrap.dedent(body))
    dist = site / f"{module}-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{module} = {module}\n")


def _cli(*args: str, site: Path | None = None, columns: int = 200) -> subprocess.CompletedProcess:
    env = {**os.environ, "AFILM_DISABLE_PLUGINS": "0" if site else "1", "COLUMNS": str(columns)}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, "-m", "afilm_cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_bundled_file_named_by_its_path_is_checked_too(tmp_path, monkeypatch):
    """`afilm demo` prints the bundled model's path ('checkpoint: .../afilm_speech_r4.pt'); given back as
    `--ckpt` that path, a damaged file (a byte flipped in the weights) loaded without the SHA-256 check
    and was reported as the bundled model. By name it was refused."""
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    save_checkpoint(path, make_checkpoint(create_model("afilm_tiny"), RECIPE))
    entry = pretrained.Bundled("fake", "m.pt", pretrained.sha256sum(path), "card.md", "fake", r=4, sr=16000)
    monkeypatch.setattr(pretrained, "HERE", tmp_path)
    monkeypatch.setitem(pretrained.BUNDLED, "fake", entry)
    assert pretrained.checkpoint_path(path) == path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    for spec in ("fake", path, str(path)):
        with pytest.raises(AfilmError, match="does not match the recorded"):
            pretrained.checkpoint_path(spec)
    copy = tmp_path / "elsewhere" / "m.pt"  # a copy of it elsewhere is the user's own file
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    assert pretrained.checkpoint_path(copy) == copy


def test_a_dataset_plugin_cannot_take_a_built_in_models_name(tmp_path):
    """A dataset plugin (loaded when the CLI starts, before any model lookup) that registered a model
    named 'afilm' took the name before the built-ins were imported; then their import failed, and every
    model command ended in a ValueError traceback (exit 1)."""
    _plugin(tmp_path, "afilm_dsmodel", "afilm.datasets", """\
        from afilm_cli.registry import DATASETS, MODELS

        MODELS.register("afilm", description="hijacked")(lambda: M("afilm"))

        @DATASETS.register("dsm")
        def dsm() -> None:
            '''A dataset.'''
    """)
    out = _cli("models", site=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        "afilm: warning: skipping dataset plugin 'afilm_dsmodel' (afilm_dsmodel): model 'afilm' is already "
        "registered by afilm (built-in)"]
    assert "AFiLM, paper size" in out.stdout and "hijacked" not in out.stdout


def test_a_plugin_registering_one_name_twice_is_told_so(tmp_path):
    """It was told 'model 'mine' is already registered by model plugin 'afilm_twice' (afilm_twice), which
    keeps it': by itself, and skipped, so nothing kept it."""
    _plugin(tmp_path, "afilm_twice", "afilm.models", """\
        from afilm_cli.registry import MODELS

        MODELS.register("mine")(lambda: M("mine"))
        MODELS.register("mine")(lambda: M("mine"))
    """)
    out = _cli("models", site=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        "afilm: warning: skipping model plugin 'afilm_twice' (afilm_twice): it registers model 'mine' twice"]
    assert "mine" not in out.stdout.split()


def test_models_on_a_narrow_terminal_shows_whole_names_and_counts():
    """COLUMNS=40 cut every long name to 'afilm_…' and the counts to '134,72…': what a user types next
    (`--info NAME`, `--model NAME`) was not on the screen."""
    from afilm_cli.models import count_parameters
    from afilm_cli.registry import MODELS

    out = _cli("models", columns=40)
    assert out.returncode == 0, out.stderr
    assert "…" not in out.stdout and max(map(len, out.stdout.splitlines())) <= 40, out.stdout
    words = out.stdout.split()
    for name in MODELS.names():
        assert name in words, name
    with torch.device("meta"):
        assert f"{count_parameters(create_model('afilm')):,}" in out.stdout
    wide = _cli("models", columns=200)  # a wide terminal keeps the table
    assert wide.returncode == 0 and "┃ name" in wide.stdout


@pytest.mark.parametrize(("typed", "meant"), [("afilm-small", "afilm_small"), ("AFILM_TINY", "afilm_tiny"),
                                              ("afilm small", "afilm_small"), ("tflim", "tfilm")])
def test_an_unknown_name_suggests_the_near_one(typed, meant):
    """'afilm-small' (a hyphen for the underscore) was answered with the list alone."""
    from afilm_cli.registry import MODELS

    with pytest.raises(AfilmError, match=rf"^unknown model '{typed}' \(did you mean '{meant}'\?\); known: "):
        MODELS.get(typed)

"""Registry behaviour, and plugins loaded through real importlib.metadata entry points."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from afilm_cli.errors import AfilmError
from afilm_cli.registry import MODELS, Registry

PLUGIN_SRC = Path(__file__).parent / "plugin_pkg" / "afilm_example_plugin"


def test_register_get_names_pattern():
    reg = Registry("thing")

    @reg.register("b_small", size=1)
    def b_small():
        return "b"

    @reg.register()
    def a_tiny():
        return "a"

    assert reg.names() == ["a_tiny", "b_small"]
    assert reg.names("*small") == ["b_small"]
    assert reg.get("a_tiny")() == "a"
    assert reg.meta("b_small") == {"size": 1}
    assert "a_tiny" in reg and "zzz" not in reg


def test_duplicate_name_raises():
    reg = Registry("thing")
    reg.register("x")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x")(lambda: 2)


def test_unknown_name_lists_known_names():
    reg = Registry("model")
    reg.register("afilm")(lambda: 1)
    reg.register("tfilm")(lambda: 1)
    with pytest.raises(AfilmError) as info:
        reg.get("afim")
    assert str(info.value) == "unknown model 'afim'; known: afilm, tfilm"


def test_builtin_models_registered():
    assert {"afilm", "tfilm"} <= set(MODELS.names())


def _install_plugin(site: Path, module_src: Path | None, name: str, group: str, value: str) -> None:
    """Lay out what `pip install` leaves behind: the module and a .dist-info with entry_points.txt."""
    if module_src is not None:
        shutil.copytree(module_src, site / module_src.name)
    dist = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{name} = {value}\n")


def test_plugin_loaded_through_entry_point(tmp_path, monkeypatch):
    _install_plugin(tmp_path, PLUGIN_SRC, "afilm-example-plugin", "afilm.models", "afilm_example_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("AFILM_DISABLE_PLUGINS", "0")
    reg = Registry("model", group="afilm.models")
    reg.load_plugins()  # imports the plugin, which registers into the global MODELS
    try:
        assert "example_identity" in MODELS._builders
        model = MODELS.get("example_identity")(gain=2.0)
        assert model.config_dict() == {"gain": 2.0}
    finally:
        MODELS.unregister("example_identity")
        sys.modules.pop("afilm_example_plugin", None)


def test_broken_plugin_warns_and_is_skipped(tmp_path, monkeypatch):
    (tmp_path / "afilm_broken_plugin.py").write_text("raise ImportError('missing dependency xyz')\n")
    _install_plugin(tmp_path, None, "afilm-broken-plugin", "afilm.test_group", "afilm_broken_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("AFILM_DISABLE_PLUGINS", "0")
    reg = Registry("model", group="afilm.test_group")
    with pytest.warns(UserWarning, match="skipping model plugin 'afilm-broken-plugin'.*xyz"):
        assert reg.names() == []


def test_disable_plugins_switch(tmp_path, monkeypatch):
    (tmp_path / "afilm_boom_plugin.py").write_text("raise RuntimeError('should not be imported')\n")
    _install_plugin(tmp_path, None, "afilm-boom-plugin", "afilm.test_group2", "afilm_boom_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("AFILM_DISABLE_PLUGINS", "1")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Registry("model", group="afilm.test_group2").names() == []


def test_plugin_model_visible_in_cli(tmp_path):
    """A plugin package adds a model that `afilm models` lists (real subprocess, real entry point)."""
    _install_plugin(tmp_path, PLUGIN_SRC, "afilm-example-plugin", "afilm.models", "afilm_example_plugin")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "AFILM_DISABLE_PLUGINS": "0"}
    out = subprocess.run([sys.executable, "-m", "afilm_cli", "models"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "example_identity" in out.stdout
    env["AFILM_DISABLE_PLUGINS"] = "1"
    out = subprocess.run([sys.executable, "-m", "afilm_cli", "models"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "example_identity" not in out.stdout


def test_plugin_package_declares_its_entry_point():
    text = (PLUGIN_SRC.parent / "pyproject.toml").read_text()
    assert textwrap.dedent('[project.entry-points."afilm.models"]') in text


def test_a_failing_builtins_import_fails_the_same_way_every_time():
    reg = Registry("widget", builtins="afilm_cli.no_such_module")
    for _ in range(2):  # the second query must not answer "unknown widget; known: none"
        with pytest.raises(ModuleNotFoundError, match="no_such_module"):
            reg.names()

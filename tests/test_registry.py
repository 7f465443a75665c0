"""Registry behaviour, and plugins loaded through real importlib.metadata entry points."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from afilm_cli.errors import AfilmError
from afilm_cli.models import create_model, describe_model
from afilm_cli.registry import MODELS, PluginWarning, Registry

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


def test_register_without_parentheses_registers_under_the_function_name():
    """``@reg.register`` (no parentheses) registered nothing and put the decorator in the function's
    place; a name that is not a string was taken, and then every names() failed with fnmatch's
    TypeError."""
    reg = Registry("thing")

    @reg.register
    def c_bare():
        return "c"

    assert reg.names() == ["c_bare"] and reg.get("c_bare") is c_bare and c_bare() == "c"
    assert reg.meta("c_bare") == {}
    for bad in (3, b"x", ("a",)):
        with pytest.raises(TypeError, match="thing name must be a string"):
            reg.register(bad)(lambda: 1)
    assert reg.names() == ["c_bare"]


def test_duplicate_name_raises():
    reg = Registry("thing")
    reg.register("x")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x")(lambda: 2)


def test_a_name_that_cannot_be_typed_or_name_a_folder_is_refused():
    """'a/b' made train's run folder runs/a/b-<time> (where runs/*/best.pt does not look), '' took the
    function's name without a word, and spaces had to be quoted at every use."""
    reg = Registry("model")
    for bad in ("a/b", "", "my model", "-x", "_x", "a\\b"):
        with pytest.raises(ValueError, match=r"model name .*: letters, digits, '_', '.' and '-' only"):
            reg.register(bad)(lambda: 1)
    for good in ("x", "Afilm-Big.v2", "a_1"):
        reg.register(good)(lambda: 1)
    assert reg.names() == sorted(["x", "Afilm-Big.v2", "a_1"])


def test_unknown_name_lists_known_names():
    reg = Registry("model")
    reg.register("afilm")(lambda: 1)
    reg.register("tfilm")(lambda: 1)
    with pytest.raises(AfilmError) as info:
        reg.get("afim")
    assert str(info.value) == "unknown model 'afim' (did you mean 'afilm'?); known: afilm, tfilm"
    with pytest.raises(AfilmError) as info:
        reg.get("zzz")
    assert str(info.value) == "unknown model 'zzz'; known: afilm, tfilm"


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


def test_plugin_that_exits_at_import_is_skipped(tmp_path, monkeypatch):
    """sys.exit() in a plugin's import used to end every afilm command, --help and --version too."""
    (tmp_path / "afilm_exit_plugin.py").write_text("import sys; sys.exit('plugin needs CUDA')\n")
    _install_plugin(tmp_path, None, "afilm-exit-plugin", "afilm.test_group3", "afilm_exit_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("AFILM_DISABLE_PLUGINS", "0")
    with pytest.warns(PluginWarning, match="skipping model plugin 'afilm-exit-plugin'.*exited.*needs CUDA"):
        assert Registry("model", group="afilm.test_group3").names() == []


def test_cli_says_a_skipped_plugin_in_one_line(tmp_path):
    """Through the real CLI: a broken dataset plugin (loaded at start) and one that exits are each one
    `afilm: warning:` line, not a Python warning with its source line, and the command still runs."""
    (tmp_path / "afilm_bad_ds.py").write_text("raise ImportError('dataset plugin broken')\n")
    _install_plugin(tmp_path, None, "afilm-bad-ds", "afilm.datasets", "afilm_bad_ds")
    (tmp_path / "afilm_exit_ds.py").write_text("import sys; sys.exit(3)\n")
    _install_plugin(tmp_path, None, "afilm-exit-ds", "afilm.datasets", "afilm_exit_ds")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "AFILM_DISABLE_PLUGINS": "0"}
    out = subprocess.run([sys.executable, "-m", "afilm_cli", "--version"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("afilm "), out.stderr
    assert sorted(out.stderr.splitlines()) == [
        "afilm: warning: skipping dataset plugin 'afilm-bad-ds' (afilm_bad_ds): dataset plugin broken",
        "afilm: warning: skipping dataset plugin 'afilm-exit-ds' (afilm_exit_ds): exited (3)"]


def test_a_model_without_the_interface_is_refused_in_one_line():
    """A plugin builder returning a bare nn.Sequential ended in an AttributeError traceback in train."""
    @MODELS.register("bare_seq_test")
    def bare_seq_test():
        return torch.nn.Sequential(torch.nn.Conv1d(1, 1, 3, padding=1))

    try:
        with pytest.raises(AfilmError, match=r"model 'bare_seq_test' .* Sequential without model_name, "
                                             r"config_dict, length_multiple, check_length"):
            create_model("bare_seq_test")
        assert "Sequential without" in describe_model("bare_seq_test")["error"]  # the listing goes on
    finally:
        MODELS.unregister("bare_seq_test")


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
    out = subprocess.run([sys.executable, "-m", "afilm_cli", "models", "--info", "example_identity"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("afilm: error: unknown model 'example_identity'; ")
    assert out.stderr.endswith(" (plugins are off, AFILM_DISABLE_PLUGINS=1: 'example_identity' may be a "
                               "plugin's)\n")


def test_plugin_package_declares_its_entry_point():
    text = (PLUGIN_SRC.parent / "pyproject.toml").read_text()
    assert '[project.entry-points."afilm.models"]\nexample = "afilm_example_plugin"' in text


def test_plugin_package_installs_with_pip(tmp_path):
    """The README calls tests/plugin_pkg a complete plugin: pip could not install it ("Multiple top-level
    packages discovered in a flat-layout: ['faulty', 'afilm_example_plugin']"). Installed by pip into a
    folder of its own (a copy: pip builds in the source tree), its model is listed by the real CLI."""
    src = shutil.copytree(PLUGIN_SRC.parent, tmp_path / "plugin_pkg")
    site = tmp_path / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                          str(site), str(src)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert (site / "afilm_example_plugin" / "datasets.py").is_file() and not (site / "faulty").exists()
    listed = _cli("models", "example*", pythonpath=[site])
    assert listed.returncode == 0 and "example_identity" in listed.stdout, (listed.stdout, listed.stderr)


def test_a_failing_builtins_import_fails_the_same_way_every_time():
    reg = Registry("widget", builtins="afilm_cli.no_such_module")
    for _ in range(2):  # the second query must not answer "unknown widget; known: none"
        with pytest.raises(ModuleNotFoundError, match="no_such_module"):
            reg.names()


def _cli(*args: str, pythonpath: list[Path], cwd: Path | None = None, disable: str = "0"
         ) -> subprocess.CompletedProcess:
    """The real CLI with plugins on, found on ``pythonpath`` (earlier folders' entry points load first)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath)),
           "AFILM_DISABLE_PLUGINS": disable, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "afilm_cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_a_plugin_clashing_midway_is_skipped_whole(tmp_path):
    """`clash_first`, then the built-in name `afilm`, then `clash_after`: the warning says the plugin is
    skipped, and so it is: neither of its other models is left behind (clash_first used to be)."""
    (tmp_path / "afilm_clash.py").write_text(textwrap.dedent("""\
        from afilm_cli.registry import MODELS
        from afilm_example_plugin import Identity2x
        for name in ("clash_first", "afilm", "clash_after"):
            MODELS.register(name)(Identity2x)
    """))
    shutil.copytree(PLUGIN_SRC, tmp_path / PLUGIN_SRC.name)  # its model class, no entry point of its own
    _install_plugin(tmp_path, None, "clash", "afilm.models", "afilm_clash")
    out = _cli("models", pythonpath=[tmp_path])
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == ["afilm: warning: skipping model plugin 'clash' (afilm_clash): model "
                                       "'afilm' is already registered by afilm (built-in)"]
    assert "clash_first" not in out.stdout and "clash_after" not in out.stdout and "afilm_tiny" in out.stdout
    out = _cli("models", "--info", "clash_first", pythonpath=[tmp_path])
    assert out.returncode == 2 and "unknown model 'clash_first'" in out.stderr
    assert "(skipped plugin: 'clash'; see the warning above)" in out.stderr


def test_two_plugins_with_one_name_the_first_keeps_it(tmp_path):
    for first, site in ((True, tmp_path / "a"), (False, tmp_path / "b")):
        site.mkdir()
        mod = f"afilm_dup_{'a' if first else 'b'}"
        (site / f"{mod}.py").write_text(textwrap.dedent(f"""\
            from afilm_cli.registry import MODELS
            from afilm_example_plugin import Identity2x
            MODELS.register("dup_model", description="from {mod}")(Identity2x)
            MODELS.register("{mod}_other")(Identity2x)
        """))
        _install_plugin(site, None, f"dup-{'a' if first else 'b'}", "afilm.models", mod)
    shutil.copytree(PLUGIN_SRC, tmp_path / PLUGIN_SRC.name)
    out = _cli("models", pythonpath=[tmp_path / "a", tmp_path / "b", tmp_path])
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        "afilm: warning: skipping model plugin 'dup-b' (afilm_dup_b): model 'dup_model' is already "
        "registered by model plugin 'dup-a' (afilm_dup_a), which keeps it"]
    assert "dup_model" in out.stdout and "afilm_dup_a_other" in out.stdout
    assert "afilm_dup_b_other" not in out.stdout
    assert "from afilm_dup_a" in out.stdout and "from afilm_dup_b" not in out.stdout


def test_a_failed_plugin_is_undone_in_every_registry(tmp_path, monkeypatch):
    """All or nothing across registries: a model plugin that registered a dataset too, then failed."""
    (tmp_path / "afilm_half_plugin.py").write_text(textwrap.dedent("""\
        from afilm_cli.models.afilm import AFILM_TINY
        from afilm_cli.models.unet import make_builder
        from afilm_cli.registry import DATASETS, MODELS
        DATASETS.register("half_ds")(lambda: None)
        MODELS.register("half_model")(lambda: None)
        MODELS.register("half_preset")(make_builder("half_preset", AFILM_TINY))  # a builder afilm_cli made
        MODELS.unregister("spline")
        raise RuntimeError("late failure")
    """))
    _install_plugin(tmp_path, None, "half", "afilm.test_half", "afilm_half_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("AFILM_DISABLE_PLUGINS", "0")
    from afilm_cli.registry import DATASETS

    spline = MODELS.get("spline")
    with pytest.warns(PluginWarning, match=r"skipping model plugin 'half' \(afilm_half_plugin\): late fail"):
        Registry("model", group="afilm.test_half").load_plugins()
    assert "half_ds" not in DATASETS._builders and {"half_model", "half_preset"}.isdisjoint(MODELS._builders)
    assert MODELS.get("spline") is spline and MODELS.meta("spline")["description"].startswith("cubic")


def test_an_entry_point_naming_a_function_is_not_called_and_says_so(tmp_path):
    """`viafunc = "afilm_bad.viafunc:register_all"`: the module is imported, the function never called;
    nothing registered is one warning line instead of silence."""
    pkg = tmp_path / "afilm_bad"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "viafunc.py").write_text(textwrap.dedent("""\
        from afilm_cli.registry import MODELS

        def register_all():
            MODELS.register("viafunc_model")(lambda: None)
    """))
    _install_plugin(tmp_path, None, "viafunc", "afilm.models", "afilm_bad.viafunc:register_all")
    out = _cli("models", pythonpath=[tmp_path])
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        "afilm: warning: model plugin 'viafunc' (afilm_bad.viafunc:register_all) registered nothing: an "
        "entry point's module must register its builders when imported (@MODELS.register or "
        "@DATASETS.register at module level); 'register_all' is looked up, not called"]
    assert "viafunc_model" not in out.stdout


def test_unknown_model_hints_at_plugins(monkeypatch):
    """A checkpoint of a plugin model read where the plugin is off or not installed."""
    reg = Registry("model", group="afilm.test_hint")
    reg.register("afilm")(lambda: 1)
    with pytest.raises(AfilmError, match=r"^unknown model 'tinyconv'; known: afilm \(plugins are off, "
                                         r"AFILM_DISABLE_PLUGINS=1: 'tinyconv' may be a plugin's\)$"):
        reg.get("tinyconv")
    monkeypatch.setenv("AFILM_DISABLE_PLUGINS", "0")
    with pytest.raises(AfilmError, match=r"; known: afilm \(if it is a plugin's, install the package that "
                                         r"provides it: entry-point group afilm.test_hint\)$"):
        reg.get("tinyconv")


def test_the_documented_dataset_plugin_is_the_tested_one():
    """afilm_cli/data/cli.py's docstring example, line for line, is tests/plugin_pkg's dataset module."""
    from afilm_cli.data import cli

    block = cli.__doc__.split("::\n\n", 1)[1].split("\nThe pieces:", 1)[0]
    assert textwrap.dedent(block).strip() + "\n" == (PLUGIN_SRC / "datasets.py").read_text()
    text = (PLUGIN_SRC.parent / "pyproject.toml").read_text()
    assert '[project.entry-points."afilm.datasets"]\nexample = "afilm_example_plugin.datasets"' in text


def test_example_dataset_plugin_prepares_data_that_trains(libri_mini, tmp_path, plugin_site):
    """The documented plugin through the real CLI: `afilm prepare mycorpus DIR` on LibriSpeech files writes
    a -train.h5 (and -val.h5) that `afilm train` takes; a folder with no audio is refused, no output folder
    made. Both of the package's entry points load without a warning (the second finds its module imported)."""
    site = plugin_site
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for flac in sorted((libri_mini / "train-clean-100").glob("*.flac"))[:6]:
        shutil.copy(flac, corpus / flac.name)
    out = _cli("prepare", "mycorpus", str(corpus), pythonpath=[site], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "afilm: warning" not in out.stderr and "mycorpus-r4-decimate-train.h5" in out.stdout
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "mycorpus-r4-decimate-train.h5", "mycorpus-r4-decimate-val.h5"]
    out = _cli("train", "--model", "afilm_tiny", "--max-steps", "2", "--out", "run", pythonpath=[site],
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "data/mycorpus-r4-decimate-train.h5" in out.stdout and (tmp_path / "run" / "last.pt").is_file()
    (tmp_path / "empty").mkdir()
    for root, said in ((tmp_path / "missing", "no such folder"),
                       (tmp_path / "empty", "no audio files found")):
        out = _cli("prepare", "mycorpus", str(root), "--out", "fresh", pythonpath=[site], cwd=tmp_path)
        assert out.returncode == 2 and out.stderr == f"afilm: error: {root}: {said}\n"
        assert not (tmp_path / "fresh").exists()


def test_models_info_refuses_a_pattern_and_says_an_empty_config():
    """`afilm models --info afilm_tiny 'tf*'` showed afilm_tiny and ignored the pattern; `--info spline`
    printed the heading "config (create_model overrides):" over nothing."""
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "afilm_cli", "models", *args], capture_output=True,
                              text=True, timeout=300)

    out = cli("--info", "afilm_tiny", "tf*")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "not both" in lines[0], out.stderr
    assert out.stdout == ""
    out = cli("--info", "spline")
    assert out.returncode == 0, out.stderr
    assert "config: none" in out.stdout and "create_model overrides" not in out.stdout

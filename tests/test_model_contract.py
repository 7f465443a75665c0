"""The model contract a plugin's model must keep (README "Plugins"), checked where afilm relies on it.

tests/plugin_pkg/faulty/afilm_faulty_plugin.py registers `tinyconv`, which keeps the contract, and one
model per way of breaking it. In-process tests import it (and take its models out again); the CLI tests
install it as a real plugin (a .dist-info with its entry point) and run `afilm` in a subprocess.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from afilm_cli.errors import AfilmError
from afilm_cli.models import (
    ModelContractError,
    check_length,
    check_output,
    create_model,
    describe_model,
    model_name_of,
)
from afilm_cli.registry import MODELS

FAULTY = Path(__file__).parent / "plugin_pkg" / "faulty"
EXAMPLE = Path(__file__).parent / "plugin_pkg"
CONTRACT = "an afilm model maps (B, 1, T) to (B, 1, T)"


@pytest.fixture
def faulty(monkeypatch):
    """The faulty plugin imported in this process: its models registered, taken out afterwards."""
    monkeypatch.syspath_prepend(str(FAULTY))
    MODELS.names()  # the built-ins first
    module = importlib.import_module("afilm_faulty_plugin")
    try:
        yield module
    finally:
        for name in [*module.CLASSES, "tinyconv_cuda"]:
            MODELS.unregister(name)
        sys.modules.pop("afilm_faulty_plugin", None)


@pytest.fixture
def register():
    """Register builders for one test (their module is this test file: not afilm's own)."""
    names = []

    def add(name, builder, **meta):
        MODELS.register(name, **meta)(builder)
        names.append(name)

    yield add
    for name in names:
        MODELS.unregister(name)


# ------------------------------------------------------------------------------ forward output shape
def test_check_output_names_the_model_and_both_shapes():
    x = torch.zeros(16, 1, 8192)
    check_output("afilm_tiny", x, torch.zeros(16, 1, 8192))
    for y, got in ((torch.zeros(16, 8192), "(16, 8192)"), (torch.zeros(16, 2, 8192), "(16, 2, 8192)"),
                   (torch.zeros(16, 1, 8191), "(16, 1, 8191)"), ((x, x), "a tuple")):
        with pytest.raises(AfilmError) as info:
            check_output("x", x, y)
        assert str(info.value) == f"model 'x' returned {got} for a (16, 1, 8192) input; {CONTRACT}"


def test_model_name_of_sees_through_wrappers():
    """The window runner gets a CUDA graph (its .model), a compiled model (._orig_mod) or DDP (.module)."""
    inner = create_model("afilm_tiny")

    class Graphed(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

    class Compiled(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self._orig_mod = model

    class Parallel(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.module = model

    assert model_name_of(Graphed(Compiled(Parallel(inner)))) == "afilm_tiny"
    assert model_name_of(torch.nn.Identity()) == "?"
    with pytest.raises(AfilmError, match=r"^model 'afilm_tiny' returned \(2, 64\) for a \(2, 1, 64\) input"):
        check_output(Graphed(inner), torch.zeros(2, 1, 64), torch.zeros(2, 64))


# ------------------------------------------------------------------------------------ create_model
def test_a_config_that_is_not_plain_data_is_refused_naming_key_and_type(faulty, register):
    with pytest.raises(ModelContractError) as info:
        create_model("tinyconv_numpy_config")
    assert str(info.value).startswith("model 'tinyconv_numpy_config' (afilm_faulty_plugin): config_dict() "
                                      "holds 'kernel' = np.int64(3), of type numpy.int64: checkpoints store")
    assert info.value.reason == "config_dict() holds 'kernel' = np.int64(3), of type numpy.int64"

    class Configured(faulty.TinyConv):
        model_name = "configured_test"

        def __init__(self, config):
            super().__init__()
            self.config = config

        def config_dict(self):
            return self.config

    register("configured_test", lambda config=None: Configured(config))
    # plain: nested lists, tuples, dicts of str keys, None, bool; np.float64 is a float but not plain data
    plain = {"a": [1, 2.5, (3, "x")], "b": {"c": None, "d": True}}
    assert create_model("configured_test", config=plain).config_dict() == plain
    refused = [({"a": [1, np.float64(2.0)]}, r"'a'\[1\] = np.float64\(2.0\), of type numpy.float64"),
               ({"a": {"b": {1, 2}}}, r"'a'\['b'\] = \{1, 2\}, of type set"),
               ({"a": {3: 1}}, r"'a' key 3 = 3, of type int"),
               ({"p": Path("x")}, r"'p' = .*, of type pathlib\.\w*Path")]
    for config, where in refused:
        with pytest.raises(ModelContractError, match=f"config_dict\\(\\) holds {where}"):
            create_model("configured_test", config=config)
    with pytest.raises(ModelContractError, match=r"config_dict\(\) returned a list, not a dict"):
        create_model("configured_test", config=[1])


def test_a_model_name_other_than_the_registered_one_is_refused(faulty):
    with pytest.raises(ModelContractError) as info:
        create_model("tinyconv_misnamed")
    assert str(info.value) == ("model 'tinyconv_misnamed' (afilm_faulty_plugin): its model_name is "
                               "'something_else': checkpoints rebuild a model from its model_name, so it "
                               "must be 'tinyconv_misnamed', the name it is registered under")


def test_a_pretrained_entry_builds_the_architecture_its_checkpoint_names(register):
    """afilm_speech_r4 builds an afilm_small (checkpoints name the architecture); a pretrained entry
    whose model names no registered model could not be rebuilt from its checkpoints: refused."""
    assert create_model("afilm_speech_r4").model_name == "afilm_small"

    def unknown(**kw):
        model = create_model("afilm_tiny")
        model.model_name = "no_such_model"
        return model

    register("pretrained_unknown_test", unknown, pretrained=True)
    register("preset_renamed_test", lambda **kw: create_model("afilm_tiny"))  # not pretrained: refused
    with pytest.raises(ModelContractError, match="its model_name is 'no_such_model'"):
        create_model("pretrained_unknown_test")
    with pytest.raises(ModelContractError, match="model_name is 'afilm_tiny'.*must be 'preset_renamed_test'"):
        create_model("preset_renamed_test")


def test_a_plugin_builder_exception_is_one_line_naming_model_module_and_error(faulty):
    with pytest.raises(ModelContractError) as info:
        create_model("tinyconv", bogus=1)
    assert str(info.value) == ("model 'tinyconv' (afilm_faulty_plugin) could not be built: TypeError: "
                               "TinyConv.__init__() got an unexpected keyword argument 'bogus'")
    assert isinstance(info.value.__cause__, TypeError)
    with pytest.raises(ModelContractError) as info:
        create_model("tinyconv_cuda")
    assert str(info.value) == ("model 'tinyconv_cuda' (afilm_faulty_plugin) could not be built: "
                               "RuntimeError: needs CUDA")
    assert info.value.reason == "needs CUDA"


def test_an_exception_of_afilms_own_builder_stays_a_traceback(register):
    def own(**kw):
        raise RuntimeError("an afilm bug")

    own.__module__ = "afilm_cli.models.own_test"
    register("own_test", own)
    with pytest.raises(RuntimeError, match="an afilm bug"):
        create_model("own_test")
    with pytest.raises(AfilmError, match="unknown config option"):  # afilm's own one-line refusals stay so
        create_model("afilm_tiny", bogus=1)


def test_a_config_that_reads_the_weights_is_checked_off_the_meta_device(monkeypatch):
    """tests/plugin_pkg's example model says its gain's value: not on the meta device, where train's
    early check and the listing build models; the check waits for the real build there."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    MODELS.names()
    importlib.import_module("afilm_example_plugin")
    try:
        with torch.device("meta"):
            assert create_model("example_identity").gain.is_meta
        assert create_model("example_identity", gain=2.0).config_dict() == {"gain": 2.0}
        d = describe_model("example_identity")  # the meta build cannot say its config: built for real
        assert d["error"] is None and d["config"] == {"gain": 1.0} and d["parameters"] == 1
    finally:
        MODELS.unregister("example_identity")
        sys.modules.pop("afilm_example_plugin", None)


# ------------------------------------------------------------------------------------ check_length
def test_check_length_of_a_plugin_is_one_line_and_afilms_own_errors_stay(faulty, monkeypatch):
    picky = create_model("tinyconv_picky")
    check_length(picky, 3 * 1024)
    with pytest.raises(ModelContractError) as info:
        check_length(picky, 1024)
    assert str(info.value) == ("model 'tinyconv_picky' (afilm_faulty_plugin) refuses length 1024: "
                               "ValueError: length 1024 is not a multiple of 3")
    with pytest.raises(AfilmError, match="model afilm_tiny: input length 100 is not a multiple of 256"):
        check_length(create_model("afilm_tiny"), 100)
    spline = create_model("spline")  # afilm's own code raising something else: a bug, with its traceback
    monkeypatch.setattr(spline, "check_length", lambda t: [][1])
    with pytest.raises(IndexError):
        check_length(spline, 10)


# ------------------------------------------------------------------------------------- the listing
def test_describe_model_says_why_a_model_cannot_be_built(faulty):
    d = describe_model("tinyconv_cuda")
    assert d["parameters"] is None and d["reason"] == "needs CUDA"
    assert d["error"] == ("model 'tinyconv_cuda' (afilm_faulty_plugin) could not be built: "
                          "RuntimeError: needs CUDA")
    assert describe_model("tinyconv_misnamed")["reason"] == "its model_name is 'something_else'"
    assert describe_model("tinyconv")["reason"] is None


# --------------------------------------------------------------------------------------- real CLI
def _install(site: Path) -> Path:
    """Lay out what `pip install` of the faulty plugin leaves behind."""
    site.mkdir(parents=True, exist_ok=True)
    shutil.copy(FAULTY / "afilm_faulty_plugin.py", site)
    dist = site / "afilm_faulty_plugin-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: afilm-faulty-plugin\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[afilm.models]\nafilm-faulty-plugin = afilm_faulty_plugin\n")
    return site


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Run `afilm ARGS...` with the faulty plugin installed; returns the finished process."""
    site = _install(tmp_path_factory.mktemp("site"))
    env = {**os.environ, "PYTHONPATH": str(site), "AFILM_DISABLE_PLUGINS": "0", "COLUMNS": "200"}

    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "afilm_cli", *args], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=300)

    return run


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The one `afilm: error:` line a refused command prints (no traceback, nothing else on stderr)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("afilm: error: "), proc.stderr
    return lines[0].removeprefix("afilm: error: ")


def test_cli_models_lists_why_a_plugin_model_cannot_be_built(cli):
    proc = cli("models", "tinyconv*")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("│ tinyconv")}
    assert "(cannot build: needs CUDA)" in rows["tinyconv_cuda"] and " ? " in rows["tinyconv_cuda"]
    assert "(cannot build: its model_name is 'something_else')" in rows["tinyconv_misnamed"]
    assert "cannot build" not in rows["tinyconv"]
    # --info on one: what can be shown is, and the command fails (it exited 0, as for a damaged bundle)
    proc = cli("models", "--info", "tinyconv_cuda")
    assert proc.stdout.startswith("tinyconv_cuda: faulty plugin: needs CUDA\nparameters: unknown")
    assert _error_line(proc) == ("model 'tinyconv_cuda' (afilm_faulty_plugin) could not be built: "
                                 "RuntimeError: needs CUDA")
    assert cli("models", "--info", "tinyconv").returncode == 0


# ----------------------------------------------------- where a forward's output is first used (CLI)
PATCH = 1024
RECIPE = {"r": 4, "sr": 16000, "degrade": "decimate", "patch": PATCH}
PICKY = "model 'tinyconv_picky' (afilm_faulty_plugin) refuses length 1024: ValueError: length 1024 is not a "


def _wrong(model: str, got: str, batch: int) -> str:
    return f"model {model!r} returned {got} for a ({batch}, 1, 1024) input; {CONTRACT}"


@pytest.fixture(scope="module")
def data(vctk_mini, tmp_path_factory):
    """Real speech (VCTK p225) cut into 12 training and 4 validation patches of 1024 samples, r=4."""
    from afilm_cli.audio import read_audio, resample, simulate_lr
    from afilm_cli.data.h5 import PatchWriter

    x, sr = read_audio(sorted((vctk_mini / "wav48" / "p225").glob("*.wav"))[0], mono=True)
    hr, _, sp = simulate_lr(resample(x, sr, 16000), 4, "decimate")
    n = 16
    assert len(hr) >= n * PATCH
    folder = tmp_path_factory.mktemp("data")
    attrs = {**RECIPE, "stride": PATCH, "sam": 1.0, "seed": 0}
    files = {}
    for split, rows in (("train", slice(0, 12)), ("val", slice(12, 16))):
        files[split] = folder / f"tiny-r4-{split}.h5"
        with PatchWriter(files[split], PATCH, attrs=attrs) as w:
            w.append(sp[: n * PATCH].reshape(n, PATCH)[rows], hr[: n * PATCH].reshape(n, PATCH)[rows])
    files["wav"] = sorted((vctk_mini / "wav48" / "p226").glob("*.wav"))[0]
    return files


def _train(cli, data, tmp_path, model, *more):
    return cli("train", "--model", model, "--train", str(data["train"]), "--val", str(data["val"]),
               "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--threads", "1",
               "--out", str(tmp_path / "run"), *more)


@pytest.mark.parametrize("model, got", [("tinyconv_flat", "(4, 1024)"), ("tinyconv_stereo", "(4, 2, 1024)"),
                                        ("tinyconv_short", "(4, 1, 1023)")])
def test_cli_train_refuses_an_output_of_another_shape_at_the_first_step(cli, data, tmp_path, model, got):
    """(B, T) broadcast against the (B, 1, T) labels and trained on a B x B x T loss, rc 0; the others
    were tracebacks, the last only at validation after a whole epoch."""
    proc = _train(cli, data, tmp_path, model)
    assert _error_line(proc) == _wrong(model, got, 4)
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("model, more, line", [
    ("tinyconv_numpy_config", (), "model 'tinyconv_numpy_config' (afilm_faulty_plugin): config_dict() "
                                  "holds 'kernel' = np.int64(3), of type numpy.int64: checkpoints store"),
    ("tinyconv_misnamed", (), "model 'tinyconv_misnamed' (afilm_faulty_plugin): its model_name is "
                              "'something_else': checkpoints rebuild"),
    ("tinyconv_cuda", (), "model 'tinyconv_cuda' (afilm_faulty_plugin) could not be built: RuntimeError: "
                          "needs CUDA"),
    ("tinyconv", ("--model-arg", "bogus=1"), "model 'tinyconv' (afilm_faulty_plugin) could not be built: "
                                             "TypeError: TinyConv.__init__() got an unexpected keyword "
                                             "argument 'bogus'"),
    ("tinyconv_picky", (), "{train}: patches of 1024 samples do not fit 'tinyconv_picky': " + PICKY),
])
def test_cli_train_refuses_a_broken_plugin_model_in_one_line_before_training(cli, data, tmp_path, model, more,
                                                                              line):
    proc = _train(cli, data, tmp_path, model, *more)
    assert _error_line(proc).startswith(line.format(train=data["train"]))
    assert "epoch 1" not in proc.stdout and not (tmp_path / "run" / "last.pt").exists()


def test_validation_checks_the_output_in_eval_mode(faulty, data, tmp_path):
    """A model right while training and wrong in eval mode is caught at the validation of epoch 1."""
    from afilm_cli.train import TrainConfig, train

    cfg = TrainConfig(model="tinyconv_evalflat", train=str(data["train"]), val=str(data["val"]),
                      out=str(tmp_path / "run"), epochs=1, batch_size=4, device="cpu", threads=1,
                      progress=False)
    with pytest.raises(AfilmError) as info:
        train(cfg)
    assert str(info.value) == _wrong("tinyconv_evalflat", "(4, 1024)", 4)


def _checkpoint(path: Path, model: str) -> str:
    from afilm_cli.checkpoint import make_checkpoint, save_checkpoint

    return str(save_checkpoint(path, make_checkpoint(create_model(model), RECIPE)))


def test_cli_eval_data_and_upsample_check_the_output_and_the_length(faulty, cli, data, tmp_path):
    """eval --data sliced a (B, 2, T) output to its channel 0 unseen, and never called check_length;
    upsample's window runner met (B, T) with "cannot reshape array"."""
    val = str(data["val"])
    proc = cli("eval", "--ckpt", _checkpoint(tmp_path / "s.pt", "tinyconv_stereo"), "--data", val,
               "--out", str(tmp_path / "e1"))
    assert _error_line(proc) == _wrong("tinyconv_stereo", "(4, 2, 1024)", 4)
    proc = cli("eval", "--ckpt", _checkpoint(tmp_path / "p.pt", "tinyconv_picky"), "--data", val,
               "--out", str(tmp_path / "e2"))
    assert _error_line(proc) == (
        f"{val}: patches of 1024 samples do not fit 'tinyconv_picky': {PICKY}multiple of 3")
    proc = cli("upsample", "--simulate", "--ckpt", _checkpoint(tmp_path / "f.pt", "tinyconv_flat"),
               str(data["wav"]), "-o", str(tmp_path / "out.wav"))
    assert _error_line(proc) == _wrong("tinyconv_flat", "(16, 1024)", 16)
    assert not (tmp_path / "out.wav").exists()


def test_a_checkpoint_of_a_plugin_model_that_cannot_be_built_says_why(faulty, cli, data, tmp_path):
    """create_model's one line (the plugin's own error) came wrapped as "checkpoint config does not fit
    model ...", which blamed the config; a config the model refuses is still said to be the config's."""
    from afilm_cli.checkpoint import make_checkpoint, model_from_checkpoint, save_checkpoint

    ckpt = {**make_checkpoint(create_model("tinyconv"), RECIPE), "model_name": "tinyconv_cuda"}
    cause = "model 'tinyconv_cuda' (afilm_faulty_plugin) could not be built: RuntimeError: needs CUDA"
    with pytest.raises(ModelContractError) as info:
        model_from_checkpoint(ckpt)
    assert str(info.value) == cause
    path = save_checkpoint(tmp_path / "cuda.pt", ckpt)
    proc = cli("eval", "--ckpt", str(path), "--data", str(data["val"]), "--out", str(tmp_path / "e"))
    assert _error_line(proc) == f"{path}: {cause}"
    tiny = make_checkpoint(create_model("afilm_tiny"), RECIPE)
    with pytest.raises(AfilmError, match=r"^checkpoint config does not fit model 'afilm_tiny': model config"):
        model_from_checkpoint({**tiny, "model_config": {**tiny["model_config"], "n_layers": "four"}})


def test_cli_a_plugin_model_that_keeps_the_contract_trains_and_evaluates(cli, data, tmp_path):
    proc = _train(cli, data, tmp_path, "tinyconv")
    assert proc.returncode == 0, proc.stderr
    proc = cli("eval", "--ckpt", str(tmp_path / "run"), "--data", str(data["val"]),
               "--out", str(tmp_path / "e"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "e" / "summary.json").is_file()


def _loaded(name: str, device: str = "cpu"):
    from afilm_cli import infer

    return infer.Loaded(create_model(name).to(device), dict(RECIPE), Path(name), {"model_name": name})


def test_inference_windows_check_the_window_length_and_the_output(faulty):
    from afilm_cli import infer

    signal = infer.ArraySource(np.zeros((5000, 1), np.float32))
    with pytest.raises(AfilmError, match=r"^windows of 1024 samples do not fit 'tinyconv_picky' \(upsample "
                                         r"--window sets them\): model 'tinyconv_picky' .* ValueError"):
        infer.predict(_loaded("tinyconv_picky"), signal, 5000, batch_size=4, window=1024)
    with pytest.raises(AfilmError) as info:
        infer.predict(_loaded("tinyconv_short"), signal, 5000, batch_size=4, window=1024)
    assert str(info.value) == _wrong("tinyconv_short", "(4, 1, 1023)", 4)
    assert infer.predict(_loaded("tinyconv"), signal, 5000, batch_size=4, window=1024).shape == (5000, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("speed", [{"graphs": "on"}, {"graphs": "off"}, {"compile": True}])
def test_cuda_windows_check_what_the_graph_or_compiled_model_returned(faulty, speed):
    """The check is made on the output of the replayed CUDA graph or the compiled model, not inside."""
    from afilm_cli import infer

    signal = infer.ArraySource(np.random.default_rng(0).standard_normal((5000, 1)).astype(np.float32))
    run = dict(batch_size=4, window=1024, device="cuda", **speed)
    y = infer.predict(_loaded("tinyconv", "cuda"), signal, 5000, **run)
    eager = infer.predict(_loaded("tinyconv"), signal, 5000, batch_size=4, window=1024)
    assert y.shape == (5000, 1) and np.abs(y - eager).max() < 1e-2  # TF32 convolutions on CUDA
    with pytest.raises(AfilmError) as info:
        infer.predict(_loaded("tinyconv_stereo", "cuda"), signal, 5000, **run)
    assert str(info.value) == _wrong("tinyconv_stereo", "(4, 2, 1024)", 4)

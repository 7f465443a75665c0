"""`afilm convert`: Keras .h5 (both layouts) -> afilm checkpoint -> Keras .h5, on paper-size models.

The .h5 files are written here with h5py exactly as tf.keras' legacy h5 code lays them out (groups
per layer, ``layer_names`` / ``weight_names`` attributes, weightless layers listed too), filled with
random arrays of the shapes of ../shared/keras-weights-layout.txt. The expected PyTorch values are
computed here with explicit numpy transposes, independently of afilm_cli/models/keras_layout.py.
Parity with the real Keras model (TensorFlow) is benchmarks/keras_parity.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from afilm_cli.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from afilm_cli.errors import AfilmError
from afilm_cli.keras_io import (
    KerasFile,
    keras_weight_list,
    load_keras_model,
    paper_config,
    read_keras_h5,
    resolve_r,
    resolve_recipe,
    write_keras_h5,
)

ROOT = Path(__file__).resolve().parents[1]

LAYOUT_FILE = ROOT.parent / "shared" / "keras-weights-layout.txt"


def _reference_rows(model: str) -> list[str]:
    if not LAYOUT_FILE.is_file():
        pytest.fail(f"reference layout missing: {LAYOUT_FILE}")
    afilm_part, tfilm_part = LAYOUT_FILE.read_text().split("## TFILM")
    part = afilm_part if model == "afilm" else tfilm_part
    return [line for line in part.splitlines() if re.match(r"^w\d{4} \|", line)]


@pytest.mark.parametrize("model,count", [("afilm", 596), ("tfilm", 47)])
def test_generated_layout_equals_the_reference_list(model, count):
    generated = [w.row(i) for i, w in enumerate(keras_weight_list(paper_config(model)))]
    assert len(generated) == count
    assert generated == _reference_rows(model)


# ---------------------------------------------------------------- building Keras files


def _random_arrays(model: str, seed: int) -> list[tuple[str, str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(w.layer, w.name, rng.standard_normal(w.shape, dtype=np.float32))
            for w in keras_weight_list(paper_config(model))]


def _write_keras(path: Path, arrays, layout: str, model: str) -> Path:
    """An .h5 laid out as tf.keras' model.save ('full') or model.save_weights ('weights')."""
    layers: dict[str, list] = {"input_1": []}
    for layer, name, arr in arrays:
        layers.setdefault(layer, []).append((name, arr))
        if layer.startswith("conv1d"):  # weightless layers are listed too, with no weight_names
            layers[layer.replace("conv1d", "max_pooling1d")] = []
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = "2.16.0"
        group = f
        if layout == "full":
            f.attrs["model_config"] = json.dumps({"class_name": "Functional", "config": {"name": model}})
            group = f.create_group("model_weights")
            f.create_group("optimizer_weights").create_dataset("iter", data=np.int64(3))
        group.attrs["layer_names"] = np.array(list(layers), dtype=h5py.string_dtype())
        for layer, items in layers.items():
            g = group.create_group(layer)
            g.attrs["weight_names"] = np.array([n for n, _ in items], dtype=h5py.string_dtype())
            for name, arr in items:
                if isinstance(arr, tuple):  # a shape: the dataset is declared, never written
                    g.create_dataset(name, shape=arr, dtype="f4")
                else:
                    g.create_dataset(name, data=arr)
    return path


def _to_torch_layout(key: str, arr: np.ndarray) -> np.ndarray:
    """Keras -> PyTorch layout, spelled out: Conv1D (k, in, out) -> (out, in, k); Dense and LSTM
    kernels (in, out) -> (out, in); vectors as they are."""
    if arr.ndim == 3:
        return np.transpose(arr, (2, 1, 0))
    if arr.ndim == 2:
        return arr.T
    return arr


def _torch_name(key: str) -> str:
    key = re.sub(r"^(down|up)(\d+)\.", r"\1.\2.", key)
    for old, new in ((".cell.recurrent_kernel", ".weight_hh_l0"), (".cell.kernel", ".weight_ih_l0"),
                     (".cell.bias", ".bias_ih_l0"), (".kernel", ".weight"), (".gamma", ".weight"),
                     (".beta", ".bias")):
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def _check_state_dict(sd: dict, model: str, arrays) -> None:
    expected = keras_weight_list(paper_config(model))
    seen = set()
    for want, (_, _, arr) in zip(expected, arrays, strict=True):
        name = _torch_name(want.key)
        assert name in sd, name
        np.testing.assert_array_equal(sd[name].numpy(), _to_torch_layout(want.key, arr), err_msg=name)
        seen.add(name)
    rest = set(sd) - seen
    assert all(k.endswith("bias_hh_l0") for k in rest), sorted(rest)[:5]
    assert all(not sd[k].any() for k in rest)
    assert len(rest) == (9 if model == "tfilm" else 0)


def _check_same_arrays(path: Path, arrays, model: str) -> None:
    back = read_keras_h5(path)
    assert [(layer, name) for layer, name, _ in back.arrays] == [(w.layer, w.name) for w in
                                                                  keras_weight_list(paper_config(model))]
    for (_, name, a), (_, _, b) in zip(arrays, back.arrays, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b), name


@pytest.fixture(scope="module")
def tfilm_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("keras-tfilm")
    arrays = _random_arrays("tfilm", 1)
    return arrays, _write_keras(d / "tfilm_weights.h5", arrays, "weights", "tfilm")


# ---------------------------------------------------------------- the big AFiLM: both directions


@pytest.mark.slow
def test_afilm_full_model_file_converts_and_exports_exactly(tmp_path):
    arrays = _random_arrays("afilm", 0)
    src = _write_keras(tmp_path / "afilm_model.h5", arrays, "full", "afilm")
    net, info = load_keras_model(src, "afilm", r=4)  # (the checkpoint round trip: the TFiLM CLI test)
    assert info["format"] == "keras h5 (full model)" and info["r_from"] == "user"
    assert net.model_name == "afilm"
    sd = net.state_dict()
    assert sum(t.numel() for t in sd.values()) == 134_723_842
    _check_state_dict(sd, "afilm", arrays)
    out = write_keras_h5(tmp_path / "afilm_back.h5", net, r=4)
    _check_same_arrays(out, arrays, "afilm")


# ---------------------------------------------------------------- TFiLM through the real CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "afilm_cli", "convert", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def _one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("afilm: error:"), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.slow
def test_tfilm_cli_import_export_and_refusals(tfilm_files, tmp_path):
    arrays, src = tfilm_files
    ckpt_path = tmp_path / "tfilm.pt"
    res = _cli("keras", src, "--model", "tfilm", "--r", "4", "--out", ckpt_path)
    assert res.returncode == 0, res.stderr
    assert "your claim" in res.stdout
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["model_name"] == "tfilm"
    assert ckpt["recipe"] == {"r": 4, "sr": 16000, "degrade": "subsample", "patch": 8192}
    assert ckpt["keras_source"]["r_from"] == "user"
    assert ckpt["keras_source"]["format"] == "keras h5 (weights only)"
    _check_state_dict(ckpt["state_dict"], "tfilm", arrays)

    # never overwrites; exports back exactly; the export records r, which a re-import checks
    _one_line_error(_cli("keras", src, "--r", "4", "--out", ckpt_path), "exists", "--force")
    back = tmp_path / "tfilm_back.h5"
    res = _cli("to-keras", ckpt_path, "--out", back)
    assert res.returncode == 0, res.stderr
    _check_same_arrays(back, arrays, "tfilm")
    _one_line_error(_cli("keras", back, "--r", "2", "--out", tmp_path / "x.pt"), "records r=4", "--r 2")
    _one_line_error(_cli("keras", back, "--degrade", "decimate", "--out", tmp_path / "x.pt"),
                    "records degrade=subsample", "--degrade decimate")
    # a model trained here with another recipe keeps it through the Keras file, its training patch
    # (upsample's default window) too: it came back as the Keras input's 8192
    ckpt["recipe"] = {**ckpt["recipe"], "degrade": "decimate+resample", "sr": 24000,  # r must divide it
                      "patch": 16384}
    torch.save(ckpt, tmp_path / "mixed.pt")
    assert _cli("to-keras", tmp_path / "mixed.pt", "--out", tmp_path / "mixed.h5").returncode == 0
    res = _cli("keras", tmp_path / "mixed.h5", "--out", tmp_path / "mixed_back.pt")
    assert res.returncode == 0, res.stderr
    assert load_checkpoint(tmp_path / "mixed_back.pt")["recipe"] == {
        "r": 4, "sr": 24000, "degrade": "decimate+resample", "patch": 16384}
    # a TFiLM file is not an AFiLM
    _one_line_error(_cli("keras", src, "--model", "afilm", "--r", "4", "--out", tmp_path / "y.pt"),
                    "TFILM", "--model tfilm")
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()


@pytest.mark.slow
def test_tfilm_full_model_file_detected_and_runs(tfilm_files, tmp_path):
    arrays, _ = tfilm_files
    full = _write_keras(tmp_path / "tfilm_x4.h5", arrays, "full", "tfilm")  # r from the file name
    net, info = load_keras_model(full)  # the model detected from the file
    assert (info["model"], info["r"], info["r_from"]) == ("tfilm", 4, "file name")
    assert info["format"] == "keras h5 (full model)"
    _check_state_dict(net.state_dict(), "tfilm", arrays)
    x = 0.1 * torch.randn(1, 1, 8192, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.slow
def test_wrong_shape_names_the_array_and_the_expected_shape(tfilm_files, tmp_path):
    arrays, _ = tfilm_files
    bad = list(arrays)
    layer, name, arr = bad[15]  # down3.conv.kernel (9, 512, 512)
    bad[15] = (layer, name, arr[:, :, :256])
    path = _write_keras(tmp_path / "bad.h5", bad, "weights", "tfilm")
    with pytest.raises(AfilmError) as err:
        load_keras_model(path, "tfilm", r=4)
    msg = str(err.value)
    assert "\n" not in msg
    assert "#15 conv1d_3/conv1d_3/kernel:0" in msg and "(9, 512, 256)" in msg and "(9, 512, 512)" in msg


# ---------------------------------------------------------------- cheap refusals


def test_truncated_file_and_wrong_model_fail_clearly(tmp_path):
    arrays = _random_arrays("tfilm", 2)[:5]
    path = _write_keras(tmp_path / "part.h5", arrays, "weights", "tfilm")
    with pytest.raises(AfilmError, match=r"5 weight arrays, but the original TFILM .* has 47"):
        load_keras_model(path, "tfilm", r=4)
    with pytest.raises(AfilmError, match=r"holds a Keras TFILM model .* use --model tfilm"):
        load_keras_model(path, "afilm", r=4)


def test_not_a_keras_file(tmp_path):
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"not hdf5")
    with pytest.raises(AfilmError, match="not an HDF5 file .*to-keras"):
        read_keras_h5(pt)
    k3 = tmp_path / "model.weights.h5"
    with h5py.File(k3, "w") as f:
        f.create_group("layers").create_group("conv1d").create_group("vars")
    with pytest.raises(AfilmError, match="not a Keras 2 HDF5 .*Keras 3"):
        read_keras_h5(k3)
    with pytest.raises(AfilmError, match="no such file"):
        read_keras_h5(tmp_path / "missing.h5")


@pytest.mark.parametrize("stem,given,expected", [
    ("afilm_vctk_multi_r4", None, (4, "file name")),
    ("afilm_vctk_multi_r4", 4, (4, "file name")),
    ("model-x8", None, (8, "file name")),
    ("scale2_model", 2, (2, "file name")),
    ("model", 4, (4, "user")),
    ("checkpoint3", 4, (4, "user")),  # digits without r/x/scale are no hint
    ("build_x86", 4, (4, "user")),  # nor an implausible ratio
])
def test_r_resolution(tmp_path, stem, given, expected):
    kf = KerasFile(tmp_path / f"{stem}.h5", "weights only", [], {}, None)
    assert resolve_r(kf, given) == expected


def test_r_contradictions_fail(tmp_path):
    # the way out: the name's r is taken without --r, and a wrong name must be changed (--r cannot win)
    with pytest.raises(AfilmError, match="file name says r=2, but --r 4 .*drop --r, or .*rename the file"):
        resolve_r(KerasFile(tmp_path / "afilm_r2.h5", "weights only", [], {}, None), 4)
    with pytest.raises(AfilmError, match="records r=8, but --r 4"):
        resolve_r(KerasFile(tmp_path / "m.h5", "weights only", [], {"afilm_r": 8}, None), 4)
    with pytest.raises(AfilmError, match="do not store the upscaling ratio; pass --r"):
        resolve_r(KerasFile(tmp_path / "m.h5", "weights only", [], {}, None), None)


def _shapes_only_keras(path: Path, model: str = "tfilm") -> Path:
    """A weights-only .h5 with every array of the right shape but never written (HDF5 allocates
    nothing): the checks that run before the arrays are read see a real file, in a few KB."""
    return _write_keras(path, [(w.layer, w.name, w.shape) for w in keras_weight_list(paper_config(model))],
                        "weights", model)


def test_r_and_sr_must_make_a_recipe_prepare_accepts(tmp_path):
    kf = KerasFile(tmp_path / "m.h5", "weights only", [], {}, None)
    assert resolve_recipe(kf, 4) == ({"r": 4, "sr": 16000, "degrade": "subsample", "patch": 8192}, "user")
    assert resolve_recipe(kf, 4, sr=48000)[0]["sr"] == 48000
    # r=3 at 16 kHz: a 5333.33 Hz low rate; refused with prepare's own rule (first: the patch length)
    with pytest.raises(AfilmError, match=r"m.h5: cannot import with r=3, sr=16000, .*does not divide"):
        resolve_recipe(kf, 3)
    with pytest.raises(AfilmError, match="does not divide the sample rate 22050"):
        resolve_recipe(kf, 4, sr=22050)
    hinted = KerasFile(tmp_path / "model_r14.h5", "weights only", [], {}, None)
    with pytest.raises(AfilmError, match=r"r=14 \(from the file name\)"):
        resolve_recipe(hinted, None)
    recorded = KerasFile(tmp_path / "m.h5", "weights only", [], {"afilm_r": 4, "afilm_sr": 22050}, None)
    with pytest.raises(AfilmError, match=r"r=4 \(from the file attribute\), sr=22050, .*sample rate 22050"):
        resolve_recipe(recorded, None)


def test_cli_refuses_an_r_that_does_not_divide_the_sample_rate(tmp_path):
    src = _shapes_only_keras(tmp_path / "tfilm_weights.h5")
    hinted = _shapes_only_keras(tmp_path / "model_r14.h5")
    for args, needles in (((src, "--r", "3"), ("r=3", "does not divide")),
                          ((hinted,), ("r=14 (from the file name)", "does not divide")),
                          ((src, "--r", "4", "--sr", "22050"), ("does not divide the sample rate 22050",))):
        _one_line_error(_cli("keras", *args, "--out", tmp_path / "x.pt"), *needles)
        assert not (tmp_path / "x.pt").exists()


def test_export_refuses_models_keras_cannot_build(tmp_path):
    from afilm_cli.models import create_model

    with pytest.raises(AfilmError, match="only the paper AFILM; this model differs in channels"):
        write_keras_h5(tmp_path / "tiny.h5", create_model("afilm_tiny"))
    assert not (tmp_path / "tiny.h5").exists()
    # the paper size with LeakyReLU up stages computes something else than the Keras code's ReLU
    with torch.device("meta"):
        leaky = create_model("tfilm", up_slope=0.2)
    with pytest.raises(AfilmError, match="only the paper TFILM; this model differs in up_slope"):
        write_keras_h5(tmp_path / "leaky.h5", leaky)
    assert not (tmp_path / "leaky.h5").exists()
    # the CLI names the checkpoint (it said "model spline: ..." alone) and writes nothing
    for name in ("spline", "afilm_tiny"):
        ckpt = save_checkpoint(tmp_path / f"{name}.pt", make_checkpoint(
            create_model(name), {"r": 4, "sr": 16000, "degrade": "decimate", "patch": 8192}))
        _one_line_error(_cli("to-keras", ckpt, "-o", tmp_path / "out.h5"), f"{ckpt}: model {name}: ",
                        "Keras counterpart" if name == "spline" else "only the paper AFILM")
        assert not (tmp_path / "out.h5").exists()


# ---------------------------------------------------------------- Keras semantics, without TensorFlow


def test_keras_lstm_gate_order_and_single_bias_match_torch():
    """A Keras LSTM step written out (gates i, f, c, o; one bias; h = o * tanh(c)) against nn.LSTM
    holding the converted weights."""
    from afilm_cli.models.keras_layout import torch_value

    rng = np.random.default_rng(0)
    n_in = units = 6
    kernel = rng.standard_normal((n_in, 4 * units), dtype=np.float32) * 0.5
    rec = rng.standard_normal((units, 4 * units), dtype=np.float32) * 0.5
    bias = rng.standard_normal(4 * units, dtype=np.float32) * 0.5
    x = rng.standard_normal((2, 5, n_in), dtype=np.float32)

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    h = np.zeros((2, units), np.float32)
    c = np.zeros((2, units), np.float32)
    outs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ rec + bias
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        outs.append(h)
    want = np.stack(outs, 1)

    lstm = torch.nn.LSTM(n_in, units, batch_first=True)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch_value("a.rnn.cell.kernel", kernel))
        lstm.weight_hh_l0.copy_(torch_value("a.rnn.cell.recurrent_kernel", rec))
        lstm.bias_ih_l0.copy_(torch_value("a.rnn.cell.bias", bias))
        lstm.bias_hh_l0.zero_()
        got = lstm(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_keras_dilated_same_conv_matches_torch():
    """Keras Conv1D(padding='same', dilation_rate=2) written out against the converted nn.Conv1d."""
    from afilm_cli.models.keras_layout import torch_value

    rng = np.random.default_rng(1)
    k, c_in, c_out, t, d = 5, 3, 4, 20, 2
    kernel = rng.standard_normal((k, c_in, c_out), dtype=np.float32)
    x = rng.standard_normal((t, c_in), dtype=np.float32)  # channels-last, as Keras
    pad = (k - 1) * d // 2
    xp = np.pad(x, ((pad, pad), (0, 0)))
    want = np.stack([sum(xp[s + j * d] @ kernel[j] for j in range(k)) for s in range(t)])
    conv = torch.nn.Conv1d(c_in, c_out, k, dilation=d, padding=pad, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch_value("a.conv.kernel", kernel))
        got = conv(torch.from_numpy(x.T[None]))[0].numpy().T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_to_keras_takes_a_run_folder_as_upsample_does(tmp_path, monkeypatch):
    """'afilm convert to-keras RUN' said "no such checkpoint"; upsample, eval and train --init take a
    run folder (its best.pt, else last.pt). The Keras writer and its paper-size check are replaced: a
    paper-size model is 134 M parameters, and what is checked here is which checkpoint is read and where
    the .h5 goes."""
    from typer.testing import CliRunner

    from afilm_cli import keras_io
    from afilm_cli.checkpoint import make_checkpoint, save_checkpoint
    from afilm_cli.main import app
    from afilm_cli.models import create_model

    written = []
    monkeypatch.setattr(keras_io, "write_keras_h5", lambda out, net, **recipe: written.append((out, recipe)))
    monkeypatch.setattr(keras_io, "keras_config", lambda net: net.config)  # a tiny model stands in
    run = tmp_path / "run"
    for name, r in (("last.pt", 4), ("best.pt", 2)):
        save_checkpoint(run / name, make_checkpoint(create_model("afilm_tiny"), {"r": r, "sr": 16000,
                                                    "degrade": "decimate", "patch": 8192}))
    res = CliRunner().invoke(app, ["convert", "to-keras", str(run)])
    assert res.exit_code == 0, res.output
    assert written == [(run / "best.h5", {"r": 2, "sr": 16000, "degrade": "decimate", "patch": 8192})]
    assert f"{run / 'best.pt'} -> {run / 'best.h5'}" in res.output
    (run / "best.pt").unlink()  # a run stopped before its first validation has only last.pt
    res = CliRunner().invoke(app, ["convert", "to-keras", str(run)])
    assert res.exit_code == 0, res.output
    assert written[-1] == (run / "last.h5", {"r": 4, "sr": 16000, "degrade": "decimate", "patch": 8192})
    # weights that do not fit their model: one line naming the file, as upsample says it
    import torch

    ckpt = torch.load(run / "last.pt", weights_only=False)
    ckpt["state_dict"].pop(next(iter(ckpt["state_dict"])))
    torch.save(ckpt, tmp_path / "odd.pt")
    res = CliRunner().invoke(app, ["convert", "to-keras", str(tmp_path / "odd.pt")])
    said = f"{tmp_path / 'odd.pt'}: checkpoint weights do not fit model 'afilm_tiny': 1 missing"
    assert isinstance(res.exception, AfilmError) and str(res.exception).startswith(said), res.exception


def test_a_folder_given_for_a_file_is_said_to_be_one(tmp_path):
    """'afilm convert keras DIR' said "DIR: no such file"."""
    with pytest.raises(AfilmError, match="is a folder, not a file"):
        read_keras_h5(tmp_path)
    _one_line_error(_cli("keras", tmp_path, "--r", "4"), f"{tmp_path} is a folder, not a file")
    assert not tmp_path.with_suffix(".pt").exists()


def test_the_input_is_checked_before_the_output_and_never_overwritten(tmp_path):
    """'afilm convert keras a.pt' said "a.pt exists; pass --force to overwrite it" (its default output
    is the input itself), and to-keras on an .h5 the same: the input's own fault comes first now, and
    no --force lets an output replace its input."""
    from afilm_cli.checkpoint import make_checkpoint, save_checkpoint
    from afilm_cli.models import create_model

    pt = tmp_path / "a.pt"
    save_checkpoint(pt, make_checkpoint(create_model("afilm_tiny"), {"r": 4, "sr": 16000,
                                                                     "degrade": "decimate", "patch": 8192}))
    before = pt.read_bytes()
    _one_line_error(_cli("keras", pt), f"{pt}: not an HDF5 file (an afilm checkpoint? see 'afilm convert")
    h5 = tmp_path / "k.h5"
    with h5py.File(h5, "w") as f:
        f.attrs["layer_names"] = []
    _one_line_error(_cli("to-keras", h5), f"{h5}: not a loadable afilm checkpoint")
    _one_line_error(_cli("to-keras", pt, "-o", pt, "--force"), f"{pt} is the input file; give the output")
    assert pt.read_bytes() == before


def test_an_output_folder_is_said_to_be_one(tmp_path):
    """'afilm convert keras M.h5 -o DIR' said "DIR exists; pass --force to overwrite it", and with
    --force failed on the folder only after the conversion; to-keras the same."""
    from afilm_cli.checkpoint import make_checkpoint, save_checkpoint
    from afilm_cli.models import create_model

    h5 = _shapes_only_keras(tmp_path / "m.h5")
    pt = tmp_path / "a.pt"
    save_checkpoint(pt, make_checkpoint(create_model("afilm_tiny"), {"r": 4, "sr": 16000,
                                                                     "degrade": "decimate", "patch": 8192}))
    folder = tmp_path / "out"
    folder.mkdir()
    for args, example in (((h5, "--r", "4"), "m.pt"), ((h5, "--r", "4", "--force"), "m.pt")):
        _one_line_error(_cli("keras", *args, "-o", folder), f"{folder} is a folder", str(folder / example))
    _one_line_error(_cli("to-keras", pt, "-o", folder, "--force"), f"{folder} is a folder",
                    str(folder / "a.h5"))
    assert list(folder.iterdir()) == []


def test_an_r_not_dividing_the_input_gives_advice_convert_can_take(tmp_path):
    """'afilm convert keras M.h5 --r 5' advised "or change --patch", an option convert does not have:
    the Keras model's input is 8192 samples."""
    res = _cli("keras", _shapes_only_keras(tmp_path / "m.h5"), "--r", "5", "-o", tmp_path / "m.pt")
    _one_line_error(res, "--r 5 does not divide the patch length 8192", "input is fixed at 8192 samples")
    assert "--patch" not in res.stderr


def test_an_output_suffix_that_misnames_the_file_is_refused_before_the_work(tmp_path):
    """'convert keras M.h5 -o out.h5' wrote a PyTorch checkpoint named .h5 ('afilm eval --ckpt out.h5'
    then took it for a Keras file), and 'to-keras -o out.pt' a Keras file named .pt: each direction's
    suffix is checked before the work, the right one suggested; its case is no matter."""
    h5 = _shapes_only_keras(tmp_path / "m.h5")
    for out, said in [(tmp_path / "k.h5", f"{tmp_path / 'k.h5'}: convert keras writes an afilm checkpoint; "
                                          f"name it .pt, e.g. -o {tmp_path / 'k.pt'}"),
                      (tmp_path / "k", f"{tmp_path / 'k'}: convert keras writes an afilm checkpoint; name it "
                                       f".pt, e.g. -o {tmp_path / 'k.pt'}")]:
        _one_line_error(_cli("keras", h5, "--r", "4", "-o", out, "--force"), said)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]
    res = _cli("keras", h5, "--r", "4", "-o", tmp_path / "k.PT")
    assert res.returncode == 0, res.stderr
    _one_line_error(_cli("to-keras", tmp_path / "k.PT", "-o", tmp_path / "t.pt"),
                    f"{tmp_path / 't.pt'}: convert to-keras writes a Keras HDF5 weights file; name it .h5 or "
                    f".hdf5, e.g. -o {tmp_path / 't.h5'}")
    assert not (tmp_path / "t.pt").exists()
    res = _cli("to-keras", tmp_path / "k.PT", "-o", tmp_path / "t.hdf5")
    assert res.returncode == 0, res.stderr
    assert read_keras_h5(tmp_path / "t.hdf5", values=False).layout == "weights only"


def test_an_output_under_a_file_is_refused_before_the_work(tmp_path, monkeypatch):
    """'-o FILE/x.pt' (a file where a folder must be) failed at the write, once the model was read and
    converted (a minute or more for the paper AFiLM): said before, in the same words."""
    from typer.testing import CliRunner

    from afilm_cli import keras_io
    from afilm_cli.checkpoint import make_checkpoint, save_checkpoint
    from afilm_cli.main import app
    from afilm_cli.models import create_model

    h5 = _shapes_only_keras(tmp_path / "m.h5")
    pt = tmp_path / "a.pt"
    save_checkpoint(pt, make_checkpoint(create_model("afilm_tiny"), {"r": 4, "sr": 16000,
                                                                     "degrade": "decimate", "patch": 8192}))
    work = []
    monkeypatch.setattr(keras_io, "load_keras_model", lambda *a, **k: work.append(1))
    monkeypatch.setattr(keras_io, "model_from_checkpoint_fast", lambda *a, **k: work.append(1))
    for args, out in [(("keras", h5, "--r", "4"), pt / "x.pt"), (("to-keras", pt), pt / "deeper" / "x.h5")]:
        res = CliRunner().invoke(app, ["convert", *map(str, args), "-o", str(out)])
        assert isinstance(res.exception, AfilmError), res.output
        assert str(res.exception) == f"cannot write {out}: {pt} is a file, not a folder"
    assert work == []


def test_a_truncated_h5_is_said_to_be_cut_short(tmp_path):
    """A Keras .h5 cut short (an interrupted download) was "not an HDF5 file", as if it were some other
    kind of file: it is said to be truncated, with how much of it is there."""
    whole = _shapes_only_keras(tmp_path / "whole.h5")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(whole.read_bytes()[:1000])
    size = whole.stat().st_size
    _one_line_error(_cli("keras", cut, "--r", "4", "-o", tmp_path / "x.pt"),
                    f"{cut}: a truncated HDF5 file (1,000 of its {size:,} bytes; an interrupted download")
    assert not (tmp_path / "x.pt").exists()


def test_an_hdf5_file_that_is_not_keras_is_said_for_what_it_is(tmp_path):
    """A split written by 'afilm prepare', or an empty HDF5 file, was refused as "not a Keras 2 HDF5 ...
    Keras 3 '.weights.h5' and SavedModel folders are not supported: re-save with tf.keras 2", advice
    for a Keras file it is not."""
    split, empty = tmp_path / "train.h5", tmp_path / "empty.h5"
    with h5py.File(split, "w") as f:
        f.create_dataset("data", data=np.zeros((2, 8192, 1), np.float32))
        f.create_dataset("label", data=np.zeros((2, 8192, 1), np.float32))
    h5py.File(empty, "w").close()
    for path, said in ((split, f"{split}: a split of patches written by 'afilm prepare' (datasets 'data' and "
                                "'label'), not a Keras model or weights file"),
                       (empty, f"{empty}: not a Keras model or weights file (an HDF5 file holding nothing")):
        res = _cli("keras", path, "--r", "4", "-o", tmp_path / "x.pt")
        _one_line_error(res, said)
        assert "Keras 3" not in res.stderr
    assert not (tmp_path / "x.pt").exists()


def test_a_file_of_another_model_is_not_sent_to_pass_model(tmp_path):
    """A Keras file of neither model (18 arrays of a plain conv U-Net) was "cannot tell AFiLM from TFiLM
    (18 arrays); pass --model", and either --model then failed on the count: it says what fits neither."""
    arrays = [(layer, f"{layer}/{var}:0", (9, 4, 4) if var == "kernel" else (4,))
              for layer in ("conv1d", "conv1d_1", "conv1d_2") for var in ("kernel", "bias")]
    other = _write_keras(tmp_path / "unet.h5", arrays, "full", "audiounet")
    res = _cli("keras", other, "--r", "4", "-o", tmp_path / "x.pt")
    _one_line_error(res, f"{other}: 6 weight arrays: another model than the original AFILM (596 arrays) "
                         "and TFILM (47)")
    assert "--model" not in res.stderr


def test_the_files_faults_come_before_an_existing_output(tmp_path):
    """With M.pt already there, 'convert keras M.h5' (no --r, a wrong --model, an r prepare refuses) said
    "M.pt exists; pass --force", and with --force the file's own fault came only then."""
    src = _shapes_only_keras(tmp_path / "m.h5")
    out = tmp_path / "m.pt"
    out.write_bytes(b"earlier")
    for args, said in (((), "do not store the upscaling ratio; pass --r"),
                       (("--r", "4", "--model", "afilm"), "holds a Keras TFILM model"),
                       (("--r", "3"), "cannot import with r=3")):
        res = _cli("keras", src, *args)
        _one_line_error(res, f"{src}: ", said)
        assert "exists" not in res.stderr
    _one_line_error(_cli("keras", src, "--r", "4"), f"{out} exists; pass --force")
    assert out.read_bytes() == b"earlier"


def test_a_patch_file_without_afilms_attributes_given_as_a_checkpoint_is_named(tmp_path):
    """The original prep_vctk.py writes data/label and no attributes: given as a checkpoint (to-keras,
    upsample, eval) it was 'an HDF5 file (if it is a Keras model: import it ...)'."""
    with h5py.File(tmp_path / "vctk-speaker1-train.4.16000.8192.8192.0.25.h5", "w") as f:
        f["data"] = np.zeros((2, 8192, 1), np.float32)
        f["label"] = np.zeros((2, 8192, 1), np.float32)
    p = subprocess.run([sys.executable, "-m", "afilm_cli", "convert", "to-keras",
                        str(tmp_path / "vctk-speaker1-train.4.16000.8192.8192.0.25.h5"), "-o",
                        str(tmp_path / "out.h5")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.endswith(
        ": not a loadable afilm checkpoint: an HDF5 file of training patches (data and label, as 'afilm "
        "prepare' writes), not a model\n"), p.stderr
    assert not (tmp_path / "out.h5").exists()

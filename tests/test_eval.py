"""`afilm eval`: model and spline side by side on an HDF5 split or a folder of wavs; CSV, JSON, plots."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.fft
import soundfile as sf
import torch

from afilm_cli import evaluate, infer, metrics
from afilm_cli.audio import read_audio, resample, simulate_lr
from afilm_cli.checkpoint import make_checkpoint, save_checkpoint
from afilm_cli.data.h5 import PatchFile, PatchWriter
from afilm_cli.errors import AfilmError
from afilm_cli.models import create_model

RECIPE = {"r": 4, "sr": 16000, "degrade": "decimate", "patch": 8192}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    return {name: save_checkpoint(root / f"{name}.pt", make_checkpoint(create_model(name), RECIPE))
            for name in ("afilm_tiny", "spline")}


@pytest.fixture(scope="module")
def wavs(tmp_path_factory, vctk_mini):
    folder = tmp_path_factory.mktemp("wavs")
    for name in ("p225/p225_001.wav", "p226/p226_002.wav"):
        (folder / name.split("/")[0]).mkdir()
        shutil.copy(vctk_mini / "wav48" / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def h5(tmp_path_factory, vctk_mini):
    path = tmp_path_factory.mktemp("h5") / "val.h5"
    x, sr = read_audio(vctk_mini / "wav48" / "p225" / "p225_003.wav")
    hr, _, sp = simulate_lr(resample(x, sr, 16000), 4, "decimate")
    n = len(hr) // 8192
    with PatchWriter(path, 8192, attrs={"r": 4, "sr": 16000, "patch": 8192, "degrade": "decimate"}) as w:
        w.append(sp[: n * 8192].reshape(n, 8192), hr[: n * 8192].reshape(n, 8192))
    return path


def test_h5_spline_checkpoint_equals_baseline(ckpts, h5):
    result = evaluate.evaluate_h5(infer.load_model(ckpts["spline"]), h5, batch_size=2)
    assert len(result.rows) >= 3
    for row in result.rows:
        for m in evaluate.METRICS:
            assert row[f"model_{m}"] == row[f"spline_{m}"]
    s = result.summary["spline"]
    # real speech, 4 kHz -> 16 kHz by spline: positive SNR, a clearly non-zero LSD in both conventions
    assert 3 < s["snr"] < 40 and 0.5 < s["lsd"] < 5 and s["lsd_ref"] > s["lsd"]


def test_bands_pool_the_error_energy_and_put_the_spline_error_above_the_input_band(ckpts, h5):

    result = evaluate.evaluate_h5(infer.load_model(ckpts["spline"]), h5, batch_size=2)
    bands = result.to_json()["bands"]
    assert [(b["lo_hz"], b["hi_hz"]) for b in bands] == [(0, 1600), (1600, 2000), (2000, 4000), (4000, 8000)]
    # the spline model's output is its input
    assert all(b["model_gain_db"] == pytest.approx(0, abs=1e-9) for b in bands)
    with PatchFile(h5) as pf:
        data, label = pf.read(slice(0, len(pf)))
    pooled = np.sum((label.astype(np.float64) - data) ** 2) / np.sum(label.astype(np.float64) ** 2)
    # Parseval: the bands' errors add up to the pooled error, and the signal's shares to one
    assert sum(10 ** (b["spline_error_db"] / 10) for b in bands) == pytest.approx(pooled, rel=1e-9)
    assert sum(10 ** (b["signal_db"] / 10) for b in bands) == pytest.approx(1.0, rel=1e-9)
    # decimate keeps 0-1.6 kHz: the spline errs there far less than in the top octave it cannot fill
    assert bands[0]["spline_error_db"] < bands[-1]["spline_error_db"] - 10
    # above the low-rate Nyquist the spline has nothing, so its error there is the signal itself
    assert bands[-1]["spline_error_db"] == pytest.approx(bands[-1]["signal_db"], abs=0.5)


def test_h5_rows_match_metrics_by_hand(ckpts, h5):

    lo = infer.load_model(ckpts["afilm_tiny"])
    steps, totals = [], []
    result = evaluate.evaluate_h5(lo, h5, batch_size=3, limit=2, progress=steps.append, total=totals.append)
    assert len(result.rows) == 2 and totals == [2] and steps == [2]
    with PatchFile(h5) as pf:
        data, label = pf.read(slice(1, 2))
    with torch.inference_mode():
        pred = lo.model(torch.from_numpy(data[:, None, :])).numpy()[0, 0]
    row = result.rows[1]
    assert row["item"] == "patch_000001"
    assert row["model_snr"] == pytest.approx(metrics.snr(pred, label[0]), abs=1e-4)
    assert row["model_lsd_ref"] == pytest.approx(metrics.lsd_reference(pred, label[0]), abs=1e-4)
    assert row["spline_segsnr"] == pytest.approx(metrics.segmental_snr(data[0], label[0]), abs=1e-9)


def test_h5_summary_takes_the_reference_lsd_over_the_joined_patches(ckpts, h5):
    """As the reference: one LSD over the split's patches end to end, not the mean of per-patch LSDs."""

    lo = infer.load_model(ckpts["afilm_tiny"])
    result = evaluate.evaluate_h5(lo, h5, batch_size=2, limit=5)
    with PatchFile(h5) as pf:
        data, label = pf.read(slice(0, 5))
    with torch.inference_mode():
        pred = lo.model(torch.from_numpy(data[:, None, :])).numpy()[:, 0]
    for system, x in (("model", pred), ("spline", data)):
        got = result.summary[system]["lsd_ref"]
        assert got == pytest.approx(metrics.lsd_reference(x.ravel(), label.ravel()), rel=1e-5)
        assert abs(got - np.mean([row[f"{system}_lsd_ref"] for row in result.rows])) > 1e-3
    assert result.summary["model"]["lsd"] == pytest.approx(np.mean([r["model_lsd"] for r in result.rows]))


def test_h5_with_another_r_is_refused(tmp_path, h5):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "r2.pt", make_checkpoint(create_model("spline"), {**RECIPE, "r": 2}))
    with pytest.raises(AfilmError, match="data has r=4 but the checkpoint was trained with r=2"):
        evaluate.evaluate_h5(infer.load_model(ckpt), h5)


def test_wavs_spline_equals_baseline_and_plots(ckpts, wavs, tmp_path):
    result = evaluate.evaluate_wavs(infer.load_model(ckpts["spline"]), wavs, plots_dir=tmp_path / "plots")
    assert [r["item"] for r in result.rows] == ["p225/p225_001.wav", "p226/p226_002.wav"]
    for row in result.rows:
        assert row["model_snr"] == pytest.approx(row["spline_snr"], abs=1e-4)
        assert row["model_lsd"] == pytest.approx(row["spline_lsd"], abs=1e-4)
    assert len(result.plots) == 2
    import matplotlib.image

    for png in result.plots:
        assert png.read_bytes()[:8] == PNG_MAGIC
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[1] > 2 * image.shape[0]  # three panels side by side
        assert image[..., :3].std() > 0.05  # not a blank canvas


def test_silent_and_short_files_give_finite_metrics(ckpts, tmp_path):
    sf.write(str(tmp_path / "silent.wav"), np.zeros(16000, np.float32), 16000)
    short = np.random.default_rng(0).standard_normal(300).astype(np.float32) * 0.1  # 25 low-rate samples
    sf.write(str(tmp_path / "short.wav"), short, 48000)
    result = evaluate.evaluate_wavs(infer.load_model(ckpts["afilm_tiny"]), tmp_path)
    for row in result.rows:
        assert all(np.isfinite(v) for k, v in row.items() if k != "item"), row


def test_wav_below_model_rate_is_refused(ckpts, tmp_path):
    sf.write(str(tmp_path / "narrow.wav"), np.zeros(8000, np.float32), 8000)
    with pytest.raises(AfilmError, match="narrow.wav: 8000 Hz is below the model's rate 16000 Hz.*"
                                         "afilm upsample without --simulate"):
        evaluate.evaluate_wavs(infer.load_model(ckpts["spline"]), tmp_path)


def test_wavs_are_all_checked_before_the_first_is_evaluated(ckpts, tmp_path, monkeypatch):
    sf.write(str(tmp_path / "a.wav"), np.zeros(16000, np.float32) + 0.1, 16000)
    (tmp_path / "b.wav").write_bytes(b"")
    monkeypatch.setattr(evaluate, "predict", lambda *a, **k: pytest.fail("evaluated before the check"))
    with pytest.raises(AfilmError, match=r"b\.wav: cannot read audio"):
        evaluate.evaluate_wavs(infer.load_model(ckpts["spline"]), tmp_path)


def test_cli_eval_wavs_writes_csv_json_table_and_plots(ckpts, wavs, tmp_path):
    args = [sys.executable, "-m", "afilm_cli", "eval", "--ckpt", str(ckpts["afilm_tiny"]),
            "--wavs", str(wavs), "--out", str(tmp_path / "res"), "--plots", str(tmp_path / "png"),
            "--device", "cpu"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    for text in ("SNR", "segmental SNR", "LSD", "model", "spline", "afilm_tiny"):
        assert text in out.stdout
    with open(tmp_path / "res" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["item"] for r in rows] == ["p225/p225_001.wav", "p226/p226_002.wav"]
    assert {"model_snr", "model_segsnr", "model_lsd", "model_lsd_ref", "spline_lsd_ref"} <= set(rows[0])
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    p = summary["protocol"]
    assert (p["r"], p["sr"], p["degrade"], p["patch"]) == (4, 16000, "decimate", 8192)
    assert p["checkpoint"] == str(ckpts["afilm_tiny"]) and p["model_name"] == "afilm_tiny"
    assert {"afilm", "torch", "numpy", "scipy", "python"} <= set(p["versions"])
    mean_snr = np.mean([float(r["model_snr"]) for r in rows])
    assert summary["summary"]["model"]["snr"] == pytest.approx(mean_snr, abs=1e-5)
    assert "error by frequency band" in out.stdout and "4000-8000" in out.stdout
    assert [b["hi_hz"] for b in summary["bands"]] == [1600, 2000, 4000, 8000]
    # the truth low-passed at 2 kHz: recomputed here from the file through scipy's FFT
    assert "truth below 2000 Hz" in out.stdout
    x, sr = read_audio(wavs / "p225" / "p225_001.wav", mono=True)
    hr = resample(x, sr, 16000)
    spectrum = scipy.fft.rfft(hr)
    spectrum[scipy.fft.rfftfreq(len(hr), 1 / 16000) >= 2000] = 0
    expected = metrics.snr(scipy.fft.irfft(spectrum, len(hr)), hr)
    assert float(rows[0]["lowpass_truth_snr"]) == pytest.approx(expected, abs=1e-4)
    lows = [float(r["lowpass_truth_snr"]) for r in rows]
    assert summary["summary"]["lowpass_truth"]["snr"] == pytest.approx(np.mean(lows), abs=1e-5)
    # a spline that restores nothing above 2 kHz scores at most the band-limited truth (+ rounding)
    assert all(float(r["spline_snr"]) <= lo + 0.05 for r, lo in zip(rows, lows, strict=True))
    names = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert names == ["p225__p225_001.png", "p226__p226_002.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in (tmp_path / "png").iterdir())
    # --max-plots caps them
    one = [sys.executable, "-m", "afilm_cli", "eval", "--ckpt", str(ckpts["afilm_tiny"]), "--wavs", str(wavs),
           "--out", str(tmp_path / "res1"), "--plots", str(tmp_path / "one"), "--max-plots", "1"]
    out = subprocess.run(one, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["p225__p225_001.png"]


def test_cli_eval_h5_and_errors(ckpts, h5, tmp_path, capsys):
    from afilm_cli.main import main

    def run(*args):
        sys_argv = sys.argv
        sys.argv = ["afilm", "eval", *map(str, args)]
        try:
            with pytest.raises(SystemExit) as exc:
                main()
        finally:
            sys.argv = sys_argv
        return exc.value.code or 0, capsys.readouterr()

    code, out = run("--ckpt", ckpts["spline"], "--data", h5, "--out", tmp_path / "r")
    assert code == 0 and (tmp_path / "r" / "metrics.csv").is_file()
    assert f"checkpoint: {ckpts['spline']}" in " ".join(out.err.split())  # which model, said on screen
    for args, message in [
        (("--ckpt", ckpts["spline"], "--data", h5, "--out", tmp_path / "r"), "exists; pass --force"),
        (("--ckpt", ckpts["spline"]), "exactly one of --data"),
        (("--ckpt", ckpts["spline"], "--data", tmp_path / "no.h5", "--out", tmp_path / "x"), "no such HDF5"),
        # the missing input is said even where the outputs exist
        (("--ckpt", ckpts["spline"], "--data", tmp_path / "no.h5", "--out", tmp_path / "r"), "no such HDF5"),
        (("--ckpt", ckpts["spline"], "--wavs", tmp_path / "none", "--out", tmp_path / "r"), "not a folder"),
        (("--ckpt", h5, "--data", h5, "--out", tmp_path / "x"), "not a loadable afilm checkpoint"),
        (("--ckpt", ckpts["spline"], "--data", h5, "--out", tmp_path / "x", "--threads", "0"),
         "--threads takes"),
    ]:
        code, out = run(*args)
        lines = [l for l in out.err.splitlines() if l.strip()]
        assert code == 2 and len(lines) == 1 and message in lines[0], (args, out.err)
    code, _ = run("--ckpt", ckpts["spline"], "--data", h5, "--out", tmp_path / "r", "--force", "--limit", "1")
    assert code == 0
    assert len((tmp_path / "r" / "metrics.csv").read_text().splitlines()) == 2
    # data degraded another way than the checkpoint's training data: said on screen and in the title
    other = tmp_path / "sub.h5"
    with PatchFile(h5) as pf, PatchWriter(other, 8192, attrs={**pf.recipe, "degrade": "subsample"}) as w:
        w.append(*pf.read(slice(0, 1)))
    code, out = run("--ckpt", ckpts["spline"], "--data", other, "--out", tmp_path / "s")
    assert code == 0
    assert "warning: data degraded with 'subsample', checkpoint trained with 'decimate'" in out.err
    assert "16000 Hz, subsample," in out.out
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["protocol"]["degrade"] == "subsample"


def test_wavs_with_another_degradation(ckpts, wavs):
    loaded = infer.load_model(ckpts["spline"])
    dec = evaluate.evaluate_wavs(loaded, wavs)
    res = evaluate.evaluate_wavs(loaded, wavs, degrade="resample")
    assert dec.protocol["degrade"] == "decimate" and res.protocol["degrade"] == "resample"
    assert res.protocol["checkpoint_degrade"] == "decimate"
    # resample_poly keeps more of the band below the low-rate Nyquist: the spline is closer
    assert res.summary["spline"]["snr"] > dec.summary["spline"]["snr"] + 0.1
    transition = [next(b for b in r.to_json()["bands"] if b["lo_hz"] == 1600) for r in (res, dec)]
    assert transition[0]["spline_error_db"] < transition[1]["spline_error_db"] - 3
    with pytest.raises(AfilmError, match="use one of"):
        evaluate.evaluate_wavs(loaded, wavs, degrade="decimate+resample")


def test_wavs_folder_of_links_to_speaker_folders(ckpts, wavs, tmp_path):
    for speaker in ("p225", "p226"):
        (tmp_path / speaker).symlink_to(wavs / speaker, target_is_directory=True)
    result = evaluate.evaluate_wavs(infer.load_model(ckpts["spline"]), tmp_path)
    assert [r["item"] for r in result.rows] == ["p225/p225_001.wav", "p226/p226_002.wav"]


def test_h5_with_nan_samples_names_the_patch(ckpts, h5, tmp_path):
    with PatchFile(h5) as pf:
        data, label = pf.read(slice(None))
    label[2, 7] = np.inf
    bad = tmp_path / "bad.h5"
    with PatchWriter(bad, 8192, attrs={"r": 4, "sr": 16000, "patch": 8192, "degrade": "decimate"}) as w:
        w.append(data, label)
    with pytest.raises(AfilmError, match="patch 2 holds NaN or Inf"):
        evaluate.evaluate_h5(infer.load_model(ckpts["spline"]), bad, batch_size=2)


def test_a_silent_file_is_skipped_with_a_warning(ckpts, wavs, tmp_path):
    """A silent file scores about -80 dB against any output: one in four had pulled the mean SNR from
    8 to -13 dB. Skipped, said, and recorded; a folder of only silence is an error."""
    folder = tmp_path / "mix"
    shutil.copytree(wavs, folder)
    sf.write(str(folder / "silent.wav"), np.zeros(48000), 48000)
    warnings = []
    lo = infer.load_model(ckpts["spline"])
    result = evaluate.evaluate_wavs(lo, folder, warn=warnings.append)
    assert [row["item"] for row in result.rows] == ["p225/p225_001.wav", "p226/p226_002.wav"]
    assert result.protocol["skipped_silent"] == ["silent.wav"]
    assert len(warnings) == 1 and "silent.wav: silent (every sample is zero): skipped" in warnings[0]
    only = tmp_path / "only"
    only.mkdir()
    sf.write(str(only / "silent.wav"), np.zeros(48000), 48000)
    with pytest.raises(AfilmError, match="every file is silent"):
        evaluate.evaluate_wavs(lo, only, warn=warnings.append)


def test_wavs_progress_counts_model_windows(ckpts, wavs, tmp_path):
    """The bar moves per model window (a one-hour file showed nothing for minutes), and its steps add
    up to the total the command sets, silent files (skipped) included."""
    folder = tmp_path / "mix"
    shutil.copytree(wavs, folder)
    sf.write(str(folder / "silent.wav"), np.zeros(48000), 48000)
    lo = infer.load_model(ckpts["afilm_tiny"])
    steps, totals = [], []
    evaluate.evaluate_wavs(lo, folder, progress=steps.append, total=totals.append, warn=lambda m: None,
                           batch_size=2)
    assert totals == [20] and sum(steps) == 20 and len(steps) > 3  # a step per batch of windows


def test_threads_set_what_the_model_runs_on(ckpts, h5, wavs):
    """eval --threads, like upsample's: the model runs at that many CPU threads, for both sources,
    and torch's setting is given back afterwards."""
    loaded = infer.load_model(ckpts["afilm_tiny"])
    forward, seen = loaded.model.forward, []

    def spy(x):
        seen.append(torch.get_num_threads())
        return forward(x)

    loaded.model.forward = spy
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        result = evaluate.evaluate_h5(loaded, h5, limit=2, threads=1)
        assert seen and set(seen) == {1} and result.protocol["threads"] == 1
        seen.clear()
        result = evaluate.evaluate_wavs(loaded, wavs, limit=1, threads=2)
        assert seen and set(seen) == {2} and result.protocol["threads"] == 2
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)

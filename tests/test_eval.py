"""`afilm eval`: model and spline side by side on an HDF5 split or a folder of wavs; CSV, JSON, plots."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_wavs_are_all_checked_before_the_first_is_evaluated(ckpts, wavs, tmp_path, monkeypatch):
    """One bad file among many costs its row, not the run: unreadable, below the model's rate, too short
    to decimate, NaN inside (found only by reading it through) or silent, each is skipped with a
    warning naming it and why, all before the first file is evaluated, and recorded with its reason."""
    folder = tmp_path / "mix"
    shutil.copytree(wavs, folder)
    (folder / "junk.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    sf.write(str(folder / "low.wav"), np.random.default_rng(1).standard_normal(4000) * 0.1, 4000)
    sf.write(str(folder / "tiny.wav"), np.random.default_rng(2).standard_normal(10) * 0.1, 16000)
    nan = np.random.default_rng(3).standard_normal(48000) * 0.1
    nan[40000] = np.nan
    sf.write(str(folder / "nan.wav"), nan, 48000, subtype="FLOAT")
    sf.write(str(folder / "silent.wav"), np.zeros(48000), 48000)
    events = []
    windows = evaluate.model_windows
    monkeypatch.setattr(evaluate, "model_windows",
                        lambda *a, **k: (events.append("predict"), windows(*a, **k))[1])
    result = evaluate.evaluate_wavs(infer.load_model(ckpts["spline"]), folder, warn=events.append)
    assert [row["item"] for row in result.rows] == ["p225/p225_001.wav", "p226/p226_002.wav"]
    assert events[5:] == ["predict", "predict"]  # every warning before the first evaluation
    reasons = {s["item"]: s["reason"] for s in result.protocol["skipped"]}
    assert reasons.keys() == {"junk.wav", "low.wav", "tiny.wav", "nan.wav", "silent.wav"}
    assert reasons["junk.wav"].startswith("cannot read audio")
    assert reasons["low.wav"].startswith("4000 Hz is below the model's rate 16000 Hz, so it cannot serve")
    assert reasons["tiny.wav"] == ("10 frames at 16000 Hz (0.625 ms) is too short: decimate needs 28 "
                                   "samples at the model's rate 16000 Hz, so at least 28 frames at 16000 Hz "
                                   "are needed")
    assert reasons["nan.wav"] == "contains NaN or Inf samples"
    assert reasons["silent.wav"] == "silent (every sample is zero)"
    assert result.protocol["skipped_silent"] == ["silent.wav"]  # as before the reasons were kept
    for item, reason in reasons.items():
        assert sum(f"{folder / item}: {reason}: skipped" in e for e in events) == 1, (item, events)
    # nothing usable at all: one line, naming the first file and why
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(folder / "junk.wav", bad)
    shutil.copy(folder / "low.wav", bad)
    with pytest.raises(AfilmError, match=r"bad: none of the 2 files can be evaluated \(2 unusable, 0 "
                                         r"silent\); the first: .*junk\.wav: cannot read audio"):
        evaluate.evaluate_wavs(infer.load_model(ckpts["spline"]), bad, warn=events.append)


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


def test_plot_names_never_collide(ckpts, vctk_mini, tmp_path):
    """a.wav and a.flac used to share a.png, so one spectrogram overwrote the other; so did
    sub/b.wav and sub__b.wav. Names stay as before where nothing collides."""
    assert evaluate.plot_names(["p225/p225_001.wav", "x.flac"]) == {
        "p225/p225_001.wav": "p225__p225_001.png", "x.flac": "x.png"}
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    x, sr = read_audio(vctk_mini / "wav48" / "p225" / "p225_001.wav")
    for name in ("a.wav", "a.flac", "sub/b.wav", "sub__b.wav", "c.wav"):
        sf.write(folder / name, x[: sr * 2], sr)
    result = evaluate.evaluate_wavs(infer.load_model(ckpts["spline"]), folder, plots_dir=tmp_path / "png")
    names = sorted(p.name for p in result.plots)
    assert names == ["a.flac.png", "a.wav.png", "c.png", "sub__b.wav-2.png", "sub__b.wav.png"]
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == names


def test_plot_titles_are_file_names_as_written(ckpts, vctk_mini, tmp_path, monkeypatch):
    """A name with two '$' went to matplotlib's mathtext as the PNG's title: 'cost $5 to $10.wav' was
    titled 'cost 5to10.wav' in italics, and 'take$^$1.wav' stopped the run with a ValueError traceback
    after its work, nothing written. The real CLI."""
    folder = tmp_path / "in"
    folder.mkdir()
    x, sr = read_audio(vctk_mini / "wav48" / "p225" / "p225_001.wav")
    for name in ("take$^$1.wav", "cost $5 to $10.wav"):
        sf.write(folder / name, x[: sr], sr)
    args = [sys.executable, "-m", "afilm_cli", "eval", "--ckpt", str(ckpts["spline"]), "--wavs", str(folder),
            "--out", str(tmp_path / "res"), "--plots", str(tmp_path / "png"), "--device", "cpu"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["cost $5 to $10.png", "take$^$1.png"]
    assert (tmp_path / "res" / "metrics.csv").exists()
    from matplotlib.figure import Figure

    titles, suptitle = [], Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda self, *a, **kw: titles.append(suptitle(self, *a, **kw)))
    evaluate.evaluate_wavs(infer.load_model(ckpts["spline"]), folder, plots_dir=tmp_path / "again")
    assert [t.get_text() for t in titles] == ["cost $5 to $10.wav", "take$^$1.wav"]
    assert not any(t.get_parse_math() for t in titles)  # drawn as text, not as mathtext


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
    (tmp_path / "empty").mkdir()
    (tmp_path / "wavs").mkdir()
    sf.write(tmp_path / "wavs" / "a.wav", np.zeros(16000, np.float32), 16000)
    assert f"checkpoint: {ckpts['spline']}" in " ".join(out.err.split())  # which model, said on screen
    for args, message in [
        (("--ckpt", ckpts["spline"], "--data", h5, "--out", tmp_path / "r"), "exists; pass --force"),
        (("--ckpt", ckpts["spline"]), "exactly one of --data"),
        (("--ckpt", ckpts["spline"], "--data", tmp_path / "no.h5", "--out", tmp_path / "x"), "no such HDF5"),
        # the missing input is said even where the outputs exist
        (("--ckpt", ckpts["spline"], "--data", tmp_path / "no.h5", "--out", tmp_path / "r"), "no such HDF5"),
        (("--ckpt", ckpts["spline"], "--wavs", tmp_path / "none", "--out", tmp_path / "r"), "not a folder"),
        # the input's faults before the outputs': r/ holds results
        (("--ckpt", ckpts["spline"], "--wavs", tmp_path / "empty", "--out", tmp_path / "r"),
         "no audio files in this folder"),
        (("--ckpt", ckpts["spline"], "--wavs", tmp_path / "wavs", "--degrade", "bogus", "--out",
          tmp_path / "r"),
         "--degrade 'bogus': use one of"),
        # a file given to --wavs: what it takes is said
        (("--ckpt", ckpts["spline"], "--wavs", h5, "--out", tmp_path / "x"),
         f"{h5} is a file, not a folder; --wavs takes a folder of high-rate audio files"),
        (("--ckpt", ckpts["spline"], "--data", tmp_path, "--out", tmp_path / "x"), "is a folder, not a file"),
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


def test_h5_degraded_one_of_the_checkpoints_ways_is_no_mismatch(h5, tmp_path):
    """A checkpoint trained on decimate+resample (afilm_speech_r4, the default) saw decimate input: a
    'decimate' split was warned about as 'data degraded with 'decimate', checkpoint trained with
    'decimate+resample'' and summary.json noted it. A way it never saw is still said."""
    ckpt = save_checkpoint(tmp_path / "both.pt", make_checkpoint(create_model("spline"),
                                                                 {**RECIPE, "degrade": "decimate+resample"}))
    loaded = infer.load_model(ckpt)
    for degrade, said in [("decimate", False), ("decimate+resample", False), ("resample+decimate", False),
                          ("subsample", True), ("decimate+subsample", True)]:
        split = tmp_path / f"{degrade}.h5"
        with PatchFile(h5) as pf, PatchWriter(split, 8192, attrs={**pf.recipe, "degrade": degrade}) as w:
            w.append(*pf.read(slice(0, 1)))
        warnings = []
        result = evaluate.evaluate_h5(loaded, split, warn=warnings.append)
        assert bool(warnings) == said and ("note" in result.protocol) == said, (degrade, warnings)
        if said:
            assert warnings == [f"data degraded with {degrade!r}, checkpoint trained with "
                                "'decimate+resample'"]
        assert result.protocol["degrade"] == degrade


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


def test_wavs_default_degradation_is_the_recipes_first_method_as_help_says(wavs, tmp_path):
    """A checkpoint trained on decimate+resample (afilm_speech_r4) is scored on decimate input alone
    without --degrade; --help said 'instead of the checkpoint's recipe', as if both were used."""
    ckpt = save_checkpoint(tmp_path / "both.pt", make_checkpoint(create_model("spline"),
                                                                 {**RECIPE, "degrade": "decimate+resample"}))
    result = evaluate.evaluate_wavs(infer.load_model(ckpt), wavs, limit=1)
    assert result.protocol["degrade"] == "decimate"
    assert result.protocol["checkpoint_degrade"] == "decimate+resample"
    out = subprocess.run([sys.executable, "-m", "afilm_cli", "eval", "--help"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    said = " ".join(out.stdout.replace("│", "").split())
    assert ("instead of the checkpoint's recipe's (its first method where it joins several: decimate for "
            "afilm_speech_r4's decimate+resample)") in said


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


def test_stereo_files_are_said_mixed_and_cancelling_channels_are_not_called_zero(ckpts, vctk_mini, tmp_path):
    """A stereo file was scored as its channels' mean without a word, and one whose channels cancel
    was skipped as "every sample is zero", which was untrue."""
    x, sr = read_audio(vctk_mini / "wav48" / "p225" / "p225_001.wav", mono=True)
    folder = tmp_path / "st"
    folder.mkdir()
    sf.write(folder / "anti.wav", np.stack([x, -x], 1), sr)
    sf.write(folder / "both.wav", np.stack([x, 0.5 * x], 1), sr)
    sf.write(folder / "mono.wav", x, sr)
    warnings = []
    result = evaluate.evaluate_wavs(infer.load_model(ckpts["spline"]), folder, warn=warnings.append)
    assert [row["item"] for row in result.rows] == ["both.wav", "mono.wav"]
    assert result.protocol["skipped"] == [{"item": "anti.wav", "reason": evaluate.CANCELLED}]
    assert result.protocol["skipped_silent"] == ["anti.wav"]
    assert warnings == [f"{folder / 'anti.wav'}: silent once its channels are mixed to mono (they cancel): "
                        "skipped, since its SNR would swamp the means",
                        f"{folder}: 1 of the 2 files has several channels; it is scored as the mean of "
                        "its channels (mono)"]
    rows = {row["item"]: row for row in result.rows}
    assert rows["both.wav"]["spline_snr"] == pytest.approx(rows["mono.wav"]["spline_snr"], abs=1e-3)


def test_wavs_progress_counts_model_windows(ckpts, wavs, tmp_path):
    """The bar moves per model window (a one-hour file showed nothing for minutes), and its steps add
    up to the total the command sets; a silent file, found before the work, is not in it."""
    folder = tmp_path / "mix"
    shutil.copytree(wavs, folder)
    sf.write(str(folder / "silent.wav"), np.zeros(48000), 48000)
    lo = infer.load_model(ckpts["afilm_tiny"])
    steps, totals = [], []
    evaluate.evaluate_wavs(lo, folder, progress=steps.append, total=totals.append, warn=lambda m: None,
                           batch_size=2)
    expected = sum(infer.count_windows(wavs / name, lo, simulate=True)
                   for name in ("p225/p225_001.wav", "p226/p226_002.wav"))
    assert expected == 17 and totals == [17] and sum(steps) == 17 and len(steps) > 3  # a step per batch


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


def test_a_bad_setting_is_an_error_not_a_skip_of_every_file(ckpts, wavs):
    """Once scoring streamed, an error of the run's own setting (threads=0 from the Python API) was
    caught as the file's: every file skipped, a summary of NaN returned."""
    loaded = infer.load_model(ckpts["spline"])
    with pytest.raises(AfilmError, match="thread"):
        evaluate.evaluate_wavs(loaded, wavs, limit=2, threads=0)


def test_cli_eval_skips_unusable_files_and_still_writes_results(ckpts, wavs, tmp_path):
    """The audit's case: one file of random bytes, one at 4 kHz and one of 10 samples in --wavs had
    stopped the whole run with no output; now each is one warning and the others are evaluated."""
    folder = tmp_path / "mix"
    shutil.copytree(wavs, folder)
    (folder / "junk.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    sf.write(str(folder / "low.wav"), np.random.default_rng(1).standard_normal(4000) * 0.1, 4000)
    sf.write(str(folder / "tiny.wav"), np.random.default_rng(2).standard_normal(10) * 0.1, 16000)
    args = [sys.executable, "-m", "afilm_cli", "eval", "--ckpt", str(ckpts["spline"]), "--wavs", str(folder),
            "--out", str(tmp_path / "res"), "--device", "cpu"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if line.startswith("afilm: warning:")]
    assert len(warnings) == 3 and all(line.endswith(": skipped") for line in warnings), out.stderr
    assert {w.split(": ")[2].rsplit("/", 1)[-1] for w in warnings} == {"junk.wav", "low.wav", "tiny.wav"}
    with open(tmp_path / "res" / "metrics.csv") as f:
        assert [r["item"] for r in csv.DictReader(f)] == ["p225/p225_001.wav", "p226/p226_002.wav"]
    protocol = json.loads((tmp_path / "res" / "summary.json").read_text())["protocol"]
    assert [s["item"] for s in protocol["skipped"]] == ["junk.wav", "low.wav", "tiny.wav"]
    assert protocol["skipped_silent"] == [] and protocol["n_items"] == 2


def _run_main(capsys, monkeypatch, *args):
    """`afilm eval ARGS` in this process, with the model's windows counted: (exit code, stderr lines,
    windows run)."""
    from afilm_cli.main import main

    calls = []
    windows = evaluate.model_windows
    monkeypatch.setattr(evaluate, "model_windows", lambda *a, **k: (calls.append(1), windows(*a, **k))[1])
    monkeypatch.setattr(sys, "argv", ["afilm", "eval", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return exc.value.code or 0, err, len(calls)


def test_cli_eval_checks_its_outputs_before_the_work(ckpts, wavs, h5, tmp_path, capsys, monkeypatch):
    """-o where no folder can be made, or --plots naming a file, had run the whole evaluation and then
    failed (a --plots file left no metrics.csv either): refused up front in one line."""
    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    cases = [(("--out", blocker / "res"), f"cannot create folder {blocker / 'res'}: {blocker} is a file"),
             (("--out", tmp_path / "res", "--plots", blocker), f"cannot create folder {blocker}: "
                                                               f"{blocker} is a file")]
    if Path("/proc/self").is_dir():  # the audit's case: a path no one can create a folder in
        cases.append((("--out", "/proc/x"), "cannot create folder /proc/x: "))
    for source in (("--wavs", wavs), ("--data", h5)):
        for args, message in cases:
            code, err, windows = _run_main(capsys, monkeypatch, "--ckpt", ckpts["afilm_tiny"], *source, *args)
            assert code == 2 and len(err) == 1 and message in err[0], (args, err)
            assert windows == 0
    assert blocker.read_text() == "keep" and not (tmp_path / "res" / "metrics.csv").exists()


def test_cli_eval_keeps_existing_plots_without_force(ckpts, wavs, h5, tmp_path, capsys, monkeypatch):
    """--plots had overwritten the PNGs in its folder without --force while metrics.csv was kept: the
    PNGs the run will write (named before the work: from the file paths with --wavs, the patch indices
    with --data) are kept the same way. PNGs the run would not write are no obstacle."""
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "p225__p225_001.png").write_bytes(b"mine")
    (plots / "p226__p226_002.png").write_bytes(b"mine too")
    ckpt = ckpts["spline"]
    code, err, windows = _run_main(capsys, monkeypatch, "--ckpt", ckpt, "--wavs", wavs, "--out",
                                   tmp_path / "r1", "--plots", plots)
    assert code == 2 and len(err) == 1 and windows == 0, err
    assert f"{plots / 'p225__p225_001.png'} exists; pass --force to overwrite or --plots" in err[0]
    assert not (tmp_path / "r1").exists()  # a refused run makes no output folder
    # --max-plots 0: no PNG will be written, so none is in the way
    code, err, _ = _run_main(capsys, monkeypatch, "--ckpt", ckpt, "--wavs", wavs, "--out", tmp_path / "r2",
                             "--plots", plots, "--max-plots", "0")
    assert code == 0, err
    assert (plots / "p225__p225_001.png").read_bytes() == b"mine"
    code, err, _ = _run_main(capsys, monkeypatch, "--ckpt", ckpt, "--wavs", wavs, "--out", tmp_path / "r3",
                             "--plots", plots, "--max-plots", "1", "--force")
    assert code == 0, err
    assert (plots / "p225__p225_001.png").read_bytes()[:8] == PNG_MAGIC
    assert (plots / "p226__p226_002.png").read_bytes() == b"mine too"  # beyond --max-plots 1
    # --data: patch_000001.png is the second patch's
    (plots / "patch_000001.png").write_bytes(b"mine")
    args = ("--ckpt", ckpt, "--data", h5, "--out", tmp_path / "r4", "--plots", plots)
    code, err, _ = _run_main(capsys, monkeypatch, *args, "--max-plots", "2")
    assert code == 2 and len(err) == 1 and f"{plots / 'patch_000001.png'} exists; pass --force" in err[0]
    assert not (plots / "patch_000000.png").exists() and not (tmp_path / "r4").exists()
    code, err, _ = _run_main(capsys, monkeypatch, *args, "--max-plots", "1")
    assert code == 0 and (plots / "patch_000001.png").read_bytes() == b"mine", err
    # without --plots, --max-plots was accepted and ignored
    code, err, windows = _run_main(capsys, monkeypatch, "--ckpt", ckpt, "--data", h5,
                                   "--out", tmp_path / "r5", "--max-plots", "3")
    assert (code, err, windows) == (2, ["afilm: error: --max-plots goes with --plots FOLDER: without it no "
                                        "PNG is written"], 0)
    assert (plots / "patch_000000.png").read_bytes()[:8] == PNG_MAGIC


def _with_silent_patches(h5, path, where):
    """A copy of ``h5`` with all-zero patches (spline and label) inserted before its patches at the
    indices ``where`` (np.insert)."""
    with PatchFile(h5) as pf:
        data, label = pf.read(slice(None))
        attrs = {k: pf.recipe[k] for k in ("r", "sr", "patch", "degrade")}
    zero = np.zeros((1, data.shape[1]), np.float32)
    data, label = (np.insert(a, where, zero, axis=0) for a in (data, label))
    with PatchWriter(path, data.shape[1], attrs=attrs) as w:
        w.append(data, label)
    return path


def test_h5_silent_patches_are_skipped_once_said_and_left_out_of_every_total(ckpts, h5, tmp_path):
    """All-zero patches had scored 0 dB spline SNR, -160 dB segmental SNR and a model error far above
    the signal in the band table, with no warning. As silent --wavs files: skipped, one warning with
    their count, recorded; the means, the pooled reference LSD and the bands are those without them."""
    lo = infer.load_model(ckpts["afilm_tiny"])
    with PatchFile(h5) as pf:
        n = len(pf)
    mixed = _with_silent_patches(h5, tmp_path / "mixed.h5", [0, 2, n, n])  # silent: 0, 3, the last two
    clean = evaluate.evaluate_h5(lo, h5, batch_size=3)
    warnings, steps, totals, planned = [], [], [], []
    result = evaluate.evaluate_h5(lo, mixed, batch_size=3, warn=warnings.append, progress=steps.append,
                                  total=totals.append, plots_dir=tmp_path / "p", max_plots=2,
                                  outputs=planned.extend)
    assert warnings == [f"{mixed}: 4 of {n + 4} patches are silent (label all zero): skipped, since their "
                        "SNR would swamp the means"]
    assert totals == [n] and sum(steps) == n
    assert result.protocol["n_skipped_silent"] == 4 and result.protocol["n_items"] == n == len(result.rows)
    # the rows keep the patches' own indices; the plots are of the first patches with sound
    assert [r["item"] for r in result.rows][:3] == ["patch_000001", "patch_000002", "patch_000004"]
    assert planned == [tmp_path / "p" / "patch_000001.png", tmp_path / "p" / "patch_000002.png"]
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["patch_000001.png", "patch_000002.png"]
    for system in evaluate.SYSTEMS:
        for metric in evaluate.METRICS:  # lsd_ref: pooled over the patches with sound only
            assert result.summary[system][metric] == pytest.approx(clean.summary[system][metric], rel=1e-4)
    for got, want in zip(result.to_json()["bands"], clean.to_json()["bands"], strict=True):
        for key in ("signal_db", "spline_error_db", "model_error_db", "model_gain_db"):
            assert got[key] == pytest.approx(want[key], abs=1e-3), key
    # --limit counts patches, silent ones included
    assert len(evaluate.evaluate_h5(lo, mixed, limit=3, warn=warnings.append).rows) == 2
    only = _with_silent_patches(h5, tmp_path / "tmp.h5", [0, 0, 0])
    with pytest.raises(AfilmError, match="every one of the 3 patches evaluated is silent"):
        evaluate.evaluate_h5(lo, only, limit=3)


def test_a_count_of_one_is_said_in_the_singular(ckpts, h5, vctk_mini, tmp_path, monkeypatch):
    """'1 of the 1 files have several channels; each is scored', '1 of 5 patches are silent', 'every one
    of the 1 patches evaluated is silent', 'none of the 1 usable files could be read'."""
    lo = infer.load_model(ckpts["spline"])
    x, sr = read_audio(vctk_mini / "wav48" / "p225" / "p225_001.wav", mono=True)
    folder = tmp_path / "st"
    folder.mkdir()
    sf.write(folder / "both.wav", np.stack([x, 0.5 * x], 1), sr)
    warnings = []
    evaluate.evaluate_wavs(lo, folder, warn=warnings.append)
    assert warnings == [f"{folder}: its one file has several channels; it is scored as the mean of its "
                        "channels (mono)"]
    sf.write(folder / "mono.wav", x, sr)
    sf.write(folder / "b2.wav", np.stack([x, 0.5 * x], 1), sr)
    evaluate.evaluate_wavs(lo, folder, warn=warnings.append)
    assert warnings[-1] == (f"{folder}: 2 of the 3 files have several channels; each is scored as the mean "
                            "of its channels (mono)")
    with PatchFile(h5) as pf:
        n = len(pf)
    one = _with_silent_patches(h5, tmp_path / "one.h5", [0])
    evaluate.evaluate_h5(lo, one, warn=warnings.append)
    assert warnings[-1] == (f"{one}: 1 of {n + 1} patches is silent (label all zero): skipped, since its SNR "
                            "would swamp the means")
    with pytest.raises(AfilmError, match=r"the one patch evaluated is silent \(label all zero\); nothing"):
        evaluate.evaluate_h5(lo, one, limit=1)

    def spoilt(path, *args, **kwargs):
        raise AfilmError(f"{path}: spoilt since the check")

    monkeypatch.setattr(evaluate, "_score_wav", spoilt)
    said = f"^{re.escape(str(folder))}: the one usable file could not be read when evaluated"
    with pytest.raises(AfilmError, match=said):
        evaluate.evaluate_wavs(lo, folder, limit=1, warn=warnings.append)


def test_a_file_spoilt_after_the_check_costs_its_row_not_the_run(ckpts, wavs, tmp_path):
    """The check reads every file before the work; one changed in between (here: overwritten with
    junk once the total is known) had stopped the run and lost the rows already computed."""
    folder = tmp_path / "race"
    shutil.copytree(wavs, folder)
    spoilt = folder / "p226" / "p226_002.wav"
    events = []

    def spoil(_total: int) -> None:
        spoilt.write_bytes(b"not audio at all" * 100)

    result = evaluate.evaluate_wavs(infer.load_model(ckpts["spline"]), folder, total=spoil,
                                    warn=events.append)
    assert [row["item"] for row in result.rows] == ["p225/p225_001.wav"]
    assert [s["item"] for s in result.protocol["skipped"]] == ["p226/p226_002.wav"]
    assert "cannot read audio" in result.protocol["skipped"][0]["reason"]
    assert len(events) == 1 and events[0].startswith(f"{spoilt}: cannot read audio") and events[0].endswith(
        ": skipped")


# ---------------------------------------------------------------- --wavs scored block by block
def _whole_file(path, loaded, batch_size=16):
    """What evaluate_wavs computed before it streamed: the file read whole, every signal materialised,
    the whole-array metrics. (row, band energies, (lr, pred, hr))."""
    x, sr = read_audio(path, mono=True)
    hr_stage, lr_stage, spline_stage, n = infer.simulate_pipeline(infer.ArraySource(x), sr, loaded)
    hr, spline = hr_stage.read(0, n)[:, 0], spline_stage.read(0, n)[:, 0]
    pred = infer.predict(loaded, infer.ArraySource(spline), n, batch_size=batch_size)[:, 0]
    bands = evaluate.BandTotals(loaded.sr, loaded.r)
    bands.add(hr, model=pred, spline=spline)
    row = evaluate._row(path.name, pred, spline, hr, loaded, int(loaded.recipe["patch"]))
    return row, bands.energy, (lr_stage.read(0, lr_stage.length)[:, 0], pred, hr)


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory, vctk_mini):
    """35 s of real speech at 48 kHz (twelve VCTK utterances end to end): 560 k samples at the model's
    16 kHz, many of eval's blocks once they are shrunk."""
    folder = tmp_path_factory.mktemp("long")
    wav48 = vctk_mini / "wav48"
    files = [*sorted((wav48 / "p225").glob("*.wav"))[:11], wav48 / "p226" / "p226_002.wav"]
    sf.write(str(folder / "long.wav"), np.concatenate([sf.read(str(f), dtype="int16")[0] for f in files]),
             48000, subtype="PCM_16")
    shutil.copy(vctk_mini / "wav48" / "p225" / "p225_001.wav", folder)
    return folder


def test_wavs_streamed_rows_equal_the_whole_file_computation(ckpts, long_wav, tmp_path, monkeypatch):
    """evaluate_wavs scores each file block by block (model output blocks; DFT segments of
    metrics.SEGMENT samples, shrunk here to 2^16 so the long file takes 9): its rows equal those of the
    whole file read at once and scored with the whole-array metrics. Model and spline metrics to 1e-6
    relative (float64 sums; the model's float32 input may round differently by a block's edges);
    the short file's low-pass truth exactly (one segment is one DFT); the long file's low-pass truth
    and the band energies within the segments' tolerance (tests/test_metrics.py). A plot shows the
    first PLOT_SECONDS of a longer file, and says so."""
    monkeypatch.setattr(metrics, "SEGMENT", 1 << 16)
    monkeypatch.setattr(metrics, "OVERLAP", 1 << 12)
    monkeypatch.setattr(evaluate, "PLOT_SECONDS", 5.0)
    drawn = {}
    monkeypatch.setattr(evaluate, "_plot", lambda _, *signals: drawn.setdefault(signals[-1], signals[:3]))
    loaded = infer.load_model(ckpts["afilm_tiny"])
    result = evaluate.evaluate_wavs(loaded, long_wav, batch_size=2, plots_dir=tmp_path)
    assert [row["item"] for row in result.rows] == ["long.wav", "p225_001.wav"]
    energy = {k: 0.0 for k in result.bands.energy}
    for row in result.rows:
        want, bands, (lr, pred, hr) = _whole_file(long_wav / row["item"], loaded, batch_size=2)
        assert row["frames"] == want["frames"]
        for system in evaluate.SYSTEMS:
            for m in evaluate.METRICS:
                assert row[f"{system}_{m}"] == pytest.approx(want[f"{system}_{m}"], rel=1e-6), (system, m)
        short = row["frames"] <= metrics.SEGMENT
        for m in evaluate.LOWPASS_METRICS:
            key = f"{evaluate.LOWPASS}_{m}"
            assert row[key] == pytest.approx(want[key], **({"rel": 1e-9} if short else {"abs": 0.02})), key
        for key in energy:
            energy[key] += bands[key]
        n = min(len(hr), 5 * 16000)
        title = row["item"] if n == len(hr) else f"{row['item']} (first 5 s)"
        got_lr, got_pred, got_hr = drawn[title]
        assert len(got_pred) == len(got_hr) == n and len(got_lr) == -(-n // 4)
        np.testing.assert_allclose(got_hr, hr[:n], atol=1e-9)
        np.testing.assert_allclose(got_lr, lr[: len(got_lr)], atol=1e-9)
        np.testing.assert_allclose(got_pred, pred[:n], atol=1e-5)
    for key, e in energy.items():
        np.testing.assert_allclose(10 * np.log10(result.bands.energy[key] / e), 0, atol=0.01, err_msg=key)


def test_wavs_memory_does_not_follow_the_file_length(ckpts, libri_mini, tmp_path, monkeypatch):
    """A file's evaluation holds blocks, not the file: with the blocks shrunk (the check's reads, STFT
    frames per FFT, DFT segments; one model window per batch), the numpy memory traced over a whole
    evaluate_wavs of a 2-minute file of real speech is that of a 10-second one, and under half the
    2-minute file's float32 size (it held the truth, spline and prediction whole: 20+ bytes a sample)."""
    import tracemalloc

    files = sorted((libri_mini / "test-other").glob("*/*.flac"))
    x = np.concatenate([sf.read(str(f), dtype="float32")[0] for f in files[:20]])[: 120 * 16000]
    assert len(x) == 120 * 16000
    for name, n in (("short", 10 * 16000), ("long", len(x))):
        (tmp_path / name).mkdir()
        sf.write(str(tmp_path / name / "speech.wav"), x[:n], 16000, subtype="PCM_16")
    monkeypatch.setattr(evaluate, "SCAN_BLOCK", 1 << 14)
    monkeypatch.setattr(metrics, "STFT_FRAMES", 8)
    monkeypatch.setattr(metrics, "SEGMENT", 1 << 13)
    monkeypatch.setattr(metrics, "OVERLAP", 1 << 10)
    loaded = infer.load_model(ckpts["spline"])
    evaluate.evaluate_wavs(loaded, tmp_path / "short", batch_size=1)  # imports and caches: not the file's
    peak = {}
    for name in ("short", "long"):
        tracemalloc.start()
        try:
            result = evaluate.evaluate_wavs(loaded, tmp_path / name, batch_size=1, degrade="subsample")
            peak[name] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert result.rows[0]["frames"] == len(x)
    assert peak["long"] < 1.1 * peak["short"] and peak["long"] < 4 * len(x) / 2, peak


def test_summary_says_the_segment_length_segsnr_used(ckpts, h5, tmp_path):
    """summary.json said "mean over 8192-sample segments" for segsnr whatever the segments were: an
    --data split's patch length (here 2048), the checkpoint's patch for --wavs."""
    short = tmp_path / "p2048.h5"
    with PatchFile(h5) as pf, PatchWriter(short, 2048, attrs={**pf.recipe, "patch": 2048}) as w:
        data, label = pf.read(slice(0, 1))
        w.append(data.reshape(-1, 2048), label.reshape(-1, 2048))
    args = [sys.executable, "-m", "afilm_cli", "eval", "--ckpt", str(ckpts["spline"]), "--data", str(short),
            "--out", str(tmp_path / "res"), "--device", "cpu"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    p = json.loads((tmp_path / "res" / "summary.json").read_text())["protocol"]
    assert p["segment"] == 2048 and "over 2048-sample segments" in p["metrics"]["segsnr"]
    rows = list(csv.DictReader(open(tmp_path / "res" / "metrics.csv")))
    assert float(rows[0]["spline_segsnr"]) == pytest.approx(
        metrics.segmental_snr(data.reshape(-1, 2048)[0], label.reshape(-1, 2048)[0], patch=2048), abs=1e-5)


def test_the_table_says_which_value_is_not_a_mean(ckpts, h5, tmp_path):
    """With --data, the reference-convention LSD is one value over the patches joined (summary.json's
    protocol says so), but the table listed it under "metric (mean over items)" like the others."""
    args = [sys.executable, "-m", "afilm_cli", "eval", "--ckpt", str(ckpts["spline"]), "--data", str(h5),
            "--out", str(tmp_path / "res"), "--device", "cpu", "--limit", "2"]
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr
    assert "LSD, reference convention (all patches joined, not a mean)" in out.stdout
    assert "LSD (log10, lower is better) " in out.stdout  # the per-item mean keeps its label


def _keras_weights_file(path: Path) -> Path:
    """A Keras 2 weights-only .h5 as model.save_weights writes it (layer_names, a group per layer)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"conv1d"]
        f.create_group("conv1d").attrs["weight_names"] = [b"conv1d/kernel:0"]
        f["conv1d"].create_dataset("conv1d/kernel:0", data=np.zeros((3, 1, 2), np.float32))
    return path


def test_data_that_is_no_split_is_said_for_what_it_is(ckpts, h5, tmp_path, capsys, monkeypatch):
    """'eval --data KERAS.h5' said "missing dataset 'data' (expected 'data' and 'label')", and after
    the outputs' check ("exists; pass --force" first): a Keras file, a checkpoint, an audio file or
    another HDF5 file is now named for what it is, before the outputs, with what --data takes."""
    import h5py

    keras = _keras_weights_file(tmp_path / "weights.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(160, np.float32), 16000)
    out = tmp_path / "res"
    assert _run_main(capsys, monkeypatch, "--ckpt", ckpts["spline"], "--data", h5, "--out", out)[0] == 0
    takes = "--data takes an HDF5 split of patches written by 'afilm prepare'"
    for data, said in [
        (keras, f"{keras}: a Keras model or weights file, not a split of patches; to evaluate it, import it "
                f"with 'afilm convert keras {keras}' and pass the .pt it writes to --ckpt; {takes}"),
        (ckpts["spline"], f"{ckpts['spline']}: a PyTorch file (an afilm checkpoint?), not a split of "
                          f"patches: a checkpoint goes to --ckpt; {takes}"),
        (wav, f"{wav}: an audio file, not a split of patches: --wavs takes a folder of audio files; {takes}"),
        (other, f"{other}: not a split of patches (it holds 'x', not the 'data' and 'label' datasets); "
                f"{takes}"),
    ]:
        code, err, windows = _run_main(capsys, monkeypatch, "--ckpt", ckpts["spline"], "--data", data,
                                       "--out", out)  # its outputs exist: the input's fault comes first
        assert (code, err) == (2, [f"afilm: error: {said}"])
        with pytest.raises(AfilmError, match="not a split of patches"):  # the API says it as well
            evaluate.evaluate_h5(infer.load_model(ckpts["spline"]), data)


def test_eval_errors_are_the_first_line_of_stderr(ckpts, wavs, tmp_path):
    """rich's progress bar, stopped on a stderr that is no terminal, printed a blank line: above every
    error raised once the bar had started (an empty folder, a bad --degrade, a Keras file given to
    --data) and above the lines a finished run writes. The real CLI, its stderr a pipe."""
    empty = tmp_path / "empty"
    empty.mkdir()
    silent = tmp_path / "silent"
    silent.mkdir()
    sf.write(silent / "zero.wav", np.zeros(16000, np.float32), 16000)
    keras = _keras_weights_file(tmp_path / "weights.h5")
    base = [sys.executable, "-m", "afilm_cli", "eval", "--ckpt", str(ckpts["spline"]), "--device", "cpu",
            "--out", str(tmp_path / "res")]
    for args, said in [
        (("--wavs", empty), f"{empty}: no audio files in this folder"),
        (("--wavs", silent), f"{silent}: every file is silent; nothing to evaluate"),
        (("--wavs", wavs, "--degrade", "bogus"), "--degrade 'bogus': use one of"),
        (("--wavs", tmp_path / "none"), f"{tmp_path / 'none'}: not a folder"),
        (("--data", keras), f"{keras}: a Keras model or weights file"),
    ]:
        res = subprocess.run([*base, *map(str, args)], capture_output=True, text=True, timeout=180)
        assert res.returncode == 2 and res.stderr.startswith(f"afilm: error: {said}"), (args, res.stderr)
        assert len(res.stderr.splitlines()) == 1, (args, res.stderr)
    res = subprocess.run([*base, "--wavs", str(wavs), "--limit", "1"], capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith("checkpoint: ") and "" not in res.stderr.splitlines(), res.stderr


def test_the_tables_call_values_equal_as_shown_a_tie(ckpts, tmp_path):
    """The spline checkpoint on --wavs scores what the spline does to ~1e-7 (float32 rounding), and the
    table said the model was better ("yes") for SNR and LSD beside two equal numbers, and gains of
    "-0.00" dB per band: values equal to the digits shown are a tie, a zero has no sign."""
    from types import SimpleNamespace

    from rich.console import Console

    from afilm_cli.commands.evaluate import bands_table, summary_table

    def text(table) -> str:
        console = Console(record=True, width=300, file=open(os.devnull, "w"))  # noqa: SIM115
        console.print(table)
        return console.export_text()

    spline = {"snr": 15.6481, "segsnr": 15.8252, "lsd": 3.5331, "lsd_ref": 7.3862}
    model = {"snr": 15.6481 + 7e-10, "segsnr": 15.8252 - 9e-9, "lsd": 3.5331 - 2e-7, "lsd_ref": 7.3862 - 0.01}
    result = SimpleNamespace(protocol={"sr": 16000, "r": 4}, pooled={},
                             summary={"model": model, "spline": spline,
                                      evaluate.LOWPASS: {"snr": 16.9, "segsnr": -1e-9}})
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:6]]
            for line in text(summary_table(result, "t")).splitlines() if line.count("│") == 6}
    assert rows["SNR (dB, higher is better)"] == ["15.648", "15.648", "no", "16.900"]
    assert rows["LSD (log10, lower is better)"] == ["3.533", "3.533", "no", "-"]
    assert rows["LSD, reference convention"] == ["7.376", "7.386", "yes", "-"]  # a real gain still is one
    assert rows["segmental SNR, reference (dB)"][3] == "0.000"
    bands = SimpleNamespace(to_json=lambda: [
        {"lo_hz": 0, "hi_hz": 2000, "signal_db": -0.01, "spline_error_db": -37.2, "model_error_db": -37.2,
         "model_gain_db": -6e-9},
        {"lo_hz": 2000, "hi_hz": 8000, "signal_db": -20.0, "spline_error_db": -20.0, "model_error_db": -21.0,
         "model_gain_db": -0.006}])
    shown = [[c.strip() for c in line.split("│")[1:6]]
             for line in text(bands_table(SimpleNamespace(bands=bands))).splitlines() if line.count("│") == 6]
    assert shown == [["0-2000", "0.0", "-37.2", "-37.2", "+0.00"],
                     ["2000-8000", "-20.0", "-20.0", "-21.0", "-0.01"]]


def _eval_cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    """`afilm eval ARGS --device cpu` in a subprocess, as a user runs it."""
    res = subprocess.run([sys.executable, "-m", "afilm_cli", "eval", *map(str, args), "--device", "cpu"],
                         capture_output=True, text=True, timeout=180)
    if check:
        assert res.returncode == 0, res.stderr
    return res


# the real CLI, stopped by a Ctrl-C as the results are written (the PNGs are done by then)
CTRL_C_AT_RESULTS = ("import afilm_cli.evaluate as ev\n"
                     "def stop(*args, **kwargs):\n    raise KeyboardInterrupt\n"
                     "ev.write_results = stop\n"
                     "from afilm_cli.entry import run\nrun()\n")


def test_cli_eval_stopped_before_its_results_leaves_no_folder_or_png_it_made(ckpts, wavs, tmp_path):
    """Ctrl-C part-way left the --out folder it had made (empty) and the PNGs written so far, so the
    rerun was refused ('png/p225__p225_001.png exists; pass --force'); a --plots folder that could not be
    made left the --out folder made just before. Now what the run made goes; what was there stays."""
    base = ["eval", "--ckpt", str(ckpts["spline"]), "--wavs", str(wavs), "--device", "cpu"]

    def run(*args, stop=True):
        code = ["-c", CTRL_C_AT_RESULTS] if stop else ["-m", "afilm_cli"]
        return subprocess.run([sys.executable, *code, *base, *args], capture_output=True, text=True,
                              timeout=180, cwd=tmp_path)

    stopped = run("--out", "res/deep", "--plots", "png")
    said = stopped.stderr.splitlines()
    assert stopped.returncode == 130 and said[-1] == "afilm: interrupted", said
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    done = run("--out", "res/deep", "--plots", "png", stop=False)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert names == ["p225__p225_001.png", "p226__p226_002.png"]
    # folders that were there, and a file of the user's in one: kept as they were
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.png").write_bytes(PNG_MAGIC)
    (tmp_path / "empty").mkdir()
    assert run("--out", "empty", "--plots", "mine").returncode == 130
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["photo.png"] and (tmp_path / "empty").is_dir()
    # a --plots folder that cannot be made: the --out folder made before it goes too
    (tmp_path / "afile").write_text("")
    refused = run("--out", "new", "--plots", "afile/png", stop=False)
    assert refused.returncode == 2 and "cannot create folder afile/png: afile is a file" in refused.stderr
    assert not (tmp_path / "new").exists()


def test_cli_eval_max_plots_0_makes_no_plots_folder(ckpts, wavs, tmp_path):
    """--plots DIR --max-plots 0 made DIR, left empty: no PNG is asked for, so no folder is made (the
    count is a cap like any other, so 0 is not refused), and the closing line says why there is none."""
    res = _eval_cli("--ckpt", ckpts["spline"], "--wavs", wavs, "--out", tmp_path / "res", "--plots",
                    tmp_path / "png", "--max-plots", "0", "--limit", "1")
    assert not (tmp_path / "png").exists()
    assert (tmp_path / "res" / "metrics.csv").is_file()
    assert res.stderr.splitlines()[-1].endswith("summary.json (no plots: --max-plots 0)"), res.stderr


def test_cli_eval_force_removes_the_plots_an_earlier_run_wrote_and_nothing_else(ckpts, wavs, h5, tmp_path):
    """--force over an earlier run's --plots folder left its PNGs beside the new ones (other files' plots,
    more than --max-plots). Once the results are written, the PNGs save_spectrograms wrote there (its mark
    in the PNG's Software text) and this run did not are removed; any other file stays: one of the same
    name that is no plot of ours, a PNG made elsewhere, a link, a hidden file, what is below the folder."""
    from afilm_cli.plots import written_here

    plots = tmp_path / "png"
    ours = ["p225__p225_001.png", "p226__p226_002.png"]
    _eval_cli("--ckpt", ckpts["spline"], "--wavs", wavs, "--out", tmp_path / "res", "--plots", plots)
    assert sorted(p.name for p in plots.iterdir()) == ours and all(written_here(plots / n) for n in ours)
    earlier = (plots / ours[0]).stat().st_ino  # the same bytes again: rewritten is a new file (atomic)
    import matplotlib.image

    matplotlib.image.imsave(plots / "photo.png", np.zeros((4, 4)))  # a PNG, but not of afilm eval
    (plots / "notes.png").write_text("mine")
    (plots / "sub").mkdir()
    shutil.copy(plots / ours[1], plots / "sub" / ours[1])
    shutil.copy(plots / ours[1], tmp_path / "target.png")
    (plots / "link.png").symlink_to(tmp_path / "target.png")
    shutil.copy(plots / ours[1], plots / ".hidden.png")
    users = sorted(p.name for p in plots.iterdir() if p.name not in ours)
    assert not written_here(plots / "photo.png") and not written_here(plots / "notes.png")

    res = _eval_cli("--ckpt", ckpts["spline"], "--wavs", wavs, "--out", tmp_path / "res", "--plots", plots,
                    "--max-plots", "1", "--force")
    assert sorted(p.name for p in plots.iterdir()) == sorted([ours[0], *users])
    assert written_here(plots / ours[0]) and (plots / ours[0]).stat().st_ino != earlier
    assert "and 1 plot(s) in" in res.stderr and "(removed 1 PNG(s) an earlier run left there)" in res.stderr
    assert (plots / "notes.png").read_text() == "mine" and (tmp_path / "target.png").is_file()
    assert (plots / "sub" / ours[1]).is_file()

    # another source (an HDF5 split) into the same folder: none of the wavs' plots stays
    _eval_cli("--ckpt", ckpts["spline"], "--data", h5, "--out", tmp_path / "res", "--plots", plots,
              "--max-plots", "2", "--force")
    assert sorted(p.name for p in plots.iterdir()) == sorted(["patch_000000.png", "patch_000001.png", *users])
    # without --force nothing is removed: a plot of another name is no obstacle, and stays
    _eval_cli("--ckpt", ckpts["spline"], "--wavs", wavs, "--out", tmp_path / "res3", "--plots", plots,
              "--max-plots", "1")
    assert sorted(p.name for p in plots.iterdir()) == sorted(
        ["patch_000000.png", "patch_000001.png", ours[0], *users])


def test_cli_eval_tables_show_every_figure_whole_at_any_width(ckpts, wavs, tmp_path):
    """On a narrow terminal or pipe (COLUMNS=40) rich cut the tables' figures with "…" ("16.8…", a wrong
    number). Each figure of summary.json, rounded as shown, appears whole at every width, no line is
    wider than COLUMNS, and a wide terminal still gets the tables (a narrow one: a heading and one
    "column: value" line each, where even a table with its text wrapped to single words is too wide).
    The CLI runs once, at 40 columns; the other widths are its tables printed again from summary.json,
    by the function the CLI prints them with (at 40, exactly what the CLI printed)."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from afilm_cli.commands.evaluate import fixed, print_tables

    res = subprocess.run([sys.executable, "-m", "afilm_cli", "eval", "--ckpt", str(ckpts["afilm_tiny"]),
                          "--wavs", str(wavs), "--limit", "1", "--device", "cpu", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=180, env={**os.environ, "COLUMNS": "40"})
    assert res.returncode == 0, res.stderr
    saved = json.loads((tmp_path / "summary.json").read_text())
    figures = [fixed(v, 3) for system in saved["summary"].values() for v in system.values()]
    for b in saved["bands"]:
        figures += [f"{b['lo_hz']:.0f}-{b['hi_hz']:.0f}", fixed(b["model_gain_db"], 2, sign=True),
                    *(fixed(b[k], 1) for k in ("signal_db", "spline_error_db", "model_error_db"))]
    assert len(figures) == 4 + 4 + 2 + 5 * len(saved["bands"]) and saved["bands"]
    result = SimpleNamespace(protocol=saved["protocol"], summary=saved["summary"], pooled={},
                             rows=[{}] * saved["n_items"],
                             bands=SimpleNamespace(to_json=lambda: saved["bands"]))
    shown = {}
    for width in (30, 40, 60, 120):
        console = Console(file=io.StringIO(), width=width)
        print_tables(console, result)
        shown[width] = out = console.file.getvalue()
        for figure in figures:
            assert re.search(rf"(?<![\d.]){re.escape(figure)}(?![\d.])", out), (width, figure, out)
        assert "…" not in out, (width, out)
        assert max(map(len, out.splitlines())) <= width, (width, out)
    assert shown[40] == res.stdout
    for width in (60, 120):  # tables
        assert "┃ band (Hz) ┃ signal ┃" in shown[width] and "│ SNR (dB," in shown[width], shown[width]
    assert "│" not in shown[30] and "\n  model: " in shown[30] and "\n  model gain: " in shown[30], shown[30]

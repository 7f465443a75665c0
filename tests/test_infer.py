"""`afilm upsample`: streaming stages, windowed overlap-add, exact lengths, files and the real CLI."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from cli_helpers import run_main
from scipy import signal
from torch import nn

from afilm_cli import infer
from afilm_cli.audio import degrade, spline_up
from afilm_cli.checkpoint import make_checkpoint, save_checkpoint
from afilm_cli.cuda_graphs import GraphedForward
from afilm_cli.errors import AfilmError
from afilm_cli.models import create_model

RECIPE = {"r": 4, "sr": 16000, "degrade": "decimate", "patch": 8192}


def run_cli(*args, cwd=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "afilm_cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def error_line(out) -> str:
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("afilm: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    paths = {}
    for name in ("afilm_tiny", "spline"):
        paths[name] = save_checkpoint(root / f"{name}.pt", make_checkpoint(create_model(name), RECIPE))
    return paths


def loaded(ckpts, name="spline") -> infer.Loaded:
    return infer.load_model(ckpts[name])


def write(path, x, sr, subtype="FLOAT"):
    sf.write(str(path), np.asarray(x, np.float32), sr, subtype=subtype)
    return path


def chunked(stage, block):
    n = stage.length
    return np.concatenate([stage.read(a, min(a + block, n)) for a in range(0, n, block)])


# ------------------------------------------------------------------------------------------- stages
@pytest.mark.parametrize("sr_in,sr_out", [(44100, 4000), (11025, 4000), (48000, 16000), (3000, 4000),
                                          (44100, Fraction(16000, 3))])
def test_resampled_blocks_equal_whole_signal(sr_in, sr_out):
    x = np.random.default_rng(0).standard_normal((30001, 2))
    ratio = Fraction(sr_out) / sr_in
    whole = signal.resample_poly(x, ratio.numerator, ratio.denominator, axis=0)
    stage = infer.Resampled(infer.ArraySource(x), sr_in, sr_out)
    assert stage.length == len(whole)
    np.testing.assert_allclose(chunked(stage, 777), whole, atol=1e-12)


@pytest.mark.parametrize("method", ["decimate", "subsample", "resample"])
@pytest.mark.parametrize("r", [2, 3, 4])
def test_degraded_blocks_equal_whole_signal(method, r):
    x = np.random.default_rng(1).standard_normal(20003)
    whole = {"decimate": lambda: signal.decimate(x, r), "subsample": lambda: x[::r],
             "resample": lambda: signal.resample_poly(x, 1, r)}[method]()
    got = chunked(infer.Degraded(infer.ArraySource(x), r, method), 1001)[:, 0]
    np.testing.assert_allclose(got, whole, atol=1e-12)


def test_splined_blocks_equal_whole_spline():
    lr = np.random.default_rng(2).standard_normal(5001)
    got = chunked(infer.Splined(infer.ArraySource(lr), 4, 20003), 3001)[:, 0]
    np.testing.assert_allclose(got, spline_up(lr, 4, 20003), atol=1e-6)  # spline_up returns float32


@pytest.mark.parametrize(("like", "wav", "flac"), [
    ("PCM_16", "PCM_16", "PCM_16"), ("PCM_24", "PCM_24", "PCM_24"), ("PCM_32", "PCM_32", "PCM_24"),
    ("FLOAT", "FLOAT", "PCM_24"), ("DOUBLE", "FLOAT", "PCM_24"), ("PCM_U8", "PCM_16", "PCM_16"),
    ("VORBIS", "PCM_16", "PCM_16"), (None, "PCM_16", "PCM_16")])
def test_output_sample_format_keeps_the_input_precision(like, wav, flac):
    assert (infer._subtype(Path("o.wav"), like), infer._subtype(Path("o.flac"), like)) == (wav, flac)


@pytest.mark.parametrize("like", ["PCM_16", "PCM_24", "FLOAT"])
def test_upsampled_files_are_written_in_the_input_precision(tmp_path, ckpts, like):
    """The mapping above, as upsample_file and simulate_file write the files."""
    x = np.random.default_rng(1).standard_normal(4000) * 0.1
    lo = loaded(ckpts)
    infer.upsample_file(write(tmp_path / "in.wav", x, 4000, like), tmp_path / "out.wav", lo)
    infer.upsample_file(tmp_path / "in.wav", tmp_path / "out.flac", lo)
    assert sf.info(str(tmp_path / "out.wav")).subtype == infer._subtype(Path("o.wav"), like) == like
    assert sf.info(str(tmp_path / "out.flac")).subtype == infer._subtype(Path("o.flac"), like)
    info = infer.simulate_file(write(tmp_path / "hr.wav", np.tile(x, 4), 16000, like), tmp_path / "sim", lo)
    assert sf.info(str(info["outputs"]["pr"])).subtype == like


@pytest.mark.parametrize("n,sr_in,sr_out,expected", [
    (3 * 44100 + 1, 44100, 16000, 48000), (11025, 11025, 16000, 16000), (7, 3, 2, 5), (1, 2, 1, 1)])
def test_output_length_rounds(n, sr_in, sr_out, expected):
    assert infer.output_length(n, sr_in, sr_out) == expected == round(n * sr_out / sr_in + 1e-12)


# ------------------------------------------------------------------------------------------ windows
@pytest.mark.parametrize("window", [8192, 300, 256])
@pytest.mark.parametrize("length", [100, 8192, 8193, 50_001, 61_000])
def test_crossfade_weights(length, window):
    plan = infer.plan_windows(length, 256, window)
    starts = plan.starts(length)
    # the last window ends where a whole-signal pass ends
    assert starts[0] == 0 and starts[-1] + plan.window == -(-length // 256) * 256
    total = np.zeros(starts[-1] + plan.window)
    for k, s in enumerate(starts):
        total[s : s + plan.window] += plan.weights(starts, k)
    # pairs of ramps sum to exactly 1; only where the shifted last window overlaps two others does
    # the sum exceed 1 (run_windows divides by it)
    np.testing.assert_allclose(total[: starts[-1]], 1.0, atol=1e-12)
    assert 1.0 - 1e-12 <= total[:length].min() and total[:length].max() <= 1.25
    assert plan.window % 256 == 0 and (plan.hop % 256 == 0 or len(starts) == 1)


class ConvNet(nn.Module):
    """A local model (receptive field ~60 samples) with a pool, so window alignment matters too."""

    model_name = "convnet"
    length_multiple = 4

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv1d(1, 4, 9, padding=8, dilation=2)
        self.c2 = nn.Conv1d(4, 4, 5, padding=2)
        self.c3 = nn.Conv1d(4, 1, 9, padding=4)

    def forward(self, x):
        h = torch.relu(self.c2(nn.functional.max_pool1d(torch.relu(self.c1(x)), 2)))
        return x + self.c3(h.repeat_interleave(2, dim=-1))


def full_pass(model, x, multiple):
    n = -(-len(x) // multiple) * multiple
    with torch.inference_mode():
        y = model(torch.tensor(np.pad(x, (0, n - len(x))), dtype=torch.float32)[None, None])
    return y[0, 0, : len(x)]


def windowed(model, x, plan, batch_size=3):
    src = infer.ArraySource(x)
    return np.concatenate(list(infer.run_windows(model, src, len(x), plan, batch_size=batch_size)))[:, 0]


def test_windowed_equals_full_pass_for_a_local_model():
    # context (512) exceeds the receptive field, so every output sample is exact, edges included
    model = ConvNet().eval()
    x = np.random.default_rng(3).standard_normal(40_003) * 0.1
    plan = infer.plan_windows(len(x), model.length_multiple, 4096)
    assert len(plan.starts(len(x))) > 6
    np.testing.assert_allclose(windowed(model, x, plan), full_pass(model, x, 4).numpy(), atol=2e-6)


class EdgeArtifacts(nn.Module):
    """Identity plus a large artefact in the first and last 32 samples of every window: what a model
    with zero-padded convolutions does in the worst case."""

    length_multiple = 1

    def forward(self, x):
        y = x.clone()
        y[..., :32] += 1.0
        y[..., -32:] += 1.0
        return y


def seam_ratio(y, truth, plan, length):
    """Mean squared error within 256 samples of the window joins over the mean error elsewhere."""
    near = np.zeros(length, bool)
    for s in list(plan.starts(length))[1:]:
        c = s + plan.context + plan.fade // 2
        near[max(0, c - plan.context - 256) : c + plan.context + 256] = True
    near[:64] = near[-64:] = False
    e = (y - truth) ** 2
    return e[near].mean() / max(e[~near].mean(), 1e-30), e


def test_no_seams_where_windows_meet():
    x = np.random.default_rng(4).standard_normal(60_000) * 0.1
    plan = infer.plan_windows(len(x), 1, 8192)
    y = windowed(EdgeArtifacts(), x, plan)
    np.testing.assert_allclose(y[64:-64], x[64:-64], atol=1e-6)  # window edges never reach the output
    # the same model in reference-style hard-cut windows does show seams: the test can fail
    hard = infer.WindowPlan(8192, 0, 0)
    ratio, _ = seam_ratio(windowed(EdgeArtifacts(), x, hard), x, hard, len(x))
    assert ratio > 100


def test_afilm_windows_show_no_seams():
    # AFiLM's attention spans its whole window, so no windowing equals a full-length pass exactly;
    # the cross-fade must still not make the joins worse than the rest (weights summing to 1)
    torch.manual_seed(0)
    model = create_model("afilm_tiny").eval()
    lr = np.random.default_rng(5).standard_normal(12_288) * 0.1
    x = spline_up(lr, 4)
    plan = infer.plan_windows(len(x), model.length_multiple, 8192)
    assert len(plan.starts(len(x))) >= 7
    y, full = windowed(model, x, plan, batch_size=8), full_pass(model, x, 256).numpy()
    ratio, _ = seam_ratio(y, full, plan, len(x))
    assert ratio < 1.5, ratio
    # the windowed model changes its input about as much as the full pass does (not garbage, not zero)
    assert 0.5 < np.std(y - x) / np.std(full - x) < 2.0


def test_single_window_equals_full_pass():
    torch.manual_seed(0)
    model = create_model("afilm_tiny").eval()
    x = np.random.default_rng(6).standard_normal(5000) * 0.1  # shorter than a window: one padded pass
    plan = infer.plan_windows(len(x), model.length_multiple, 8192)
    assert plan.window == 5120 and len(plan.starts(len(x))) == 1
    np.testing.assert_allclose(windowed(model, x, plan), full_pass(model, x, 256).numpy(), atol=1e-6)


def test_channels_are_processed_independently(ckpts):
    lo = loaded(ckpts, "afilm_tiny")
    x = np.random.default_rng(7).standard_normal((9000, 2)) * 0.1
    both = infer.predict(lo, infer.ArraySource(x), len(x), batch_size=5)
    for c in range(2):
        one = infer.predict(lo, infer.ArraySource(x[:, c]), len(x), batch_size=5)[:, 0]
        np.testing.assert_allclose(both[:, c], one, atol=1e-5)


# -------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("sr_in,n,channels", [(44100, 3 * 44100 + 1, 2), (11025, 11025 * 2 + 7, 1),
                                              (4000, 4001, 3), (16000, 9999, 1)])
def test_upsample_file_exact_length_and_spline_content(tmp_path, ckpts, sr_in, n, channels):
    lo = loaded(ckpts, "spline")
    x = np.random.default_rng(8).standard_normal((n, channels)) * 0.1
    path = write(tmp_path / "in.wav", x, sr_in)
    info = infer.upsample_file(path, tmp_path / "out.wav", lo, batch_size=4)
    y, sr = sf.read(str(tmp_path / "out.wav"), always_2d=True)
    assert sr == 16000 and y.shape == (round(n * 16000 / sr_in), channels) == (info["frames_out"], channels)
    # with the identity "model" the output is the whole-signal resample + spline, block by block
    x32 = x.astype(np.float32).astype(np.float64)
    for c in range(channels):
        ratio = Fraction(4000, sr_in)
        lr = signal.resample_poly(x32[:, c], ratio.numerator, ratio.denominator)
        np.testing.assert_allclose(y[:, c], spline_up(lr, 4, len(lr) * 4)[: len(y)], atol=1e-5)


def test_real_low_rate_tone_comes_out_clean(tmp_path, ckpts):
    t = np.arange(8000 * 2) / 8000
    path = write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 8000)
    infer.upsample_file(path, tmp_path / "tone.out.wav", loaded(ckpts, "spline"))
    y, sr = sf.read(str(tmp_path / "tone.out.wav"))
    ideal = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(y)) / sr)
    core = slice(1000, -1000)
    snr = 10 * np.log10(np.sum(ideal[core] ** 2) / np.sum((y[core] - ideal[core]) ** 2))
    assert len(y) == 32000 and snr > 40


def test_simulate_writes_reference_outputs(tmp_path, ckpts):
    n = 16000 * 2 + 3  # not a multiple of r
    hr = np.random.default_rng(9).standard_normal(n) * 0.1
    path = write(tmp_path / "clip.wav", hr, 16000)
    info = infer.simulate_file(path, tmp_path / "clip", loaded(ckpts, "spline"))
    out = {k: sf.read(v) for k, v in info["outputs"].items()}
    assert out["lr"][1] == 4000 and len(out["lr"][0]) == -(-n // 4)
    assert out["hr"][1] == out["pr"][1] == 16000 and len(out["hr"][0]) == len(out["pr"][0]) == n
    hr32 = hr.astype(np.float32)
    np.testing.assert_allclose(out["hr"][0], hr32, atol=1e-7)  # no zero tail, no padding
    lr = signal.decimate(hr32.astype(np.float64), 4)
    np.testing.assert_allclose(out["lr"][0], lr, atol=1e-6)
    np.testing.assert_allclose(out["pr"][0], spline_up(lr, 4, n), atol=1e-5)


def test_simulate_subsample_recipe(tmp_path):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "sub.pt", make_checkpoint(create_model("spline"),
                                                                {**RECIPE, "degrade": "subsample"}))
    hr = np.random.default_rng(10).standard_normal(16000) * 0.1
    path = write(tmp_path / "s.wav", hr, 16000)
    info = infer.simulate_file(path, tmp_path / "s", infer.load_model(ckpt))
    lr, _ = sf.read(info["outputs"]["lr"])
    np.testing.assert_allclose(lr, degrade(hr.astype(np.float32), 4, "subsample"), atol=1e-7)


def test_simulate_with_a_two_method_recipe_and_another_degradation(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "mix.pt", make_checkpoint(create_model("spline"),
                                                                {**RECIPE, "degrade": "subsample+resample"}))
    hr = np.random.default_rng(11).standard_normal(16000) * 0.1
    path = write(tmp_path / "s.wav", hr, 16000)
    loaded = infer.load_model(ckpt)
    assert loaded.degrade == "subsample"  # a recipe of several methods simulates with its first
    for method, base in ((None, "a"), ("resample", "b")):
        info = infer.simulate_file(path, tmp_path / base, loaded, degrade=method)
        lr, _ = sf.read(info["outputs"]["lr"])
        np.testing.assert_allclose(lr, degrade(hr.astype(np.float32), 4, method or "subsample"), atol=1e-7)
    out = run_cli("upsample", path, "--ckpt", ckpt, "--simulate", "--degrade", "resample",
                  "-o", tmp_path / "c")
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(sf.read(tmp_path / "c.lr.wav")[0], sf.read(tmp_path / "b.lr.wav")[0])
    assert "goes with --simulate" in error_line(run_main(capsys, "upsample", path, "--ckpt", ckpt,
                                                         "--degrade", "resample"))
    assert "use one of decimate, subsample, resample" in error_line(
        run_main(capsys, "upsample", path, "--ckpt", ckpt, "--simulate", "--degrade", "lowpass"))


def test_real_flac_into_a_48k_model(tmp_path, libri_mini):
    # real 16 kHz speech into a 16 -> 48 kHz (r=3) model: output FLAC beside it, 3x the frames
    src = sorted((libri_mini / "test-other").rglob("*.flac"))[0]
    shutil.copy(src, tmp_path / src.name)
    ckpt = save_checkpoint(tmp_path / "r3.pt", make_checkpoint(create_model("spline"),
                                                               {**RECIPE, "r": 3, "sr": 48000}))
    pairs = infer.plan_outputs([tmp_path / src.name], None, simulate=False)
    assert pairs[0][1].name == src.stem + ".afilm.flac"
    infer.upsample_file(pairs[0][0], pairs[0][1], infer.load_model(ckpt), warn=pytest.fail)
    x, _ = sf.read(str(src))
    y, sr = sf.read(str(pairs[0][1]))
    assert sr == 48000 and len(y) == 3 * len(x)
    np.testing.assert_allclose(y[::3], x, atol=2e-4)  # the spline passes through the input samples


def test_silent_file_upsamples_to_silence(tmp_path, ckpts):
    path = write(tmp_path / "silent.wav", np.zeros(4000), 4000, "PCM_16")
    infer.upsample_file(path, tmp_path / "silent.out.wav", loaded(ckpts, "afilm_tiny"))
    y, sr = sf.read(str(tmp_path / "silent.out.wav"))
    assert len(y) == 16000 and np.abs(y).max() < 1e-4


def test_input_below_the_low_rate_warns_and_works(tmp_path, ckpts):
    path = write(tmp_path / "low.wav", np.random.default_rng(11).standard_normal(3000) * 0.1, 3000)
    warnings = []
    infer.upsample_file(path, tmp_path / "low.out.wav", loaded(ckpts), warn=warnings.append)
    assert warnings == [f"{path}: 3000 Hz is below the model's input rate 4000 Hz; the band 1500-2000 Hz "
                        "stays empty"]
    assert sf.info(str(tmp_path / "low.out.wav")).frames == 16000


def test_simulate_refuses_input_below_the_model_rate(tmp_path, ckpts):
    path = write(tmp_path / "low.wav", np.zeros(8000), 8000)
    with pytest.raises(AfilmError, match="below the model's rate 16000 Hz"):
        infer.simulate_file(path, tmp_path / "low", loaded(ckpts))


def test_a_file_too_short_for_the_spline_is_named(tmp_path, ckpts):
    """Said in the file's frames and rate, with the least it takes; it named the internal low-rate
    signal's samples ("signal of 3 low-rate samples"), which a user never sees."""
    path = write(tmp_path / "click.wav", np.full(3, 0.1), 4000)  # 3 low-rate samples; a spline needs 4
    with pytest.raises(AfilmError, match=re.escape(
            f"{path}: 3 frames at 4000 Hz (0.75 ms) is too short: the cubic spline needs 4 samples at the "
            "model's input rate 4000 Hz, so at least 4 frames at 4000 Hz are needed")):
        infer.upsample_file(path, tmp_path / "click.afilm.wav", loaded(ckpts))
    # at 48 kHz: ceil(n / 12) low-rate samples, so 37 frames are the least; 36 are refused
    for n in (36, 37):
        path = write(tmp_path / f"c{n}.wav", np.full(n, 0.1), 48000)
        if n == 36:
            with pytest.raises(AfilmError, match=r"36 frames at 48000 Hz \(0\.75 ms\) is too short: .* at "
                                                 r"least 37 frames at 48000 Hz are needed"):
                infer.upsample_file(path, tmp_path / "c.afilm.wav", loaded(ckpts))
        else:
            infer.upsample_file(path, tmp_path / "c.afilm.wav", loaded(ckpts))
            assert sf.info(str(tmp_path / "c.afilm.wav")).frames == round(37 / 3)
            (tmp_path / "c.afilm.wav").unlink()
    hr = write(tmp_path / "hr.wav", np.full(12, 0.1), 16000)
    with pytest.raises(AfilmError, match=r"hr\.wav: 12 frames at 16000 Hz \(0\.75 ms\) is too short: the "
                                         r"cubic spline needs 4 samples .* at least 13 frames"):
        infer.simulate_file(hr, tmp_path / "hr", loaded(ckpts), degrade="subsample")
    with pytest.raises(AfilmError, match=r"hr\.wav: 12 frames .* decimate needs 28 samples at the model's "
                                         r"rate 16000 Hz, so at least 28 frames at 16000 Hz are needed"):
        infer.simulate_file(hr, tmp_path / "hr", loaded(ckpts), degrade="decimate")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c36.wav", "c37.wav", "click.wav", "hr.wav"]


def speech(libri_mini, sr, seconds=2.0, k=0) -> np.ndarray:
    """The start of a real LibriSpeech utterance (16 kHz FLAC), resampled to ``sr``."""
    src = sorted((libri_mini / "test-other").rglob("*.flac"))[k]
    x, sr0 = sf.read(str(src), dtype="float64", frames=int(seconds * 16000))
    assert sr0 == 16000
    return signal.resample_poly(x, sr, sr0) if sr != sr0 else x


def test_bad_files_among_several_are_named_and_the_others_written(tmp_path, ckpts, capsys, libri_mini):
    """An unreadable or too-short file among several is named on its own line and the others are
    written, as a file that fails while streaming (NaN) is; it had stopped the whole batch."""
    x = speech(libri_mini, 4000)
    (tmp_path / "mix" / "sub").mkdir(parents=True)
    write(tmp_path / "mix" / "a.wav", x, 4000, "PCM_16")
    (tmp_path / "mix" / "b.wav").write_bytes(b"RIFF\x00\x00not really a wave file")
    write(tmp_path / "mix" / "sub" / "short2.wav", x[:2], 4000, "PCM_16")
    write(tmp_path / "mix" / "z.wav", x[::-1], 4000, "PCM_16")
    args = ("upsample", tmp_path / "mix", "--ckpt", ckpts["spline"], "-q")
    out = run_main(capsys, *args)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("afilm: error: ") and "b.wav: cannot read audio" in lines[0]
    assert lines[1].startswith("afilm: error: ") and lines[1].endswith(
        "short2.wav: 2 frames at 4000 Hz (0.5 ms) is too short: the cubic spline needs 4 samples at the "
        "model's input rate 4000 Hz, so at least 4 frames at 4000 Hz are needed")
    assert lines[-1] == "afilm: error: 2 of 4 files failed (said above); the others were written"
    written = sorted(str(p.relative_to(tmp_path / "mix.afilm")) for p in (tmp_path / "mix.afilm").rglob("*")
                     if p.is_file())
    assert written == ["a.afilm.wav", "z.afilm.wav"]
    assert sf.info(str(tmp_path / "mix.afilm" / "a.afilm.wav")).frames == 4 * len(x)
    # a rerun without --force: the clash is the one error, said before any file is looked at again
    assert "a.afilm.wav exists; pass --force" in error_line(run_main(capsys, *args))
    # one input alone: its error is the run's one line
    line = error_line(run_main(capsys, "upsample", tmp_path / "mix" / "sub" / "short2.wav",
                               "--ckpt", ckpts["spline"]))
    assert line.endswith("short2.wav: 2 frames at 4000 Hz (0.5 ms) is too short: the cubic spline needs "
                         "4 samples at the model's input rate 4000 Hz, so at least 4 frames at 4000 Hz are "
                         "needed")
    # only bad files: nothing is written and the summary does not say otherwise
    out = run_main(capsys, "upsample", tmp_path / "mix" / "b.wav", tmp_path / "mix" / "sub" / "short2.wav",
                   "--ckpt", ckpts["spline"], "-o", tmp_path / "none/")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == ("afilm: error: 2 of 2 files failed (said above); nothing "
                                                   "was written")
    assert not (tmp_path / "none").exists()
    # --simulate: a file too short to decimate is left out the same way
    (tmp_path / "sim").mkdir()
    write(tmp_path / "sim" / "a.wav", speech(libri_mini, 16000, 1.0), 16000)
    write(tmp_path / "sim" / "b.wav", x[:10], 16000)
    out = run_main(capsys, "upsample", tmp_path / "sim", "--simulate", "--ckpt", ckpts["spline"], "-q")
    assert out.returncode == 2
    assert ("b.wav: 10 frames at 16000 Hz (0.625 ms) is too short: decimate needs 28 samples at the "
            "model's rate 16000 Hz, so at least 28 frames at 16000 Hz are needed") in out.stderr
    assert sorted(p.name for p in (tmp_path / "sim.afilm").iterdir()) == ["a.hr.wav", "a.lr.wav", "a.pr.wav"]


def test_an_unreadable_file_among_several_without_ckpt(tmp_path, capsys, monkeypatch, libri_mini):
    """Without --ckpt each file's rate picks the bundled model: a file whose rate cannot be read is
    named there, and the others still go to their models."""
    monkeypatch.chdir(tmp_path)  # no runs/ here: the bundled models
    good = write(tmp_path / "good.wav", speech(libri_mini, 8000, 1.0), 8000, "PCM_16")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"\x00" * 64)
    out = run_main(capsys, "upsample", bad, good, "-q", "--threads", "1")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 2, out.stderr
    assert lines[0].startswith("afilm: error: ") and "bad.wav: cannot read audio" in lines[0]
    assert lines[1] == "afilm: error: 1 of 2 files failed (said above); the others were written"
    assert sf.info(str(tmp_path / "good.afilm.wav")).frames == 2 * sf.info(str(good)).frames
    assert not (tmp_path / "bad.afilm.wav").exists()


def test_cli_window_reaches_the_windowed_path(tmp_path, ckpts, capsys):
    """--window 300 is rounded up to two length multiples (512) for afilm_tiny (multiple 256): the same
    output as --window 512, another one than the default 8192 (AFiLM's attention spans its window)."""
    src = write(tmp_path / "a.wav", np.random.default_rng(3).standard_normal(6001) * 0.1, 4000)
    outs = {}
    for window in ("300", "512", None):
        name = tmp_path / f"w{window}.wav"
        extra = ["--window", window] if window else []
        out = run_main(capsys, "upsample", src, "--ckpt", ckpts["afilm_tiny"], "-o", name, "--threads", "1",
                       "-q", *extra)
        assert out.returncode == 0, out.stderr
        outs[window], sr = sf.read(str(name))
    assert len(outs["300"]) == 24004 and sr == 16000
    assert np.array_equal(outs["300"], outs["512"]) and not np.array_equal(outs["300"], outs[None])
    lo = loaded(ckpts, "afilm_tiny")
    assert infer.count_windows(src, lo, 300) == len(infer.plan_windows(24004, 256, 512).starts(24004)) > 1


def test_two_inputs_with_one_output_name(tmp_path, ckpts, capsys):
    """Given as files, a.wav and a.ogg would both be a.afilm.wav: refused, -o tells them apart. In a
    folder run (which used to be refused whole, with advice it cannot follow) they keep their extension."""
    x = np.sin(np.arange(8000) / 3) * 0.1
    (tmp_path / "in").mkdir()
    write(tmp_path / "in" / "a.wav", x, 4000)
    sf.write(str(tmp_path / "in" / "a.ogg"), x, 4000)
    write(tmp_path / "in" / "b.wav", x, 4000)
    line = error_line(run_main(capsys, "upsample", tmp_path / "in" / "a.wav", tmp_path / "in" / "a.ogg",
                               "--ckpt", ckpts["spline"]))
    assert "a.wav and " in line and "a.ogg would both be written to " in line and "a.afilm.wav" in line
    assert not list(tmp_path.glob("in/*.afilm.wav"))
    out = run_main(capsys, "upsample", tmp_path / "in", "--ckpt", ckpts["spline"], "-q")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "in.afilm").iterdir()) == [
        "a.ogg.afilm.wav", "a.wav.afilm.wav", "b.afilm.wav"]
    assert infer.plan_outputs([tmp_path / "in"], None, simulate=True)[0][1] == tmp_path / "in.afilm" / "a.ogg"


def test_an_input_named_twice_is_done_once(tmp_path, ckpts, capsys):
    """`upsample a.wav a.wav ./a.wav -o dir/` ran the model three times for one output, and a folder
    given with one of its files counted the file twice in the summary."""
    write(tmp_path / "a.wav", np.sin(np.arange(8000) / 3) * 0.1, 4000)
    pairs = infer.plan_outputs([tmp_path / "a.wav", tmp_path / "a.wav", tmp_path / "." / "a.wav",
                                Path(os.path.relpath(tmp_path / "a.wav"))], str(tmp_path / "o") + "/", False)
    assert pairs == [(tmp_path / "a.wav", tmp_path / "o" / "a.afilm.wav")]
    sf.write(str(tmp_path / "a.ogg"), np.sin(np.arange(8000) / 3) * 0.1, 4000)
    rel = Path(os.path.relpath(tmp_path))
    assert len(infer.plan_outputs([rel / "a.wav", tmp_path / "a.wav"], None, False)) == 1
    with pytest.raises(AfilmError, match="would both be written to"):  # spelt two ways, one output
        infer.plan_outputs([rel / "a.wav", tmp_path / "a.ogg"], None, False)
    # a folder and one of its files: the file is done once, as the folder's
    pairs = infer.plan_outputs([tmp_path, tmp_path / "a.wav"], str(tmp_path / "o2") + "/", False)
    assert [s.name for s, _ in pairs] == ["a.ogg", "a.wav"]
    out = run_main(capsys, "upsample", tmp_path / "a.wav", tmp_path / "a.wav", "-o", f"{tmp_path / 'o'}/",
                   "--ckpt", ckpts["spline"])
    assert out.returncode == 0 and out.stderr.count("a.afilm.wav") + out.stdout.count("a.afilm.wav") == 1, out


def test_default_checkpoint_prefers_newest_run(tmp_path, monkeypatch, ckpts):
    from afilm_cli import pretrained

    monkeypatch.chdir(tmp_path)
    assert infer.default_checkpoint() == pretrained.bundled_checkpoint_path()  # no runs: the bundled model
    with monkeypatch.context() as m:
        m.setattr(pretrained, "DEFAULT", "")
        with pytest.raises(AfilmError, match="pass --ckpt PATH or train one"):
            infer.default_checkpoint()
    for i, name in enumerate(["b", "a"]):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "best.pt").write_bytes(ckpts["spline"].read_bytes())
        os.utime(tmp_path / "runs" / name / "best.pt", (1e9 + i, 1e9 + i))
    assert infer.default_checkpoint() == Path("runs/a/best.pt")


def test_plan_outputs_mirror_folders(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for rel in ("a.wav", "sub/b.flac", "sub/notes.txt"):
        (tmp_path / "in" / rel).write_bytes(b"")
    pairs = infer.plan_outputs([tmp_path / "in"], None, simulate=False)
    assert [(s.relative_to(tmp_path), t.relative_to(tmp_path)) for s, t in pairs] == [
        (Path("in/a.wav"), Path("in.afilm/a.afilm.wav")),
        (Path("in/sub/b.flac"), Path("in.afilm/sub/b.afilm.flac"))]
    pairs = infer.plan_outputs([tmp_path / "in"], tmp_path / "out", simulate=True)
    assert [t.relative_to(tmp_path) for _, t in pairs] == [Path("out/a"), Path("out/sub/b")]


def test_a_folder_run_leaves_out_afilms_outputs_only_and_says_so(tmp_path, capsys):
    """A folder run leaves out files named as afilm's outputs (a rerun on a folder holding them), and
    now says how many; it left out any name holding '.afilm' (x.afilmore.wav) without a word."""
    (tmp_path / "in").mkdir()
    for name in ("a.wav", "b.afilmore.wav", "a.afilm.wav", "c.ogg.afilm.flac", "d.hr.wav"):
        (tmp_path / "in" / name).write_bytes(b"")
    pairs = infer.plan_outputs([tmp_path / "in"], None, simulate=False)
    assert sorted(s.name for s, _ in pairs) == ["a.wav", "b.afilmore.wav"]
    err = capsys.readouterr().err
    assert "3 files named as afilm's outputs" in err and "left out" in err, err


def test_plan_outputs_a_trailing_slash_names_a_folder(tmp_path):
    src = tmp_path / "clip.wav"
    src.write_bytes(b"")
    new = str(tmp_path / "new")
    assert infer.plan_outputs([src], new + "/", simulate=True) == [(src, tmp_path / "new" / "clip")]
    assert infer.plan_outputs([src], new + "/", simulate=False) == [(src, tmp_path / "new/clip.afilm.wav")]
    # without the slash a path that does not exist yet is the output file (or, simulating, its base name)
    assert infer.plan_outputs([src], new, simulate=True) == [(src, tmp_path / "new")]
    assert infer.plan_outputs([src], new + ".wav", simulate=False) == [(src, tmp_path / "new.wav")]
    assert infer.plan_outputs([src], new + ".FLAC", simulate=False) == [(src, tmp_path / "new.FLAC")]
    for name in (new, new + ".ogg"):  # anything else would be WAV data under a misleading name
        with pytest.raises(AfilmError, match=r"writes WAV or FLAC; end the output name with \.wav or \.flac"):
            infer.plan_outputs([src], name, simulate=False)


# ------------------------------------------------------------------------------------------ the CLI
def test_cli_upsample_names_overwrite_and_force(tmp_path, ckpts, capsys):
    src = write(tmp_path / "voice.wav", np.random.default_rng(12).standard_normal((8000, 2)) * 0.1, 8000,
                "PCM_16")
    out = run_cli("upsample", src, "--ckpt", ckpts["afilm_tiny"], "--batch-size", "3", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    target = tmp_path / "voice.afilm.wav"
    info = sf.info(str(target))
    assert (info.frames, info.samplerate, info.channels) == (16000, 16000, 2)
    before = target.read_bytes()
    line = error_line(run_main(capsys, "upsample", src, "--ckpt", ckpts["spline"]))
    assert "voice.afilm.wav exists; pass --force" in line
    assert target.read_bytes() == before  # untouched
    assert run_main(capsys, "upsample", src, "--ckpt", ckpts["spline"], "--force").returncode == 0
    assert target.read_bytes() != before
    # --no-cuda-graph only changes how CUDA runs the model: on a CPU the output is the same. One thread in
    # both runs: "auto" follows the machine's load, and another thread count reorders the float sums
    # (CI once saw one 16-bit sample differ by one step)
    again = tmp_path / "again.wav"
    same = ("--ckpt", ckpts["afilm_tiny"], "--batch-size", "3", "--device", "cpu", "--threads", "1")
    assert run_main(capsys, "upsample", src, *same, "--no-cuda-graph", "--out", again).returncode == 0
    assert run_main(capsys, "upsample", src, *same, "--out", target, "--force").returncode == 0
    assert again.read_bytes() == target.read_bytes()


def test_cli_upsample_refuses_to_write_over_its_input(tmp_path, ckpts, libri_mini):
    """`afilm upsample x -o x --force` replaced its own input; refused now in one line, by any name of
    the file, and with several inputs before anything of the run is written."""
    real = sorted((libri_mini / "test-other").rglob("*.flac"))[0]
    src = Path(shutil.copy(real, tmp_path / "self.flac"))
    before = src.read_bytes()
    for out in ("self.flac", "./self.flac", tmp_path / "self.flac"):
        line = error_line(run_cli("upsample", "self.flac", "-o", out, "--force", "--ckpt", ckpts["spline"],
                                  cwd=tmp_path))
        assert "the output of self.flac is the input itself" in line and "even with --force" in line
    assert src.read_bytes() == before
    # two inputs, one the default output of the other (self.flac -> self.afilm.flac): neither is written
    other = Path(shutil.copy(real, tmp_path / "self.afilm.flac"))
    line = error_line(run_cli("upsample", "self.flac", "self.afilm.flac", "--force",
                              "--ckpt", ckpts["spline"], cwd=tmp_path))
    assert "the output of self.flac, self.afilm.flac, is another input (self.afilm.flac)" in line
    assert other.read_bytes() == before and src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["self.afilm.flac", "self.flac"]


def test_an_output_that_is_an_input_is_refused_by_plan_and_api(tmp_path, ckpts):
    """By file identity (a symlink, --simulate's .hr.wav), and in the Python API's upsample_file."""
    src = write(tmp_path / "x.hr.wav", np.zeros(16000), 16000)
    (tmp_path / "link.wav").symlink_to(src)
    with pytest.raises(AfilmError, match="the output of .*link.wav is the input itself"):
        infer.plan_outputs([tmp_path / "link.wav"], str(src), simulate=False)
    with pytest.raises(AfilmError, match=r"is the input itself \(.*x\.hr\.wav\)"):
        infer.plan_outputs([src], str(tmp_path / "x"), simulate=True)
    with pytest.raises(AfilmError, match="does not write over an input"):
        infer.upsample_file(src, tmp_path / "link.wav", loaded(ckpts))
    with pytest.raises(AfilmError, match="does not write over an input"):
        infer.simulate_file(src, tmp_path / "x", loaded(ckpts))
    assert not any(sf.read(str(src))[0])  # untouched


def test_cli_upsample_compile_uses_the_compiled_model(tmp_path, ckpts, capsys, monkeypatch):
    """--compile reaches model_windows: the model is compiled once (compile_model stubbed here: a
    real inductor compile takes minutes on this CPU) and the run pads its batches to one shape."""
    calls, shapes = [], []

    class Compiled(nn.Module):  # what compile_model returns: the run must call it, not the plain model
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            shapes.append(tuple(x.shape))
            return self.inner(x)

    def fake_compile(model, device):
        calls.append(device)
        return Compiled(model)

    monkeypatch.setattr(infer, "compile_model", fake_compile)
    src = write(tmp_path / "v.wav", np.random.default_rng(3).standard_normal(8000) * 0.1, 8000, "PCM_16")
    out = run_main(capsys, "upsample", src, "--ckpt", ckpts["afilm_tiny"], "--device", "cpu", "--compile",
                   "--batch-size", "4", "--out", tmp_path / "c.wav")
    assert out.returncode == 0 and calls == [torch.device("cpu")]
    # 16000 output samples: 3 windows of 8192, one batch of 4 with a padding window (one shape throughout)
    assert shapes == [(4, 1, 8192)], shapes
    plain = run_main(capsys, "upsample", src, "--ckpt", ckpts["afilm_tiny"], "--device", "cpu",
                     "--out", tmp_path / "p.wav")
    assert plain.returncode == 0 and len(calls) == 1 and len(shapes) == 1
    np.testing.assert_allclose(sf.read(tmp_path / "c.wav")[0], sf.read(tmp_path / "p.wav")[0], atol=1e-4)


def test_cli_folder_and_simulate(tmp_path, ckpts):
    (tmp_path / "in" / "d").mkdir(parents=True)
    write(tmp_path / "in" / "a.wav", np.zeros(16000), 16000)
    write(tmp_path / "in" / "d" / "b.wav", np.random.default_rng(13).standard_normal(20000) * 0.1, 16000)
    out = run_cli("upsample", tmp_path / "in", "--ckpt", ckpts["spline"], "--simulate",
                  "--out", tmp_path / "o")
    assert out.returncode == 0, out.stderr
    names = sorted(str(p.relative_to(tmp_path / "o")) for p in (tmp_path / "o").rglob("*.wav"))
    assert names == ["a.hr.wav", "a.lr.wav", "a.pr.wav", "d/b.hr.wav", "d/b.lr.wav", "d/b.pr.wav"]
    assert sf.info(str(tmp_path / "o" / "d" / "b.pr.wav")).frames == 20000
    assert sf.info(str(tmp_path / "o" / "d" / "b.lr.wav")).samplerate == 4000
    # one file into a folder that does not exist yet: the trailing slash says it is a folder
    out = run_cli("upsample", tmp_path / "in" / "a.wav", "--ckpt", ckpts["spline"], "--simulate",
                  "--out", f"{tmp_path / 'new'}/")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["a.hr.wav", "a.lr.wav", "a.pr.wav"]


def test_cli_bad_inputs_are_one_line(tmp_path, ckpts, capsys):
    garbage = tmp_path / "bad.wav"
    garbage.write_bytes(b"RIFF\x00\x00not really a wave file")
    assert "bad.wav: cannot read audio" in error_line(run_cli("upsample", garbage, "--ckpt", ckpts["spline"]))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    good = write(tmp_path / "ok.wav", np.zeros(4000), 4000)
    cases = [
        (("upsample", good, "--ckpt", other), "not an afilm checkpoint"),
        (("upsample", tmp_path / "missing.wav", "--ckpt", ckpts["spline"]), "missing.wav: no such file"),
        (("upsample", write(tmp_path / "low.wav", np.zeros(4000), 8000), "--ckpt", ckpts["spline"],
          "--simulate"), "below the model's rate 16000 Hz"),
        (("upsample", (tmp_path / "empty").mkdir() or tmp_path / "empty", "--ckpt", ckpts["spline"]),
         "no audio files"),
        (("upsample", write(tmp_path / "nan.wav", np.full(4000, np.nan), 4000), "--ckpt", ckpts["spline"]),
         "nan.wav: contains NaN or Inf"),
    ]
    if not torch.cuda.is_available():
        cases.append((("upsample", good, "--ckpt", ckpts["spline"], "--device", "cuda"), "no CUDA device"))
    real = torch.load(ckpts["afilm_tiny"], weights_only=True)
    for i, (key, value, message) in enumerate([
            ("format_version", "2", "format_version '2' is not a number"),
            ("model_config", [1, 2], "model_config is a list, not a dict"),
            ("state_dict", [1], "state_dict is a list, not a dict"),
            ("state_dict", {"w": 1.0}, "state_dict holds something other than tensors"),
            ("model_config", {**real["model_config"], "n_layers": "four"}, "config does not fit model")]):
        torch.save({**real, key: value}, tmp_path / f"damaged{i}.pt")
        cases.append((("upsample", good, "--ckpt", tmp_path / f"damaged{i}.pt"), message))
    for args, message in cases:
        assert message in error_line(run_main(capsys, *args)), args


def peak_rss_mb(args) -> float:
    proc = subprocess.Popen([sys.executable, "-m", "afilm_cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read()
    return usage.ru_maxrss / 1024  # kB on Linux


@pytest.mark.slow
def test_memory_does_not_grow_with_file_length(tmp_path, ckpts):
    rng = np.random.default_rng(14)
    rss = {}
    for minutes in (1, 10):
        path = tmp_path / f"long{minutes}.wav"
        n = 8000 * 60 * minutes  # 8 kHz in, 16 kHz out: 9.6 M output samples for 10 minutes
        with sf.SoundFile(str(path), "w", 8000, 1, "PCM_16") as f:
            for a in range(0, n, 480_000):
                f.write((rng.standard_normal(min(480_000, n - a)) * 0.1).astype(np.float32))
        rss[minutes] = peak_rss_mb(["upsample", path, "--ckpt", ckpts["spline"], "-q"])
        assert sf.info(str(tmp_path / f"long{minutes}.afilm.wav")).frames == 2 * n
    # one float64 copy of the 10-minute output alone would be 77 MB
    assert rss[10] - rss[1] < 30, rss


# ------------------------------------------------------------------------------------- speed settings
def speech_like(n, seed):
    from afilm_cli.bench import synthetic_speech

    return synthetic_speech(n / 16000, 16000, seed)[:n].astype(np.float64)


def test_speed_settings_keep_fp32_outputs(ckpts):
    """Batch size, thread count, the auto thread choice, padded (fixed-shape) batches and autograd on
    all give the fp32 eager output within FP32_ATOL (stated in afilm_cli/windows.py)."""
    lo = loaded(ckpts, "afilm_tiny")
    x = speech_like(70_000, 15)  # 11 windows of 8192
    src = infer.ArraySource(x)
    plan = infer.window_plan_for(lo, len(x))

    def run(**kw):
        return np.concatenate(list(infer.run_windows(lo.model, src, len(x), plan, **kw)))[:, 0]

    ref = run(batch_size=1, threads=1, precision="fp32")
    stats = {}
    variants = {"batch 16": run(batch_size=16, threads=1), "batch 4, auto": run(batch_size=4, stats=stats),
                "2 threads": run(batch_size=3, threads=2), "padded": run(batch_size=4, fixed_shapes=True),
                "autograd": run(batch_size=5, autograd=True, threads=None)}
    assert stats["windows"] == 11 and stats["batches"] == 3 and stats["threads"] >= 1
    for name, y in variants.items():
        np.testing.assert_allclose(y, ref, atol=infer.FP32_ATOL, err_msg=name)
    assert np.abs(ref - x).max() > 1e-3  # the model does something: the comparison can fail


def test_auto_threads_time_both_and_keep_the_faster(monkeypatch):
    from afilm_cli import windows

    monkeypatch.setattr(windows, "busy_elsewhere", lambda: 0)
    monkeypatch.setattr(windows.torch, "get_num_threads", lambda: 4)
    cpu = torch.device("cpu")
    choice = windows.ThreadChoice("auto", cpu, n_batches=10)
    assert choice.trials == [4, 1]
    used = []
    for seconds in (9.0, 2.0, 1.0, 5.0, 5.0):  # warm-up (ignored), 4 threads, 1 thread, then the choice
        n = choice.next()
        used.append(n)
        choice.record(n, seconds)
    assert used == [4, 4, 1, 1, 1] and choice.chosen == 1
    # a busy machine runs at the cores left (at least one), without trying all cores
    monkeypatch.setattr(windows, "busy_elsewhere", lambda: 7)
    busy = windows.ThreadChoice("auto", cpu, n_batches=20)
    assert busy.trials == [] and busy.next() == 1
    monkeypatch.setattr(windows, "busy_elsewhere", lambda: 1)
    assert windows.ThreadChoice("auto", cpu, n_batches=20).next() == 3
    monkeypatch.setattr(windows, "busy_elsewhere", lambda: 0)
    assert windows.ThreadChoice("auto", cpu, n_batches=3).trials == []  # too short to try both
    assert windows.ThreadChoice(3, cpu, 10).next() == 3
    assert windows.ThreadChoice("auto", torch.device("meta"), 10).trials == []  # only CPU is tuned
    with pytest.raises(AfilmError, match="threads"):
        windows.ThreadChoice(0, cpu, 10)


def test_threads_are_restored_and_precision_checked():
    from afilm_cli import windows

    before = torch.get_num_threads()
    with windows.num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    assert windows.resolve_precision("fp32", torch.device("cuda")) is None  # fp32 is the default
    assert windows.resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(AfilmError, match="unknown precision"):
        windows.resolve_precision("fp16", torch.device("cpu"))


def snr_db(ref, y):
    return 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - y) ** 2), 1e-30))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["afilm_small", "tfilm_small"])
def test_cuda_bf16_and_compile_stay_within_tolerance(name):
    """bf16 autocast (the CUDA default) and compile (CUDA graphs) vs the fp32 torch-ops path:
    output SNR >= BF16_MIN_SNR_DB, and the model's own change to its input (y - x) >= 20 dB."""
    torch.manual_seed(0)
    model = create_model(name).cuda().eval()
    lo = infer.Loaded(model, dict(RECIPE), Path(name), {})
    x = speech_like(100_000, 16)
    src = infer.ArraySource(x)
    plan = infer.window_plan_for(lo, len(x))

    def run(**kw):
        return infer.predict(lo, src, len(x), batch_size=4, device="cuda", **kw)[:, 0]

    os.environ["AFILM_KERNEL"] = "torch"
    try:
        ref = run(precision="fp32")
    finally:
        del os.environ["AFILM_KERNEL"]
    assert plan.window == 8192
    for kw in ({"precision": "fp32"}, {"precision": "bf16"}, {"precision": "bf16", "compile": True}):
        y = run(**kw)
        assert snr_db(ref, y) >= infer.BF16_MIN_SNR_DB, kw
        assert snr_db(ref - x, y - x) >= 20.0, kw


def test_cuda_graph_setting_is_checked_and_off_on_cpu():
    from afilm_cli.cuda_graphs import use_graphs

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_graphs("auto", cpu) and not use_graphs("on", cpu)
    assert use_graphs("auto", cuda) and use_graphs(None, cuda) and use_graphs(True, cuda)
    assert not use_graphs("off", cuda) and not use_graphs(False, cuda)
    with pytest.raises(AfilmError, match="unknown CUDA graphs setting"):
        use_graphs("sometimes", cuda)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["afilm_small", "tfilm_small"])
def test_cuda_graph_replay_matches_eager(name):
    """The captured forward (default on CUDA) gives the eager output: same kernels, replayed; the
    eager last batch is not padded, so cuDNN may pick other (TF32) algorithms there: >= 50 dB."""
    torch.manual_seed(0)
    model = create_model(name).cuda().eval()
    lo = infer.Loaded(model, dict(RECIPE), Path(name), {})
    x = speech_like(100_000, 16)
    src = infer.ArraySource(x)
    eager = infer.predict(lo, src, len(x), batch_size=4, device="cuda", graphs="off")[:, 0]
    stats = {}
    graphs = [infer.predict(lo, src, len(x), batch_size=4, device="cuda", stats=stats)[:, 0]  # the default
              for _ in range(2)]
    assert stats["cuda_graph"] is True  # captured, not the eager fallback
    assert len(lo.graphs) == 1 and all(isinstance(g, GraphedForward) for g in lo.graphs.values())
    np.testing.assert_allclose(graphs[0], graphs[1], atol=1e-6)  # the same graph, replayed
    assert snr_db(eager, graphs[0]) >= 50.0
    assert snr_db(eager - x, graphs[0] - x) >= 30.0


def test_cuda_graph_cache_keys_and_capture_failure(monkeypatch):
    """One capture per (shape, precision, kernel backend, cudnn.benchmark): a graph freezes the
    kernels chosen at capture, so switching AFILM_KERNEL must not replay the other backend's graph.
    A failed capture falls back to the eager model with a warning."""
    from afilm_cli import cuda_graphs

    captured = []

    class Fake:
        def __init__(self, model, shape, device, autocast):
            captured.append((shape, autocast, os.environ.get("AFILM_KERNEL")))

    monkeypatch.setattr(cuda_graphs, "GraphedForward", Fake)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())  # no CUDA here
    model, cache, dev = nn.Identity(), {}, torch.device("cuda")
    monkeypatch.delenv("AFILM_KERNEL", raising=False)
    first = cuda_graphs.graphed(model, cache, (16, 1, 8192), dev, None)
    assert cuda_graphs.graphed(model, cache, (16, 1, 8192), dev, None) is first and len(captured) == 1
    monkeypatch.setenv("AFILM_KERNEL", "torch")  # the same backend as unset
    assert cuda_graphs.graphed(model, cache, (16, 1, 8192), dev, None) is first
    monkeypatch.setenv("AFILM_KERNEL", "triton")
    assert cuda_graphs.graphed(model, cache, (16, 1, 8192), dev, None) is not first
    assert cuda_graphs.graphed(model, cache, (16, 1, 8192), dev, torch.bfloat16) is not first
    assert cuda_graphs.graphed(model, cache, (8, 1, 8192), dev, None) is not first
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not torch.backends.cudnn.benchmark)
    cuda_graphs.graphed(model, cache, (8, 1, 8192), dev, None)
    assert len(captured) == 5

    def broken(*a):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graphs, "GraphedForward", broken)
    with pytest.warns(UserWarning, match="CUDA graph capture failed.*running eager"):
        assert cuda_graphs.graphed(model, cache, (4, 1, 8192), dev, None) is model


# ------------------------------------------------------------------------------------ in memory (API)
def test_upsample_array_equals_upsample_file(tmp_path, libri_mini):
    """The Python API gives what `afilm upsample` writes, for the bundled model on real speech."""
    lo = infer.load_model("afilm_speech_r4")
    src = sorted((libri_mini / "test-other").rglob("*.flac"))[0]
    hr, sr = sf.read(str(src), dtype="float32")
    x = signal.resample_poly(hr[: 3 * sr], 1, 4).astype(np.float32)  # 3 s of real 4 kHz input
    path = write(tmp_path / "in.wav", x, 4000)
    infer.upsample_file(path, tmp_path / "out.wav", lo, threads=1)
    from_file, _ = sf.read(str(tmp_path / "out.wav"), dtype="float32")
    y = infer.upsample_array(x, 4000, lo, threads=1)
    assert y.dtype == np.float32 and y.shape == from_file.shape == (len(x) * 4,)
    np.testing.assert_allclose(y, from_file, atol=1e-6)
    stereo = infer.upsample_array(np.stack([x, x[::-1]], axis=1), 4000, lo, threads=1)
    assert stereo.shape == (len(x) * 4, 2)
    np.testing.assert_allclose(stereo[:, 0], y, atol=1e-5)
    # integer PCM, as soundfile reads it with dtype="int16", is scaled as soundfile scales it
    pcm = np.round(x * 32767).astype(np.int16)
    np.testing.assert_allclose(infer.upsample_array(pcm, 4000, lo, threads=1),
                               infer.upsample_array(pcm / 32768, 4000, lo, threads=1), atol=1e-6)


def test_upsample_array_rates_and_bad_input(ckpts):
    lo = loaded(ckpts, "spline")
    x = np.random.default_rng(12).standard_normal(11025) * 0.1
    assert infer.upsample_array(x, 11025, lo).shape == (16000,)
    warnings = []
    assert infer.upsample_array(x[:3000], 3000, lo, warn=warnings.append).shape == (16000,)
    assert warnings == ["3000 Hz is below the model's input rate 4000 Hz; the band 1500-2000 Hz stays empty"]
    # telephone-rate input into a 4 kHz -> 16 kHz model loses its 2-4 kHz band to the resampler: said
    warnings.clear()
    infer.upsample_array(x[:8000], 8000, lo, warn=warnings.append)
    infer.upsample_array(x, 11025, lo, warn=warnings.append)
    assert warnings == ["8000 Hz is above the model's input rate 4000 Hz: the input's band 2000-4000 Hz is "
                        "dropped and predicted again (the bundled afilm_speech_r2, made for 8000 Hz input "
                        "(--ckpt afilm_speech_r2), keeps it)",
                        "11025 Hz is above the model's input rate 4000 Hz: the input's band 2000-5512.5 Hz "
                        "is dropped and predicted again (a model for this rate keeps it)"]
    warnings.clear()
    infer.upsample_array(x[:4000], 4000, lo, warn=warnings.append)
    assert warnings == []
    for bad, match in [(np.zeros((2, 3, 4)), "shape"), (np.array(["a"] * 100), "real array"),
                       (np.full(4000, np.nan), "NaN"), (np.zeros(2), "too short")]:
        with pytest.raises(AfilmError, match=match):
            infer.upsample_array(bad, 4000, lo)
    for sr in (0, 4000.0, True):
        with pytest.raises(AfilmError, match="sample rate"):
            infer.upsample_array(x, sr, lo)


def test_upsample_array_takes_a_model_name_or_checkpoint_path(ckpts):
    """A bundled name or a checkpoint path where load_model's result goes is loaded as --ckpt loads it
    (it died with "'str' object has no attribute 'low_rate'"); anything else is one clear line."""
    x = np.random.default_rng(3).standard_normal(4000).astype(np.float32) * 0.1
    by_name = infer.upsample_array(x, 4000, "afilm_speech_r4", threads=1)
    np.testing.assert_array_equal(by_name, infer.upsample_array(x, 4000, infer.load_model("afilm_speech_r4"),
                                                                threads=1))
    expected = infer.upsample_array(x, 4000, loaded(ckpts, "spline"))
    for path in (ckpts["spline"], str(ckpts["spline"])):
        np.testing.assert_array_equal(infer.upsample_array(x, 4000, path), expected)
    with pytest.raises(AfilmError, match="no such checkpoint"):
        infer.upsample_array(x, 4000, "afilm_speech_r9")
    for bad in (None, create_model("spline")):
        with pytest.raises(AfilmError, match=r"model: pass load_model\(...\)'s result, a bundled model"):
            infer.upsample_array(x, 4000, bad)


def test_upsample_array_refuses_channels_first_audio(ckpts):
    """(channels, frames) was taken as a few frames of thousands of channels: "too short for a cubic
    spline" for stereo, and from 4 rows up thousands of channels of garbage. Said, naming the shape."""
    lo = loaded(ckpts, "spline")
    x = np.random.default_rng(4).standard_normal((4000, 2)) * 0.1
    for rows in (x.T, np.tile(x.T, (4, 1)), x[:, :1].T):
        with pytest.raises(AfilmError, match=rf"shape \({rows.shape[0]}, 4000\) looks channels-first: pass "
                                             rf"\(frames, channels\).*of shape \(4000, {rows.shape[0]}\)"):
            infer.upsample_array(rows, 4000, lo)
    assert infer.upsample_array(x, 4000, lo).shape == (16000, 2)


def test_readme_python_example_runs(tmp_path, libri_mini):
    """README's "Python API" snippet, as printed, on a real 4 kHz file."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    src = sorted((libri_mini / "test-other").rglob("*.flac"))[1]
    hr, sr = sf.read(str(src), dtype="float32")
    write(tmp_path / "speech_4k.wav", signal.resample_poly(hr, 1, 4), 4000, "PCM_16")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    y, sr_out = sf.read(str(tmp_path / "speech_16k.wav"))
    assert sr_out == 16000 and len(y) == 4 * sf.info(str(tmp_path / "speech_4k.wav")).frames


def test_plan_outputs_for_dot_folders_and_flac_simulate_names(tmp_path, monkeypatch):
    """`afilm upsample .` (and ..) mirrors into the folder's real name + .afilm beside it (it crashed,
    and '..' gave a folder named '...afilm'); `--simulate -o x.wav` names x.lr.wav, not x.wav.lr.wav."""
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "a.wav").write_bytes(b"")
    monkeypatch.chdir(work)
    assert infer.plan_outputs([Path(".")], None, simulate=False) == [
        (Path("a.wav"), tmp_path / "work.afilm" / "a.afilm.wav")]
    monkeypatch.chdir(work / "sub")
    assert infer.plan_outputs([Path("..")], None, simulate=True) == [
        (Path("../a.wav"), tmp_path / "work.afilm" / "a")]
    src = work / "a.wav"
    assert infer.plan_outputs([src], str(tmp_path / "x.WAV"), simulate=True) == [(src, tmp_path / "x")]
    assert infer.simulate_paths(tmp_path / "x")["lr"] == tmp_path / "x.lr.wav"
    with pytest.raises(AfilmError, match=r"x\.FLAC: --simulate writes WAV files"):  # it wrote x.lr.wav
        infer.plan_outputs([src], str(tmp_path / "x.FLAC"), simulate=True)


@pytest.mark.parametrize("native", [False, True])
def test_cli_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, ckpts, capsys, monkeypatch, native):
    from afilm_cli.commands import upsample as command

    monkeypatch.setattr(command, "_native_bf16", lambda: native)
    src = write(tmp_path / "v.wav", np.random.default_rng(4).standard_normal(4000) * 0.1, 4000)
    out = run_main(capsys, "upsample", src, "--ckpt", ckpts["spline"], "--precision", "bf16",
                   "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert ("no native bf16" in out.stderr) is not native


def test_simulate_failing_midway_leaves_no_partial_set(tmp_path, ckpts, monkeypatch):
    """.lr/.hr/.pr.wav are one result: a failure writing the prediction (a full disk, Ctrl-C) removes
    the two written before it (a rerun was refused: 'sim.lr.wav exists; pass --force')."""
    src = write(tmp_path / "hr.wav", np.random.default_rng(6).standard_normal(16000) * 0.1, 16000)
    real = infer._write_blocks

    def failing(path, *args):
        if path.name.endswith(".pr.wav"):
            raise OSError(28, "No space left on device")
        return real(path, *args)

    monkeypatch.setattr(infer, "_write_blocks", failing)
    with pytest.raises(OSError, match="No space left"):
        infer.simulate_file(src, tmp_path / "sim", loaded(ckpts))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr.wav"]


def test_cli_folder_run_goes_on_past_a_file_that_fails_while_streaming(tmp_path, ckpts, capsys):
    """NaN samples are found only while a file streams: the other files are still written, the
    failure is named, and the run exits non-zero (it had stopped half-way, blocking the rerun)."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(9)
    for name in ("a", "m", "z"):
        x = rng.standard_normal(8000) * 0.1
        if name == "m":
            x[6000] = np.nan
        write(folder / f"{name}.wav", x, 4000)
    out = run_main(capsys, "upsample", folder, "--ckpt", ckpts["spline"], "-o", tmp_path / "out")
    assert out.returncode == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.afilm.wav", "z.afilm.wav"]
    assert "m.wav" in out.stderr and "NaN" in out.stderr
    assert out.stderr.strip().splitlines()[-1] == ("afilm: error: 1 of 3 files failed (said above); the "
                                                   "others were written")


def test_low_rate_warning_names_the_ratio_where_no_bundled_model_fits():
    """Above the model's input rate, with no bundled model made for that rate: the ratio to train."""
    import types

    model_48k = types.SimpleNamespace(sr=48000, low_rate=12000)  # r = 4 at 48 kHz
    assert infer.low_rate_warning(24000, model_48k).endswith("(a model trained with --r 2 keeps it)")
    assert infer.low_rate_warning(16000, model_48k).endswith("(a model trained with --r 3 keeps it)")
    assert infer.low_rate_warning(12000, model_48k) is None


def clip_counts(path) -> tuple[int, float]:
    """Samples beyond +-1 in a float file (all channels) and the largest magnitude among them."""
    y, _ = sf.read(str(path), dtype="float32", always_2d=True)
    over = np.abs(y) > 1.0
    return int(over.sum()), float(np.abs(y[over]).max()) if over.any() else 0.0


def test_clipped_pcm_output_is_counted_and_warned(tmp_path, ckpts, capsys, libri_mini):
    """PCM output clips samples beyond +-1; that was silent. The count (over every streamed block:
    --batch-size 1 makes one block per window) is the one the float output of the same run shows."""
    x = speech(libri_mini, 4000, 4.0)
    loud = write(tmp_path / "loud.wav", x * (3.0 / np.abs(x).max()), 4000)  # float, peak 3.0
    common = ("--ckpt", ckpts["spline"], "--batch-size", "1", "--window", "4096", "--threads", "1")
    out = run_main(capsys, "upsample", loud, *common, "-o", tmp_path / "loud.float.wav")
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr  # float .wav keeps them
    assert sf.info(str(tmp_path / "loud.float.wav")).subtype == "FLOAT"
    count, peak = clip_counts(tmp_path / "loud.float.wav")
    assert count > 1000 and peak > 2.5
    assert infer.count_windows(loud, loaded(ckpts), 4096) > 2  # several blocks are counted
    out = run_main(capsys, "upsample", loud, *common, "-o", tmp_path / "loud.flac")
    warnings = [l for l in out.stderr.splitlines() if "warning" in l]
    assert out.returncode == 0 and warnings == [
        f"afilm: warning: {tmp_path / 'loud.flac'}: {count} samples clipped to [-1, 1] (peak {peak:.5g}); "
        "FLAC has no float samples: -o NAME.wav writes float, as the input, and keeps them"], out.stderr
    assert np.abs(sf.read(str(tmp_path / "loud.flac"))[0]).max() <= 1.0
    # a 16-bit input at full scale: the spline overshoots it; the output stays 16-bit
    pcm = np.round(x / np.abs(x).max() * 32767).astype(np.int16)
    sf.write(str(tmp_path / "full.wav"), pcm, 4000, subtype="PCM_16")
    sf.write(str(tmp_path / "full.float.wav"), pcm / 32768.0, 4000, subtype="FLOAT")  # the same values
    assert run_main(capsys, "upsample", tmp_path / "full.float.wav", *common).returncode == 0
    count, peak = clip_counts(tmp_path / "full.float.afilm.wav")
    assert count > 0
    out = run_main(capsys, "upsample", tmp_path / "full.wav", *common)
    warnings = [l for l in out.stderr.splitlines() if "warning" in l]
    assert out.returncode == 0 and warnings == [
        f"afilm: warning: {tmp_path / 'full.afilm.wav'}: {count} samples clipped to [-1, 1] "
        f"(peak {peak:.5g}); the output is PCM_16, chosen from the input's PCM_16 format: a float WAV "
        "input, written to .wav, keeps them"], out.stderr
    assert sf.info(str(tmp_path / "full.afilm.wav")).subtype == "PCM_16"


def test_simulate_warns_of_each_clipped_output(tmp_path, ckpts, vctk_mini):
    """--simulate's three files are clipped the same way when the input is PCM; each is counted."""
    src = sorted((vctk_mini / "wav48").rglob("*.wav"))[0]
    x, sr = sf.read(str(src), dtype="float64", frames=48000 * 2)
    # recorded too loud (clipped at full scale): its square edges overshoot once low-passed
    pcm = np.round(np.clip(x / np.abs(x).max() * 4, -1, 1) * 32767).astype(np.int16)
    sf.write(str(tmp_path / "hr.wav"), pcm, sr, subtype="PCM_16")
    sf.write(str(tmp_path / "hrf.wav"), pcm / 32768.0, sr, subtype="FLOAT")
    floats = infer.simulate_file(tmp_path / "hrf.wav", tmp_path / "f", loaded(ckpts), warn=pytest.fail)
    expected = [(k, *clip_counts(p)) for k, p in floats["outputs"].items()]
    assert any(n for _, n, _ in expected)
    warnings = []
    infer.simulate_file(tmp_path / "hr.wav", tmp_path / "p", loaded(ckpts), warn=warnings.append)
    assert warnings == [f"{tmp_path / f'p.{k}.wav'}: {n} samples clipped to [-1, 1] (peak {peak:.5g}); the "
                        "output is PCM_16, chosen from the input's PCM_16 format: a float WAV input, "
                        "written to .wav, keeps them" for k, n, peak in expected if n]


def test_several_inputs_refuse_an_audio_file_name_for_out(tmp_path, ckpts, capsys, libri_mini):
    """`a.wav b.wav -o two.wav` made a folder named two.wav; an existing folder of that name is used."""
    x = speech(libri_mini, 4000, 1.0)
    a, b = write(tmp_path / "a.wav", x, 4000), write(tmp_path / "b.wav", x[::-1], 4000)
    (tmp_path / "d").mkdir()
    write(tmp_path / "d" / "c.wav", x, 4000)
    for inputs, name in (((a, b), "two.wav"), ((tmp_path / "d",), "d.flac"), ((a, b), "two.FLAC")):
        line = error_line(run_main(capsys, "upsample", *inputs, "--ckpt", ckpts["spline"],
                                   "-o", tmp_path / name))
        assert line == (f"afilm: error: {tmp_path / name}: several inputs (or a folder) need a folder for "
                        "-o, not an audio file name (end it with / to make a new folder)")
        assert not (tmp_path / name).exists()
    (tmp_path / "two.wav").mkdir()
    assert run_main(capsys, "upsample", a, b, "--ckpt", ckpts["spline"], "-o", tmp_path / "two.wav",
                    "-q").returncode == 0
    assert sorted(p.name for p in (tmp_path / "two.wav").iterdir()) == ["a.afilm.wav", "b.afilm.wav"]


def test_simulate_refuses_a_flac_output_name(tmp_path, ckpts, capsys, libri_mini):
    """`--simulate -o sim.flac` wrote sim.lr.wav, .hr.wav, .pr.wav: the .flac was silently dropped."""
    src = write(tmp_path / "hr.wav", speech(libri_mini, 16000, 1.0), 16000)
    line = error_line(run_main(capsys, "upsample", src, "--simulate", "--ckpt", ckpts["spline"],
                               "-o", tmp_path / "sim.flac"))
    assert line == (f"afilm: error: {tmp_path / 'sim.flac'}: --simulate writes WAV files (NAME.lr.wav, "
                    "NAME.hr.wav, NAME.pr.wav); give -o NAME or NAME.wav")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr.wav"]
    out = run_cli("upsample", src, "--simulate", "--ckpt", ckpts["spline"], "-o", tmp_path / "sim.wav")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr.wav", "sim.hr.wav", "sim.lr.wav", "sim.pr.wav"]
    help_text = run_cli("upsample", "--help").stdout.replace("\u2502", " ")  # the option box's sides
    assert "they are always WAV, so .flac is refused" in " ".join(help_text.split())


def test_an_existing_file_as_the_output_folder_is_said_once(tmp_path, ckpts, capsys):
    """`upsample FOLDER -o a_file` said "cannot write a_file/x: a_file is a file" once per input file."""
    (tmp_path / "in").mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        write(tmp_path / "in" / name, np.sin(np.arange(8000) / 3) * 0.1, 4000)
    (tmp_path / "plain").write_text("mine")
    out = run_main(capsys, "upsample", tmp_path / "in", "-o", tmp_path / "plain", "--ckpt", ckpts["spline"])
    assert out.returncode == 2 and out.stderr.count("afilm: error") == 1, out.stderr
    assert error_line(out) == (f"afilm: error: -o {tmp_path / 'plain'} is a file, not a folder; several "
                               "inputs (or a folder) need a folder")
    with pytest.raises(AfilmError, match=r"is a file, not a folder$"):  # one input, -o plain/ (a folder)
        infer.plan_outputs([tmp_path / "in" / "a.wav"], str(tmp_path / "plain") + "/", simulate=False)
    assert (tmp_path / "plain").read_text() == "mine"


def test_upsample_stderr_has_no_blank_line_on_a_pipe(tmp_path, ckpts, libri_mini):
    """rich's progress bar, stopped on a stderr that is no terminal, printed a blank line between the
    per-file lines and the closing one (and above errors raised while it ran). The real CLI, stderr a
    pipe, with a warning, one file written and one that fails while streaming."""
    write(tmp_path / "a.wav", speech(libri_mini, 16000, 0.5), 16000)
    x = speech(libri_mini, 4000, 0.5)
    x[1000] = np.nan
    write(tmp_path / "nan.wav", x, 4000)
    out = run_cli("upsample", tmp_path / "a.wav", tmp_path / "nan.wav", "--ckpt", ckpts["spline"],
                  "-o", tmp_path / "out/")
    lines = out.stderr.splitlines()
    assert out.returncode == 2 and "" not in lines, out.stderr
    assert lines[0].startswith("afilm: warning: ") and "16000 Hz is already at or above" in lines[0]
    assert lines[1].endswith("a.afilm.wav") and "nan.wav" in lines[2] and "NaN" in lines[2], lines
    assert lines[-1] == "afilm: error: 1 of 2 files failed (said above); the others were written", lines


def test_file_functions_run_the_model_where_it_was_loaded(tmp_path, ckpts, monkeypatch):
    """upsample_file and simulate_file, like upsample_array, run a model on the device it was loaded
    on unless told another: they defaulted to the CPU, so a model loaded on CUDA was fed CPU batches.
    A model on PyTorch's 'meta' device stands in for one on a GPU here: the windowed path is captured."""
    src = write(tmp_path / "in.wav", np.sin(np.arange(16000) / 7.0) * 0.3, 16000)
    lo = loaded(ckpts, "afilm_tiny")
    lo.model.to("meta")
    seen = []

    def model_windows(loaded_, spline, length, plan, *, device, **kw):
        seen.append(torch.device(device))
        yield np.zeros((length, spline.channels), np.float32)

    monkeypatch.setattr(infer, "model_windows", model_windows)
    monkeypatch.setattr(infer, "predict", lambda *a, device, **kw: seen.append(torch.device(device))
                        or np.zeros((a[2], 1), np.float32))
    infer.upsample_file(src, tmp_path / "up.wav", lo)
    infer.simulate_file(src, tmp_path / "sim", lo)
    infer.upsample_array(np.zeros(4000, np.float32), 4000, lo)
    assert seen == [torch.device("meta")] * 3
    infer.upsample_file(src, tmp_path / "up2.wav", lo, device="cpu")  # named: as asked
    assert seen[-1] == torch.device("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_model_loaded_on_cuda_upsamples_files_there(tmp_path, ckpts):
    src = write(tmp_path / "in.wav", np.sin(np.arange(16000) / 7.0) * 0.3, 4000)
    on_cuda = infer.load_model(ckpts["afilm_tiny"], device="cuda")
    on_cpu = infer.load_model(ckpts["afilm_tiny"])
    infer.upsample_file(src, tmp_path / "gpu.wav", on_cuda)
    infer.upsample_file(src, tmp_path / "cpu.wav", on_cpu)
    np.testing.assert_allclose(sf.read(tmp_path / "gpu.wav")[0], sf.read(tmp_path / "cpu.wav")[0], atol=1e-4)


def test_upsample_array_refuses_int64_audio(ckpts):
    """An int64 array (numpy's default integer: np.array of a list of 16-bit sample values) was scaled
    as 64-bit PCM, by 2**63: speech came out as the model's output for silence, without a word."""
    lo = loaded(ckpts, "spline")
    pcm = np.round(np.random.default_rng(5).standard_normal(4000) * 3000).astype(np.int16)
    with pytest.raises(AfilmError, match="int64 audio is ambiguous.*pass int16 or int32 PCM"):
        infer.upsample_array(pcm.astype(np.int64), 4000, lo)
    with pytest.raises(AfilmError, match="int64"):
        infer.upsample_array([int(v) for v in pcm], 4000, lo)
    np.testing.assert_allclose(infer.upsample_array(pcm.astype(np.int32) << 16, 4000, lo),
                               infer.upsample_array(pcm, 4000, lo), atol=1e-7)


def test_a_model_in_training_mode_is_run_in_eval_mode_and_left_training(tmp_path, ckpts):
    """A model being fine-tuned (``loaded.model.train()``) and upsampled on the way was left in eval
    mode, so training went on without its dropout; it runs in eval mode (deterministic) and goes back."""
    lo = loaded(ckpts, "afilm_tiny")
    x = np.random.default_rng(6).standard_normal(4000).astype(np.float32) * 0.1
    expected = infer.upsample_array(x, 4000, lo, threads=1)
    lo.model.train()
    np.testing.assert_array_equal(infer.upsample_array(x, 4000, lo, threads=1), expected)
    assert lo.model.training and all(m.training for m in lo.model.modules())
    infer.upsample_file(write(tmp_path / "in.wav", x, 4000), tmp_path / "out.wav", lo, threads=1)
    infer.simulate_file(write(tmp_path / "hr.wav", x, 16000), tmp_path / "sim", lo, threads=1)
    assert lo.model.training
    lo.model.eval()
    infer.upsample_array(x, 4000, lo, threads=1)
    assert not lo.model.training


def test_a_device_this_machine_lacks_is_one_line_naming_the_argument(ckpts, monkeypatch):
    """load_model(device='cuda') without CUDA raised torch's AssertionError ('Torch not compiled with
    CUDA enabled'), upsample_array(device='cuda') that after a 'CUDA graph capture failed' warning, and a
    misspelt device torch's RuntimeError listing its twenty device types; the CLI's --device wording is
    for the CLI."""
    from afilm_cli.checkpoint import load_checkpoint, model_from_checkpoint

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lo = loaded(ckpts, "afilm_tiny")
    x = np.zeros(4000, np.float32)
    calls = [lambda d: infer.load_model(ckpts["afilm_tiny"], device=d),
             lambda d: model_from_checkpoint(load_checkpoint(ckpts["afilm_tiny"]), d),
             lambda d: infer.upsample_array(x, 4000, lo, device=d),
             lambda d: infer.upsample_array(x, 4000, ckpts["afilm_tiny"], device=d)]
    for call in calls:
        for device, match in [("cuda", r"^device 'cuda': no CUDA device is available \(pass device='cpu'\)$"),
                              (torch.device("cuda:1"), r"^device 'cuda:1': no CUDA device is available"),
                              ("gpu", r"^device 'gpu' is not a device: pass 'cpu', 'cuda', 'cuda:N' or "
                                      r"'auto'$"),
                              (1.5, "is not a device")]:
            with pytest.raises(AfilmError, match=match) as info:
                call(device)
            assert "--device" not in str(info.value)
    assert infer.load_model(ckpts["afilm_tiny"], device="auto").model.final.conv.weight.device.type == "cpu"
    assert infer.upsample_array(x, 4000, lo, device=torch.device("cpu")).shape == (16000,)


def test_upsample_file_refuses_an_output_name_it_would_not_honour(tmp_path, ckpts):
    """upsample_file(IN, 'x.ogg' or 'x.mp3' or 'x') wrote a WAV file under that name (the CLI refuses such
    names before calling it); it is one line naming the two formats, and nothing is written."""
    src = write(tmp_path / "in.wav", np.sin(np.arange(4000) / 7.0) * 0.3, 4000)
    lo = loaded(ckpts, "spline")
    for name in ("out.ogg", "out.mp3", "out", "out.wav.bak"):
        with pytest.raises(AfilmError, match=r"out.*: upsample_file writes WAV or FLAC; end the output name "
                                             r"with \.wav or \.flac$"):
            infer.upsample_file(src, tmp_path / name, lo)
        assert not (tmp_path / name).exists()
    for name in ("out.wav", "out.FLAC"):
        infer.upsample_file(src, tmp_path / name, lo)
        assert sf.info(str(tmp_path / name)).format == ("WAV" if name.endswith("wav") else "FLAC")


def test_a_window_or_batch_size_that_is_no_positive_integer_is_one_line(tmp_path, ckpts):
    """upsample_array(window=0) ran with the checkpoint's patch, window=-5 with the shortest window and
    batch_size=0 or -3 one window per batch, without a word (the CLI's options refuse them); batch_size=2.5
    was a TypeError from range()."""
    lo = loaded(ckpts, "afilm_tiny")
    x = np.random.default_rng(7).standard_normal(4000).astype(np.float32) * 0.1
    src, hr = write(tmp_path / "in.wav", x, 4000), write(tmp_path / "hr.wav", x, 16000)
    calls = [lambda **kw: infer.upsample_array(x, 4000, lo, **kw),
             lambda **kw: infer.upsample_file(src, tmp_path / "out.wav", lo, **kw),
             lambda **kw: infer.simulate_file(hr, tmp_path / "sim", lo, **kw)]
    for call in calls:
        for name, value in [("window", 0), ("window", -5), ("window", 512.0), ("window", True),
                            ("batch_size", 0), ("batch_size", -3), ("batch_size", 2.5)]:
            with pytest.raises(AfilmError, match=rf"^{name} must be a positive integer, not {value!r}$"):
                call(**{name: value})
    assert not (tmp_path / "out.wav").exists()
    assert infer.upsample_array(x, 4000, lo, window=np.int64(512), batch_size=np.int64(1)).shape == (16000,)


def test_a_dangling_link_in_a_folder_is_named_and_the_others_written(tmp_path, ckpts, capsys, libri_mini):
    """A link to a file that is gone, in a folder, is one unreadable input among several; it was a bare
    'No such file or directory: ...' (exit 1) from a stat before anything was written."""
    (tmp_path / "mix").mkdir()
    write(tmp_path / "mix" / "a.wav", speech(libri_mini, 4000, 1.0), 4000, "PCM_16")
    (tmp_path / "mix" / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    out = run_main(capsys, "upsample", tmp_path / "mix", "--ckpt", ckpts["spline"], "-q")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 2, out.stderr
    assert lines[0] == f"afilm: error: {tmp_path / 'mix' / 'gone.wav'}: no such file"
    assert lines[1] == "afilm: error: 1 of 2 files failed (said above); the others were written"
    assert [p.name for p in (tmp_path / "mix.afilm").iterdir()] == ["a.afilm.wav"]


def test_a_folder_of_afilm_outputs_is_said_to_be_one(tmp_path, ckpts, capsys, libri_mini):
    """A folder run leaves out files named as its outputs; a folder holding nothing else (an earlier
    run's DIR.afilm/) was said to have 'no audio files in this folder'. Named as files, they are taken."""
    (tmp_path / "mix").mkdir()
    write(tmp_path / "mix" / "a.wav", speech(libri_mini, 4000, 1.0), 4000, "PCM_16")
    write(tmp_path / "mix" / "b.wav", speech(libri_mini, 4000, 1.0, k=1), 4000, "PCM_16")
    assert run_main(capsys, "upsample", tmp_path / "mix", "--ckpt", ckpts["spline"], "-q").returncode == 0
    line = error_line(run_main(capsys, "upsample", tmp_path / "mix.afilm", "--ckpt", ckpts["spline"]))
    assert line == (f"afilm: error: {tmp_path / 'mix.afilm'}: its 2 audio files are named as afilm's outputs "
                    "(*.afilm.*, *.lr/.hr/.pr.wav), which a folder run leaves out; name the files to "
                    "upsample them")
    files = sorted((tmp_path / "mix.afilm").iterdir())
    out = run_main(capsys, "upsample", *files, "--ckpt", ckpts["spline"], "-q", "-o", tmp_path / "again/")
    assert out.returncode == 0, out.stderr
    again = sorted(p.name for p in (tmp_path / "again").iterdir())
    assert again == ["a.afilm.afilm.wav", "b.afilm.afilm.wav"]
    (tmp_path / "empty").mkdir()
    assert error_line(run_main(capsys, "upsample", tmp_path / "empty", "--ckpt", ckpts["spline"])).endswith(
        "empty: no audio files in this folder")


def test_a_stopped_run_leaves_no_empty_folder_it_made(tmp_path, ckpts, capsys, monkeypatch, libri_mini):
    """The writes make the output folders: a run that ends in an error or Ctrl-C before any file is in
    them removes those it made (they were left empty); folders that were there, or hold outputs, stay."""
    x = np.random.default_rng(9).standard_normal(8000) * 0.1
    x[6000] = np.nan  # found only while streaming, after the folders are made
    bad = write(tmp_path / "bad.wav", x, 4000)
    out = run_main(capsys, "upsample", bad, "--ckpt", ckpts["spline"], "-o", tmp_path / "new" / "d" / "x.wav")
    assert out.returncode == 2 and "NaN" in out.stderr, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.wav"]
    (tmp_path / "there").mkdir()
    out = run_main(capsys, "upsample", bad, "--ckpt", ckpts["spline"], "-o", f"{tmp_path / 'there' / 'new'}/")
    assert out.returncode == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["bad.wav", "there"]
    assert list((tmp_path / "there").iterdir()) == []
    # Ctrl-C while the second file is written: the first one's folder stays, the second's goes
    (tmp_path / "in" / "sub").mkdir(parents=True)
    write(tmp_path / "in" / "a.wav", speech(libri_mini, 4000, 1.0), 4000, "PCM_16")
    write(tmp_path / "in" / "sub" / "b.wav", speech(libri_mini, 4000, 1.0), 4000, "PCM_16")
    real = infer.upsample_file

    def interrupted(src, target, *args, **kwargs):
        if src.name == "b.wav":
            Path(target).parent.mkdir(parents=True)  # as the write makes it
            raise KeyboardInterrupt
        return real(src, target, *args, **kwargs)

    monkeypatch.setattr(infer, "upsample_file", interrupted)
    out = run_main(capsys, "upsample", tmp_path / "in", "--ckpt", ckpts["spline"], "-q")
    assert out.returncode == 130, out.stderr
    assert [p.name for p in (tmp_path / "in.afilm").iterdir()] == ["a.afilm.wav"]


def test_an_output_name_too_long_for_the_file_system_is_one_line(tmp_path, ckpts, capsys, libri_mini):
    """x.wav -> x.afilm.wav adds 6 bytes: for a long input name (a downloaded title) that was a bare 'File
    name too long: ...' (exit 1) from a stat. A name the file system takes is written, up to its 255 bytes:
    the temporary name it is written under first is cut to fit (it was 14 bytes longer, and 242-255 byte
    names failed after the work with 'cannot write ...: File name too long')."""
    x = speech(libri_mini, 4000, 1.0)
    src = write(tmp_path / f"{'a' * 250}.wav", x, 4000, "PCM_16")
    line = error_line(run_main(capsys, "upsample", src, "--ckpt", ckpts["spline"]))
    assert line == (f"afilm: error: {tmp_path / ('a' * 250)}.afilm.wav: the output's name is 260 bytes, and "
                    f"the file system takes at most 255; upsample {src} on its own with a shorter -o name")
    out = run_main(capsys, "upsample", src, "--ckpt", ckpts["spline"], "-q", "-o", tmp_path / "short.wav")
    assert out.returncode == 0, out.stderr
    assert error_line(run_main(capsys, "upsample", tmp_path, "--ckpt", ckpts["spline"])).endswith(
        "on its own with a shorter -o name")
    assert not (tmp_path.parent / f"{tmp_path.name}.afilm").exists()
    # 255 bytes in all; the second with a 3-byte character where the temporary name is cut (byte 237)
    for stem in ("b" * 245, "b" * 236 + "\u20ac" + "b" * 6):
        src = write(tmp_path / f"{stem}.wav", x, 4000, "PCM_16")
        out = run_main(capsys, "upsample", src, "--ckpt", ckpts["spline"], "-q")
        assert out.returncode == 0, out.stderr
        assert len(os.fsencode(f"{stem}.afilm.wav")) == 255
        assert sf.info(tmp_path / f"{stem}.afilm.wav").samplerate == 16000


def test_the_summary_counts_files_in_the_singular_and_plural(tmp_path, ckpts, capsys, libri_mini):
    x = speech(libri_mini, 4000, 1.0)
    a, b = write(tmp_path / "a.wav", x, 4000, "PCM_16"), write(tmp_path / "b.wav", x, 4000, "PCM_16")
    out = run_main(capsys, "upsample", a, "--ckpt", ckpts["spline"])
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines()[-1].startswith("1 file upsampled with "), out.stderr
    out = run_main(capsys, "upsample", a, b, "--ckpt", ckpts["spline"], "-o", tmp_path / "two/")
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines()[-1].startswith("2 files upsampled with "), out.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_a_pipe_as_an_input_is_said_to_be_one(tmp_path, ckpts, capsys, libri_mini):
    """/dev/stdin, <(ffmpeg ...) or a FIFO is no file to read more than once: it was 'no such file'."""
    os.mkfifo(tmp_path / "fifo.wav")
    line = error_line(run_main(capsys, "upsample", tmp_path / "fifo.wav", "--ckpt", ckpts["spline"], "-o",
                               tmp_path / "out.wav"))
    assert line == (f"afilm: error: {tmp_path / 'fifo.wav'}: a pipe or device, not a file, and a file is "
                    "read more than once; give the audio on stdin as - (... | afilm upsample - -o out.wav) "
                    "or save it to a file first")
    # in a folder: named, and the others written
    write(tmp_path / "a.wav", speech(libri_mini, 4000, 1.0), 4000, "PCM_16")
    out = run_main(capsys, "upsample", tmp_path, "--ckpt", ckpts["spline"], "-q")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 2, out.stderr
    assert lines[0] == (f"afilm: error: {tmp_path / 'fifo.wav'}: a pipe or device, not a file, and a file is "
                        "read more than once; save the audio to a file first")
    assert [p.name for p in (tmp_path.parent / f"{tmp_path.name}.afilm").iterdir()] == ["a.afilm.wav"]


def test_dev_stdin_from_a_file_needs_an_output_name(tmp_path, ckpts, libri_mini):
    """`afilm upsample /dev/stdin < x.wav` reads a file (stdin redirected from one), so the pipe refusal
    did not fire, and its output went beside it: /dev/stdin.afilm.wav, written into /dev."""
    src = write(tmp_path / "a.wav", speech(libri_mini, 4000, 1.0), 4000, "PCM_16")
    cli = [sys.executable, "-m", "afilm_cli", "upsample", "/dev/stdin", "--ckpt", str(ckpts["spline"]), "-q"]
    with open(src, "rb") as stdin:
        out = subprocess.run(cli, stdin=stdin, capture_output=True, text=True, timeout=240)
    assert out.returncode == 2 and out.stderr == (
        "afilm: error: /dev/stdin: its output would go beside it, into /dev; give -o OUT, or read stdin as - "
        "(afilm upsample - -o out.wav < in.wav)\n"), out.stderr
    assert not Path("/dev/stdin.afilm.wav").exists()
    with open(src, "rb") as stdin:  # with a name for the output it is a file like any other
        out = subprocess.run([*cli, "-o", str(tmp_path / "out.wav")], stdin=stdin, capture_output=True,
                             text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    assert sf.info(tmp_path / "out.wav").frames == 4 * sf.info(src).frames


def test_an_empty_name_is_refused_not_taken_as_the_current_folder(tmp_path, ckpts, capsys, monkeypatch,
                                                                  libri_mini):
    """`afilm upsample "$FILE"` with FILE unset: '' was Path('.'), and the whole current folder was
    upsampled (into ../NAME.afilm); -o '' wrote beside the input as -o . does."""
    monkeypatch.chdir(tmp_path)
    src = write(tmp_path / "a.wav", speech(libri_mini, 4000, 1.0), 4000, "PCM_16")
    assert error_line(run_main(capsys, "upsample", "", "--ckpt", ckpts["spline"])) == (
        "afilm: error: an input is an empty name (an unset variable?): name a file or folder ('.' for the "
        "current folder)")
    (tmp_path / "sub").mkdir()
    assert error_line(run_main(capsys, "upsample", src, "--ckpt", ckpts["spline"], "-o", "")) == (
        "afilm: error: -o is an empty name (an unset variable?): name a file or folder ('.' for the current "
        "folder)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "sub"]
    assert not (tmp_path.parent / f"{tmp_path.name}.afilm").exists()


@pytest.mark.skipif(not sf.check_format("WAV", "GSM610"), reason="libsndfile without GSM 6.10")
def test_a_wav_libsndfile_cannot_seek_in_is_upsampled(tmp_path, ckpts, capsys, libri_mini):
    """GSM 6.10 WAV (telephone audio) is read whole, as it cannot be sought in; soundfile's read() needs
    the frame count for that, and its ValueError was shown as a traceback."""
    src = write(tmp_path / "gsm.wav", speech(libri_mini, 4000, 1.0), 4000, "GSM610")
    assert not sf.SoundFile(str(src)).seekable()
    out = run_main(capsys, "upsample", src, "--ckpt", ckpts["spline"], "-q", "-o", tmp_path / "gsm.out.wav")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    # the same samples as a PCM_16 WAV (which can be sought in) give the same output
    same = write(tmp_path / "same.wav", sf.read(str(src))[0], 4000, "PCM_16")
    out = run_main(capsys, "upsample", same, "--ckpt", ckpts["spline"], "-q", "-o", tmp_path / "same.out.wav")
    assert out.returncode == 0, out.stderr
    y, sr = sf.read(str(tmp_path / "gsm.out.wav"))
    assert sr == 16000 and len(y) == 4 * sf.info(str(src)).frames
    np.testing.assert_array_equal(y, sf.read(str(tmp_path / "same.out.wav"))[0])

"""Input level matching (afilm_cli/level.py): a quiet recording is upsampled as well as a loud one."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from afilm_cli import infer, level
from afilm_cli.audio import read_audio, resample
from afilm_cli.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from afilm_cli.errors import AfilmError
from afilm_cli.metrics import snr
from afilm_cli.models import create_model
from afilm_cli.pretrained import BUNDLED
from afilm_cli.stages import ArraySource, Splined

RECIPE = {"r": 4, "sr": 16000, "degrade": "decimate", "patch": 8192}


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "afilm_cli", *map(str, args)], capture_output=True,
                          text=True, timeout=240, cwd=cwd)


@pytest.fixture(scope="module")
def speech(libri_mini):
    """Three seconds of held-out speech at 16 kHz."""
    path = sorted((libri_mini / "test-other").rglob("*.flac"))[0]
    x, sr = read_audio(path, mono=True)
    return resample(x, sr, 16000)[: 3 * 16000].astype(np.float32)


@pytest.fixture(scope="module")
def r4():
    return infer.load_model("afilm_speech_r4")


def test_stage_level_is_the_rms_of_each_channel_over_many_blocks():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200_000, 2)) * [0.1, 0.001]  # longer than one measuring block
    got = level.stage_level(ArraySource(x), len(x))
    want = 10 * np.log10(np.mean(x**2, axis=0))
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert got[0] == pytest.approx(-20, abs=0.05) and got[1] == pytest.approx(-60, abs=0.05)
    silent = level.stage_level(ArraySource(np.zeros((100, 1))), 100)
    assert silent[0] == -math.inf
    gains = level.matching_gains(np.array([-math.inf, -130.0, -44.4]), -24.4)
    assert list(gains) == pytest.approx([1, 1, 10])


def test_patches_level_reads_an_hdf5_dataset_in_chunks(tmp_path):
    import h5py

    rng = np.random.default_rng(1)
    data = (rng.standard_normal((1000, 64, 1)) * 0.05).astype(np.float32)
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f["data"] = data
    with h5py.File(tmp_path / "p.h5", "r") as f:
        got = level.patches_level(f["data"], chunk=300)  # chunks that do not divide the count
    assert got == pytest.approx(10 * np.log10(np.mean(data.astype(np.float64) ** 2)), abs=1e-9)


def test_bundled_models_record_the_level_of_their_training_data():
    for name in BUNDLED:
        loaded = infer.load_model(name)
        # measured over the training patches (afilm prepare as in the model card): -24.40 / -24.20 dBFS
        assert -30 < loaded.level_dbfs < -20, (name, loaded.level_dbfs)


def test_upsampling_is_the_same_at_any_input_level(speech, r4):
    lr = resample(speech, 16000, 4000).astype(np.float32)
    loud = infer.upsample_array(lr, 4000, r4)
    for scale in (1e-3, 8.0):
        scaled = infer.upsample_array(lr * scale, 4000, r4)
        np.testing.assert_allclose(scaled / scale, loud, rtol=0, atol=1e-5 * np.abs(loud).max())
        # without matching the model sees another level and predicts something else
        off = infer.upsample_array(lr * scale, 4000, r4, match_level=False)
        assert np.abs(off / scale - loud).max() > 100 * 1e-5 * np.abs(loud).max()


def test_a_quiet_passage_inside_a_loud_file_is_upsampled_as_on_its_own(speech, r4):
    """The level was the whole file's: a passage 60 dB below the rest of its file (a distant voice)
    reached the model 60 dB below its training level and came out below the spline (-2 to -5 dB on
    three held-out pairs); each window is now brought to that level too."""
    lr = resample(speech, 16000, 4000).astype(np.float32)
    n, skip = len(speech), 8192  # the windows that straddle the change of level left out
    mixed = infer.upsample_array(np.concatenate([lr, lr * 1e-3]), 4000, r4)[n + skip :] * 1e3
    alone = infer.upsample_array(lr * 1e-3, 4000, r4)[skip:] * 1e3
    from afilm_cli.audio import spline_up

    spline = spline_up(lr, 4)[skip:n]
    truth = speech[skip:]
    assert snr(mixed, truth) == pytest.approx(snr(alone, truth), abs=0.05)
    assert snr(mixed, truth) > snr(spline, truth) + 0.1, (snr(mixed, truth), snr(spline, truth))  # 14.1, 13.9


def test_digital_silence_inside_a_file_comes_out_silent(speech, r4):
    """A gap of digital silence between two utterances carried the model's own output (peak -79 dBFS in
    a -21 dBFS file), where only a whole silent channel came out silent; a window of it is silent now."""
    lr = resample(speech, 16000, 4000).astype(np.float32)
    gap = np.zeros(3 * 4000, np.float32)  # 3 s: its middle lies in windows of silence alone
    out = infer.upsample_array(np.concatenate([lr, gap, lr]), 4000, r4)
    middle = 4 * len(lr) + 4 * len(gap) // 2
    assert not out[middle - 2000 : middle + 2000].any()
    assert np.abs(out[: 4 * len(lr)]).max() > 0.1  # the speech around it is there


def test_a_dc_offset_passes_through_and_the_model_sees_none(speech, r4):
    """The model's edges rang on an offset it never saw in training: a constant 1.0 came out peaking
    at 1.234, and speech plus 0.05 differed from speech's output plus 0.05 by 0.011. Each window is
    now centred (its mean over the signal, not the zeros past its end) and its mean added back."""
    const = infer.upsample_array(np.ones(8000, np.float32), 4000, r4)
    np.testing.assert_allclose(const, 1.0, atol=1e-6)
    lr = resample(speech, 16000, 4000).astype(np.float32)
    plain = infer.upsample_array(lr, 4000, r4)
    shifted = infer.upsample_array(lr + 0.05, 4000, r4)
    np.testing.assert_allclose(shifted - 0.05, plain, atol=1e-5)
    # a slow drift: each window has its own offset, and the output still follows it
    drift = np.linspace(-0.2, 0.2, len(lr), dtype=np.float32)
    drifted = infer.upsample_array(lr + drift, 4000, r4)
    up_drift = np.linspace(-0.2, 0.2, 4 * len(lr))
    assert snr(drifted - up_drift, plain) > 40
    unmatched = infer.upsample_array(np.ones(8000, np.float32), 4000, r4, match_level=False)
    assert np.abs(unmatched - 1).max() > 0.05  # the model alone rings


def test_centre_takes_the_mean_over_the_signal_alone():
    windows = np.array([[[1.0, 3.0, 0.0, 0.0]], [[2.0, 2.0, 2.0, 6.0]]], np.float32)
    means = level.centre(windows, np.array([2, 4]))
    assert means.ravel().tolist() == [2.0, 3.0]
    assert windows.tolist() == [[[-1.0, 1.0, 0.0, 0.0]], [[-1.0, -1.0, -1.0, 3.0]]]  # the padding stays 0


def test_channels_are_matched_each_to_its_own_level(speech, r4):
    lr = resample(speech, 16000, 4000).astype(np.float32)
    stereo = np.stack([lr, lr * 1e-3, np.zeros_like(lr)], axis=1)  # loud, quiet, silent
    out = infer.upsample_array(stereo, 4000, r4)
    mono = infer.upsample_array(lr, 4000, r4)
    tol = 1e-5 * np.abs(mono).max()
    np.testing.assert_allclose(out[:, 0], mono, atol=tol)
    np.testing.assert_allclose(out[:, 1] * 1e3, mono, atol=tol)
    assert not out[:, 2].any()  # silence comes out silent (and gets no gain: nothing divided by zero)


def test_digital_silence_comes_out_silent(tmp_path, r4):
    """The spline of silence is silence; the model alone adds what its biases make of it (peak
    -58 dBFS for afilm_speech_r4): a silent file, or a dead channel, was upsampled to that."""
    silent = np.zeros(8000, np.float32)
    assert np.abs(infer.upsample_array(silent, 4000, r4, match_level=False)).max() > 1e-4  # the model's own
    assert not infer.upsample_array(silent, 4000, r4).any()
    torch.manual_seed(0)  # a checkpoint that records no level: the same
    path = save_checkpoint(tmp_path / "tiny.pt", make_checkpoint(create_model("afilm_tiny"), RECIPE))
    assert not infer.upsample_array(np.zeros((8000, 2), np.float32), 4000, infer.load_model(path)).any()
    sf.write(tmp_path / "dead.wav", np.stack([np.sin(np.arange(8000) / 5) * 0.1, silent], 1), 4000,
             subtype="PCM_16")
    infer.upsample_file(tmp_path / "dead.wav", tmp_path / "out.wav", r4)
    out, _ = sf.read(tmp_path / "out.wav", dtype="int16")
    assert out[:, 0].any() and not out[:, 1].any()


def test_models_that_record_no_level_run_as_they_are(speech, tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "tiny.pt", make_checkpoint(create_model("afilm_tiny"), RECIPE))
    loaded = infer.load_model(path)
    assert loaded.level_dbfs is None
    lr = resample(speech, 16000, 4000).astype(np.float32) * 1e-3
    np.testing.assert_array_equal(infer.upsample_array(lr, 4000, loaded),
                                  infer.upsample_array(lr, 4000, loaded, match_level=False))

def test_the_gain_brings_the_spline_signal_to_the_training_level(speech, r4):
    lr = resample(speech, 16000, 4000).astype(np.float32) * 1e-3
    stage = Splined(ArraySource(lr), 4, len(lr) * 4)
    stats: dict = {}
    infer.predict(r4, stage, len(lr) * 4, stats=stats)
    spline_rms = np.sqrt(np.mean(stage.read(0, len(lr) * 4) ** 2))
    assert stats["gain_db"] == [pytest.approx(-24.4 - 20 * np.log10(spline_rms), abs=0.01)]
    assert stats["gain_db"][0] > 50  # 60 dB down, speech at about -25 dBFS


@pytest.mark.parametrize("value", [float("nan"), "loud", True])
def test_a_damaged_level_is_refused(tmp_path, value):
    ckpt = make_checkpoint(create_model("afilm_tiny"), RECIPE, input_level_dbfs=value)
    path = save_checkpoint(tmp_path / "bad.pt", ckpt)
    with pytest.raises(AfilmError, match="input_level_dbfs"):
        infer.load_model(path)


def test_cli_a_quiet_recording_scores_as_the_loud_one(tmp_path, speech):
    sf.write(tmp_path / "loud.wav", speech, 16000, subtype="FLOAT")
    sf.write(tmp_path / "quiet.wav", speech * 1e-3, 16000, subtype="FLOAT")  # 60 dB down
    scores = {}
    for name, extra in (("loud", ()), ("quiet", ()), ("quiet", ("--no-match-level",))):
        base = tmp_path / f"{name}{len(extra)}"
        p = run_cli("upsample", "--simulate", tmp_path / f"{name}.wav", "-o", f"{base}.wav", *extra)
        assert p.returncode == 0, p.stderr
        pr, _ = sf.read(f"{base}.pr.wav")
        hr, _ = sf.read(f"{base}.hr.wav")
        lr, _ = sf.read(f"{base}.lr.wav")
        scores[base.name] = snr(pr, hr)
        from afilm_cli.audio import spline_up

        scores["spline"] = snr(spline_up(lr, 4)[: len(hr)], hr)
    assert scores["quiet0"] == pytest.approx(scores["loud0"], abs=0.01)
    assert scores["quiet0"] > scores["spline"]
    assert scores["quiet1"] < scores["quiet0"] - 1, scores  # without matching: the old, worse result


def test_cli_eval_records_the_matching(tmp_path, speech):
    (tmp_path / "wavs").mkdir()
    sf.write(tmp_path / "wavs" / "a.wav", speech * 1e-3, 16000, subtype="FLOAT")
    for flag, want in (((), True), (("--no-match-level",), False)):
        out = tmp_path / f"eval{len(flag)}"
        p = run_cli("eval", "--wavs", tmp_path / "wavs", "-o", out, *flag)
        assert p.returncode == 0, p.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert summary["protocol"]["level_matched"] is want
        assert summary["protocol"]["input_level_dbfs"] == pytest.approx(-24.4)
    a, b = (json.loads((tmp_path / f"eval{k}" / "summary.json").read_text())["summary"]["model"]["snr"]
            for k in (0, 1))
    assert a > b + 1
    p = run_cli("eval", "--data", tmp_path / "x.h5", "--no-match-level")
    assert p.returncode == 2 and "--no-match-level goes with --wavs" in p.stderr


def test_compact_checkpoint_keeps_the_level(tmp_path):
    ckpt = load_checkpoint(infer.load_model("afilm_speech_r4").path)
    assert ckpt["input_level_dbfs"] == pytest.approx(-24.4)  # kept by compact_checkpoint below
    from afilm_cli.pretrained import compact_checkpoint

    compact_checkpoint(infer.load_model("afilm_speech_r4").path, tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt")["input_level_dbfs"] == pytest.approx(-24.4)


def test_patches_level_samples_evenly_spread_blocks_when_asked():
    rng = np.random.default_rng(2)
    data = (rng.standard_normal((1000, 32)) * np.linspace(0.01, 1, 1000)[:, None]).astype(np.float32)
    read: list[int] = []

    class Counting:  # a dataset that records which blocks are read
        def __len__(self):
            return len(data)

        def __getitem__(self, index):
            read.append(index.start)
            return data[index]

    got = level.patches_level(Counting(), chunk=10, most=5)
    assert read == [0, 200, 400, 600, 800]  # spread over the file, not its first 50 patches
    blocks = np.concatenate([data[i : i + 10] for i in read]).astype(np.float64)
    assert got == pytest.approx(10 * np.log10(np.mean(blocks**2)), abs=1e-9)
    read.clear()
    assert level.patches_level(Counting(), chunk=10) == pytest.approx(
        10 * np.log10(np.mean(data.astype(np.float64) ** 2)), abs=1e-9)
    assert len(read) == 100  # without ``most``: every block


def test_training_samples_the_level_of_a_file_read_from_disk(tmp_path, monkeypatch):
    """A file too large for memory is not read whole for its level before training starts."""
    import afilm_cli.data.h5 as h5
    import afilm_cli.train as train_mod
    from afilm_cli.data.h5 import PatchWriter
    from afilm_cli.train import TrainConfig, train

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((8, 2048)) * 0.05).astype(np.float32)
    attrs = {"r": 4, "sr": 16000, "patch": 2048, "stride": 2048, "degrade": "decimate", "sam": 1.0, "seed": 0}
    with PatchWriter(tmp_path / "d-train.h5", 2048, attrs=attrs) as w:
        w.append(x, x)
    calls = []
    real = train_mod.patches_level
    monkeypatch.setattr(train_mod, "patches_level", lambda d, **kw: calls.append(kw) or real(d, **kw))
    for budget, want in ((0, train_mod.LEVEL_BLOCKS), (1 << 30, None)):
        monkeypatch.setattr(h5, "memory_budget", lambda b=budget: b)
        res = train(TrainConfig(model="afilm_tiny", train=str(tmp_path / "d-train.h5"), val=None,
                                out=str(tmp_path / f"run{budget}"), epochs=1, batch_size=8, device="cpu",
                                progress=False, threads=1))
        assert calls[-1] == {"most": want}
        level_db = load_checkpoint(res.last)["input_level_dbfs"]
        assert level_db == pytest.approx(10 * np.log10(np.mean(x.astype(np.float64) ** 2)), abs=0.005)

"""The Python API used as a researcher would from a notebook (README, "Python API"): the bundled model on
real speech, every documented claim checked, and what a user would obviously pass taken (or refused in
one AfilmError line that names the argument)."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import signal

from afilm_cli import metrics
from afilm_cli.audio import spline_up
from afilm_cli.data.h5 import PatchWriter
from afilm_cli.errors import AfilmError
from afilm_cli.evaluate import evaluate_h5, evaluate_wavs
from afilm_cli.infer import load_model, simulate_file, upsample_array, upsample_file

SR_LOW = 4000  # afilm_speech_r4 takes 4 kHz and makes 16 kHz


@pytest.fixture(scope="module")
def model():
    return load_model("afilm_speech_r4")


@pytest.fixture(scope="module")
def speech(libri_mini):
    """0.75 s of real 16 kHz speech (LibriSpeech) and the same at 4 kHz."""
    path = sorted(libri_mini.rglob("*.flac"))[0]
    hr, sr = sf.read(path, frames=12000, start=8000)
    assert sr == 16000
    return hr, signal.resample_poly(hr, 1, 4)


@pytest.fixture(scope="module")
def reference(model, speech):
    return upsample_array(speech[1], SR_LOW, model)


# ---------------------------------------------------------------------------- documented, and found true
def test_documented_shapes_lengths_and_dtypes(model, speech, reference):
    x = speech[1]
    assert reference.dtype == np.float32 and reference.shape == (round(len(x) * 16000 / SR_LOW),)
    for sr_in in (3000, 11025):  # any rate: round(frames * sr_out / sr_in) frames
        y = upsample_array(x, sr_in, model, warn=lambda _: None)
        assert y.shape == (round(len(x) * 16000 / sr_in),) and y.dtype == np.float32
    stereo = upsample_array(np.stack([x, 0.5 * x], axis=1), SR_LOW, model)
    assert stereo.shape == (len(reference), 2)
    np.testing.assert_array_equal(stereo[:, 0], reference)  # each channel as on its own
    pcm = upsample_array(np.round(x * 32767).astype(np.int16), SR_LOW, model)
    assert pcm.dtype == np.float32 and np.abs(pcm - reference).max() < 1e-3  # scaled as soundfile does


def test_input_is_never_changed_and_any_layout_is_taken(model, speech, reference):
    x = speech[1].copy()
    x.flags.writeable = False  # read-only: taken, and untouched
    np.testing.assert_array_equal(upsample_array(x, SR_LOW, model), reference)
    np.testing.assert_array_equal(x, speech[1])
    strided = np.repeat(speech[1], 2)[::2]
    np.testing.assert_array_equal(upsample_array(strided, SR_LOW, model), reference)
    np.testing.assert_array_equal(upsample_array(list(speech[1]), SR_LOW, model), reference)


def test_one_model_from_two_threads(model, speech, reference):
    out = [None, None]

    def work(k):
        out[k] = upsample_array(speech[1], SR_LOW, model)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for y in out:
        np.testing.assert_array_equal(y, reference)


# --------------------------------------------------------------------------------- found wrong, now fixed
def test_any_torch_tensor_is_taken(model, speech, reference):
    """A tensor that requires grad (a model's output in a notebook) or a bf16 one raised torch's
    RuntimeError / TypeError ('Got unsupported ScalarType BFloat16') from np.asarray."""
    t = torch.from_numpy(speech[1])
    np.testing.assert_array_equal(upsample_array(t.clone().requires_grad_(), SR_LOW, model), reference)
    y = upsample_array(t.to(torch.bfloat16), SR_LOW, model)
    assert y.shape == reference.shape and metrics.snr(y, reference) > 30


def test_a_float_sample_rate_says_what_to_pass(model, speech, reference):
    """A float rate is refused (tests/test_infer.py holds 4000.0 to be an error); 4000.0 said only 'not
    4000.0', with no word of what to pass. A numpy integer is taken."""
    np.testing.assert_array_equal(upsample_array(speech[1], np.int64(4000), model), reference)
    for sr in (4000.0, np.float64(4000)):
        with pytest.raises(AfilmError, match=r"sample rate must be a positive integer, not .*4000\.0.*"
                                             r" \(pass int\(sr\): 4000\)$"):
            upsample_array(speech[1], sr, model)
    with pytest.raises(AfilmError, match=r"not 4000\.5$"):
        upsample_array(speech[1], 4000.5, model)


def test_a_misspelt_keyword_is_one_line(model, speech, tmp_path):
    """A misspelt speed keyword was a TypeError naming model_windows(), a function the user never called."""
    said = r"\(\) got an unknown keyword '{}'; it takes .*{}"
    with pytest.raises(AfilmError, match="upsample_array" + said.format("batchsize", "batch_size")):
        upsample_array(speech[1], SR_LOW, model, batchsize=4)
    sf.write(tmp_path / "lr.wav", speech[1], SR_LOW)
    with pytest.raises(AfilmError, match="upsample_file" + said.format("match_levels", "match_level")):
        upsample_file(tmp_path / "lr.wav", tmp_path / "out.wav", model, match_levels=False)
    sf.write(tmp_path / "hr.wav", speech[0], 16000)
    with pytest.raises(AfilmError, match="simulate_file" + said.format("precison", "precision")):
        simulate_file(tmp_path / "hr.wav", tmp_path / "sim", model, precison="bf16")
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob("sim*"))
    with pytest.raises(AfilmError, match="unknown keyword 'autograd'"):  # bench's switch, not a setting
        upsample_array(speech[1], SR_LOW, model, autograd=True)


def test_unsigned_audio_is_refused_naming_what_is_taken(model, speech):
    """uint8 (8-bit WAV's samples) was refused as 'not a real array', which it is."""
    with pytest.raises(AfilmError, match="of float, or int16 / int32 PCM, not uint8"):
        upsample_array((speech[1] * 127 + 128).astype(np.uint8), SR_LOW, model)


def test_load_model_without_argument_is_the_default(monkeypatch, tmp_path):
    """The README says None is the default; load_model() without it was a TypeError."""
    monkeypatch.chdir(tmp_path)  # no runs/*/best.pt here: the bundled default
    assert load_model().path == load_model(None).path


@pytest.fixture
def wavs(tmp_path, speech, vctk_mini):
    folder = tmp_path / "wavs"
    folder.mkdir()
    sf.write(folder / "libri.wav", speech[0], 16000)
    shutil.copy(sorted(vctk_mini.rglob("*.wav"))[0], folder / "vctk.wav")
    return folder


def test_evaluate_wavs_takes_a_name_and_follows_the_model(model, wavs):
    """evaluate_wavs('afilm_speech_r4', ...) was an AttributeError ('str' object has no attribute 'sr'),
    though upsample_array and the file functions take a name; its device was 'cpu' whatever the model's."""
    by_name = evaluate_wavs("afilm_speech_r4", wavs, threads=1)
    loaded = evaluate_wavs(model, wavs, threads=1)
    assert by_name.summary == loaded.summary and len(loaded.rows) == 2
    assert loaded.protocol["device"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
@pytest.mark.parametrize(("device", "said"), [("gpu", "'gpu' is not a device"),
                                              ("cuda", "no CUDA device is available")])
def test_evaluate_wavs_bad_device_is_one_line(model, wavs, device, said):
    """Was torch's RuntimeError listing every device type, or an AssertionError after a CUDA graph warning."""
    with pytest.raises(AfilmError, match=said):
        evaluate_wavs(model, wavs, device=device)


@pytest.mark.parametrize(("kw", "said"), [({"batch_size": 0}, "batch_size"), ({"window": 0}, "window"),
                                          ({"limit": 0}, "limit"), ({"limit": -1}, "limit")])
def test_evaluate_wavs_bad_counts_are_said_as_such(model, wavs, kw, said):
    """batch_size=0 skipped every file and said none 'could be read'; limit=0 said 'every file is silent';
    limit=-1 left the last file out without a word."""
    events = []
    with pytest.raises(AfilmError, match=f"^{said} must be a positive integer"):
        evaluate_wavs(model, wavs, warn=events.append, **kw)
    assert events == []


@pytest.fixture
def split(tmp_path, speech):
    """Two 8192-sample patches of real speech, as ``afilm prepare`` writes them (spline input, truth)."""
    hr = np.tile(speech[0], 2)[: 2 * 8192].astype(np.float32)  # 0.75 s, twice
    spline = spline_up(signal.decimate(hr, 4).astype(np.float32), 4)[: len(hr)]
    with PatchWriter(tmp_path / "val.h5", 8192, attrs={"r": 4, "sr": 16000, "patch": 8192,
                                                       "degrade": "decimate"}) as w:
        w.append(spline.reshape(2, 8192), hr.reshape(2, 8192))
    return tmp_path / "val.h5"


def test_evaluate_h5_as_evaluate_wavs(model, split):
    """The same faults as evaluate_wavs: a name was an AttributeError, batch_size=0 'range() arg 3 must not
    be zero', limit=0 'every one of the 0 patches evaluated is silent', limit=-1 'negative dimensions'."""
    assert evaluate_h5("afilm_speech_r4", split).summary == evaluate_h5(model, split).summary
    for kw in ({"batch_size": 0}, {"limit": 0}, {"limit": -1}):
        with pytest.raises(AfilmError, match=f"^{next(iter(kw))} must be a positive integer"):
            evaluate_h5(model, split, **kw)
    with pytest.raises(AfilmError, match="'gpu' is not a device"):
        evaluate_h5(model, split, device="gpu")


def test_metrics_refuse_what_they_would_score_wrongly(speech, reference):
    hr = speech[0]
    assert metrics.lsd(reference[:, None], hr) == metrics.lsd(reference, hr)  # (n, 1) is one signal
    stereo, truth = np.stack([reference, reference], 1), np.stack([hr, hr], 1)
    assert metrics.snr(stereo, truth) == pytest.approx(metrics.snr(reference, hr))  # energy over both
    for fn in (metrics.lsd, metrics.lsd_reference, metrics.segmental_snr):  # frames over interleaved channels
        with pytest.raises(ValueError, match="one signal at a time"):
            fn(stereo, truth)
    with pytest.raises(ValueError, match=r"shape mismatch: pred \(12000, 2\) vs ref \(24000,\)"):
        metrics.snr(stereo, truth.ravel())  # the same size, another shape: was scored
    with pytest.raises(ValueError, match="patch must be a positive integer"):
        metrics.segmental_snr(reference, hr, patch=0)  # was a ZeroDivisionError
    for fn in (metrics.snr, metrics.segmental_snr):  # were 0.0 and NaN with RuntimeWarnings
        with pytest.raises(ValueError, match="empty signal"):
            fn(np.zeros(0), np.zeros(0))


def test_an_open_file_is_taken_and_a_loaded_model_is_not_loaded_again(model, speech, tmp_path):
    """upsample_file(open(IN, 'rb'), ...) and load_model(loaded) were TypeErrors from Path() ('expected
    str, bytes or os.PathLike object, not BufferedReader / Loaded')."""
    sf.write(tmp_path / "lr.wav", speech[1], SR_LOW)
    upsample_file(tmp_path / "lr.wav", tmp_path / "by-path.wav", model)
    with open(tmp_path / "lr.wav", "rb") as f:
        upsample_file(f, tmp_path / "by-stream.wav", model)
    by_stream, by_path = sf.read(tmp_path / "by-stream.wav")[0], sf.read(tmp_path / "by-path.wav")[0]
    np.testing.assert_array_equal(by_stream, by_path)
    with pytest.raises(AfilmError, match="not Loaded .it is loaded: pass it on as it is"):
        load_model(model)

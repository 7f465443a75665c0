"""Metrics on signals with known answers, and the reference LSD against a direct transcription."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import get_window

from afilm_cli import metrics

SR = 16000


def tone(n=SR, f=440.0, amp=0.5):
    return amp * np.sin(2 * np.pi * f * np.arange(n) / SR)


def noise(n=SR, seed=0):
    return np.random.default_rng(seed).standard_normal(n) * 0.1


# ---------------------------------------------------------------------------------------------- SNR
@pytest.mark.parametrize("a", [0.9, 1.1, 0.5, 0.99])
def test_snr_of_a_scaled_copy(a):
    ref = noise()
    # error = (1 - a) ref, so SNR = -20 log10 |1 - a| exactly (a 10-vs-20 slip would halve it)
    assert metrics.snr(a * ref, ref) == pytest.approx(-20 * math.log10(abs(1 - a)), abs=1e-6)


def test_snr_tone_against_silence():
    ref = tone()
    assert metrics.snr(np.zeros_like(ref), ref) == pytest.approx(0.0, abs=1e-9)  # error == signal
    assert metrics.snr(2 * ref, ref) == pytest.approx(0.0, abs=1e-9)
    assert metrics.snr(ref + 0.1 * tone(f=3000.0, amp=0.5), ref) == pytest.approx(20.0, abs=0.01)


def test_segmental_snr_follows_the_reference_definition():
    # two 8192 segments with different errors: 20 dB and 40 dB, averaged per segment (not pooled)
    ref = np.concatenate([tone(8192), tone(8192, f=1000.0)])
    pred = ref.copy()
    pred[:8192] += 0.1 * ref[:8192]
    pred[8192:] += 0.01 * ref[8192:]
    y, p = ref.reshape(2, 8192, 1), pred.reshape(2, 8192, 1)
    # the reference's calc_snr2, transcribed (numpy, patches shaped (n, dim, 1))
    loss = np.sqrt(np.mean((p - y) ** 2 + 1e-6, axis=(1, 2)))
    norm = np.sqrt(np.mean(y**2, axis=(1, 2)))
    expected = np.mean(20 * np.log(norm / loss + 1e-8) / np.log(10.0))
    got = metrics.segmental_snr(pred, ref)
    assert got == pytest.approx(expected, abs=1e-9)
    # by hand: power 0.125 per segment, error powers 0.125e-2 and 0.125e-4, each + the 1e-6 floor
    by_hand = np.mean([10 * math.log10(0.125 / (0.125 * e + 1e-6)) for e in (1e-2, 1e-4)])
    assert got == pytest.approx(by_hand, abs=1e-3)  # ~ the mean of 20 and 40 dB
    # pooled SNR is dominated by the louder error: clearly different from the segment mean
    assert metrics.snr(pred, ref) == pytest.approx(-10 * math.log10(0.5 * (0.01 + 0.0001)), abs=0.05)


def test_segmental_snr_short_signal_is_one_segment():
    ref = tone(1000)
    assert metrics.segmental_snr(0.9 * ref, ref) == pytest.approx(20.0, abs=0.01)


# ---------------------------------------------------------------------------------------------- LSD
def test_identical_signals_give_lsd_zero():
    x = noise()
    assert metrics.lsd(x, x) == 0.0
    assert metrics.lsd_reference(x, x) == pytest.approx(1e-4)  # sqrt(0 + 1e-8): the reference's floor


@pytest.mark.parametrize("a", [0.5, 2.0, 0.1])
def test_known_log_spectrum_offset(a):
    ref = noise(seed=3)
    # |STFT(a x)|^2 = a^2 |STFT(x)|^2: every bin is offset by 2 log10 a (log10) or 2 ln a (ln)
    assert metrics.lsd(a * ref, ref) == pytest.approx(abs(2 * math.log10(a)), rel=1e-9)
    # (the reference adds 1e-8 to the power, which moves the answer by ~1e-8 relative)
    assert metrics.lsd_reference(a * ref, ref) == pytest.approx(math.sqrt((2 * math.log(a)) ** 2 + 1e-8),
                                                                rel=1e-6)


def test_lsd_of_a_missing_band():
    # pred lacks the upper half of the spectrum: those bins sit at the 1e-8 floor
    ref = noise(32768, seed=5)
    spec = np.fft.rfft(ref)
    spec[len(spec) // 2 :] = 0
    pred = np.fft.irfft(spec, n=len(ref))
    value = metrics.lsd(pred, ref)
    assert 2.0 < value < 6.0
    assert metrics.lsd(pred, ref) > metrics.lsd(0.5 * ref, ref)


def test_lsd_reference_is_capped_at_10():
    ref = noise()
    assert metrics.lsd_reference(np.zeros_like(ref), ref) == 10.0


def reference_lsd_transcription(x_hr, x_pr):
    """The reference's compute_log_distortion with librosa 0.8.0's stft(x, 2048) spelled out: periodic
    Hann (get_window fftbins=True), centred frames with reflect padding, hop n_fft // 4, rfft."""

    def get_power(x):
        n_fft = 2048
        window = get_window("hann", n_fft, fftbins=True)
        y = np.pad(x, n_fft // 2, mode="reflect")
        frames = sliding_window_view(y, n_fft)[:: n_fft // 4]  # (frames, n_fft)
        S = np.fft.rfft(frames * window, axis=1).T  # librosa layout (freq, frames)
        return np.log(np.abs(S) ** 2 + 1e-8)

    S1, S2 = get_power(x_hr), get_power(x_pr)
    lsd = np.mean(np.sqrt(np.mean((S1 - S2) ** 2 + 1e-8, axis=1)), axis=0)
    return min(lsd, 10.0)


def test_lsd_reference_matches_a_direct_transcription(vctk_mini):
    from afilm_cli.audio import read_audio, resample, simulate_lr

    x, sr = read_audio(vctk_mini / "wav48" / "p225" / "p225_001.wav")
    hr, _, sp = simulate_lr(resample(x, sr, SR)[: 3 * SR + 1001], 4, "decimate")
    got = metrics.lsd_reference(sp, hr)
    assert got == pytest.approx(reference_lsd_transcription(hr.astype(np.float64), sp.astype(np.float64)),
                                rel=1e-9)
    assert 1.0 < got < 10.0
    # the two LSD conventions differ by design (ln vs log10, transposed means)
    assert abs(metrics.lsd(sp, hr) - got) > 0.5


@pytest.mark.parametrize("n", [700, 1024, 1025, 2048, 3 * 8192 + 1001])
def test_lsd_reference_in_pieces_is_the_joined_value(vctk_mini, n):
    """eval --data adds a split patch by patch: the value must be the one over the patches joined
    (the direct transcription's), whatever the pieces, those shorter than half a frame and empty
    ones included, so the ends' reflection and the frames across the joins are right."""
    from afilm_cli.audio import read_audio, resample, simulate_lr

    x, sr = read_audio(vctk_mini / "wav48" / "p226" / "p226_002.wav")
    hr, _, sp = simulate_lr(resample(x, sr, SR)[SR : SR + n - n % 4], 4, "decimate")
    expected = reference_lsd_transcription(hr.astype(np.float64), sp.astype(np.float64))
    rng = np.random.default_rng(n)
    for cuts in ([], [0, 0, 3, 10, 600], sorted(rng.integers(0, len(hr), 12)), list(range(0, len(hr), 8192))):
        acc = metrics.LsdReference()
        for a, b in zip([0, *cuts], [*cuts, len(hr)], strict=True):
            acc.add(sp[a:b], hr[a:b])
        assert acc.value() == pytest.approx(expected, rel=1e-9), cuts
    with pytest.raises(ValueError, match="value"):
        acc.add(sp, hr)
    with pytest.raises(ValueError, match="empty"):
        metrics.LsdReference().value()


def test_stft_in_blocks_is_the_stft():
    x = noise(50_000, seed=7)
    whole = metrics.stft(x)
    blocks = list(metrics.stft_blocks(x.astype(np.float32), frames=7))
    assert len(blocks) == -(-whole.shape[1] // 7)
    assert np.array_equal(np.concatenate(blocks, axis=1), metrics.stft(x.astype(np.float32)))
    np.testing.assert_allclose(np.concatenate(blocks, axis=1), whole, atol=1e-4)


def test_lsd_over_several_blocks_is_the_direct_value():
    """lsd() takes the spectrogram block by block: the value must be the one over all frames at once."""
    ref = noise(300 * 512, seed=11)  # 301 frames: two blocks
    pred = ref + 0.3 * noise(len(ref), seed=12)

    def log_power(x):
        frames = sliding_window_view(np.pad(x, 1024, mode="reflect"), 2048)[::512]
        return np.log10(np.maximum(np.abs(np.fft.rfft(frames * get_window("hann", 2048), axis=1)) ** 2, 1e-8))

    expected = np.mean(np.sqrt(np.mean((log_power(pred) - log_power(ref)) ** 2, axis=1)))
    assert metrics.lsd(pred, ref) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["lsd", "lsd_ref"])
def test_lsd_memory_does_not_grow_with_the_spectrogram(name):
    """eval --wavs scores whole files: the whole spectrograms took about 120 bytes per sample (a
    minute of 16 kHz audio: 115 MB), the reference LSD's copies 100; block by block, what grows is
    the signal's padded copies (float32 in, as eval gives it: 8 bytes per sample)."""
    import tracemalloc

    def peak(seconds):
        ref = noise(SR * seconds, seed=1).astype(np.float32)
        pred = ref + np.float32(0.1) * noise(len(ref), seed=2).astype(np.float32)
        tracemalloc.start()
        metrics.ALL[name](pred, ref)
        used = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return used

    per_sample = (peak(80) - peak(20)) / (SR * 60)
    assert per_sample < 16, f"{per_sample:.0f} bytes per sample"


def test_stft_frame_count_and_layout():
    S = metrics.stft(np.ones(5000))
    assert S.shape == (1025, 1 + 5000 // 512)


# ---------------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("pred_kind", ["silent", "tone"])
def test_silent_reference_gives_finite_metrics(pred_kind):
    ref = np.zeros(SR)
    pred = np.zeros(SR) if pred_kind == "silent" else tone()
    values = metrics.all_metrics(pred, ref)
    assert all(np.isfinite(v) for v in values.values()), values
    if pred_kind == "silent":
        assert values["lsd"] == 0.0 and values["snr"] == 0.0


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="length mismatch"):
        metrics.snr(np.zeros(10), np.zeros(11))


@pytest.mark.parametrize(("sr", "r", "edges"), [
    (16000, 4, [0, 1600, 2000, 4000, 8000]),
    (16000, 2, [0, 3200, 4000, 8000]),
    (16000, 8, [0, 800, 1000, 2000, 4000, 8000]),
    (22050, 4, [0, 2205, 2756.25, 5512.5, 11025]),  # the last band is cut at the Nyquist
    (48000, 3, [0, 6400, 8000, 16000, 24000]),
])
def test_band_edges(sr, r, edges):
    assert metrics.band_edges(sr, r) == pytest.approx(edges)


@pytest.mark.parametrize("n", [1000, 1001])  # even length has a Nyquist bin, odd does not
def test_band_energy_sums_to_the_signal_energy(n):
    x = np.random.default_rng(n).standard_normal(n)
    e = metrics.band_energy(x, 16000, metrics.band_edges(16000, 4))
    assert e.sum() == pytest.approx(np.sum(x**2), rel=1e-12)
    assert np.all(e > 0)


def test_band_energy_puts_a_tone_in_its_band():
    t = np.arange(16000) / 16000
    e = metrics.band_energy(np.sin(2 * np.pi * 3000 * t) + 0.1 * np.sin(2 * np.pi * 500 * t), 16000,
                            metrics.band_edges(16000, 4))
    # sum x^2 = n/2 * a^2 for a tone of amplitude a
    assert e[2] == pytest.approx(8000, rel=1e-9) and e[0] == pytest.approx(80, rel=1e-9)
    assert e[1] < 1e-12 and e[3] < 1e-12


@pytest.mark.parametrize("n", [16000, 4000])
def test_lowpass_truth_keeps_the_band_below_the_cutoff_only(n):
    t = np.arange(n) / 16000
    low, high = 0.5 * np.sin(2 * np.pi * 500 * t), np.sin(2 * np.pi * 3000 * t)
    kept = metrics.lowpass_truth(low + high, 16000, 2000.0)
    # tones on exact DFT bins: the one below the cutoff survives, the one above is gone
    assert np.max(np.abs(kept - low)) < 1e-3
    # so its SNR is the ratio of the tones' energies, 10 log10((0.25 + 1) / 1)
    assert metrics.snr(kept, low + high) == pytest.approx(10 * np.log10(1.25), abs=1e-3)


@pytest.mark.parametrize("n", [4096, 4095])  # odd lengths have no Nyquist bin
def test_lowpass_truth_of_a_signal_inside_the_band_is_itself(n):
    x = metrics.lowpass_truth(np.random.default_rng(0).standard_normal(n), 16000, 2000.0)
    assert len(x) == n
    assert np.allclose(metrics.lowpass_truth(x, 16000, 2000.0), x, atol=1e-12)
    assert metrics.band_energy(x, 16000, metrics.band_edges(16000, 4))[2:].sum() < 1e-20


# ------------------------------------------------------------------------------ streamed (eval --wavs)
@pytest.fixture(scope="module")
def speech(libri_mini):
    """36 s of real speech (four LibriSpeech utterances end to end) and its 4x spline from decimate."""
    import soundfile as sf

    from afilm_cli.audio import simulate_lr

    files = sorted((libri_mini / "test-other").glob("*/*.flac"))[:4]
    x = np.concatenate([sf.read(str(f), dtype="float32")[0] for f in files])
    hr, _, sp = simulate_lr(x, 4, "decimate")
    return hr, sp


def pieces(n, seed):
    """Cuts of [0, n): one empty piece, some shorter than an STFT frame or a patch, some longer."""
    rng = np.random.default_rng(seed)
    cuts = np.unique(np.concatenate([[0, 0, 5, 700], rng.integers(0, n, 12), [n]]))
    return list(zip([0, *cuts[:-1]], cuts, strict=True))


@pytest.mark.parametrize("n", [5000, 8192, 3 * 8192 + 777, None])  # shorter than a patch, one, several, all
def test_scores_in_pieces_equal_the_whole_signal_functions(speech, n):
    """eval --wavs scores a file block by block: the same values as the whole-array functions, to the
    order of the float64 sums (1e-9 relative asked, about 1e-15 seen)."""
    hr, sp = (x[:n] for x in speech)
    acc = metrics.Scores(8192)
    for a, b in pieces(len(hr), len(hr)):
        acc.add(sp[a:b], hr[a:b])
    got = acc.values()
    assert list(got) == list(metrics.ALL)
    for name, fn in metrics.ALL.items():
        assert got[name] == pytest.approx(fn(sp, hr), rel=1e-9), name
    time_only = metrics.Scores(8192, spectral=False)
    time_only.add(sp, hr)
    assert time_only.values() == pytest.approx({k: got[k] for k in ("snr", "segsnr")}, rel=1e-12)


def test_segmented_one_segment_is_exactly_the_whole_signal_dft(speech):
    """Up to SEGMENT samples (65 s at 16 kHz) the band energies and the low-pass are one DFT, the
    whole-signal functions' very values."""
    hr, sp = speech
    hr, err = hr.astype(np.float64), hr - sp.astype(np.float64)
    edges = metrics.band_edges(SR, 4)
    seg = metrics.Segmented(len(hr), 2, SR, edges, 2000.0)
    low = [lo for a, b in pieces(len(hr), 1) for lo, _ in seg.add(np.stack([hr[a:b], err[a:b]], axis=1))]
    assert np.array_equal(np.concatenate(low), metrics.lowpass_truth(hr, SR, 2000.0))
    assert np.array_equal(seg.energy, [metrics.band_energy(x, SR, edges) for x in (hr, err)])


def test_segmented_takes_the_samples_whether_or_not_its_output_is_read(speech):
    """add was a generator: called without looping over it, it took nothing."""
    hr = speech[0].astype(np.float64)
    seg = metrics.Segmented(len(hr), 1, SR, metrics.band_edges(SR, 4), 2000.0, 1 << 14, 1 << 11)
    for a in range(0, len(hr), 5000):
        seg.add(hr[a : a + 5000, None])
    assert seg.energy.sum() == pytest.approx(float(np.sum(hr**2)), rel=1e-9)


@pytest.mark.parametrize(("segment", "overlap"), [(1 << 14, 1 << 11), (1 << 16, 1 << 12)])
def test_segmented_over_many_segments_is_close_to_one_dft(speech, segment, overlap):
    """A longer signal takes overlapping segments: the band energies still sum to the signal's energy
    exactly, and they and the low-pass's SNRs stay within a few thousandths of a dB of one DFT over
    the whole signal, even with segments 16-64x shorter than eval's (measured on speech up to 5e-3
    dB per band, 5e-4 dB SNR, 5e-3 dB segmental SNR at 2^14; with eval's 2^20 on 30 minutes of
    speech, 2.5e-4, 7e-6 and 6e-5 dB)."""
    hr, sp = speech
    hr, err = hr.astype(np.float64), hr - sp.astype(np.float64)
    edges = metrics.band_edges(SR, 4)
    seg = metrics.Segmented(len(hr), 2, SR, edges, 2000.0, segment, overlap)
    assert seg.count > 8
    got = [(lo, ref) for a, b in pieces(len(hr), 2) for lo, ref in seg.add(np.stack([hr[a:b], err[a:b]], 1))]
    low, ref = (np.concatenate(x) for x in zip(*got, strict=True))
    assert np.array_equal(ref, hr)
    for energy, x in zip(seg.energy, (hr, err), strict=True):
        assert energy.sum() == pytest.approx(np.sum(x**2), rel=1e-12)  # Parseval, as band_energy
        np.testing.assert_allclose(10 * np.log10(energy / metrics.band_energy(x, SR, edges)), 0, atol=0.01)
    whole = metrics.lowpass_truth(hr, SR, 2000.0)
    assert metrics.snr(low, hr) == pytest.approx(metrics.snr(whole, hr), abs=2e-3)
    assert metrics.segmental_snr(low, hr) == pytest.approx(metrics.segmental_snr(whole, hr), abs=0.02)


def test_streamed_scores_hold_no_array_of_the_signal_length(monkeypatch):
    """What eval --wavs holds per file: Scores for two systems and the low-pass, Segmented over three
    columns. Fed 2 M samples in blocks (the signal never exists whole), with its blocks shrunk (STFT
    frames per FFT, segment) the traced peak stays that of a few blocks: no larger than for a signal a
    quarter as long, and under half the signal's float32 size."""
    import tracemalloc

    monkeypatch.setattr(metrics, "STFT_FRAMES", 32)

    def peak(n, block=4096):
        rng = np.random.default_rng(0)
        tracemalloc.start()
        scores = [metrics.Scores(8192) for _ in range(2)]
        low = metrics.Scores(8192, spectral=False)
        seg = metrics.Segmented(n, 3, SR, metrics.band_edges(SR, 4), 2000.0, 1 << 14, 1 << 11)
        for a in range(0, n, block):
            hr = rng.standard_normal(min(block, n - a)) * 0.1
            pred = hr + 0.01 * rng.standard_normal(len(hr))
            for acc in scores:
                acc.add(pred, hr)
            for lo, ref in seg.add(np.stack([hr, hr - pred, hr - pred], axis=1)):
                low.add(lo, ref)
        for acc in (*scores, low):
            acc.values()
        used = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return used

    n = 2_000_000  # 8 MB in float32; peak 3.4 MB, as for 1 M samples (the whole-array functions: 53 MB)
    big = peak(n)
    assert big < 4 * n / 2, f"{big / 1e6:.1f} MB"
    assert big < 1.1 * peak(n // 4)

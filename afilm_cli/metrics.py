"""Quality metrics, each named for its convention (REFERENCE.md section 5).

All take (pred, ref) as 1-D arrays of equal length; ``ref`` is the high-rate ground truth.
Every metric is finite on silent input: the floors below keep it from dividing by zero.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

EPS = 1e-10  # energy floor of snr()
LSD_FLOOR = 1e-8  # power floor of lsd(), as torch.clamp(1e-8) in NU-Wave


def _pair(pred, ref, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=dtype).ravel()
    ref = np.asarray(ref, dtype=dtype).ravel()
    if pred.shape != ref.shape:
        raise ValueError(f"length mismatch: pred {pred.shape[0]} vs ref {ref.shape[0]} samples")
    return pred, ref


def snr(pred, ref) -> float:
    """SNR over the whole signal in dB: 10 log10(||ref||^2 / ||ref - pred||^2)."""
    pred, ref = _pair(pred, ref)
    return float(10.0 * np.log10((np.sum(ref**2) + EPS) / (np.sum((ref - pred) ** 2) + EPS)))


def segmental_snr(pred, ref, patch: int = 8192) -> float:
    """The reference code's SNR: per ``patch``-sample segment (tail dropped, or the whole signal if
    shorter) 20 log10(rms(ref) / sqrt(mean(err^2 + 1e-6)) + 1e-8), then the mean over segments."""
    pred, ref = _pair(pred, ref)
    n = max(len(ref) // patch, 1)
    size = patch if len(ref) >= patch else len(ref)
    y = ref[: n * size].reshape(n, size)
    e = y - pred[: n * size].reshape(n, size)
    loss = np.sqrt(np.mean(e**2 + 1e-6, axis=1))
    norm = np.sqrt(np.mean(y**2, axis=1))
    return float(np.mean(20.0 * np.log10(norm / loss + 1e-8)))


def stft(x, n_fft: int = 2048, hop: int = 512, pad_mode: str = "reflect") -> np.ndarray:
    """Complex STFT (freq, frames): periodic Hann, frames centred by padding n_fft/2 on each side with
    ``pad_mode``. "reflect" is librosa.stft's default up to 0.9 (the reference used librosa 0.8.0)
    and torch.stft's default (NU-Wave, AERO); librosa 0.10 changed it to zeros ("constant")."""
    return np.concatenate(list(stft_blocks(x, n_fft, hop, pad_mode)), axis=1)


def stft_blocks(x, n_fft: int = 2048, hop: int = 512, pad_mode: str = "reflect",
                frames: int = 256) -> Iterator[np.ndarray]:
    """:func:`stft` in consecutive blocks of up to ``frames`` frames, so that a long signal's
    spectrogram (16 bytes per bin, 32 per sample at the default hop) need not be held whole: a
    block takes about 12 MB at the defaults, whatever the signal's length."""
    x = np.asarray(x).ravel()
    if len(x) == 0:
        raise ValueError("empty signal")
    framed = sliding_window_view(np.pad(x, n_fft // 2, mode=pad_mode), n_fft)[::hop]  # a view: no copy
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    for a in range(0, len(framed), frames):
        yield np.fft.rfft(framed[a : a + frames] * window, axis=1).T  # float64, as the window is


def lsd(pred, ref, n_fft: int = 2048, hop: int = 512) -> float:
    """Log-spectral distance as in the later literature (NU-Wave's code, also AERO, AP-BWE): log10 of
    the power spectrum clamped below at 1e-8; per frame the root mean square difference over
    frequency, then the mean over frames."""
    pred, ref = _pair(pred, ref, dtype=None)  # as given: stft_blocks makes each block float64
    per_frame = []
    for p, r in zip(stft_blocks(pred, n_fft, hop), stft_blocks(ref, n_fft, hop), strict=True):
        p = np.log10(np.maximum(np.abs(p) ** 2, LSD_FLOOR))
        r = np.log10(np.maximum(np.abs(r) ** 2, LSD_FLOOR))
        per_frame.append(np.sqrt(np.mean((p - r) ** 2, axis=0)))
    return float(np.mean(np.concatenate(per_frame)))


def lsd_reference(pred, ref, n_fft: int = 2048, hop: int = 512) -> float:
    """LSD as the reference code computes it: natural log of power + 1e-8, mean over *time* inside
    the sqrt and over frequency outside, capped at 10. Not comparable with :func:`lsd`. The reference
    takes it over a whole split's patches joined end to end: pass them so, or add them one by one to
    a :class:`LsdReference` (the same value without holding the split)."""
    acc = LsdReference(n_fft, hop)
    pred, ref = _pair(pred, ref, dtype=None)  # as given: the frames are made float64 one block at a time
    piece = 1 << 18  # samples per add(): the accumulator copies what it is given
    for a in range(0, len(ref), piece):
        acc.add(pred[a : a + piece], ref[a : a + piece])
    return acc.value()


class LsdReference:
    """:func:`lsd_reference` of a signal given in consecutive pieces (``add``), in memory that does
    not grow: per-bin sums over the frames seen so far, and a frame's worth of samples kept between
    pieces. Frames as :func:`stft`: centred, the ends padded by reflection."""

    def __init__(self, n_fft: int = 2048, hop: int = 512):
        self.n_fft, self.hop, self.half = n_fft, hop, n_fft // 2
        self.total, self.frames = np.zeros(n_fft // 2 + 1), 0
        self.window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
        self.buf = np.zeros((2, 0))  # padded (pred, ref) samples from the next frame's start on
        self.head: np.ndarray | None = None  # the first samples, until the start can be reflected
        self.done = False

    def add(self, pred, ref) -> None:
        if self.done:
            raise ValueError("LsdReference: value() was taken; start a new one")
        pred, ref = _pair(pred, ref, dtype=None)
        x = np.stack([pred, ref]).astype(np.float64)
        if self.head is not None or self.frames == 0 and self.buf.shape[1] == 0:
            x = x if self.head is None else np.concatenate([self.head, x], axis=1)
            if x.shape[1] <= self.half:  # too short to reflect the start yet
                self.head = x
                return
            self.head = None
            x = np.concatenate([x[:, self.half:0:-1], x], axis=1)  # np.pad's "reflect"
        self.buf = np.concatenate([self.buf, x], axis=1)
        self._frames(final=False)

    def value(self) -> float:
        if not self.done:
            self.done = True
            if self.head is not None:  # shorter than half a frame in all: np.pad reflects repeatedly
                x = np.pad(self.head, ((0, 0), (self.half, self.half)), mode="reflect")
                self.buf, self.head = x, None
            elif self.buf.shape[1] > 0:
                self.buf = np.concatenate([self.buf, self.buf[:, -2 : -self.half - 2 : -1]], axis=1)
            else:
                raise ValueError("empty signal")
            self._frames(final=True)
        return float(min(np.mean(np.sqrt(self.total / self.frames)), 10.0))

    def _frames(self, final: bool, block: int = 256) -> None:
        """Every whole frame in the buffer; then drop the samples no later frame needs. A frame
        within half a frame of the (unknown) end waits, as it may need the reflected tail."""
        keep = 0 if final else self.half + 1
        count = max(0, 1 + (self.buf.shape[1] - keep - self.n_fft) // self.hop)
        if count:
            framed = sliding_window_view(self.buf, self.n_fft, axis=1)[:, : count * self.hop : self.hop]
        for a in range(0, count, block):
            p, r = np.fft.rfft(framed[:, a : a + block] * self.window, axis=2)
            self.total += np.sum((np.log(np.abs(r) ** 2 + 1e-8) - np.log(np.abs(p) ** 2 + 1e-8)) ** 2 + 1e-8,
                                 axis=0)
            self.frames += p.shape[0]
        self.buf = self.buf[:, count * self.hop:]


def band_edges(sr: int, r: int) -> list[float]:
    """Edges (Hz) of the bands that :func:`band_energy` splits a signal into, for upsampling by ``r``
    to ``sr``: the low-rate passband up to 0.8 x the low-rate Nyquist (where decimate's anti-aliasing
    filter starts to cut), its transition band up to that Nyquist, then octaves above it up to the
    high-rate Nyquist: the band the input still holds, the band the filter attenuated, and the band
    the model must invent."""
    nyq_lr, nyq = sr / (2 * r), sr / 2
    edges = [0.0, 0.8 * nyq_lr, nyq_lr]
    while edges[-1] * 2 < nyq * (1 - 1e-9):
        edges.append(edges[-1] * 2)
    return edges + [nyq] if edges[-1] < nyq else edges


def band_energy(x, sr: int, edges: list[float]) -> np.ndarray:
    """Energy of ``x`` in each band [edges[i], edges[i+1]) (the last one closed), from its DFT and
    scaled so that the bands sum to ``sum(x**2)`` exactly (Parseval): band errors then add up to
    the error energy that :func:`snr` uses."""
    x = np.asarray(x, dtype=np.float64).ravel()
    n = len(x)
    power = np.abs(np.fft.rfft(x)) ** 2 / n
    power[1 : (n + 1) // 2] *= 2  # the negative frequencies' mirror images (not DC, not Nyquist)
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    which = np.clip(np.searchsorted(edges, freqs, side="right") - 1, 0, len(edges) - 2)
    return np.bincount(which, weights=power, minlength=len(edges) - 1)


def lowpass_truth(ref, sr: int, cutoff_hz: float) -> np.ndarray:
    """``ref`` with every DFT bin at or above ``cutoff_hz`` zeroed (an ideal, zero-phase low-pass).

    At the low rate's Nyquist this is what a method scores that restores the input band perfectly
    and invents nothing above it: the line between the gain any good interpolator could make and
    the gain that takes predicting the missing band."""
    x = np.asarray(ref, dtype=np.float64).ravel()
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(len(x), 1.0 / sr) >= cutoff_hz] = 0.0
    return np.fft.irfft(spectrum, len(x))


ALL = {"snr": snr, "segsnr": segmental_snr, "lsd": lsd, "lsd_ref": lsd_reference}


def all_metrics(pred, ref) -> dict[str, float]:
    """Every metric above, keyed as in ``ALL``."""
    return {name: fn(pred, ref) for name, fn in ALL.items()}

"""Quality metrics, each named for its convention (REFERENCE.md section 5).

All take (pred, ref) as 1-D arrays of equal length ((n, 1) is taken as (n,)); ``ref`` is the high-rate
ground truth. Only :func:`snr` takes several channels, (n, C) each (the energies over them all): the others
frame the signal, and a flattened (n, C) array would be framed with its channels interleaved.
Every metric is finite on silent input: the floors below keep it from dividing by zero.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

EPS = 1e-10  # energy floor of snr()
LSD_FLOOR = 1e-8  # power floor of lsd(), as torch.clamp(1e-8) in NU-Wave
STFT_FRAMES = 256  # frames per FFT in LsdReference: about 12 MB for the pair at n_fft 2048


def _pair(pred, ref, dtype=np.float64, one: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Both flattened, of the same shape ((n,) and (n, 1) are one); ``one``: a single signal, not (n, C)."""
    pred, ref = np.asarray(pred, dtype=dtype), np.asarray(ref, dtype=dtype)
    if pred.size != ref.size:
        raise ValueError(f"length mismatch: pred {pred.size} vs ref {ref.size} samples")
    if np.squeeze(pred).shape != np.squeeze(ref).shape:  # (n, 2) and (2n,) were scored, interleaved
        raise ValueError(f"shape mismatch: pred {pred.shape} vs ref {ref.shape}")
    if one and np.squeeze(pred).ndim > 1:
        raise ValueError(f"one signal at a time: arrays of shape {pred.shape} would be framed with their "
                         "channels interleaved; pass one channel (x[:, c]) or the mono mix")
    return pred.ravel(), ref.ravel()


def _check_patch(patch) -> None:
    if isinstance(patch, bool) or not isinstance(patch, (int, np.integer)) or patch < 1:
        raise ValueError(f"patch must be a positive integer, not {patch!r}")


def snr(pred, ref) -> float:
    """SNR over the whole signal in dB: 10 log10(||ref||^2 / ||ref - pred||^2); (n, C) arrays: over all
    their channels."""
    pred, ref = _pair(pred, ref, one=False)
    if not len(ref):
        raise ValueError("empty signal")
    return float(10.0 * np.log10((np.sum(ref**2) + EPS) / (np.sum((ref - pred) ** 2) + EPS)))


def segmental_snr(pred, ref, patch: int = 8192) -> float:
    """The reference code's SNR: per ``patch``-sample segment (tail dropped, or the whole signal if
    shorter) 20 log10(rms(ref) / sqrt(mean(err^2 + 1e-6)) + 1e-8), then the mean over segments."""
    _check_patch(patch)
    pred, ref = _pair(pred, ref)
    if not len(ref):
        raise ValueError("empty signal")
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

    def _frames(self, final: bool) -> None:
        """Every whole frame in the buffer; then drop the samples no later frame needs. A frame
        within half a frame of the (unknown) end waits, as it may need the reflected tail."""
        keep = 0 if final else self.half + 1
        count = max(0, 1 + (self.buf.shape[1] - keep - self.n_fft) // self.hop)
        if count:
            framed = sliding_window_view(self.buf, self.n_fft, axis=1)[:, : count * self.hop : self.hop]
        for a in range(0, count, STFT_FRAMES):
            p, r = np.abs(np.fft.rfft(framed[:, a : a + STFT_FRAMES] * self.window, axis=2)) ** 2
            self._update(p, r)
            self.frames += p.shape[0]
        self.buf = self.buf[:, count * self.hop:]

    def _update(self, p: np.ndarray, r: np.ndarray) -> None:
        """Add a block of frames' power spectra (frames, bins) of pred and ref."""
        self.total += np.sum((np.log(r + 1e-8) - np.log(p + 1e-8)) ** 2 + 1e-8, axis=0)


class Lsd(LsdReference):
    """Both LSDs of a signal given in consecutive pieces, from one STFT: :func:`lsd` (``lsd()``) and
    :func:`lsd_reference` (``value()``)."""

    def __init__(self, n_fft: int = 2048, hop: int = 512):
        super().__init__(n_fft, hop)
        self.per_frame = 0.0  # lsd()'s distances summed over the frames

    def _update(self, p, r):
        super()._update(p, r)
        d = np.log10(np.maximum(p, LSD_FLOOR)) - np.log10(np.maximum(r, LSD_FLOOR))
        self.per_frame += float(np.sum(np.sqrt(np.mean(d**2, axis=1))))

    def lsd(self) -> float:
        self.value()  # the last frames, which wait for the end
        return self.per_frame / self.frames


class Scores:
    """:func:`snr`, :func:`segmental_snr` and (``spectral``) both LSDs of a signal given in consecutive
    pieces (``add``), in memory that does not grow: sums of squares, per-patch values with the samples
    of a patch not yet whole, and :class:`Lsd`. Equal to the whole-signal functions up to the order of
    float64 sums (``tests/test_metrics.py``)."""

    def __init__(self, patch: int = 8192, spectral: bool = True):
        _check_patch(patch)
        self.energy = self.error = 0.0
        self.patch, self.rest = patch, np.zeros((2, 0))  # (pred, ref) samples of the unfinished patch
        self.segsnr_sum, self.segments = 0.0, 0
        self.spectral = Lsd() if spectral else None

    def add(self, pred, ref) -> None:
        pred, ref = _pair(pred, ref)
        self.energy += float(np.sum(ref**2))
        self.error += float(np.sum((ref - pred) ** 2))
        x = np.concatenate([self.rest, np.stack([pred, ref])], axis=1)
        whole = x.shape[1] // self.patch * self.patch
        self._segments(x[:, :whole].reshape(2, -1, self.patch))
        self.rest = x[:, whole:].copy()  # not a view: that would keep the whole piece
        if self.spectral is not None:
            self.spectral.add(pred, ref)

    def _segments(self, x: np.ndarray) -> None:  # as segmental_snr, on (pred/ref, segment, sample)
        y, e = x[1], x[1] - x[0]
        loss = np.sqrt(np.mean(e**2 + 1e-6, axis=1))
        norm = np.sqrt(np.mean(y**2, axis=1))
        self.segsnr_sum += float(np.sum(20.0 * np.log10(norm / loss + 1e-8)))
        self.segments += len(y)

    def values(self) -> dict[str, float]:
        if not self.segments:  # shorter than a patch: one segment, as segmental_snr
            self._segments(self.rest[:, None, :])
        out = {"snr": float(10.0 * np.log10((self.energy + EPS) / (self.error + EPS))),
               "segsnr": self.segsnr_sum / self.segments}
        if self.spectral is not None:
            out |= {"lsd": self.spectral.lsd(), "lsd_ref": self.spectral.value()}
        return out


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


SEGMENT = 1 << 20  # samples per DFT of Segmented (65.5 s at 16 kHz): a signal up to this long is exact
OVERLAP = 1 << 14  # of consecutive segments (1 s at 16 kHz)


class Segmented:
    """:func:`band_energy` of each column of a signal (length, columns) and :func:`lowpass_truth` of its
    first column, the signal given in consecutive pieces (``add``), in memory that does not grow.

    A signal of at most ``segment`` samples is one DFT, exactly as the whole-signal functions. A longer
    one is cut into segments of ``segment`` samples overlapping by ``overlap``, weighted by windows whose
    squares sum to one (sine / cosine ramps over the overlaps, flat elsewhere and at the signal's ends):
    the band energies of the windowed segments still sum to the signal's energy, and the low-passed
    segments, windowed again and overlap-added, make the low-pass. They differ from one DFT of the
    whole signal (which joins its end to its start, and whose ripple from that step reaches all of it)
    by at most 2.5e-4 dB per band, 7e-6 dB in the low-pass's SNR and 6e-5 dB in its segmental SNR
    (measured on 30 minutes of speech; tests/test_metrics.py bounds shorter segments)."""

    def __init__(self, length: int, columns: int, sr: int, edges: list[float], cutoff_hz: float,
                 segment: int | None = None, overlap: int | None = None):
        self.segment, self.overlap = segment or SEGMENT, overlap or OVERLAP
        self.hop = self.segment - self.overlap
        self.count = 1 + -(-max(length - self.segment, 0) // self.hop)
        self.length, self.sr, self.edges, self.cutoff = length, sr, edges, cutoff_hz
        self.ramp = np.sin(0.5 * np.pi * (np.arange(self.overlap) + 0.5) / self.overlap)
        self.energy = np.zeros((columns, len(edges) - 1))
        self.pending, self.have = [], 0  # the samples from the next segment's start on
        self.low = np.zeros(0)  # the low-pass there, from the segment before (its fade-out)
        self.done = 0  # segments done

    def add(self, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Take the next samples (n, columns); return (low-pass, first column) over the samples that no
        later segment changes, in order: all ``length`` of them once every sample is in. (A list, not a
        generator: the samples are taken whether or not the caller looks at what comes back.)"""
        return list(self._segments(x))

    def _segments(self, x: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        self.pending.append(np.asarray(x, np.float64))
        self.have += len(x)
        while self.done < self.count:
            n = min(self.done * self.hop + self.segment, self.length) - self.done * self.hop
            if self.have < n:
                return
            buf = np.concatenate(self.pending)  # joined once per segment, not once per piece
            self.pending = []
            w = np.ones(n)
            if self.done > 0:
                w[: self.overlap] = self.ramp
            if self.done < self.count - 1:
                w[-self.overlap :] = self.ramp[::-1]
            for c in range(buf.shape[1]):  # a column at a time: one copy of the segment at most
                self.energy[c] += band_energy(buf[:n, c] * w, self.sr, self.edges)
            low = w * lowpass_truth(buf[:n, 0] * w, self.sr, self.cutoff)
            low[: len(self.low)] += self.low
            final = self.hop if self.done < self.count - 1 else n  # up to the next segment's start
            yield low[:final], buf[:final, 0]
            self.pending, self.have = [buf[final:].copy()], len(buf) - final
            self.low, self.done = low[final:], self.done + 1


ALL = {"snr": snr, "segsnr": segmental_snr, "lsd": lsd, "lsd_ref": lsd_reference}


def all_metrics(pred, ref) -> dict[str, float]:
    """Every metric above, keyed as in ``ALL``."""
    return {name: fn(pred, ref) for name, fn in ALL.items()}

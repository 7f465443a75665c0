"""Streaming signal stages: signals readable over any sample range, in memory that does not grow.

Each stage is a signal that can be read over any range ``read(start, stop)`` (zeros outside
``[0, length)``). A stage computes its range from a slightly wider range of the stage below (a margin
that covers its filter), so reading a long file block by block gives the same samples as processing it
whole. afilm_cli/infer.py chains them:

- real low-rate input:  file -> Resampled(to sr/r) -> Splined(r) -> model windows
- ``--simulate``:       file -> Resampled(to sr) = HR -> Degraded(recipe) = LR -> Splined(r) -> model
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from afilm_cli.audio import DEGRADE_METHODS, check_not_truncated, spline_segment
from afilm_cli.errors import AfilmError

SPLINE_MARGIN = 64  # LR samples: a cubic spline's dependence decays ~0.27x per knot, 0.27**64 ~ 1e-37
DECIMATE_MARGIN = 512  # LR samples: the order-8 Chebyshev IIR has decayed below 1e-15 well before this


# --------------------------------------------------------------------------------------------- stages
class Stage:
    """A signal of ``length`` frames x ``channels``, readable over any range as float64 (n, C)."""

    length: int
    channels: int

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.zeros((max(stop - start, 0), self.channels))
        a, b = max(start, 0), min(stop, self.length)
        if a < b:
            out[a - start : b - start] = self._read(a, b)
        return out

    def _read(self, start: int, stop: int) -> np.ndarray:  # 0 <= start < stop <= length
        raise NotImplementedError


class ArraySource(Stage):
    def __init__(self, x: np.ndarray):
        x = np.asarray(x, dtype=np.float64)
        self.x = x[:, None] if x.ndim == 1 else x
        self.length, self.channels = self.x.shape

    def _read(self, start, stop):
        return self.x[start:stop]


class FileSource(Stage):
    """Reads blocks of a sound file by seeking, so only the requested range is ever in memory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise AfilmError(f"{self.path}: is a folder, expected an audio file" if self.path.is_dir()
                             else f"{self.path}: a pipe or device, not a file, and a file is read more than "
                             "once; save the audio to a file first" if self.path.exists()
                             else f"{self.path}: no such file")
        try:
            f = sf.SoundFile(str(self.path))
        except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AfilmError(f"{self.path}: cannot read audio ({reason})") from None
        self._take(f)

    def _take(self, f: sf.SoundFile) -> None:
        """Read from ``f`` (open), once checked that it is neither cut short nor empty (closed if it is)."""
        try:
            check_not_truncated(self.path, f.extra_info)
            if f.frames <= 0:
                raise AfilmError(f"{self.path}: empty audio file")
        except AfilmError:
            f.close()
            raise
        self.f, self.sr, self.channels, self.length = f, f.samplerate, f.channels, f.frames
        self.subtype = f.subtype
        self._whole: np.ndarray | None = None  # only for formats libsndfile cannot seek in

    def _read(self, start, stop):
        if not self.f.seekable():
            if self._whole is None:
                # soundfile needs the count for a file it cannot seek in (GSM 6.10 WAV): read() was a
                # ValueError ('frames must be specified for non-seekable files') shown as a traceback
                self._whole = self._check(self.f.read(self.length, dtype="float64", always_2d=True),
                                          self.length)
            return self._whole[start:stop]
        self.f.seek(start)
        return self._check(self.f.read(stop - start, dtype="float64", always_2d=True), stop - start)

    def _check(self, x: np.ndarray, n: int) -> np.ndarray:
        if len(x) != n:
            raise AfilmError(f"{self.path}: file is shorter than its header says (truncated?)")
        if not np.isfinite(x).all():
            raise AfilmError(f"{self.path}: contains NaN or Inf samples")
        return x

    def close(self) -> None:
        self.f.close()


class Resampled(Stage):
    """scipy.signal.resample_poly from ``sr_in`` to ``sr_out`` (rationals allowed), computed on
    blocks: a block starting at a multiple of ``down`` input samples with the FIR's half length as
    margin gives exactly the samples of a whole-signal resample_poly."""

    def __init__(self, src: Stage, sr_in: int | Fraction, sr_out: int | Fraction, length: int | None = None):
        ratio = Fraction(sr_out) / Fraction(sr_in)
        self.src, self.channels = src, src.channels
        self.up, self.down = ratio.numerator, ratio.denominator
        self.half_len = 10 * max(self.up, self.down)  # resample_poly's default filter half length
        full = -(-src.length * self.up // self.down)
        self.length = full if length is None else length

    def _read(self, start, stop):
        if self.up == self.down:
            return self.src.read(start, stop)
        margin = self.half_len // self.up + 2
        s = max(0, (start * self.down // self.up - margin) // self.down * self.down)
        e = min(self.src.length, -(-stop * self.down // self.up) + margin)
        y = signal.resample_poly(self.src.read(s, e), self.up, self.down, axis=0)
        off = s * self.up // self.down
        return _fit(y[start - off : stop - off], stop - start)


class Degraded(Stage):
    """The training recipe's low-rate signal (REFERENCE.md section 1 step 3), ceil(N / r) samples."""

    def __init__(self, src: Stage, r: int, method: str):
        if method not in DEGRADE_METHODS:
            raise AfilmError(f"unknown degradation {method!r}; known: {', '.join(DEGRADE_METHODS)}")
        self.src, self.r, self.method, self.channels = src, r, method, src.channels
        self._resampled = Resampled(src, r, 1) if method == "resample" else None  # resample_poly(x, 1, r)
        self.length = -(-src.length // r)
        if method == "decimate" and src.length <= 27:  # filtfilt's padding needs more samples
            raise AfilmError(f"signal of {src.length} samples is too short to decimate")

    def _read(self, start, stop):
        r = self.r
        if self._resampled is not None:
            return self._resampled.read(start, stop)
        if self.method == "subsample" or r == 1:
            return self.src.read(start * r, (stop - 1) * r + 1)[::r]
        s = max(0, start - DECIMATE_MARGIN) * r
        e = min(self.src.length, (stop + DECIMATE_MARGIN) * r)
        y = signal.decimate(self.src.read(s, e), r, axis=0)
        return y[start - s // r : stop - s // r]


class Splined(Stage):
    """The reference's cubic spline (LR sample k at HR index k*r, splrep k=3 s=0), evaluated at HR
    indices 0..length-1 on blocks with SPLINE_MARGIN knots of context on each side."""

    def __init__(self, src: Stage, r: int, length: int | None = None):
        self.src, self.r, self.channels = src, r, src.channels
        self.length = src.length * r if length is None else length
        if src.length < 4:
            raise AfilmError(f"signal of {src.length} low-rate samples is too short for a cubic spline "
                             "(it needs 4)")

    def _read(self, start, stop):
        r = self.r
        l0 = max(0, start // r - SPLINE_MARGIN)
        l1 = min(self.src.length, (stop - 1) // r + 2 + SPLINE_MARGIN)
        if l1 - l0 < 4:  # near the end of a short signal: widen to the left
            l0 = max(0, l1 - 4)
        lr = self.src.read(l0, l1)
        return np.stack([spline_segment(lr[:, c], r, start - l0 * r, stop - l0 * r)
                         for c in range(self.channels)], axis=1)


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    return y if len(y) == n else np.concatenate([y, np.zeros((n - len(y), y.shape[1]))])[:n]

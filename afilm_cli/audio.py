"""Audio I/O and the reference degradation recipe (REFERENCE.md section 1).

Arrays are float32 numpy, shape (T,) for mono or (T, C) for multichannel, as soundfile returns.
"""

from __future__ import annotations

import os
import re
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import interpolate, signal

from afilm_cli.atomic import atomic_path
from afilm_cli.errors import AfilmError

DEGRADE_METHODS = ("decimate", "subsample", "resample")
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".caf", ".w64", ".mp3", ".opus"}


def is_audio_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in AUDIO_SUFFIXES


def find_audio_files(root: str | os.PathLike) -> list[Path]:
    """Audio files under ``root``: a folder's files (names sorted) before its subfolders (sorted).
    Folder links are followed, each real folder once (so a link loop ends); hidden names are skipped
    (.DS_Store, the '._x.wav' resource forks macOS leaves on shared drives)."""
    seen: set[tuple[int, int]] = set()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / n for n in sorted(filenames) if not n.startswith(".") and is_audio_file(n)]
    return found


def read_audio(path: str | os.PathLike, *, mono: bool = False) -> tuple[np.ndarray, int]:
    """Read any soundfile-supported file as float32; ``mono=True`` averages the channels.

    Raises AfilmError naming the file for a missing, unreadable, empty or non-finite file.
    """
    path = Path(path)
    if not path.exists():
        raise AfilmError(f"{path}: no such file")
    if path.is_dir():
        raise AfilmError(f"{path}: is a folder, expected an audio file")
    try:
        with sf.SoundFile(str(path)) as f:
            header = f.extra_info
            # libsndfile cannot seek in some codecs (GSM 6.10, telephone audio): their length is asked for
            frames = -1 if f.seekable() else f.frames
            x, sr = f.read(frames, dtype="float32", always_2d=False), f.samplerate
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AfilmError(f"{path}: cannot read audio ({reason})") from None
    check_not_truncated(path, header)
    if x.size == 0:
        raise AfilmError(f"{path}: empty audio file")
    if not np.isfinite(x).all():
        raise AfilmError(f"{path}: contains NaN or Inf samples")
    if mono:
        x = to_mono(x)
    return np.ascontiguousarray(x), int(sr)


# libsndfile's header report of a WAV whose data chunk is longer than the file: "data : 96000 (should be 4)"
_DATA_CUT = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.M)
_STREAMED = {0xFFFFFFFF, 0x7FFFFFFF}  # sizes a writer to a pipe leaves: the length was not known, not cut


def check_not_truncated(path: str | os.PathLike, header: str) -> None:
    """Refuse a WAV cut short (a broken copy, download or extraction): libsndfile reads it, silently, as
    far as its data goes, but its header (``SoundFile.extra_info``) still says how long it was."""
    cut = _DATA_CUT.search(header)
    if cut and int(cut[1]) not in _STREAMED and int(cut[2]) < int(cut[1]):
        raise AfilmError(f"{path}: file is shorter than its header says (truncated? its audio data has "
                         f"{cut[2]} of the {cut[1]} bytes declared)")


def to_mono(x: np.ndarray) -> np.ndarray:
    return x if x.ndim == 1 else x.mean(axis=1, dtype=np.float64).astype(np.float32)


def write_audio(path: str | os.PathLike, x: np.ndarray, sr: int, *, subtype: str | None = None) -> Path:
    """Write atomically (temporary name, then rename). Float input is stored as 16-bit PCM for
    .wav unless ``subtype`` says otherwise; values are clipped to [-1, 1] there."""
    path = Path(path)
    x = np.asarray(x, dtype=np.float32)
    if subtype is None and path.suffix.lower() == ".wav":
        subtype = "PCM_16"
    if subtype and subtype.startswith("PCM"):
        x = np.clip(x, -1.0, 1.0)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), x, int(sr), subtype=subtype)
    return path


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling along axis 0 (scipy.signal.resample_poly; the reference used librosa)."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    g = gcd(int(sr_in), int(sr_out))
    y = signal.resample_poly(np.asarray(x, dtype=np.float64), sr_out // g, sr_in // g, axis=0)
    return y.astype(np.float32)


def crop_to_multiple(x: np.ndarray, r: int) -> np.ndarray:
    return x[: len(x) - len(x) % r]


def degrade_methods(spec: str) -> tuple[str, ...]:
    """The methods of a recipe's ``degrade``: one name, or several joined by "+" (``decimate+resample``:
    every file is degraded each way, so a model learns both low-passes)."""
    methods = tuple(str(spec).split("+"))
    bad = [m for m in methods if m not in DEGRADE_METHODS]
    if bad or len(set(methods)) != len(methods):
        raise AfilmError(f"unknown degradation {spec!r}; known: {', '.join(DEGRADE_METHODS)}, or several "
                         "of them joined by + (each once), e.g. decimate+resample")
    return methods


def degrade(x: np.ndarray, r: int, method: str = "decimate") -> np.ndarray:
    """High-rate mono signal -> low-rate signal of len(x)//r samples (x should be a multiple of r).

    decimate: Chebyshev-I order 8, zero-phase, then every r-th sample (scipy.signal.decimate): flat
    to 0.8 of the low-rate Nyquist, then a steep roll-off (the reference's recipe);
    resample: scipy.signal.resample_poly (Kaiser 5.0 FIR, afilm's own resampler): flat to about 0.9
    of the low-rate Nyquist: what ``afilm upsample`` applies to real input on its way to the low rate;
    subsample: plain x[::r], no anti-alias filter.
    """
    if method not in DEGRADE_METHODS:
        raise AfilmError(f"unknown degradation {method!r}; known: {', '.join(DEGRADE_METHODS)}")
    if r < 1:
        raise AfilmError(f"r must be >= 1, got {r}")
    x = np.asarray(x, dtype=np.float32)
    if r == 1:
        return x.copy()
    if method == "subsample":
        return np.ascontiguousarray(x[::r])
    if method == "resample":
        return signal.resample_poly(x.astype(np.float64), 1, r).astype(np.float32)
    # filtfilt needs the signal to be longer than its padding (27 samples for order 8)
    if len(x) <= 27:
        raise AfilmError(f"signal of {len(x)} samples is too short to decimate")
    return signal.decimate(x.astype(np.float64), r).astype(np.float32)


def spline_up(x_lr: np.ndarray, r: int, n: int | None = None) -> np.ndarray:
    """Cubic spline through LR sample k placed at HR index k*r, evaluated at 0..n-1.

    As the reference: ``splrep(k*r, x_lr)`` (k=3, s=0); the last r-1 samples are extrapolated.
    ``n`` defaults to len(x_lr) * r.
    """
    x_lr = np.asarray(x_lr, dtype=np.float64).ravel()
    n = len(x_lr) * r if n is None else n
    return spline_segment(x_lr, r, 0, n).astype(np.float32)


def spline_segment(x_lr: np.ndarray, r: int, start: int, stop: int) -> np.ndarray:
    """Values at HR indices start..stop-1 (float64) of the cubic spline through ``x_lr[k]`` at k*r.

    splrep's interpolating spline (k=3, s=0) is the not-a-knot cubic through the samples, so
    CubicSpline's tridiagonal solve gives the same curve (to ~1e-15) about 3x faster. The samples
    are evaluated one interval at a time: the r points of an interval are its cubic at offsets
    0..r-1, one (intervals x 4) @ (4 x r) product instead of a search per sample. Points past the
    last knot extrapolate the last cubic, as splev does.
    """
    x_lr = np.asarray(x_lr, dtype=np.float64).ravel()
    m = len(x_lr)
    if m < 4:
        raise AfilmError(f"signal of {m} low-rate samples is too short for a cubic spline (it needs 4)")
    out = np.empty(max(0, stop - start))
    if stop <= start:
        return out
    spline = interpolate.CubicSpline(np.arange(m) * r, x_lr)  # not-a-knot == splrep(k=3, s=0)
    p0, p1 = start // r, min(m - 1, -(-stop // r))  # intervals [p*r, (p+1)*r) that hold wanted points
    if p1 > p0:
        offsets = np.arange(r, dtype=np.float64)
        powers = np.stack([offsets**3, offsets**2, offsets, np.ones(r)])  # c[0] multiplies (x - x_p)^3
        grid = (spline.c[:, p0:p1].T @ powers).ravel()  # HR indices p0*r .. p1*r - 1
        lo, hi = start - p0 * r, min(stop, p1 * r) - p0 * r
        out[: hi - lo] = grid[lo:hi]
    done = max(start, p1 * r)  # the last knot and the extrapolated tail
    if done < stop:
        out[done - start:] = spline(np.arange(done, stop, dtype=np.float64))
    return out


def simulate_lr(x_hr: np.ndarray, r: int, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference recipe steps 2-4 on a mono HR signal: (hr cropped to a multiple of r, lr, spline)."""
    hr = crop_to_multiple(np.asarray(x_hr, dtype=np.float32), r)
    lr = degrade(hr, r, method)
    return hr, lr, spline_up(lr, r, len(hr))

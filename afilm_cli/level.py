"""Input level matching: the model sees its input at the level of its training data.

The models are not scale-invariant: on 100 held-out speech files the bundled afilm_speech_r4 scored
10.80 dB SNR at their own level, 10.34 dB 40 dB quieter and 5.04 dB 60 dB quieter, where the cubic
spline (linear) scores 10.11 dB at any level. So training records the RMS level of its training patches (the
checkpoint's ``input_level_dbfs``), and inference scales each window of the spline signal the model
sees to that level and scales its output back (window_gains): a quiet recording is upsampled as well
as a loud one, and a passage 60 dB below the rest of its file, which a whole channel's gain left 1.4 dB
below the spline on average, as it would be alone (benchmarks/quiet_passage.py). Each window is
centred first (:func:`centre`) and its mean added back after: the training data has none, and the
model's edges rang on an offset (a constant 1.0 came out peaking at 1.234). A channel, or a
window, of digital silence comes out silent. Level = RMS over the whole channel or window, in dB
relative to full scale (a full-scale sine: -3 dBFS).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from afilm_cli.stages import Stage

# below this, a channel is taken as silence and left as it is (no gain to match: 0 * g is still 0)
SILENCE_DBFS = -120.0
_BLOCK = 1 << 16  # frames per read when measuring a stage


def dbfs(mean_square: float) -> float:
    return 10 * math.log10(mean_square) if mean_square > 0 else -math.inf


def stage_level(stage: Stage, length: int) -> np.ndarray:
    """RMS level (dBFS) of each channel of ``stage`` over [0, length), read block by block."""
    acc = np.zeros(stage.channels)
    for start in range(0, length, _BLOCK):
        acc += np.square(stage.read(start, min(start + _BLOCK, length))).sum(axis=0)
    return np.array([dbfs(a / max(length, 1)) for a in acc])


def patches_level(data, chunk: int = 256, most: int | None = None) -> float:
    """RMS level (dBFS) over all samples of an (N, patch[, 1]) array or HDF5 dataset of patches; with
    ``most``, over at most that many blocks of ``chunk`` patches spread evenly over the file (a file
    read from disk is not read whole for it before training starts)."""
    starts = range(0, len(data), chunk)
    if most is not None and len(starts) > most:
        starts = [starts[k * len(starts) // most] for k in range(most)]
    total, count = 0.0, 0
    for i in starts:
        block = np.asarray(data[i : i + chunk], dtype=np.float64)
        total += float(np.square(block).sum())
        count += block.size
    return dbfs(total / max(count, 1))


def matching_gains(levels: np.ndarray, target: float) -> np.ndarray:
    """Per-channel gains that bring ``levels`` (dBFS) to ``target``; 1 for silent channels."""
    return np.array([1.0 if lv < SILENCE_DBFS else 10 ** ((target - lv) / 20) for lv in levels])


def window_gains(windows: np.ndarray, target: float) -> tuple[np.ndarray, np.ndarray]:
    """For each window of a batch, (n, 1, W): the gain that brings it to the RMS level ``target``
    (dBFS), and what its output is multiplied by (:func:`output_gains`: back to its own level, 0 for a
    window of digital silence). A passage much quieter than the rest of its file reaches the model at
    the level it was trained at, as the whole file's level alone did not bring it (see run_windows)."""
    mean_square = np.mean(np.square(windows, dtype=np.float64), axis=(1, 2))
    levels = np.array([dbfs(m) for m in mean_square])
    gains = matching_gains(levels, target)
    return gains.astype(np.float32), output_gains(levels, gains).astype(np.float32)


def output_gains(levels: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """What each channel of the model's output is multiplied by: 1 / its input gain (back to its own
    level), and 0 for a silent channel (below SILENCE_DBFS): the spline of silence is silence, where
    the model alone adds what its biases make of it (peak -58 dBFS for afilm_speech_r4, measured)."""
    return np.where(np.asarray(levels) < SILENCE_DBFS, 0.0, 1.0 / np.asarray(gains))


def unscaled(blocks: Iterator[np.ndarray], factors: np.ndarray) -> Iterator[np.ndarray]:
    """The model's output blocks times ``factors`` per channel (:func:`output_gains`)."""
    factors = np.asarray(factors, dtype=np.float32)
    for block in blocks:
        yield block * factors


def centre(windows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Subtract from each window of a batch, (n, 1, W) in place, the mean of its first ``lengths[i]``
    samples (the signal; the zeros past its end stay zero), and return those means, (n, 1, 1)."""
    n, _, W = windows.shape
    real = np.arange(W)[None, None, :] < np.asarray(lengths)[:, None, None]
    means = (windows.sum(axis=2, dtype=np.float64, where=real, keepdims=True)
             / np.maximum(np.asarray(lengths), 1)[:, None, None])
    np.subtract(windows, means.astype(windows.dtype), out=windows, where=real)
    return means.astype(np.float32)

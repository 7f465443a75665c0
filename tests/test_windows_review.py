"""Review by use of upsample's windows (afilm_cli/windows.py): the cases a demanding user hits, with tiny
models and short audio (the bundled model's figures are in the review report, not re-measured here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afilm_cli import infer
from afilm_cli.checkpoint import make_checkpoint, save_checkpoint
from afilm_cli.models import create_model
from afilm_cli.stages import ArraySource
from afilm_cli.windows import FP32_ATOL, plan_windows, run_windows

RECIPE = {"r": 4, "sr": 16000, "degrade": "decimate", "patch": 8192}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """afilm_tiny with a recorded training level, so the level matching runs as for the bundled models."""
    torch.manual_seed(0)
    ckpt = make_checkpoint(create_model("afilm_tiny"), RECIPE, input_level_dbfs=-24.4)
    return infer.load_model(save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", ckpt))


def speechy(n: int, seed: int = 0) -> np.ndarray:
    """Low-rate noise shaped to a speech-like envelope (loud and quiet stretches)."""
    rng = np.random.default_rng(seed)
    env = 0.05 + 0.3 * np.abs(np.sin(np.arange(n) / 700.0))
    return (rng.standard_normal(n) * env * 0.3).astype(np.float32)


@pytest.mark.parametrize("multiple", [1, 3, 64, 256, 1000])
def test_every_sample_gets_weight_and_windows_stay_on_the_block_grid(multiple):
    """For awkward lengths and windows (1, 2, the multiple +-1, the window +-1, exact multiples of it):
    every output sample has summed weight >= 1 (never divided by ~0), windows start strictly one after
    another, on the model's block grid, and the last one ends where a whole-signal pass would."""
    for window in (1, 2, 255, 256, 257, 511, 513, 8191, 8192, 8193):
        for length in (1, 2, 255, 256, 257, 8191, 8192, 8193, 16384, 24576, 24577, 50_001):
            plan = plan_windows(length, multiple, window)
            starts = plan.starts(length)
            total = np.zeros(starts[-1] + plan.window)
            for k, s in enumerate(starts):
                total[s : s + plan.window] += plan.weights(starts, k)
            where = (length, multiple, window, plan)
            assert total[:length].min() > 1 - 1e-9, where
            assert (np.diff(starts) > 0).all(), where
            assert starts[-1] + plan.window == -(-length // multiple) * multiple, where
            assert plan.window % multiple == 0 and all(s % multiple == 0 for s in starts), where


@pytest.mark.parametrize("n", [4, 5, 255, 256, 257, 2047, 2048, 2049, 4096, 6144, 6145])
def test_output_is_exactly_r_times_the_input(tiny, n):
    """Lengths around the spline's minimum, the model's block (256), one window (2048 low-rate samples
    = 8192 out) and its multiples: exactly 4 n samples out, finite."""
    y = infer.upsample_array(speechy(n), 4000, tiny, threads=1)
    assert y.shape == (4 * n,) and np.isfinite(y).all()


def test_window_and_batch_extremes(tiny):
    """--window 1 (rounded up to two blocks) and a window far longer than the file (one pass over it),
    --batch-size 1 and far above the window count: all run, the right length, and the batch size
    changes nothing beyond float rounding."""
    x = speechy(5003, 1)
    ref = infer.upsample_array(x, 4000, tiny, threads=1)
    for kw in ({"batch_size": 1}, {"batch_size": 10**5}, {"batch_size": 3}):
        np.testing.assert_allclose(infer.upsample_array(x, 4000, tiny, threads=1, **kw), ref,
                                   atol=FP32_ATOL, err_msg=str(kw))
    for window in (1, 255, 257, 10**9):
        y = infer.upsample_array(x, 4000, tiny, threads=1, window=window)
        assert y.shape == ref.shape and np.isfinite(y).all(), window
    # a window longer than the file is one pass over it: the same as asking for its exact length
    np.testing.assert_array_equal(infer.upsample_array(x, 4000, tiny, threads=1, window=10**9),
                                  infer.upsample_array(x, 4000, tiny, threads=1, window=4 * len(x)))


def test_six_channels_of_different_levels_each_match_their_own_mono_run(tiny):
    """2 and 6 channels, 60 dB apart, one silent, one 10x louder: each channel comes out as it does
    alone, at its own level; the silent one silent; whatever the batch size (channels share batches)."""
    chans = [speechy(6000, s) for s in range(6)]
    scales = [1.0, 0.3, 1e-3, 0.0, 3.0, 1.0]
    mono = [infer.upsample_array(c, 4000, tiny, threads=1) for c in chans]
    x = np.stack([c * s for c, s in zip(chans, scales, strict=True)], axis=1)
    for batch in (1, 5, 16):
        y = infer.upsample_array(x, 4000, tiny, threads=1, batch_size=batch)
        assert y.shape == (4 * 6000, 6)
        for c, s in enumerate(scales):
            tol = 1e-5 * max(s, 1e-12) * np.abs(mono[c]).max()
            np.testing.assert_allclose(y[:, c], mono[c] * s, atol=tol, err_msg=f"channel {c}, batch {batch}")
        assert not y[:, 3].any()
    y2 = infer.upsample_array(x[:, :2], 4000, tiny, threads=1)
    np.testing.assert_allclose(y2, y[:, :2], atol=1e-6)


class WindowLevel(torch.nn.Module):
    """Adds half of each window's RMS: an output that differs from window to window by a known offset,
    as a non-local model's does (AFiLM's attention spans its window)."""

    length_multiple = 256

    def forward(self, x):
        return x + 0.5 * x.pow(2).mean(dim=-1, keepdim=True).sqrt()


def test_windows_that_disagree_are_cross_faded_without_clicks():
    """Where two windows' outputs disagree, the join ramps from one to the other over the fade: the
    largest sample-to-sample step of what the model added is a small part of the disagreement (a hard
    cut, as the reference's windows, would step by all of it)."""
    x = np.repeat(speechy(12_000, 2), 4) * np.linspace(0.2, 4.0, 48_000)  # windows of rising level
    plan = plan_windows(len(x), 256, 8192)
    starts = plan.starts(len(x))
    y = np.concatenate(list(run_windows(WindowLevel(), ArraySource(x), len(x), plan, threads=1)))[:, 0]
    offsets = [0.5 * np.sqrt(np.mean(x[s : s + plan.window] ** 2)) for s in starts]
    jump = np.abs(np.diff(offsets)).max()
    assert len(starts) >= 5 and jump > 0.005
    assert np.abs(np.diff(y - x)).max() < jump / 50, (np.abs(np.diff(y - x)).max(), jump)


def test_threads_and_reruns_agree(tiny):
    x = speechy(9000, 3)
    src = ArraySource(np.repeat(x, 4)[:, None].astype(np.float64))
    plan = infer.window_plan_for(tiny, 36_000)

    def run(threads):
        return np.concatenate(list(run_windows(tiny.model, src, 36_000, plan, batch_size=4, threads=threads)))

    one = run(1)
    np.testing.assert_array_equal(run(1), one)  # a rerun is bit for bit
    np.testing.assert_allclose(run(2), one, atol=FP32_ATOL)

"""pytest-benchmark timings of the tiny presets: windowed inference (the `afilm upsample` path) and one
training step. The same measurements as ``afilm bench --model --train`` (afilm_cli/bench.py).

Run: ``pytest benchmarks/test_bench_model.py`` (``--benchmark-json out.json`` to keep the numbers).
Inference: a 4-second synthetic 4 kHz clip -> 16 kHz, windows of 8192 samples, batch 16; the real-time
factor is in each benchmark's extra_info. Training: batch 4 (16 on CUDA) of 8192-sample patches.
"""

from __future__ import annotations

import pytest
import torch

from afilm_cli import bench, infer
from afilm_cli.models import create_model

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
SECONDS = 4.0
PRESETS = ("afilm_tiny", "tfilm_tiny")


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("threads", ["auto", 1])
def test_inference(benchmark, name, threads):
    torch.manual_seed(0)
    loaded = infer.Loaded(create_model(name).to(DEVICE).eval(), dict(bench.RECIPE), None, {})
    lr = bench.synthetic_speech(SECONDS, bench.SR // bench.R)

    def run():
        spline, length = infer.real_pipeline(infer.ArraySource(lr), bench.SR // bench.R, loaded)
        plan = infer.window_plan_for(loaded, length)
        return sum(len(b) for b in infer.model_windows(loaded, spline, length, plan, batch_size=16,
                                                       device=DEVICE, threads=threads))

    assert benchmark.pedantic(run, rounds=3, warmup_rounds=1) == SECONDS * bench.SR
    benchmark.extra_info.update(clip_s=SECONDS, window=8192, batch_size=16, threads=threads)
    if benchmark.stats:  # None under --benchmark-disable (the run is then a plain test)
        benchmark.extra_info["x_realtime"] = SECONDS / benchmark.stats.stats.median


@pytest.mark.parametrize("name", PRESETS)
def test_train_step(benchmark, name):
    torch.manual_seed(0)
    model = create_model(name).to(DEVICE).train()
    batch = 16 if CUDA else 4
    x = torch.randn(batch, 1, 8192, device=DEVICE) * 0.1
    step = bench.train_step(model, torch.optim.Adam(model.parameters(), lr=3e-4), x, x * 0.9, DEVICE)

    def run():
        step()
        if CUDA:
            torch.cuda.synchronize()

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(batch=batch, patch=8192)
    if benchmark.stats:
        benchmark.extra_info["patches_per_s"] = batch / benchmark.stats.stats.median
    # the timed step trained: the weights stayed finite, and the first and last stages moved (TFiLM's
    # deep-layer gradients underflow to zero at init, see tests/test_models.py)
    after = dict(model.named_parameters())
    assert all(torch.isfinite(p).all() for p in after.values())
    ends = [n for n in after if n.startswith(("down.0.", "final."))]
    assert ends and all(not torch.equal(before[n], after[n]) for n in ends), ends

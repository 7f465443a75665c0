"""pytest-benchmark timings of the block pooling / FiLM ops (forward + backward), reference and Triton.

Run: ``pytest benchmarks/test_bench_kernels.py`` (``--benchmark-json out.json`` to keep the numbers).
The full table (Triton vs eager vs torch.compile at every layer shape) is ``afilm bench --kernels``.
On CPU the reference runs at batch 2; on CUDA both paths run at the paper's batch 16.
pytest-benchmark times wall-clock calls: on CUDA that is the launch time (CPU overhead included), so
each CUDA case also records the GPU time of a call replayed in a CUDA graph in ``extra_info``
(``graph_ms``, or ``graph_error`` when the capture fails).
"""

from __future__ import annotations

import pytest
import torch

from kernels.benchmark import LAYERS, graph_time_ms, make_inputs, op_function, timed_callable

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
BATCH = 16 if CUDA else 2
SHAPES = {name: (C, T, block, path) for name, C, T, block, path in LAYERS if name in ("D1", "D3", "U1")}
CASES = [("layer", "D1"), ("layer", "U1"), ("block_film", "D3"), ("block_max_pool", "U1"),
         ("pool_act_block_max", "D1"), ("block_film_concat", "U1")]


def _bench(benchmark, provider, op, layer):
    C, T, block, path = SHAPES[layer]
    inputs = make_inputs(op, path, BATCH, C, T, block, torch.float32, DEVICE)
    step = timed_callable(op_function(provider, op, path), inputs, "fwd+bwd")

    def run():
        step()
        if CUDA:
            torch.cuda.synchronize()

    benchmark.extra_info.update(layer=layer, op=op, batch=BATCH, C=C, T=T, block=block, device=DEVICE.type)
    benchmark(run)
    # what was timed did the work: a gradient for every input that needs one, finite and not all zero
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = step()
    assert len(grads) == len(leaves) > 0
    for g, leaf in zip(grads, leaves, strict=True):
        assert g.shape == leaf.shape and torch.isfinite(g).all() and g.abs().sum() > 0
    if CUDA:
        try:
            benchmark.extra_info["graph_ms"] = graph_time_ms(step)[0]
        except Exception as e:  # noqa: BLE001 - a capture failure is a finding, not a failed timing
            benchmark.extra_info["graph_error"] = f"{type(e).__name__}: {e}"[:300]


@pytest.mark.parametrize("op, layer", CASES, ids=[f"{op}-{layer}" for op, layer in CASES])
def test_reference_fwd_bwd(benchmark, op, layer):
    _bench(benchmark, "eager", op, layer)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="Triton kernels need CUDA")
@pytest.mark.parametrize("op, layer", CASES, ids=[f"{op}-{layer}" for op, layer in CASES])
def test_triton_fwd_bwd(benchmark, op, layer):
    _bench(benchmark, "triton", op, layer)

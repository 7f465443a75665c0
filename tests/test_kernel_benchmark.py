"""kernels/benchmark.py and the `afilm bench --kernels` table: the two timers (launch and CUDA graph),
the row fields built from them (GB/s from the graph time, both eager ratios), capture errors recorded
per row, and the table. On CPU the timers are injected fakes (the Triton provider runs through the
interpreter at a tiny shape); the `gpu` test runs the real CUDA-graph timer."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

import kernels.benchmark as kb
from afilm_cli.bench import _kernel_rows
from afilm_cli.commands.bench import _table

CUDA = torch.cuda.is_available()
TINY = (("D1", 4, 64, 8, "down"), ("U1", 4, 64, 8, "up"))  # one Triton program per kernel call


class FakeTimer:
    """Runs the callable once (it must work) and returns the next preset time per provider; the
    providers of an (op, mode) come in the run's order, eager first. ``fail`` = call numbers that raise."""

    def __init__(self, times: dict[str, float], order: list[str], fail: tuple[int, ...] = ()):
        self.times, self.order, self.fail, self.calls = times, order, fail, 0

    def __call__(self, fn):
        self.calls += 1
        fn()
        if self.calls in self.fail:
            raise RuntimeError("operation not permitted when stream is capturing\nsecond line")
        t = self.times[self.order[(self.calls - 1) % len(self.order)]]
        return t, 0.9 * t, 1.2 * t


@pytest.fixture
def tiny_triton(monkeypatch):
    """Tiny layer shapes, and the Triton providers on (through the interpreter on CPU)."""
    monkeypatch.setattr(kb, "LAYERS", TINY)
    if not CUDA:
        monkeypatch.setattr(kb, "triton_unavailable_reason", lambda device: None)


def run_tiny(launch, graph, modes=("fwd+bwd",), ops=("block_film",)):
    return kb.run_kernel_benchmarks(batch=1, device="cpu", layers=["D1"], ops=ops, modes=modes,
                                    compile=False, launch_timer=launch, graph_timer=graph)


def test_graph_time_gives_gbps_and_both_ratios(tiny_triton):
    order = ["eager", "triton"]
    rows = run_tiny(FakeTimer({"eager": 10.0, "triton": 4.0}, order),
                    FakeTimer({"eager": 0.3, "triton": 0.1}, order), modes=("fwd", "bwd", "fwd+bwd"))
    assert [(r["mode"], r["provider"]) for r in rows] == [(m, p) for m in kb.MODES for p in order]
    for r in rows:
        assert "error" not in r and "graph_error" not in r, r
        graph_ms = 0.3 if r["provider"] == "eager" else 0.1
        assert (r["graph_ms_median"], r["graph_ms_min"], r["graph_ms_max"]) == pytest.approx(
            (graph_ms, 0.9 * graph_ms, 1.2 * graph_ms))
        assert r["launch_ms_median"] == (10.0 if r["provider"] == "eager" else 4.0)
        assert r["bytes"] == kb.bytes_moved("block_film", "down", r["mode"], 1, 4, 64, 8, 4) > 0
        assert r["gbps"] == pytest.approx(r["bytes"] / (graph_ms * 1e-3) / 1e9)  # the graph time, not launch
        assert r["gbps_timer"] == "graph" and r["pct_peak"] is None and r["copies"] == 1
        want = (1.0, 1.0) if r["provider"] == "eager" else (3.0, 2.5)
        assert (r["x_eager"], r["x_eager_launch"]) == pytest.approx(want)


def test_capture_error_is_recorded_per_row_and_the_run_goes_on(tiny_triton):
    order = ["eager", "triton", "triton_unfused"]
    launch = FakeTimer({"eager": 10.0, "triton": 4.0, "triton_unfused": 5.0}, order)
    graph = FakeTimer({"eager": 0.3, "triton": 0.1, "triton_unfused": 0.2}, order, fail=(2,))
    rows = run_tiny(launch, graph, ops=("pool_act_block_max",))
    assert [r["provider"] for r in rows] == order  # the failing row did not stop the others
    eager, failed, unfused = rows
    assert failed["graph_error"] == "RuntimeError: operation not permitted when stream is capturing"
    assert failed["graph_ms_median"] is None and failed["x_eager"] is None
    assert failed["launch_ms_median"] == 4.0 and failed["x_eager_launch"] == pytest.approx(2.5)
    assert failed["gbps_timer"] == "launch"
    assert failed["gbps"] == pytest.approx(failed["bytes"] / 4e-3 / 1e9)
    assert "graph_error" not in unfused and unfused["x_eager"] == pytest.approx(1.5)
    assert unfused["gbps_timer"] == "graph"

    # the report rows and the table: the GPU time is the row's median; the failure shows, in red
    cli = _kernel_rows(rows)
    assert [r["timer"] for r in cli] == ["cuda graph"] * 3
    assert cli[1]["median"] is None and cli[1]["graph_error"].startswith("RuntimeError")
    assert (cli[2]["median"], cli[2]["ratio"], cli[2]["launch_median"], cli[2]["launch_ratio"]) == \
        pytest.approx((0.2, 1.5, 5.0, 2.0))
    text = render(cli, "a note")
    for col in ("GPU ms", "x eager", "GB/s", "launch ms", "x eager (launch)", "error"):
        assert col in text, text
    flat = " ".join(text.split())  # cells and caption may wrap
    assert "failed" in text and "operation not permitted" in flat and "a note" in flat
    assert "from the launch time" in flat  # the failed row's GB/s is marked


def test_launch_failure_is_an_error_row(tiny_triton):
    def launch(fn):
        raise RuntimeError("no compiler")

    rows = run_tiny(launch, FakeTimer({"eager": 1.0, "triton": 1.0}, ["eager", "triton"]))
    assert [r["error"] for r in rows] == ["RuntimeError: no compiler"] * 2
    assert all("launch_ms_median" not in r for r in rows)
    assert "no compiler" in render(_kernel_rows(rows), None)


def test_without_graph_timer_rows_are_launch_only():
    """No CUDA: the reference only, launch (perf_counter) timing, nothing about graphs in the table."""
    rows = kb.run_kernel_benchmarks(batch=1, device="cpu", quick=True, layers=["U1"],
                                    ops=["block_max_pool"], modes=["fwd"], repeats=2)
    (r,) = rows
    assert r["provider"] == "eager" and r["graph_ms_median"] is None and r["x_eager"] is None
    assert r["gbps_timer"] == "launch" and r["x_eager_launch"] == 1.0 and r["launch_ms_median"] > 0
    assert r["gbps"] == pytest.approx(r["bytes"] / (r["launch_ms_median"] * 1e-3) / 1e9)
    (cli,) = _kernel_rows(rows)
    assert cli["timer"] == "launch" and cli["median"] == r["launch_ms_median"] == cli["launch_median"]
    assert cli["ratio"] == 1.0 and cli["min"] <= cli["median"] <= cli["max"]
    text = render([cli], "Triton kernels need CUDA")
    assert "GPU ms" not in text and "launch ms" not in text and " ms " in text
    assert "x eager" not in text and "1.00x" not in text  # eager alone: no column of ratios to itself
    launch_only = [{**cli, "variant": "triton", "ratio": 2.0}, cli]  # compared, without graphs
    assert "x eager" in render(launch_only, None) and "2.00x" in render(launch_only, None)
    assert "Triton kernels need CUDA" in " ".join(text.split())  # the caption may wrap


def test_input_copies_round_robin_and_clones():
    mb = 1 << 20
    assert kb.input_copies(10 * mb, None) == 1
    assert kb.input_copies(10 * mb, 50 * mb) == 11  # 100 MB of other traffic between two uses
    assert kb.input_copies(400 * mb, 50 * mb) == 2
    assert kb.input_copies(1, 50 * mb) == 64  # capped
    seen = []
    cycle = kb.round_robin([lambda: seen.append(0), lambda: seen.append(1), lambda: seen.append(2)])
    for _ in range(7):
        cycle()
    assert seen == [0, 1, 2, 0, 1, 2, 0]
    x = torch.randn(3, requires_grad=True)
    y, block = kb.clone_inputs([x, 8])
    assert block == 8 and y.requires_grad and y.is_leaf and torch.equal(x, y)
    assert y.data_ptr() != x.data_ptr()


def render(rows, note) -> str:
    console = Console(record=True, width=200)
    console.print(_table("kernels", rows, note))
    return console.export_text()


# ---------------------------------------------------------------------------------------------------
# CUDA: the real CUDA-graph timer, and what a captured Triton fwd+bwd / bwd computes

def _replayed(fn):
    """fn's outputs from a replay of a CUDA graph of one call (captured on torch.cuda.graph's stream)."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()  # static tensors: only the replay fills them
    g.replay()
    torch.cuda.synchronize()
    return out


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_graph_timer_runs_and_captured_triton_matches_the_reference():
    rows = kb.run_kernel_benchmarks(batch=2, device="cuda", layers=["B"], ops=["layer", "block_film"],
                                    compile=False, repeats=5)
    assert {r["provider"] for r in rows} == {"eager", "triton", "triton_unfused"}
    for r in rows:
        assert "error" not in r and "graph_error" not in r, r
        assert 0 < r["graph_ms_min"] <= r["graph_ms_median"] <= r["graph_ms_max"], r
        assert r["launch_ms_median"] > 0 and r["gbps_timer"] == "graph" and r["copies"] >= 1
        assert r["x_eager"] > 0 and r["x_eager_launch"] > 0
    med = kb.graph_time_ms(lambda: torch.ones(1 << 20, device="cuda").sum(), rep=5)
    assert all(t > 0 for t in med)

    _, C, T, block, path = next(layer for layer in kb.LAYERS if layer[0] == "B")
    stream = kb.capture_stream()
    for op in ("layer", "block_film"):
        for mode in ("fwd+bwd", "bwd"):
            results = {}
            for provider in ("eager", "triton"):
                inputs = kb.make_inputs(op, path, 2, C, T, block, torch.float32, "cuda")
                torch.manual_seed(0)  # the same grad_outputs for both providers
                fn = kb.timed_callable(kb.op_function(provider, op, path), inputs, mode, stream)
                results[provider] = fn() if provider == "eager" else _replayed(fn)
            for got, want in zip(results["triton"], results["eager"], strict=True):
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3, msg=f"{op} {mode}")


def test_layer_traffic_counts_each_stage_design():
    """The minimum DRAM traffic the % of bandwidth is computed from: D1's shape, fp32, counted by hand."""
    B, C, T, block, e = 16, 128, 4096, 128, 4
    n, nb = B * C * T, B * C * (T // block)
    idx = nb * (e + 4)
    # down forward: read h (2n), write a (n), the mask byte, block max + argmax; FiLM: read a and the
    # scale, write y; mix: read the maxima and w, write the scale
    fwd = (3 * n * e + n + idx) + (2 * n * e + nb * e) + 3 * nb * e
    # down backward, linked: d(scale) reads dy and a; the pass writing dh (2n) reads dy again, the
    # scale, the mask and the maxima's gradient + argmax; mix backward
    bwd = (2 * n * e + 2 * nb * e) + (n * e + nb * e + n + idx + 2 * n * e) + 5 * nb * e
    assert kb.bytes_moved("layer", "down", "fwd", B, C, T, block, e) == fwd
    assert kb.bytes_moved("layer", "down", "bwd", B, C, T, block, e) == bwd
    assert kb.bytes_moved("layer", "down", "fwd+bwd", B, C, T, block, e) == fwd + bwd

"""The model's inference forward captured once as a CUDA graph, then replayed batch after batch.

Eager inference launches every op of the U-Net from Python, one call each; for ops of this size the
call can cost more than the GPU work (the kernel benchmark's per-call vs CUDA-graph timings on an
H200, README "Benchmarks"). A replayed graph issues the whole forward in one call. Unlike
``torch.compile(mode="reduce-overhead")`` it needs no compiler and costs three warm-up forwards plus
one capture, so it can be on by default. What it gains for the whole model has not been timed yet.

The graph has fixed shapes (run_windows pads the last batch) and its own input and output buffers:
the output of one replay is overwritten by the next, so callers copy it out first (run_windows
enqueues that copy right after the replay, on the same stream).
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

GRAPH_MODES = ("auto", "on", "off")


class GraphedForward(torch.nn.Module):
    """``model`` on inputs of one fixed shape, replayed from a CUDA graph captured at construction."""

    def __init__(self, model: torch.nn.Module, shape: tuple[int, ...], device: torch.device,
                 autocast: torch.dtype | None = None, warmup: int = 3):
        super().__init__()
        self.model, self.shape = model.eval(), tuple(shape)
        cast = (lambda: torch.autocast("cuda", autocast)) if autocast else contextlib.nullcontext
        self.static_in = torch.zeros(self.shape, device=device)
        # warm-up on a side stream (cuDNN / cuBLAS pick and allocate their workspaces here, not in
        # the capture), as the CUDA graphs section of the PyTorch docs prescribes
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.inference_mode(), cast():
            for _ in range(warmup):
                self.model(self.static_in)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), cast(), torch.cuda.graph(self.graph):
            self.static_out = self.model(self.static_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != self.shape:
            raise ValueError(f"graph captured for input {self.shape}, got {tuple(x.shape)}")
        self.static_in.copy_(x)
        with torch.cuda.device(self.static_in.device):
            self.graph.replay()
        return self.static_out


def use_graphs(mode: str | bool | None, device: torch.device) -> bool:
    """Whether to capture: ``auto`` (None) and ``on`` mean on CUDA; ``off`` never. CPU: never."""
    if mode is True:
        mode = "on"
    elif mode is False:
        mode = "off"
    mode = mode or "auto"
    if mode not in GRAPH_MODES:
        from afilm_cli.errors import AfilmError

        raise AfilmError(f"unknown CUDA graphs setting {mode!r}; known: {', '.join(GRAPH_MODES)}")
    return mode != "off" and device.type == "cuda"


def graphed(model: torch.nn.Module, cache: dict, shape: tuple[int, ...], device: torch.device,
            autocast: torch.dtype | None) -> torch.nn.Module:
    """The cached graph of ``model`` for this shape and precision; captured on first use. A model that
    cannot be captured (an op that syncs with the CPU, say) runs eager, with one warning."""
    # a graph freezes the kernels chosen while it was captured: the kernel backend (AFILM_KERNEL) and
    # cuDNN's algorithm search are part of what it is, so a change to either captures a new one
    kernel = os.environ.get("AFILM_KERNEL", "").strip().lower() or "torch"
    key = (tuple(shape), str(device), autocast, kernel, torch.backends.cudnn.benchmark)
    if key not in cache:
        try:
            with torch.cuda.device(device):  # capture on the model's device (cuda:1 from a cuda:0 process)
                cache[key] = GraphedForward(model, shape, device, autocast)
        except Exception as e:  # noqa: BLE001 - any capture failure: eager still gives the right output
            warnings.warn(f"CUDA graph capture failed ({type(e).__name__}: {e}); running eager", stacklevel=2)
            torch.cuda.synchronize(device)
            cache[key] = model
    return cache[key]

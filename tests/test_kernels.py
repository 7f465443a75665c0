"""Triton kernels against the pure-torch reference: forward and every gradient, awkward shapes, dtypes.

On CPU the kernels run through the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
so grids stay small (a few rows of ~1000 samples). The `gpu` tests repeat the checks on CUDA at the
paper model's layer shapes.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

import kernels  # noqa: E402
from kernels import reference as R  # noqa: E402

K = importlib.import_module("kernels.block_film")  # the module, not the dispatched op of that name

pytestmark = pytest.mark.kernels

# the backward nodes of the Triton autograd.Functions: a graph holding none never reached the kernels
TRITON_NODES = {f"{c.__name__}Backward" for c in vars(K).values()
                if isinstance(c, type) and issubclass(c, torch.autograd.Function)}

CUDA = torch.cuda.is_available()

# (B, C, T, block): T not a multiple of block, primes, block 1, block > T, blocks longer than one chunk
SHAPES = [
    (2, 3, 1000, 24),
    (1, 5, 997, 7),
    (2, 2, 64, 1),
    (1, 3, 10, 16),
    (2, 2, 4096, 128),
    (1, 2, 2500, 1100),
]
SHAPE_IDS = [f"B{b}C{c}T{t}k{k}" for b, c, t, k in SHAPES]

# (dtype, atol, rtol): the kernels accumulate in fp32, so the only error is the final rounding
DTYPES = [
    (torch.float32, 1e-5, 1e-5),
    (torch.float16, 2e-3, 2e-3),
    (torch.bfloat16, 1.6e-2, 1e-2),
]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


def assert_close(actual, expected, atol, rtol, name="tensor"):
    """torch.allclose with a report of the first mismatches (index, actual, expected)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    bad = ~torch.isclose(a, e, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        idx = bad.nonzero()[:8]
        lines = [f"  {tuple(i.tolist())}: got {a[tuple(i)].item():.7g}, want {e[tuple(i)].item():.7g}"
                 for i in idx]
        raise AssertionError(f"{name}: {int(bad.sum())}/{bad.numel()} elements differ "
                             f"(atol={atol}, rtol={rtol}, max abs err {(a - e).abs().max().item():.3g}); "
                             "first:\n" + "\n".join(lines))


def _leaf(*shape, dtype, device="cpu", gen=None):
    return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype).requires_grad_()


def _run(fn, inputs, grads_out):
    """Outputs of fn(*inputs) and the gradients of every input for the given output gradients."""
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(outs, leaves, grads_out)
    return outs, grads


def _compare(kernel_fn, ref_fn, inputs, dtype, atol, rtol):
    """Kernel on the inputs vs the reference on the same values in fp32, same output gradients."""
    with torch.no_grad():
        probe = ref_fn(*inputs)
    probe = probe if isinstance(probe, tuple) else (probe,)
    gen = torch.Generator().manual_seed(1)
    grads_out = [torch.randn(p.shape, generator=gen).to(p.device, p.dtype) for p in probe]
    k_out, k_grads = _run(kernel_fn, inputs, grads_out)
    ref_in = [t.detach().float().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
              for t in inputs]
    r_out, r_grads = _run(ref_fn, ref_in, [g.float() for g in grads_out])
    for i, (k, r) in enumerate(zip(k_out, r_out, strict=True)):
        assert_close(k, r.to(k.dtype), atol, rtol, f"output {i}")
    for i, (k, r) in enumerate(zip(k_grads, r_grads, strict=True)):
        assert_close(k, r.to(k.dtype), atol, rtol, f"grad {i}")


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B, C, T, block", SHAPES, ids=SHAPE_IDS)
def test_block_max_pool(B, C, T, block, dtype, atol, rtol):
    gen = torch.Generator().manual_seed(0)
    x = _leaf(B, C, T, dtype=dtype, gen=gen)
    _compare(K.block_max_pool, R.block_max_pool, [x, block], dtype, atol, rtol)


@pytest.mark.parametrize("shift", [False, True], ids=["scale", "shift"])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B, C, T, block", SHAPES, ids=SHAPE_IDS)
def test_block_film(B, C, T, block, dtype, atol, rtol, shift):
    gen = torch.Generator().manual_seed(0)
    nb = -(-T // block)
    x = _leaf(B, C, T, dtype=dtype, gen=gen)
    scale = _leaf(B, C, nb, dtype=dtype, gen=gen)
    b = _leaf(B, C, nb, dtype=dtype, gen=gen) if shift else None
    # a dscale sums `block` products: allow for the reference's own rounding of long sums
    _compare(K.block_film, R.block_film, [x, scale, b, block], dtype, atol * 4, rtol)


@pytest.mark.parametrize("odd", [False, True], ids=["even", "odd"])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B, C, T, block", SHAPES, ids=SHAPE_IDS)
def test_pool_act_block_max(B, C, T, block, dtype, atol, rtol, odd):
    gen = torch.Generator().manual_seed(0)
    h = _leaf(B, C, 2 * T + int(odd), dtype=dtype, gen=gen)
    _compare(K.pool_act_block_max, R.pool_act_block_max, [h, block, 0.2], dtype, atol, rtol)


@pytest.mark.parametrize("shift", [False, True], ids=["scale", "shift"])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B, C, T, block", SHAPES[:4], ids=SHAPE_IDS[:4])
def test_block_film_concat(B, C, T, block, dtype, atol, rtol, shift):
    gen = torch.Generator().manual_seed(0)
    nb = -(-T // block)
    x = _leaf(B, C, T, dtype=dtype, gen=gen)
    scale = _leaf(B, C, nb, dtype=dtype, gen=gen)
    b = _leaf(B, C, nb, dtype=dtype, gen=gen) if shift else None
    skip = _leaf(B, C + 1, T, dtype=dtype, gen=gen)
    _compare(K.block_film_concat, R.block_film_concat, [x, scale, b, block, skip], dtype, atol * 4, rtol)


def _normaliser_leaves(B, C, T, block, dtype, shift, gen):
    """The stand-in normaliser's weights: w for the scale, b (with ``shift``) for the shift."""
    nb = -(-T // block)
    return _leaf(B, C, nb, dtype=dtype, gen=gen), _leaf(B, C, nb, dtype=dtype, gen=gen) if shift else None


def _pool_film(ns, block, mix=True):
    """ns.pool_film with a stand-in for the normaliser: with ``mix`` the scale of block k is built
    from the max of block k-1 (it needs the whole pooling, like the attention), else it ignores x."""
    def fn(x, w, b, skip):
        def scale_fn(p):
            scale = w * p.roll(1, -1) if mix else w * 1.5
            return scale, None if b is None else b * p
        return ns.pool_film(x, block, scale_fn, skip)
    return fn


@pytest.mark.parametrize("skip", [False, True], ids=["film", "concat"])
@pytest.mark.parametrize("shift", [False, True], ids=["scale", "shift"])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B, C, T, block", SHAPES[:4], ids=SHAPE_IDS[:4])
def test_pool_film(B, C, T, block, dtype, atol, rtol, shift, skip):
    gen = torch.Generator().manual_seed(0)
    x = _leaf(B, C, T, dtype=dtype, gen=gen)
    w, b = _normaliser_leaves(B, C, T, block, dtype, shift, gen)
    s = _leaf(B, C + 1, T, dtype=dtype, gen=gen) if skip else None
    _compare(_pool_film(K, block), _pool_film(R, block), [x, w, b, s], dtype, atol * 8, rtol * 2)


def _pool_act_film(ns, block):
    def fn(h, w, b):
        return ns.pool_act_film(h, block, 0.2, lambda a_down: (w * a_down.roll(1, -1),
                                                                None if b is None else b * a_down))
    return fn


@pytest.mark.parametrize("odd", [False, True], ids=["even", "odd"])
@pytest.mark.parametrize("shift", [False, True], ids=["scale", "shift"])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B, C, T, block", SHAPES[:4], ids=SHAPE_IDS[:4])
def test_pool_act_film(B, C, T, block, dtype, atol, rtol, shift, odd):
    gen = torch.Generator().manual_seed(0)
    h = _leaf(B, C, 2 * T + odd, dtype=dtype, gen=gen)
    w, b = _normaliser_leaves(B, C, T, block, dtype, shift, gen)
    fn = _pool_act_film(K, block)
    if dtype == torch.float32:
        assert type(fn(h, w, b).grad_fn).__name__ == "FiLMForPoolFunctionBackward"
    _compare(fn, _pool_act_film(R, block), [h, w, b], dtype, atol * 8, rtol * 2)


@pytest.mark.parametrize("mix", [True, False], ids=["scale-from-pool", "scale-ignores-pool"])
def test_pool_film_backward_is_one_pass_and_exact(mix):
    """The pooling's backward writes x's gradient (the modulation's backward leaves it unscaled), also
    when the scale ignores the pooled values, and again on a second backward of the same graph."""
    gen = torch.Generator().manual_seed(3)
    x, w = _leaf(2, 3, 100, dtype=torch.float32, gen=gen), _leaf(2, 3, 13, dtype=torch.float32, gen=gen)
    skip = _leaf(2, 2, 100, dtype=torch.float32, gen=gen)
    y = _pool_film(K, 8, mix)(x, w, None, skip)
    assert type(y.grad_fn).__name__ == "FiLMForPoolFunctionBackward"
    dy = torch.randn(y.shape, generator=gen)
    first = torch.autograd.grad(y, [x, w, skip], dy, retain_graph=True)
    second = torch.autograd.grad(y, [x, w, skip], dy)
    want = torch.autograd.grad(_pool_film(R, 8, mix)(x, w, None, skip), [x, w, skip], dy)
    for got in (first, second):
        for name, g, r in zip(("x", "w", "skip"), got, want, strict=True):
            assert_close(g, r, 1e-5, 1e-5, f"grad of {name}")


def test_pool_film_mixed_dtypes_and_no_grad():
    gen = torch.Generator().manual_seed(4)
    x = _leaf(1, 2, 64, dtype=torch.float16, gen=gen)
    w = _leaf(1, 2, 8, dtype=torch.float32, gen=gen)  # promotes the output: the plain modulation runs
    y = _pool_film(K, 8)(x, w, None, None)
    assert y.dtype == torch.float32 and type(y.grad_fn).__name__ == "BlockFiLMFunctionBackward"
    dy = torch.randn(y.shape, generator=gen)
    got = torch.autograd.grad(y, [x, w], dy)
    want = torch.autograd.grad(_pool_film(R, 8)(x, w, None, None), [x, w], dy)
    for name, g, r in zip(("x", "w"), got, want, strict=True):
        assert_close(g, r, 2e-3, 2e-3, f"grad of {name}")
    with torch.no_grad():
        assert_close(_pool_film(K, 8)(x, w, None, None), _pool_film(R, 8)(x, w, None, None), 1e-3, 1e-3, "y")


@pytest.mark.parametrize("T, block", [(96, 8), (50, 7), (3000, 2500)])
def test_ties_go_to_the_first_max(T, block):
    # few distinct values: many ties inside blocks, and (block 2500) across the 1024-sample chunks
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-2, 2, (2, 3, T), generator=gen).float().requires_grad_()
    _compare(K.block_max_pool, R.block_max_pool, [x, block], torch.float32, 0, 0)
    h = torch.randint(-2, 2, (2, 3, 2 * T), generator=gen).float().requires_grad_()
    _compare(K.pool_act_block_max, R.pool_act_block_max, [h, block, 0.2], torch.float32, 0, 0)
    flat = torch.zeros(1, 1, T, requires_grad=True)
    (g,) = torch.autograd.grad(K.block_max_pool(flat, block).sum(), flat)
    assert g[0, 0, ::block].eq(1).all() and g.sum().item() == -(-T // block)


def test_other_slopes_and_zero():
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(2, 2, 301, generator=gen)
    h[..., :40] = 0.0  # LeakyReLU's gradient at 0 takes the negative slope, as in torch
    for slope in (0.0, 0.2, 1.0, -0.5):
        _compare(K.pool_act_block_max, R.pool_act_block_max, [h.clone().requires_grad_(), 9, slope],
                 torch.float32, 1e-6, 1e-6)


def test_mixed_dtypes_promote_like_torch():
    gen = torch.Generator().manual_seed(5)
    x = _leaf(2, 3, 100, dtype=torch.bfloat16, gen=gen)
    scale = _leaf(2, 3, 13, dtype=torch.float32, gen=gen)
    skip = _leaf(2, 1, 100, dtype=torch.bfloat16, gen=gen)
    y = K.block_film_concat(x, scale, None, 8, skip)
    y_ref = R.block_film_concat(x, scale, None, 8, skip)
    assert y.dtype == y_ref.dtype == torch.float32
    assert_close(y, y_ref, 1e-6, 1e-6, "output")
    gx, gs, gk = torch.autograd.grad(y.sum(), (x, scale, skip))
    rx, rs, rk = torch.autograd.grad(y_ref.sum(), (x, scale, skip))
    assert (gx.dtype, gs.dtype, gk.dtype) == (torch.bfloat16, torch.float32, torch.bfloat16)
    for a, b, n in ((gx, rx, "dx"), (gs, rs, "dscale"), (gk, rk, "dskip")):
        assert_close(a, b, 1e-2, 1e-2, n)


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 200, 3, generator=gen).transpose(1, 2).requires_grad_()  # (2, 3, 200) strided
    scale = torch.randn(2, 9, 3, generator=gen).transpose(1, 2).requires_grad_()
    _compare(K.block_film, R.block_film, [x, scale, None, 24], torch.float32, 1e-5, 1e-5)
    _compare(K.block_max_pool, R.block_max_pool, [x, 24], torch.float32, 0, 0)


def test_only_some_inputs_need_grad():
    x = torch.randn(1, 2, 40)
    scale = torch.randn(1, 2, 5, requires_grad=True)
    skip = torch.randn(1, 2, 40, requires_grad=True)
    y = K.block_film_concat(x, scale, None, 8, skip)
    ds, dk = torch.autograd.grad(y.sum(), (scale, skip))
    assert_close(ds, x.view(1, 2, 5, 8).sum(-1), 1e-5, 1e-5, "dscale")
    assert dk.eq(1).all()


@pytest.mark.parametrize("impl", [K, R], ids=["triton", "reference"])
def test_bad_shapes_raise_clear_errors(impl):
    x = torch.randn(2, 3, 40)
    with pytest.raises(ValueError, match=r"\(B, C, T\)"):
        impl.block_max_pool(torch.randn(3, 40), 8)
    with pytest.raises(ValueError, match="block must be"):
        impl.block_max_pool(x, 0)
    with pytest.raises(ValueError, match=r"scale must be \(2, 3, 5\)"):
        impl.block_film(x, torch.randn(2, 3, 4), None, 8)
    with pytest.raises(ValueError, match=r"must be \(2, 3, 5\)"):
        impl.block_film(x, torch.randn(2, 3, 5), torch.randn(2, 3, 6), 8)
    with pytest.raises(ValueError, match=r"skip must be \(B, C_skip, T\)"):
        impl.block_film_concat(x, torch.randn(2, 3, 5), None, 8, torch.randn(2, 3, 41))
    with pytest.raises(ValueError, match="at least 2 samples"):
        impl.pool_act_block_max(torch.randn(1, 1, 1), 4)


def test_triton_specific_errors():
    for dtype in (torch.int64, torch.float64):  # the kernels compute in fp32: float64 would lose digits
        with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
            K.block_max_pool(torch.ones(1, 1, 8, dtype=dtype), 4)
    with pytest.raises(ValueError, match="block must be"):
        K.block_film(torch.randn(1, 1, 8), torch.randn(1, 1, 2), None, 4.0)


def test_empty_batch():
    x = torch.randn(0, 3, 50, requires_grad=True)
    assert K.block_max_pool(x, 8).shape == (0, 3, 7)
    assert K.block_film(x, torch.randn(0, 3, 7), None, 8).shape == (0, 3, 50)


@pytest.mark.parametrize("op, args", [
    ("block_max_pool", lambda: (torch.randn(1, 2, 11, dtype=torch.float64, requires_grad=True), 4)),
    ("block_film", lambda: (torch.randn(1, 2, 11, dtype=torch.float64, requires_grad=True),
                            torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True),
                            torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True), 4)),
    ("pool_act_block_max", lambda: (torch.randn(1, 2, 23, dtype=torch.float64, requires_grad=True), 4, 0.2)),
    ("block_film_concat", lambda: (torch.randn(1, 2, 11, dtype=torch.float64, requires_grad=True),
                                   torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True), None, 4,
                                   torch.randn(1, 3, 11, dtype=torch.float64, requires_grad=True))),
])
def test_reference_gradcheck(op, args):
    torch.manual_seed(0)
    assert torch.autograd.gradcheck(getattr(R, op), args())


def test_dispatch(monkeypatch):
    x = torch.randn(1, 2, 64)
    xg = x.clone().requires_grad_()
    monkeypatch.setenv("AFILM_KERNEL", "torch")
    assert kernels.backend_for(x) == "torch"
    assert type(kernels.block_max_pool(xg, 8).grad_fn).__name__ not in TRITON_NODES  # the reference ran
    monkeypatch.setenv("AFILM_KERNEL", "triton")
    assert kernels.backend_for(x) == "triton"
    assert_close(kernels.block_max_pool(x, 8), R.block_max_pool(x, 8), 0, 0, "dispatched")
    assert type(kernels.block_max_pool(xg, 8).grad_fn).__name__ == "BlockMaxPoolFunctionBackward"  # Triton
    monkeypatch.setenv("AFILM_KERNEL", "cuda")
    with pytest.raises(ValueError, match="AFILM_KERNEL"):
        kernels.backend_for(x)
    monkeypatch.delenv("AFILM_KERNEL")
    assert kernels.backend_for(x) == "torch"  # the reference is the default (kernels/__init__.py)
    # importing kernels/block_film.py must not replace the dispatched op of the same name
    assert callable(kernels.block_film) and kernels.triton_ops() is K


def _triton_nodes(y: torch.Tensor) -> set[str]:
    """The Triton autograd.Functions in y's graph (none: the model never reached the kernels)."""
    seen, stack, found = set(), [y.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ in TRITON_NODES:
            found.add(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return found


def _model_outputs_and_grads(monkeypatch, backend, model, x):
    monkeypatch.setenv("AFILM_KERNEL", backend)
    model.zero_grad()
    y = model(x)
    # the two backends must really differ: the Triton path puts its own Functions in the graph
    assert bool(_triton_nodes(y)) is (backend == "triton"), (backend, _triton_nodes(y))
    y.square().mean().backward()
    return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["afilm_tiny", "tfilm_tiny"])
def test_model_agrees_between_backends(monkeypatch, name):
    from afilm_cli.models import create_model

    torch.manual_seed(0)
    model = create_model(name).eval()  # eval: no dropout, so both passes see the same function
    x = torch.randn(2, 1, model.length_multiple, generator=torch.Generator().manual_seed(1))
    y_t, g_t = _model_outputs_and_grads(monkeypatch, "torch", model, x)
    y_k, g_k = _model_outputs_and_grads(monkeypatch, "triton", model, x)
    assert_close(y_k, y_t, 1e-5, 1e-4, "model output")
    assert g_t.keys() == g_k.keys() and g_t
    for name in g_t:
        assert_close(g_k[name], g_t[name], 1e-5, 1e-3, f"grad of {name}")


# ---------------------------------------------------------------------------------------------------
# Compile for an H100 (sm_90) without a GPU: the interpreter never compiles, so this is what catches
# code that only fails in the real compiler, and checks that the model's case vectorises.

_COMPILE_SCRIPT = textwrap.dedent("""
    import importlib, os, sys
    import triton
    import triton.backends.nvidia as nv
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    if not os.path.exists(os.path.join(os.path.dirname(nv.__file__), "bin", "ptxas")):
        sys.exit(77)
    K = importlib.import_module("kernels.block_film")
    assert not K.INTERPRET
    ints = ("n_total", "T", "nb", "T_in", "C", "y_batch_stride", "dy_batch_stride", "g_batch_stride")
    def sig(dt, **ptrs):
        ptrs = {k: "*" + (v or dt) for k, v in ptrs.items()}
        return {**ptrs, "n_total": "i32", "T": "i32", "nb": "i32"}
    for dt, block, even in (("fp32", 8, True), ("bf16", 128, True), ("fp16", 24, False),
                            ("fp32", 2048, True)):
        chunk = min(triton.next_power_of_2(block), K.MAX_CHUNK)
        cst = dict(BLOCK_LEN=block, EVEN=even, TILE=4096, CHUNK=chunk)
        film = dict(cst, HAS_SHIFT=True)
        cases = [
            (K._block_max_pool_fwd_kernel, sig(dt, X=None, Y=None, Arg="i32"), cst),
            (K._block_max_pool_bwd_kernel, sig(dt, DY=None, Arg="i32", DX=None), cst),
            (K._block_film_fwd_kernel, {**sig(dt, X=None, Scale="fp32", Shift=None, Y=None), "C": "i32",
                                        "y_batch_stride": "i32"}, film),
            (K._block_film_bwd_kernel, {**sig(dt, X=None, Scale=None, DY=None, DX=None, DScale=None,
                                              DShift=None), "C": "i32", "dy_batch_stride": "i32"},
             dict(film, STORE_DX=True)),
            (K._block_film_bwd_kernel, {**sig(dt, X=None, Scale=None, DY=None, DX=None, DScale=None,
                                              DShift=None), "C": "i32", "dy_batch_stride": "i32"},
             dict(film, STORE_DX=False)),
            (K._pool_film_dx_kernel, {**sig(dt, G=None, Scale=None, DPool=None, Arg="i32", DX=None),
                                      "C": "i32", "g_batch_stride": "i32"}, cst),
            (K._pool_act_block_max_fwd_kernel, {**sig(dt, H=None, A=None, Code="i8", ADown=None, Arg="i32"),
                                                "T_in": "i32", "slope": "fp32"}, cst),
            (K._pool_act_block_max_bwd_kernel, {**sig(dt, DA=None, DADown=None, Code="i8", Arg="i32",
                                                    DH=None, Scale=None), "T_in": "i32", "slope": "fp32"},
             dict(cst, SCALED=False)),
            (K._pool_act_block_max_bwd_kernel, {**sig(dt, DA=None, DADown=None, Code="i8", Arg="i32",
                                                    DH=None, Scale=None), "T_in": "i32", "slope": "fp32"},
             dict(cst, SCALED=True)),
        ]
        for kern, s, c in cases:
            fn = kern.fn
            attrs = {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k, v in s.items()
                     if v.startswith("*") or k in ints}
            src = ASTSource(fn, {**s, **{k: "constexpr" for k in c}}, constexprs=c, attrs=attrs)
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
            ptx = compiled.asm["ptx"]
            if block == 8 and "film" in fn.__name__:
                assert ".v4." in ptx or ".v2." in ptx, f"{fn.__name__}: no vector loads/stores"
            print("compiled", fn.__name__, dt, block)
""")


def test_kernels_compile_for_sm90():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, cwd=root, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode == 77:
        pytest.skip("the Triton wheel has no ptxas")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("compiled") == 36  # 9 kernel variants x 4 (dtype, block) cases


_CPU_TRITON_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    if os.environ.get("AFILM_PRELOAD_TRITON"):
        import triton
    import kernels
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # imports triton via torch._dynamo
    from afilm_cli.sysinfo import system_info
    system_info()
    x = torch.randn(2, 3, 40)
    try:
        y = kernels.block_max_pool(x, 8)
    except kernels.KernelChoiceError as e:
        print("refused:", e)
        sys.exit(3)
    assert torch.equal(y, kernels.reference.block_max_pool(x, 8))
    print("ok", "triton" in sys.modules)
""")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only path")
def test_afilm_kernel_triton_on_cpu_switches_the_interpreter_on_before_triton_is_imported():
    """AFILM_KERNEL=triton on a CPU machine failed in train (Adam imports triton) and bench
    (system_info imported it) with 'triton was imported before...'; without the interpreter the
    ops ended in a ValueError traceback instead of the CLI's one line."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(AFILM_KERNEL="triton", PYTHONPATH=str(root))
    run = lambda env: subprocess.run([sys.executable, "-c", _CPU_TRITON_SCRIPT], env=env, cwd=root,  # noqa: E731
                                     capture_output=True, text=True, timeout=300)
    proc = run(env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok True", proc.stdout + proc.stderr[-3000:]
    # triton imported before kernels (a Python API user's own import): block_film.py's one line, not
    # an interpreter error from every op
    proc = run({**env, "AFILM_PRELOAD_TRITON": "1"})
    assert proc.returncode == 3 and "set TRITON_INTERPRET=1 in the environment" in proc.stdout, \
        proc.stdout + proc.stderr[-3000:]
    proc = run({**env, "TRITON_INTERPRET": "0"})
    assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
    assert "needs CUDA tensors here (got one on cpu); set TRITON_INTERPRET=1" in proc.stdout


# ---------------------------------------------------------------------------------------------------
# CUDA: the same checks at the paper model's layer shapes (batch 2)

GPU_SHAPES = [(2, 128, 4096, 128), (2, 256, 2048, 64), (2, 512, 1024, 32), (2, 512, 512, 16),
              (2, 512, 256, 8), (2, 512, 1024, 8), (2, 128, 4096, 8), (3, 5, 1000, 24), (2, 7, 997, 7)]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("B, C, T, block", GPU_SHAPES)
def test_cuda_all_ops(B, C, T, block, dtype, atol, rtol):
    gen = torch.Generator().manual_seed(0)
    nb = -(-T // block)
    x = _leaf(B, C, T, dtype=dtype, device="cuda", gen=gen)
    scale = _leaf(B, C, nb, dtype=dtype, device="cuda", gen=gen)
    shift = _leaf(B, C, nb, dtype=dtype, device="cuda", gen=gen)
    h = _leaf(B, C, 2 * T, dtype=dtype, device="cuda", gen=gen)
    skip = _leaf(B, C, T, dtype=dtype, device="cuda", gen=gen)
    _compare(K.block_max_pool, R.block_max_pool, [x, block], dtype, atol, rtol)
    _compare(K.block_film, R.block_film, [x, scale, shift, block], dtype, atol * 4, rtol)
    _compare(K.pool_act_block_max, R.pool_act_block_max, [h, block, 0.2], dtype, atol, rtol)
    _compare(K.block_film_concat, R.block_film_concat, [x, scale, None, block, skip], dtype, atol * 4, rtol)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_dispatch_defaults_to_torch_and_opts_in_to_triton(monkeypatch):
    monkeypatch.delenv("AFILM_KERNEL", raising=False)
    x = torch.zeros(1, device="cuda")
    assert kernels.backend_for(x) == "torch"
    monkeypatch.setenv("AFILM_KERNEL", "triton")
    assert kernels.backend_for(x) == "triton"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_model_agrees_between_backends(monkeypatch):
    from afilm_cli.models import create_model

    torch.manual_seed(0)
    model = create_model("afilm_small").cuda().eval()
    x = torch.randn(2, 1, model.length_multiple * 2, device="cuda")
    y_t, g_t = _model_outputs_and_grads(monkeypatch, "torch", model, x)
    y_k, g_k = _model_outputs_and_grads(monkeypatch, "triton", model, x)
    assert_close(y_k, y_t, 1e-4, 1e-3, "model output")
    for name in g_t:
        assert_close(g_k[name], g_t[name], 1e-4, 1e-2, f"grad of {name}")

"""Review by use of the kernels package: what a user or model author gets on odd input, on both paths.

Tiny shapes only: on CPU the Triton path runs through the interpreter (tests/conftest.py).
"""

from __future__ import annotations

import importlib

import pytest
import torch

pytest.importorskip("triton")

from kernels import reference as R  # noqa: E402

K = importlib.import_module("kernels.block_film")  # the Triton module, not the dispatched op

pytestmark = pytest.mark.kernels

BOTH = pytest.mark.parametrize("impl", [K, R], ids=["triton", "reference"])


def _film_leaves():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 16, generator=gen).requires_grad_()
    scale = torch.randn(1, 2, 2, generator=gen).requires_grad_()
    shift = torch.randn(1, 2, 2, generator=gen).requires_grad_()
    return x, scale, shift


@pytest.mark.parametrize("op", ["block_film", "block_max_pool", "pool_film", "pool_act_film",
                                "pool_act_block_max", "block_film_concat"])
def test_triton_double_backward_fails_with_a_clear_message(op):
    # Before: the kernels' gradients were constants under create_graph=True, so a gradient penalty
    # (d/d(x, scale) of |dL/dx|^2 + |scale|^2) lost its second-order terms without a word.
    x, scale, shift = _film_leaves()
    if op == "block_film":
        y = K.block_film(x, scale, shift, 8)
    elif op == "block_max_pool":
        y = K.block_max_pool(x, 8) ** 2
    elif op == "pool_film":
        y = K.pool_film(x, 8, lambda p: (torch.sigmoid(p), None))
    elif op == "pool_act_film":
        y = K.pool_act_film(x, 4, 0.2, lambda p: (torch.sigmoid(p), None))
    elif op == "pool_act_block_max":
        a, a_down = K.pool_act_block_max(x, 4)
        y = a ** 2
    else:
        y = K.block_film_concat(x, scale, shift, 8, x * 2)
    with pytest.raises(RuntimeError, match="no double backward.*AFILM_KERNEL=torch"):
        torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    # the reference differentiates twice
    (gx,) = torch.autograd.grad((R.block_film(x, scale, shift, 8) ** 2).sum(), x, create_graph=True)
    assert torch.autograd.grad((gx ** 2).sum(), scale)[0].abs().sum() > 0


@BOTH
def test_non_float_inputs_are_refused_in_one_line(impl):
    # Before, on the reference (the default path): int/bool x -> NotImplementedError from
    # max_pool1d_impl; int scale accepted there but refused by the Triton path.
    x = torch.randn(1, 2, 16)
    for dtype in (torch.int64, torch.bool):
        with pytest.raises(ValueError, match="x must be"):
            impl.block_max_pool(torch.ones(1, 2, 16, dtype=dtype), 8)
        with pytest.raises(ValueError, match="x must be"):
            impl.block_film(torch.ones(1, 2, 16, dtype=dtype), torch.ones(1, 2, 2), None, 8)
        with pytest.raises(ValueError, match="scale must be a floating-point tensor"):
            impl.block_film(x, torch.ones(1, 2, 2, dtype=dtype), None, 8)
        with pytest.raises(ValueError, match="shift must be a floating-point tensor"):
            impl.block_film(x, torch.ones(1, 2, 2), torch.ones(1, 2, 2, dtype=dtype), 8)
        with pytest.raises(ValueError, match="skip must be a floating-point tensor"):
            impl.block_film_concat(x, torch.ones(1, 2, 2), None, 8, torch.ones(1, 1, 16, dtype=dtype))


@BOTH
def test_zero_channels_and_zero_samples(impl):
    # Before, on the reference: C = 0 and T = 0 -> max_pool1d's "Expected 2D or 3D (batch mode)
    # tensor" RuntimeError; the Triton path returned (B, 0, nb) and refused T = 0 in words.
    x = torch.randn(2, 0, 40, requires_grad=True)
    assert impl.block_max_pool(x, 8).shape == (2, 0, 5)
    a, a_down = impl.pool_act_block_max(x, 8)
    assert a.shape == (2, 0, 20) and a_down.shape == (2, 0, 3)
    assert impl.block_film(x, torch.randn(2, 0, 5), None, 8).shape == (2, 0, 40)
    with pytest.raises(ValueError, match=r"no samples \(T = 0\)"):
        impl.block_max_pool(torch.randn(2, 3, 0), 8)
    with pytest.raises(ValueError, match=r"no samples \(T = 0\)"):
        impl.block_film(torch.randn(2, 3, 0), torch.randn(2, 3, 0), None, 8)


@BOTH
def test_concat_without_skip_and_other_device(impl):
    # Before, on the reference: skip=None -> torch.cat's "expected Tensor as element 1" TypeError;
    # a scale on another device -> "Tensor on device meta is not on the expected device cpu!".
    x = torch.randn(1, 2, 16)
    with pytest.raises(ValueError, match="needs a skip tensor"):
        impl.block_film_concat(x, torch.ones(1, 2, 2), None, 8, None)
    with pytest.raises(ValueError, match="scale is on meta but x is on cpu"):
        impl.block_film(x, torch.ones(1, 2, 2, device="meta"), None, 8)


@BOTH
def test_accepted_odd_inputs_match(impl):
    """Documented behaviour that works: a partial last block, block > T, numpy ints, strided inputs."""
    import numpy as np

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 41, generator=gen)
    assert impl.block_max_pool(x, 8).shape == (2, 3, 6)
    assert impl.block_max_pool(x, 100).shape == (2, 3, 1)
    torch.testing.assert_close(impl.block_max_pool(x, np.int64(8)), R.block_max_pool(x, 8))
    xt = torch.randn(2, 41, 3, generator=gen).transpose(1, 2)  # channels-last memory, (B, C, T) view
    s = torch.randn(2, 3, 6, generator=gen)
    torch.testing.assert_close(impl.block_film(xt, s, None, 8), R.block_film(xt.contiguous(), s, None, 8))
    for bad in (0, -1, True, 8.0, None):
        with pytest.raises(ValueError, match="block must be an int >= 1"):
            impl.block_max_pool(x, bad)


@BOTH
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_scale_fn_must_return_a_pair(impl, grad):
    # Before, on the Triton path: "_linked_film() missing 1 required positional argument: 'link'";
    # on the reference: "not enough values to unpack (expected 2, got 1)".
    x = torch.randn(1, 2, 16, requires_grad=grad)
    h = torch.randn(1, 2, 32, requires_grad=grad)
    for bad in (lambda p: p.sigmoid(), lambda p: (p, p, p)):
        with pytest.raises(ValueError, match=r"scale_fn must return a pair \(scale, shift\)"):
            impl.pool_film(x, 8, bad)
        with pytest.raises(ValueError, match=r"scale_fn must return a pair \(scale, shift\)"):
            impl.pool_act_film(h, 8, 0.2, bad)
    assert impl.pool_film(x, 8, lambda p: [p.sigmoid(), None]).shape == (1, 2, 16)


# --- float64 and meta tensors through the dispatch (kernels/__init__.py) --------------------------------

import kernels  # noqa: E402


def _fp64_cases(gen):
    """(name, op of an ops namespace, inputs): fp32 activations with a float64 scale / shift / skip, and
    all-float64 inputs (model.double())."""
    x = torch.randn(2, 3, 40, generator=gen).requires_grad_()
    h = torch.randn(2, 3, 81, generator=gen).requires_grad_()
    s64 = (torch.rand(2, 3, 5, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    b64 = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64).requires_grad_()
    skip64 = torch.randn(2, 2, 40, generator=gen, dtype=torch.float64).requires_grad_()
    x64 = torch.randn(2, 3, 40, generator=gen, dtype=torch.float64).requires_grad_()
    # a normaliser that works in float64 (its output promotes the modulation to float64)
    fn64 = lambda p: (torch.sigmoid(p.double()) * s64, b64)  # noqa: E731
    return [
        ("block_film scale", lambda ops: ops.block_film(x, s64, None, 8), (x, s64)),
        ("block_film shift", lambda ops: ops.block_film(x, s64.float(), b64, 8), (x, b64)),
        ("block_film_concat skip", lambda ops: ops.block_film_concat(x, s64.float(), None, 8, skip64),
         (x, skip64)),
        ("pool_film", lambda ops: ops.pool_film(x, 8, fn64), (x, s64, b64)),
        ("pool_film skip", lambda ops: ops.pool_film(x, 8, fn64, skip64), (x, s64, b64, skip64)),
        ("pool_act_film", lambda ops: ops.pool_act_film(h, 8, 0.2, fn64), (h, s64, b64)),
        ("all float64", lambda ops: ops.block_film(x64, s64, b64, 8), (x64, s64, b64)),
        ("all float64 pool", lambda ops: ops.block_max_pool(x64, 8), (x64,)),
    ]


@pytest.mark.parametrize("case", range(8))
def test_float64_is_computed_in_float64_whichever_kernel_is_chosen(monkeypatch, case):
    # Before: with AFILM_KERNEL=triton a float64 scale / shift / skip next to a float32 x gave a float64
    # output computed in float32 (off by ~1e-7 from the reference, which computes in float64), and a
    # float64 x was refused, where AFILM_KERNEL=torch (the default) took both. Now both choices agree:
    # float64 is computed in float64 (the dispatch hands it to the reference; the kernels are fp32).
    name, op, leaves = _fp64_cases(torch.Generator().manual_seed(case))[case]
    monkeypatch.setenv("AFILM_KERNEL", "torch")
    want = op(kernels)
    want_grads = torch.autograd.grad(want.square().sum(), leaves)
    monkeypatch.setenv("AFILM_KERNEL", "triton")
    got = op(kernels)
    got_grads = torch.autograd.grad(got.square().sum(), leaves)
    assert got.dtype == want.dtype == torch.float64, name
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12, msg=name)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert g.dtype == w.dtype
        # float32 leaves: their gradients are float32 on both paths; float64 ones exact to float64
        tol = 1e-12 if w.dtype == torch.float64 else 1e-6
        torch.testing.assert_close(g, w, atol=tol, rtol=tol, msg=name)


def test_triton_module_refuses_float64_scale_shift_and_skip_in_one_line():
    # Before: K.block_film(x float32, scale float64) returned float64 computed in float32, where a
    # float64 x was refused. The Triton module itself takes float32 / float16 / bfloat16 only.
    x, s = torch.randn(1, 2, 16), torch.randn(1, 2, 2)
    for name, call in (("scale", lambda: K.block_film(x, s.double(), None, 8)),
                       ("shift", lambda: K.block_film(x, s, s.double(), 8)),
                       ("skip", lambda: K.block_film_concat(x, s, None, 8, x.double()))):
        with pytest.raises(ValueError, match=f"^{name} must be float32, float16 or bfloat16 for the Triton "
                                             "kernels, got torch.float64"):
            call()
    assert K.block_film(x, s, None, 8).dtype == torch.float32  # fp32, fp16, bf16 mixes still promote


def test_backend_for_names_the_reference_for_float64_and_meta(monkeypatch):
    monkeypatch.setenv("AFILM_KERNEL", "triton")
    x = torch.randn(1, 2, 16)
    assert kernels.backend_for(x) == "triton"
    assert kernels.backend_for(x, torch.randn(1, 2, 2, dtype=torch.float64)) == "torch"
    assert kernels.backend_for(x.double()) == "torch"
    assert kernels.backend_for(x.to("meta")) == "torch"
    monkeypatch.setenv("AFILM_KERNEL", "bogus")  # a bad value is refused whatever the tensor
    with pytest.raises(kernels.KernelChoiceError, match="must be 'triton' or 'torch', got 'bogus'"):
        kernels.backend_for(x.to("meta"))


def _meta_calls(dev):
    x = torch.empty(2, 3, 40, device=dev, requires_grad=True)
    h = torch.empty(2, 3, 81, device=dev, requires_grad=True)
    s = torch.empty(2, 3, 5, device=dev)
    skip = torch.empty(2, 4, 40, device=dev, dtype=torch.bfloat16)
    fn = lambda p: (torch.sigmoid(p), p)  # noqa: E731
    return {
        "block_max_pool": lambda ops: ops.block_max_pool(x, 8),
        "block_film": lambda ops: ops.block_film(x, s, s, 8),
        "pool_act_block_max": lambda ops: ops.pool_act_block_max(h, 8, 0.2),
        "block_film_concat": lambda ops: ops.block_film_concat(x, s, None, 8, skip),
        "pool_film": lambda ops: ops.pool_film(x, 8, fn, skip),
        "pool_act_film": lambda ops: ops.pool_act_film(h, 8, 0.2, fn),
    }


def _shapes(out):
    outs = out if isinstance(out, tuple) else (out,)
    return [(tuple(t.shape), t.dtype, t.device.type) for t in outs]


@pytest.mark.parametrize("op", list(_meta_calls("cpu")))
def test_meta_tensors_give_shapes_on_the_triton_path(monkeypatch, op):
    # Before: with AFILM_KERNEL=triton, meta tensors (shape inference, model.to('meta')) reached the
    # kernel launch: "NotImplementedError: Cannot copy out of meta tensor; no data!" (under the
    # interpreter; on CUDA a KernelChoiceError "needs CUDA tensors"). Now the dispatch and the Triton
    # module's ops give the reference's meta result.
    monkeypatch.setenv("AFILM_KERNEL", "triton")
    want = _shapes(_meta_calls("cpu")[op](R))
    assert [(s, d, "meta") for s, d, _ in want] == _shapes(_meta_calls("meta")[op](kernels))
    assert [(s, d, "meta") for s, d, _ in want] == _shapes(_meta_calls("meta")[op](K))


@pytest.mark.parametrize("name", ["afilm_tiny", "tfilm_tiny"])
def test_model_forward_on_meta_with_triton_kernels(monkeypatch, name):
    # Before: NotImplementedError "Cannot copy out of meta tensor; no data!" from the first kernel.
    from afilm_cli.models import create_model

    monkeypatch.setenv("AFILM_KERNEL", "triton")
    model = create_model(name).to("meta")
    for train in (False, True):
        model.train(train)
        y = model(torch.empty(2, 1, 8192, device="meta"))
        assert y.shape == (2, 1, 8192) and y.is_meta


@pytest.mark.parametrize("op", list(_meta_calls("cpu")))
def test_fake_tensors_give_shapes_on_the_triton_path(monkeypatch, op):
    # Before: under FakeTensorMode (shape inference outside torch.compile) the kernel launch failed
    # with "Attempted to set the storage of a tensor on device "meta" to a storage on different device".
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setenv("AFILM_KERNEL", "triton")
    want = _shapes(_meta_calls("cpu")[op](R))
    with FakeTensorMode():
        assert _shapes(_meta_calls("cpu")[op](kernels)) == want
        assert _shapes(_meta_calls("cpu")[op](K)) == want

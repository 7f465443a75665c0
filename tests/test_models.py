"""Models: the contract every registered model keeps, and the AFiLM/TFiLM architecture of
../shared/REFERENCE.md section 2 (layer order, SubPixel order, blocks, init, transformer, counts)."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from afilm_cli.errors import AfilmError
from afilm_cli.main import app
from afilm_cli.models import count_parameters, create_model, describe_model
from afilm_cli.models.layers import Modulation, Transformer, subpixel1d
from afilm_cli.models.unet import UNet, UNetConfig
from afilm_cli.registry import MODELS

ALL = MODELS.names()
LARGE = 5_000_000  # above this a model is only built on the meta device here
PAPER_TOKENS = [32, 32, 32, 32, 32, 64, 128, 256, 512]
PAPER_BLOCKS = [128, 64, 32, 16, 8, 8, 8, 8, 8]


def _meta_params(name: str) -> int:
    return describe_model(name)["parameters"]  # built on the meta device (pretrained: for real)


SMALL = [n for n in ALL if _meta_params(n) <= LARGE]
BIG = [n for n in ALL if n not in SMALL]


def _light(name: str) -> torch.nn.Module:
    """Built on the meta device (no memory, no init); a pretrained model loads weights, so for real."""
    if MODELS.meta(name).get("pretrained"):
        return create_model(name)
    with torch.device("meta"):
        return create_model(name)


def _build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name)


def _test_length(model: torch.nn.Module) -> int:
    # 8192 (the reference patch) when valid, else the smallest multiple above 1024
    m = model.length_multiple
    return 8192 if 8192 % m == 0 else m * math.ceil(1024 / m)


def _signal(t: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, 1, t, generator=g)


def test_registry_has_the_builtins():
    for name in ("afilm", "tfilm", "afilm_small", "afilm_tiny", "tfilm_small", "tfilm_tiny", "spline"):
        assert name in ALL
        assert MODELS.meta(name)["description"]
    assert {"afilm", "tfilm"} <= set(BIG)


# ---- the contract, for every registered model --------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_contract_and_config_round_trip(name):
    model = _light(name)
    # a pretrained model names the architecture it was trained as, which rebuilds it below
    assert model.model_name == name or MODELS.meta(name).get("pretrained")
    cfg = model.config_dict()
    assert json.loads(json.dumps(cfg)) == cfg  # plain JSON
    with torch.device("meta"):
        again = create_model(model.model_name, **json.loads(json.dumps(cfg)))
    assert again.config_dict() == cfg
    assert [(k, tuple(v.shape)) for k, v in again.state_dict().items()] == \
           [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert isinstance(model.length_multiple, int) and model.length_multiple >= 1


@pytest.mark.parametrize("name", SMALL)
def test_forward_shape(name):
    model = _build(name)
    t = _test_length(model)
    x = _signal(t)
    y = model(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", BIG)
def test_forward_shape_paper_size_on_meta(name):
    model = _light(name).eval()
    with torch.no_grad():
        y = model(torch.zeros(2, 1, 8192, device=next(model.parameters()).device))
    assert y.shape == (2, 1, 8192)


# Bundled weights included: v1 and v2 of afilm_speech_r4 failed this (their up.0 ReLU had closed in
# training, cutting the U-Net body below it off from the output); v3 uses up_slope=0.2.
@pytest.mark.parametrize("name", SMALL)
def test_backward_reaches_every_parameter(name):
    model = _build(name).train()
    x = _signal(_test_length(model)).requires_grad_(True)
    model(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        # TFiLM's LSTM scale is ~proportional to its (small) input at init, so each layer squares
        # the activation scale and the deep layers' gradients underflow to zero: the reference model
        # does the same. AFiLM's LayerNorm-ed scale is O(1), so there every gradient must be non-zero.
        if model.config_dict().get("modulation") != "tfilm" or pname.startswith(("down.0.", "final.")):
            assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", SMALL)
def test_eval_is_deterministic(name):
    model = _build(name).eval()
    x = _signal(_test_length(model))
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    if count_parameters(model):  # the networks have dropout: train mode stays random
        model.train()
        with torch.no_grad():
            assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", SMALL)
def test_residual_identity(name):
    model = _build(name).eval()
    final = getattr(model, "final", None)
    if final is not None:
        with torch.no_grad():
            final.conv.weight.zero_()
            final.conv.bias.zero_()
    x = _signal(_test_length(model))
    with torch.no_grad():
        assert torch.equal(model(x), x)


@pytest.mark.parametrize("name", SMALL)
def test_state_dict_round_trip(name):
    model = _build(name, seed=0).eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(1)  # a differently initialised twin must become identical after loading
    other = create_model(model.model_name, **model.config_dict())
    other.load_state_dict(torch.load(buf, weights_only=True))
    other.eval()
    x = _signal(_test_length(model))
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


@pytest.mark.parametrize("name", ALL)
def test_check_length(name):
    model = _light(name)
    m = model.length_multiple
    model.check_length(m)
    model.check_length(32 * m)
    if m > 1:
        with pytest.raises(AfilmError, match=rf"\b{31 * m}\b.*\b{32 * m}\b"):
            model.check_length(32 * m - 1)
        with pytest.raises(AfilmError, match=rf"{m} \(the shortest valid length\)"):
            model.check_length(m - 1)
    with pytest.raises(AfilmError):
        model.check_length(0)
    # a negative length named 0 (or a negative one) as the shortest valid length
    for t in (-m, -m - 1, -5 * m):
        with pytest.raises(AfilmError) as info:
            model.check_length(t)
        if m > 1:
            assert str(info.value).endswith(f"nearest valid lengths: {m} (the shortest valid length)")


def test_forward_rejects_bad_length_and_shape():
    model = _build("afilm_tiny")
    msg = "8000 is not a multiple of 256; nearest valid lengths: 7936 or 8192"
    with pytest.raises(AfilmError, match=msg):
        model(torch.zeros(1, 1, 8000))
    with pytest.raises(AfilmError, match=r"expected input \(batch, 1, samples\)"):
        model(torch.zeros(1, 2, 8192))


def test_length_multiple_is_the_true_minimum():
    # paper blocks: down 2**(l+1) * 128/2**l = 256 each, bottleneck 32 * 8, up 2**(l+1) * 8 <= 128
    assert UNetConfig().length_multiple == 256
    assert UNetConfig(up_blocks=(8, 8, 8, 64)).length_multiple == 1024  # up.3 at T/16 with block 64
    odd = UNetConfig(n_layers=2, down_blocks=(3, 5), bottleneck_block=1, up_blocks=(1, 1))
    assert odd.length_multiple == 120  # lcm(2*3, 4*5, 8*1, ...)
    # the shortest valid input runs (every stage sees whole blocks) ...
    model = _build("afilm_tiny").eval()
    with torch.no_grad():
        assert model(_signal(256)).shape == (2, 1, 256)
    # ... and half of it leaves down.0 with 128 samples: one block of 128 needs 256 input samples
    with pytest.raises(AfilmError):
        model(_signal(128))


def test_unknown_config_option_is_a_clear_error():
    with pytest.raises(AfilmError, match="unknown config option.*colour"):
        create_model("afilm_tiny", colour="blue")
    with pytest.raises(AfilmError, match="takes no options"):
        create_model("spline", r=4)
    with pytest.raises(AfilmError, match="not divisible by heads"):
        create_model("afilm_tiny", heads=3)
    # a tfilm config carries its preset's transformer values unused (train's --model-arg refuses them):
    # a checkpoint of an afilm preset switched to tfilm still loads
    tfilm = create_model("afilm_tiny", modulation="tfilm")
    assert create_model("afilm_tiny", **tfilm.config_dict()).config_dict() == tfilm.config_dict()


@pytest.mark.parametrize("override,message", [
    ({"channels": 3}, "channels must be a list of integers"),  # was TypeError: 'int' not iterable
    ({"channels": [4, 8.5, 16, 16]}, "channels must be a list of integers"),
    ({"channels": [4, 0, 16, 16]}, "channels entries must be integers >= 1"),
    ({"up_slope": "abc"}, "up_slope must be a finite number, got 'abc'"),  # was a leaky_relu TypeError
    ({"slope": float("nan")}, "slope must be a finite number"),
    ({"dropout": 2}, r"dropout must be a number in \[0, 1\)"),  # was a ValueError from nn.Dropout
    ({"transformer_dropout": 1.0}, r"transformer_dropout must be a number in \[0, 1\)"),
    ({"final_init_std": -1}, "final_init_std must be a number >= 0"),  # was RuntimeError from init
    ({"use_shift": "maybe"}, "use_shift must be true or false"),
    ({"use_shift": 2}, "use_shift must be true or false"),
    ({"n_layers": 4.0}, "n_layers must be an integer, got 4.0"),
    ({"n_layers": True}, "n_layers must be an integer, got True"),
    ({"n_layers": 0}, "n_layers must be an integer >= 1"),
    ({"heads": 0}, "heads must be an integer >= 1"),  # was ZeroDivisionError
    ({"ff_dim": "big"}, "ff_dim must be an integer"),
    ({"modulation": 3}, "modulation must be a string"),
])
def test_config_values_are_checked_against_the_field_types(override, message):
    for build in (lambda: create_model("afilm_tiny", **override), lambda: UNetConfig(**override)):
        with pytest.raises(AfilmError, match=f"^model config: {message}") as err:
            build()
        assert "\n" not in str(err.value)


def test_config_values_are_converted_to_the_field_types():
    # a word from --model-arg such as 'no' is a bool, not a truthy string that turns the shift on
    for given, stored in (("no", False), ("No", False), ("0", False), (0, False), (False, False),
                          ("yes", True), ("TRUE", True), ("1", True), (1, True), (True, True)):
        config = create_model("afilm_tiny", use_shift=given).config
        assert config.use_shift is stored, given
    config = UNetConfig(channels=[16, 32, 64, 64], slope=1, bottleneck_channels=np.int64(64))
    assert config.channels == (16, 32, 64, 64) and isinstance(config.slope, float)
    assert type(config.bottleneck_channels) is int and config.to_dict()["bottleneck_channels"] == 64


def _patch_file(path: Path) -> Path:
    from afilm_cli.data.h5 import PatchWriter

    attrs = {"r": 4, "sr": 16000, "patch": 2048, "stride": 2048, "degrade": "decimate", "sam": 1.0, "seed": 0}
    rng = np.random.default_rng(0)
    with PatchWriter(path, 2048, attrs=attrs) as w:
        w.append(*(0.1 * rng.standard_normal((2, 8, 2048), dtype=np.float32)))
    return path


def test_cli_model_arg_values_are_typed_by_the_config(tmp_path):
    data = _patch_file(tmp_path / "x-train.h5")
    common = ("train", "--model", "afilm_tiny", "--train", data, "--max-steps", "1", "--batch-size", "8",
              "--device", "cpu", "--no-progress")

    def afilm(*args):
        return subprocess.run([sys.executable, "-m", "afilm_cli", *map(str, args)], capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)

    for arg, message in (("channels=3", "channels must be a list of integers"),
                         ("up_slope=abc", "up_slope must be a finite number"),
                         ("dropout=2", "dropout must be a number in [0, 1)"),
                         ("final_init_std=-1", "final_init_std must be a number >= 0"),
                         ("use_shift=maybe", "use_shift must be true or false")):
        p = afilm(*common, "--model-arg", arg, "--out", "bad")
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stderr
        assert lines[0].startswith(f"afilm: error: model config: {message}"), p.stderr
        assert not (tmp_path / "bad").exists()
    p = afilm(*common, "--model-arg", "use_shift=no", "--model-arg", "slope=0", "--out", "run")
    assert p.returncode == 0, p.stderr
    from afilm_cli.checkpoint import load_checkpoint

    config = load_checkpoint(tmp_path / "run" / "last.pt")["model_config"]
    assert config["use_shift"] is False and config["slope"] == 0.0


# ---- the architecture ----------------------------------------------------------------------------

def test_parameter_counts_match_the_reference():
    # measured on the original Keras models (REFERENCE.md section 2)
    assert _meta_params("afilm") == 134_723_842
    # PyTorch's nn.LSTM carries a second bias vector: Keras 68,221,186 + 4C per TFiLM layer
    lstm_dims = [128, 256, 512, 512, 512, 512, 512, 256, 128]
    assert _meta_params("tfilm") == 68_221_186 + sum(4 * c for c in lstm_dims) == 68_234_498
    with torch.device("meta"):
        model = create_model("afilm")
    convs = sum(count_parameters(m) for m in model.modules() if isinstance(m, torch.nn.Conv1d))
    assert convs == 56_411_394
    per_layer = {128: 2_372_096, 256: 5_260_288, 512: 12_609_536}  # from the Keras layout file
    for m in model.modules():
        if isinstance(m, Modulation):
            assert count_parameters(m) == per_layer[m.dim] == 4 * (4 * m.dim**2 + 4105 * m.dim + 2048)


def test_every_preset_keeps_the_paper_architecture():
    with torch.device("meta"):
        ref = create_model("afilm").config_dict()
        for name in ("afilm_small", "afilm_tiny", "tfilm_small", "tfilm_tiny"):
            cfg = create_model(name).config_dict()
            for key in ("n_layers", "kernel_sizes", "down_blocks", "bottleneck_block", "up_blocks",
                        "dilation", "slope", "dropout", "use_shift", "bottleneck_kernel", "final_kernel"):
                assert cfg[key] == ref[key], (name, key)
    assert _meta_params("afilm_small") < 5_000_000 and _meta_params("tfilm_small") < 5_000_000


def test_paper_block_sizes_and_tokens():
    with torch.device("meta"):
        plan = create_model("afilm").modulation_plan(8192)
    assert [r["stage"] for r in plan] == ["down.0", "down.1", "down.2", "down.3", "bottleneck",
                                         "up.3", "up.2", "up.1", "up.0"]
    assert [r["block"] for r in plan] == PAPER_BLOCKS
    assert [r["tokens"] for r in plan] == PAPER_TOKENS
    assert [r["channels"] for r in plan] == [128, 256, 512, 512, 512, 512, 512, 256, 128]
    assert [r["samples"] for r in plan] == [4096, 2048, 1024, 512, 256, 512, 1024, 2048, 4096]


@pytest.mark.parametrize("n_layers,block", [(3, 16), (4, 8), (5, 4), (8, 1)])
def test_bottleneck_and_up_blocks_follow_the_reference_for_any_depth(n_layers, block):
    """The reference's nb = int(128 / 2**n_layers), used by the bottleneck and (stale) every up stage."""
    cfg = UNetConfig(n_layers=n_layers, channels=(8,) * n_layers, kernel_sizes=(3,) * n_layers)
    assert cfg.bottleneck_block == block and cfg.up_blocks == (block,) * n_layers
    assert cfg.down_blocks == tuple(max(1, 128 // 2**level) for level in range(n_layers))


@pytest.mark.parametrize("name", ["afilm_tiny", "tfilm_tiny"])
def test_block_sizes_and_tokens_seen_at_run_time(name, monkeypatch):
    # the presets keep the paper's blocks, so what the normalisers really see must be the paper's plan
    model = _build(name).eval()
    seen = []
    orig = Modulation.scale_shift

    def spy(self, x_down):
        seen.append((self.block, x_down.shape[-1]))
        return orig(self, x_down)

    monkeypatch.setattr(Modulation, "scale_shift", spy)
    import kernels

    fused = []
    pool_act_film = kernels.pool_act_film
    monkeypatch.setattr(kernels, "pool_act_film", lambda *a: fused.append(a[1]) or pool_act_film(*a))
    with torch.no_grad():
        model(_signal(8192))
    assert [s[0] for s in seen] == PAPER_BLOCKS
    assert [s[1] for s in seen] == PAPER_TOKENS
    assert fused == PAPER_BLOCKS[:5]  # the down path and bottleneck pool through the fused op


def test_subpixel_order_on_a_hand_made_example():
    # channels-last (W=2, C=4): in[w, c] = 10*w + c; SubPixel -> (2W=4, C/2=2), out[2w+j, c] = in[w, j*2+c]
    cl = torch.tensor([[0.0, 1, 2, 3], [10, 11, 12, 13]])
    expected_cl = torch.tensor([[0.0, 1], [2, 3], [10, 11], [12, 13]])
    out = subpixel1d(cl.T.unsqueeze(0), 2)  # channels-first in and out
    assert torch.equal(out[0].T, expected_cl)
    # the REFERENCE.md formula, and that it differs from pixel_shuffle's order
    x = torch.arange(2 * 6 * 5, dtype=torch.float32).view(2, 6, 5)
    ref = x.permute(0, 2, 1).reshape(2, 10, 3).permute(0, 2, 1)
    assert torch.equal(subpixel1d(x, 2), ref)
    ps = x.view(2, 3, 2, 5).permute(0, 1, 3, 2).reshape(2, 3, 10)  # pixel_shuffle's order: channel c*r + j
    assert not torch.equal(subpixel1d(x, 2), ps)


def _manual_transformer(tr: Transformer, x: torch.Tensor) -> torch.Tensor:
    """The reference TransformerBlock written out op by op (explicit softmax attention)."""
    b, n, c = x.shape
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(c)[None, :]
    ang = pos / torch.pow(10000.0, (2 * (i // 2)).double() / c)
    pe = torch.where(i % 2 == 0, torch.sin(ang), torch.cos(ang)).float()
    x = x * math.sqrt(c) + pe
    for layer in tr.enc_layers:
        att = layer.att
        heads, d = att.heads, c // att.heads

        def split(t, heads=heads, d=d):
            return t.view(b, n, heads, d).permute(0, 2, 1, 3)

        q, k, v = split(att.query_dense(x)), split(att.key_dense(x)), split(att.value_dense(x))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        o = att.combine_heads((w @ v).permute(0, 2, 1, 3).reshape(b, n, c))
        h = F.layer_norm(x + o, (c,), layer.layernorm1.weight, layer.layernorm1.bias, eps=1e-6)
        f = layer.dense2(torch.relu(layer.dense1(h)))
        x = F.layer_norm(h + f, (c,), layer.layernorm2.weight, layer.layernorm2.bias, eps=1e-6)
    return x


def test_transformer_matches_the_reference_written_out():
    torch.manual_seed(0)
    tr = Transformer(dim=32, layers=2, heads=8, ff_dim=64, dropout=0.1).eval()
    for p in tr.parameters():  # non-trivial LayerNorm parameters and biases too
        torch.nn.init.normal_(p, 0.0, 0.2) if p.dim() == 1 else None
    x = torch.randn(3, 17, 32)
    with torch.no_grad():
        torch.testing.assert_close(tr(x), _manual_transformer(tr, x), atol=1e-5, rtol=1e-5)
    assert all(ln.eps == 1e-6 for layer in tr.enc_layers for ln in (layer.layernorm1, layer.layernorm2))


def _manual_unet(model: UNet, x: torch.Tensor) -> torch.Tensor:
    """The REFERENCE.md layer table in plain torch ops, eval mode, without the kernels package."""

    def conv(c, h):
        return F.conv1d(h, c.weight, c.bias, padding=c.padding, dilation=c.dilation)

    def mod(film, h):
        bsz, ch, t = h.shape
        blk = film.block
        tokens = h.view(bsz, ch, t // blk, blk).amax(-1).transpose(1, 2)
        g = film.normalise(tokens).transpose(1, 2)
        return (h.view(bsz, ch, t // blk, blk) * g[..., None]).view(bsz, ch, t)

    def subpixel(h):
        bsz, ch, w = h.shape
        return h.permute(0, 2, 1).reshape(bsz, 2 * w, ch // 2).permute(0, 2, 1)

    skips, h = [], x
    for st in model.down:
        h = mod(st.film, F.leaky_relu(F.max_pool1d(conv(st.conv, h), 2), 0.2))
        skips.append(h)
    st = model.bottleneck
    h = mod(st.film, F.leaky_relu(F.max_pool1d(conv(st.conv, h), 2), 0.2))
    for level in reversed(range(len(model.up))):
        st = model.up[level]
        h = torch.cat([mod(st.film, subpixel(torch.relu(conv(st.conv, h)))), skips[level]], dim=1)
    return subpixel(conv(model.final.conv, h)) + x


@pytest.mark.parametrize("name", ["afilm_tiny", "tfilm_tiny"])
def test_model_follows_the_reference_layer_table(name):
    model = _build(name).eval()
    with torch.no_grad():
        model.final.conv.weight.normal_(0, 0.3)  # make the network's contribution visible
        x = _signal(8192)
        y = model(x)
        torch.testing.assert_close(y, _manual_unet(model, x), atol=1e-5, rtol=1e-4)
        assert (y - x).abs().max() > 1e-2
    assert model.final.conv.dilation == (1,) and all(
        st.conv.dilation == (2,) for st in [*model.down, model.bottleneck, *model.up])


def test_bottleneck_dropout_placement_in_training():
    # pool -> dropout -> LeakyReLU (reference) == the model's dropout after the fused pool+activation
    model = _build("afilm_tiny").train()
    st = model.bottleneck
    st.film.eval()  # isolate the stage's own dropout from the transformer's
    h_in = torch.randn(2, model.config.channels[-1], 512)
    torch.manual_seed(5)
    got = st(h_in)
    torch.manual_seed(5)
    pooled = F.max_pool1d(st.conv(h_in), 2)
    a = F.leaky_relu(F.dropout(pooled, 0.5, training=True), 0.2)
    blk = st.film.block
    g = st.film.normalise(a.view(2, a.shape[1], -1, blk).amax(-1).transpose(1, 2)).transpose(1, 2)
    want = (a.view(2, a.shape[1], -1, blk) * g[..., None]).view_as(a)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (a == 0).float().mean() > 0.3  # dropout really acted


@pytest.mark.parametrize("name,std", [("afilm", 0.05), ("tfilm", 1e-3)])
def test_init(name, std):
    # a narrow twin of the paper config (same init code, fast to build)
    cfg = create_model(f"{name}_small").config_dict()
    assert cfg["final_init_std"] == std
    model = create_model(f"{name}_small", channels=[64, 64, 64, 64], bottleneck_channels=64)
    for mname, m in model.named_modules():
        if isinstance(m, torch.nn.Conv1d) and mname != "final.conv":
            w = m.weight.reshape(m.weight.shape[0], -1)
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            torch.testing.assert_close(gram, torch.eye(gram.shape[0]), atol=1e-4, rtol=0)
            assert torch.all(m.bias == 0)
        elif isinstance(m, torch.nn.Linear):
            bound = math.sqrt(6 / (m.in_features + m.out_features))
            assert m.weight.abs().max() <= bound and m.weight.std() > bound / 3
            assert torch.all(m.bias == 0)
        elif isinstance(m, torch.nn.LSTM):
            c = m.hidden_size
            assert torch.all(m.bias_ih_l0[c:2 * c] == 1) and m.bias_ih_l0.abs().sum() == c
            assert torch.all(m.bias_hh_l0 == 0)
    w = model.final.conv.weight
    assert abs(w.std().item() / std - 1) < 0.25 and torch.all(model.final.conv.bias == 0)


def test_shift_option():
    base = create_model("afilm_tiny")
    shifted = create_model("afilm_tiny", use_shift=True)
    dims = [4, 8, 16, 16, 16, 16, 16, 8, 4]
    assert count_parameters(shifted) - count_parameters(base) == sum(c * c + c for c in dims)
    shifted.load_state_dict(base.state_dict(), strict=False)  # shift heads start at zero
    x = _signal(8192)
    base.eval()
    shifted.eval()
    with torch.no_grad():
        assert torch.equal(base(x), shifted(x))
    shifted.train()
    shifted(x).square().mean().backward()
    assert shifted.down[0].film.shift.weight.grad.abs().sum() > 0


# ---- the command ---------------------------------------------------------------------------------

def test_describe_model_is_fast_and_complete():
    d = describe_model("afilm", with_model=True)
    assert d["parameters"] == 134_723_842 and d["length_multiple"] == 256
    assert [r["tokens"] for r in d["plan"]] == PAPER_TOKENS
    assert describe_model("spline")["parameters"] == 0


def test_models_cli_lists_every_model_with_counts():
    proc = subprocess.run([sys.executable, "-m", "afilm_cli", "models"], capture_output=True, text=True,
                          timeout=120, env={**_env(), "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    for name in ALL:
        assert name in proc.stdout
        count = _meta_params(name)
        assert f"{count:,}" in proc.stdout
    assert "134,723,842" in proc.stdout and "68,234,498" in proc.stdout


def test_models_cli_info_and_unknown():
    proc = subprocess.run([sys.executable, "-m", "afilm_cli", "models", "--info", "tfilm"],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert "68,234,498" in proc.stdout and 'modulation = "tfilm"' in proc.stdout
    assert "up_blocks = [8, 8, 8, 8]" in proc.stdout
    assert "heads" not in proc.stdout and "transformer" not in proc.stdout  # afilm's alone
    proc = subprocess.run([sys.executable, "-m", "afilm_cli", "models", "--info", "nope"],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown model 'nope'" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "afilm_cli", "models", "nomatch*"],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 2 and "no model matches 'nomatch*'; known: afilm," in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "afilm_cli", "models", "AFILM_S*"],  # it said no more
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 2 and ("no model matches 'AFILM_S*' (patterns are case-sensitive: 'afilm_s*' "
                                     "matches); known: afilm,") in proc.stderr, proc.stderr


def test_models_cli_shows_a_model_card():
    @MODELS.register("card_test_model", pretrained=True, description="test model with a card",
                     card=lambda: "# Card title\n\nTrained on nothing at all.")
    def _builder(**overrides):  # like a bundled model: weights loaded, then moved (impossible on meta)
        return create_model("afilm_tiny", **overrides).to("cpu")

    try:
        result = CliRunner().invoke(app, ["models", "--info", "card_test_model"])
        assert result.exit_code == 0, result.output
        assert "Trained on nothing at all." in result.output and "Card title" in result.output
        assert '"pretrained": true' in result.output
        result = CliRunner().invoke(app, ["models", "card_*"])
        count = count_parameters(create_model("afilm_tiny"))  # the architecture the card model builds
        assert result.exit_code == 0 and f"{count:,}" in result.output
    finally:
        MODELS.unregister("card_test_model")



def test_models_cli_info_shows_a_plugins_text_as_written():
    """A description or registry meta holding '[/x]' stopped 'models --info' with a MarkupError
    traceback, and '[bold]' or '[batch, 1, T]' vanished (rich markup); the listing escaped it already."""
    @MODELS.register("bracket_test_model", description="tiny [/x] model for [batch, 1, T] [bold]",
                     source="[/y]")
    def _builder(**overrides):
        model = create_model("afilm_tiny", **overrides)
        model.model_name = "bracket_test_model"  # a model that can be built: --info fails on one that cannot
        return model

    try:
        result = CliRunner().invoke(app, ["models", "--info", "bracket_test_model"])
        assert result.exit_code == 0, repr(result.exception)
        assert "bracket_test_model: tiny [/x] model for [batch, 1, T] [bold]" in result.output
        assert 'registry meta: {"source": "[/y]"}' in result.output
    finally:
        MODELS.unregister("bracket_test_model")

def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "COLUMNS"}


@pytest.mark.parametrize("name", ["afilm", "tfilm"])
def test_keras_weight_layout_maps_onto_the_state_dict(name, keras_layout):
    # every array of the original Keras model has a state_dict entry of the right shape, and the
    # state_dict has nothing else (but PyTorch's second LSTM bias)
    from afilm_cli.models.keras_layout import torch_key, torch_value

    layout = keras_layout.split(f"## {name.upper()} ")[1]
    rows = re.findall(r"^w\d{4} \| (\S+) \| \S+ \| \S+ \| \(([\d, ]+)\)", layout.split("\n## ")[0], re.M)
    assert rows, "layout file not parsed"
    with torch.device("meta"):
        state = create_model(name).state_dict()
    seen = set()
    for key, shape in rows:
        tk = torch_key(key)
        assert tk in state, (key, tk)
        keras_shape = tuple(int(v) for v in shape.split(",") if v.strip())
        converted = torch_value(key, torch.empty(keras_shape, device="meta"))
        assert converted.shape == state[tk].shape, key
        seen.add(tk)
    assert sorted(set(state) - seen) == sorted(k for k in state if k.endswith("bias_hh_l0"))


def test_up_slope_makes_the_up_gate_a_leaky_relu_that_cannot_close():
    """up_slope=0 (reference): a up.0 conv pushed below zero everywhere passes nothing and the U-Net
    body below it gets no gradient; up_slope=0.2: the same weights still pass signal and gradient."""
    from afilm_cli.diagnostics import dead_gates, relu_open_fraction

    grads = {}
    for slope in (0.0, 0.2):
        torch.manual_seed(0)
        model = create_model("afilm_tiny", up_slope=slope).train()
        assert count_parameters(model) == count_parameters(create_model("afilm_tiny"))  # no new weights
        x = _signal(_test_length(model))
        if slope == 0.0:
            healthy = relu_open_fraction(model, x)
            assert healthy and not dead_gates(healthy)
        with torch.no_grad():
            model.up[0].conv.bias.fill_(-1e3)
        if slope == 0.0:
            assert dead_gates(relu_open_fraction(model, x)) == ["up.0"]
        else:
            assert relu_open_fraction(model, x) == {}  # nothing that can close
        model(x).square().mean().backward()
        grads[slope] = model.down[1].conv.weight.grad.abs().sum().item()
    assert grads[0.0] == 0.0 and grads[0.2] > 0.0


def test_a_checkpoint_made_with_numpy_scalars_loads(tmp_path):
    """A recipe read from a patch file's HDF5 attributes holds np.int64, and numpy math gives np.float64:
    make_checkpoint kept them, save_checkpoint wrote the file, and every load of it was refused ('it
    holds Python objects beyond tensors and plain data'). They are stored as the numbers they hold."""
    from afilm_cli.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
    from afilm_cli.infer import load_model

    model = create_model("spline")
    recipe = {"r": np.int64(4), "sr": np.int32(16000), "degrade": np.str_("decimate"),
              "patch": np.int64(8192)}
    ckpt = make_checkpoint(model, recipe, input_level_dbfs=np.float64(-24.5),
                           metrics={"snr": [np.float32(9.5)], "ok": (np.bool_(True),)})
    loaded = load_checkpoint(save_checkpoint(tmp_path / "np.pt", ckpt))
    assert loaded["recipe"] == {"r": 4, "sr": 16000, "degrade": "decimate", "patch": 8192}
    assert type(loaded["recipe"]["r"]) is int and type(loaded["input_level_dbfs"]) is float
    assert loaded["metrics"] == {"snr": [9.5], "ok": (True,)}
    lo = load_model(tmp_path / "np.pt")
    assert (lo.r, lo.sr, lo.level_dbfs) == (4, 16000, -24.5)

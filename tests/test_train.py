"""`afilm train` and its pieces: the lazy loader, the loop, exact resume, Ctrl-C, bad input, torchrun.

Data: real VCTK utterances (vctk-mini) resampled to 16 kHz, degraded with r=4, cut into short
patches (2048 samples) so a tiny model trains a few steps in well under a second.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from unittest import mock

import h5py
import numpy as np
import pytest
import torch

from afilm_cli import metrics
from afilm_cli.audio import read_audio, resample, simulate_lr
from afilm_cli.checkpoint import load_checkpoint, model_from_checkpoint
from afilm_cli.data.h5 import PatchFile, PatchWriter
from afilm_cli.data.loader import PatchLoader
from afilm_cli.errors import AfilmError
from afilm_cli.train import TrainConfig, evaluate, resume_config, train

PATCH = 2048
ROOT = Path(__file__).resolve().parents[1]


def _patches(files, r=4, patch=PATCH, limit=None, skip=0):
    data, label = [], []
    for f in files:
        x, sr = read_audio(f, mono=True)
        hr, _, sp = simulate_lr(resample(x, sr, 16000), r, "decimate")
        n = len(hr) // patch
        data.append(sp[: n * patch].reshape(n, patch))
        label.append(hr[: n * patch].reshape(n, patch))
    end = None if limit is None else skip + limit
    data, label = np.concatenate(data)[skip:end], np.concatenate(label)[skip:end]
    return data, label


def _write(path, data, label, r=4, patch=PATCH):
    attrs = {"r": r, "sr": 16000, "patch": patch, "stride": patch, "degrade": "decimate", "sam": 1.0,
             "seed": 0}
    with PatchWriter(path, patch, attrs=attrs) as w:
        w.append(data, label)
    return path


@pytest.fixture(scope="module")
def data(vctk_mini, tmp_path_factory):
    """data/vctk-mini-r4-{train,val}.h5 as 'afilm prepare' names them; val speaker unseen in train."""
    d = tmp_path_factory.mktemp("data") / "data"
    tr = _patches(sorted((vctk_mini / "wav48" / "p225").glob("*.wav"))[:2], limit=24)
    # the file's speech (patches 21-28), not its leading silence: validation decides best.pt in these tests
    va = _patches(sorted((vctk_mini / "wav48" / "p226").glob("*.wav"))[:1], limit=8, skip=21)
    return {"train": _write(d / "vctk-mini-r4-train.h5", *tr), "val": _write(d / "vctk-mini-r4-val.h5", *va),
            "arrays": tr}


def _cfg(data, tmp_path, **kw) -> TrainConfig:
    base = dict(model="afilm_tiny", train=str(data["train"]), val=str(data["val"]), out=str(tmp_path / "run"),
                epochs=3, batch_size=8, device="cpu", progress=False, log_every=1,
                threads=1)  # bit-exact comparisons need one thread count; "auto" follows the machine's load
    return TrainConfig(**{**base, **kw})


def _weights(path):
    return load_checkpoint(path)["state_dict"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _steps_after_resume(run) -> list[int]:
    """The steps logged by the last resumed run into ``run``'s log: a resume that started over
    (from step 1, with the same seed) would end on the same weights as an uninterrupted run."""
    records = [json.loads(s) for s in (Path(run) / "log.jsonl").read_text().splitlines()]
    last = max(i for i, r in enumerate(records) if r["type"] == "resume")
    return [r["step"] for r in records[last:] if r["type"] == "step"]


# ---------------------------------------------------------------- loader


def test_loader_shuffles_per_epoch_shards_and_reads_lazily(data):
    pf = PatchFile(data["train"])
    reads = []
    real_read = pf.read
    pf.read = lambda idx: (reads.append(len(range(len(pf))[idx]) if isinstance(idx, slice) else len(idx)),
                           real_read(idx))[1]
    loader = PatchLoader(pf, 5, seed=3)
    e0, e1 = loader.indices(0), loader.indices(1)
    assert sorted(e0) == list(range(24)) and not np.array_equal(e0, e1)
    assert np.array_equal(e0, PatchLoader(pf, 5, seed=3).indices(0))  # a pure function of (seed, epoch)
    assert not np.array_equal(e0, PatchLoader(pf, 5, seed=4).indices(0))
    batches = list(loader.batches(1))
    assert len(batches) == len(loader) == 5 and [len(x) for x, _ in batches] == [5, 5, 5, 5, 4]
    assert max(reads) <= 5  # never more than one batch in memory
    x_all, y_all = data["arrays"]
    for b, (x, y) in enumerate(batches):  # the very patches of the permutation, channels-first
        want = np.sort(e1[b * 5 : (b + 1) * 5])
        assert x.shape == (len(want), 1, PATCH)
        np.testing.assert_array_equal(x[:, 0].numpy(), x_all[want])
        np.testing.assert_array_equal(y[:, 0].numpy(), y_all[want])
    skipped = list(loader.batches(1, start=3))  # resume mid-epoch: the same remaining batches
    assert all(torch.equal(a[0], b[0]) for a, b in zip(skipped, batches[3:], strict=True))
    # two ranks: disjoint halves of the same permutation, equal step counts (batch 4 x 2 = batch 8)
    ranks = [PatchLoader(pf, 4, seed=3, rank=i, world_size=2) for i in range(2)]
    i0, i1 = ranks[0].indices(0), ranks[1].indices(0)
    assert len(ranks[0]) == len(ranks[1]) == 3
    assert not set(i0) & set(i1) and set(i0) | set(i1) == set(range(24))
    assert set(i0[:4]) | set(i1[:4]) == set(e0[:8])
    odd = [PatchLoader(pf, 4, seed=0, rank=i, world_size=5) for i in range(5)]  # 24 -> padded to 25
    assert {len(o.indices(0)) for o in odd} == {5} and all(len(list(o.batches(0))) == 2 for o in odd)
    pf.close()


def test_patch_file_in_memory_reads_the_same_batches(data):
    """load_if_fits loads only within the budget; loaded or not, the loader yields the same batches."""
    from afilm_cli.data.h5 import memory_budget

    lazy, loaded = PatchFile(data["train"]), PatchFile(data["train"])
    assert lazy.nbytes == 2 * 24 * PATCH * 4
    assert not loaded.load_if_fits(budget=lazy.nbytes - 1) and not loaded.in_memory
    assert loaded.load_if_fits(budget=lazy.nbytes) and isinstance(loaded.data, np.ndarray)
    assert 0 <= memory_budget() <= 8 << 30
    for a, b in zip(PatchLoader(lazy, 5, seed=1).batches(2), PatchLoader(loaded, 5, seed=1).batches(2),
                    strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ev = list(PatchLoader(loaded, 5, shuffle=False).batches(0))  # slices (evaluation order)
    np.testing.assert_array_equal(torch.cat([x for x, _ in ev])[:, 0].numpy(), data["arrays"][0])
    lazy.close(), loaded.close()


# ---------------------------------------------------------------- the loop


def test_train_writes_checkpoints_log_and_metrics(data, tmp_path):
    res = train(_cfg(data, tmp_path, epochs=2))
    assert (res.epoch, res.step, res.interrupted) == (2, 6, False)
    ckpt = load_checkpoint(res.last)
    assert ckpt["model_name"] == "afilm_tiny"
    assert ckpt["recipe"] == {"r": 4, "sr": 16000, "degrade": "decimate", "patch": PATCH}
    assert ckpt["epoch"] == 2 and ckpt["step"] == 6 and ckpt["epoch_step"] == 0 and "optimizer" in ckpt
    assert ckpt["train_config"]["lr"] == 3e-4 and ckpt["afilm_version"]
    # the RMS level of the training patches, which inference brings its input to (afilm_cli/level.py)
    level = 10 * np.log10(np.mean(data["arrays"][0].astype(np.float64) ** 2))
    assert ckpt["input_level_dbfs"] == pytest.approx(level, abs=0.005)
    model = model_from_checkpoint(ckpt)
    assert not model.training and res.best.is_file()
    lines = [json.loads(s) for s in (res.out / "log.jsonl").read_text().splitlines()]
    assert [x["type"] for x in lines] == ["start"] + ["step"] * 3 + ["epoch"] + ["step"] * 3 + ["epoch"]
    assert lines[0]["data_in_memory"] is True  # a small file is loaded, as the reference does
    assert lines[0]["input_level_dbfs"] == ckpt["input_level_dbfs"]
    last = lines[-1]
    for key in ("train_loss", "val_loss", "val_rmse", "val_snr", "val_lsd", "spline_snr", "spline_lsd",
                "patches_per_s"):
        assert np.isfinite(last[key]), key
    assert last["val_loss"] == pytest.approx(last["val_rmse"] ** 2, rel=1e-6)
    best = min((x for x in lines if x["type"] == "epoch"), key=lambda x: x["val_loss"])
    assert load_checkpoint(res.best)["metrics"]["val_loss"] == best["val_loss"]
    # and it learns: the training loss falls from one epoch to the next
    first, second = (x["train_loss"] for x in lines if x["type"] == "epoch")
    assert second < 0.95 * first, (first, second)
    # the spline baseline as the metrics module computes it, independently of the loop
    x, y = _patches_of(data["val"])
    assert last["spline_snr"] == pytest.approx(metrics.snr(x.ravel(), y.ravel()), abs=1e-6)
    want = np.mean([metrics.lsd(a, b) for a, b in zip(x, y, strict=True)])
    assert last["spline_lsd"] == pytest.approx(want)


def _patches_of(path):
    with PatchFile(path) as pf:
        return pf.read(slice(None))


def test_evaluate_matches_direct_computation(data):
    torch.manual_seed(0)
    from afilm_cli.models import create_model

    model = create_model("afilm_tiny")
    pf = PatchFile(data["val"])
    loader = PatchLoader(pf, 3, shuffle=False)
    got = evaluate(model, loader, TrainConfig(), torch.device("cpu"), with_spline=True)
    assert model.training  # evaluate switches back to train mode
    x, y = pf.read(slice(None))
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)[:, None]).numpy()[:, 0]
    assert got["snr"] == pytest.approx(metrics.snr(pred.ravel(), y.ravel()), abs=1e-4)
    want = np.mean([metrics.lsd(a, b) for a, b in zip(pred, y, strict=True)])
    assert got["lsd"] == pytest.approx(want, rel=1e-4)
    assert got["loss"] == pytest.approx(np.mean((pred - y) ** 2), rel=1e-4)
    pf.close()


def test_resume_after_epoch_is_bit_exact(data, tmp_path):
    full = train(_cfg(data, tmp_path, out=str(tmp_path / "full")))
    part = train(_cfg(data, tmp_path, out=str(tmp_path / "part"), epochs=1))
    assert part.epoch == 1
    resumed = train(_cfg(data, tmp_path, out=None, epochs=3, resume=str(part.out)))
    assert resumed.out == part.out and (resumed.epoch, resumed.step) == (3, 9)
    assert _steps_after_resume(part.out) == list(range(4, 10))  # only the two epochs left
    _assert_same(_weights(full.last), _weights(resumed.last))
    a, b = load_checkpoint(full.last), load_checkpoint(resumed.last)
    assert a["metrics"]["val_loss"] == b["metrics"]["val_loss"]
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])
    # and the config of a run is recovered from its folder, as the CLI does it
    cfg = resume_config(str(part.out), epochs=5)
    assert (cfg.model, cfg.batch_size, cfg.epochs, cfg.resume) == ("afilm_tiny", 8, 5, str(part.out))


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(data, tmp_path):
    kw = dict(model="tfilm_tiny", loss="rmse", epochs=2)
    full = train(_cfg(data, tmp_path, out=str(tmp_path / "full"), **kw))
    # the handler pytest runs under: Python's own, or SIG_IGN where it was started in the background
    before = signal.getsignal(signal.SIGINT)

    def interrupt(step):
        if step == 4:  # the first batch of epoch 2
            os.kill(os.getpid(), signal.SIGINT)

    cut = train(_cfg(data, tmp_path, out=str(tmp_path / "cut"), **kw), on_step=interrupt)
    assert cut.interrupted and (cut.epoch, cut.step) == (1, 4)
    ckpt = load_checkpoint(cut.last)
    assert ckpt["interrupted"] and (ckpt["epoch"], ckpt["epoch_step"], ckpt["step"]) == (1, 1, 4)
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    done = train(_cfg(data, tmp_path, out=None, resume=str(cut.last), **kw))
    assert (done.epoch, done.step, done.interrupted) == (2, 6, False)
    assert _steps_after_resume(cut.out) == [5, 6]  # on from the saved step, not from the start
    _assert_same(_weights(full.last), _weights(done.last))


@pytest.mark.parametrize("stop_at", [2, 3])  # inside epoch 1, and its last step (no batch left after it)
def test_resumed_epoch_keeps_its_training_loss_and_best(data, tmp_path, stop_at):
    """The epoch's training loss counts the batches run before the stop; without validation it picks
    best.pt, so a resumed run keeps the same best as an uninterrupted one."""
    kw = dict(val=None, epochs=2)
    full = train(_cfg(data, tmp_path, out=str(tmp_path / "full"), **kw))

    def interrupt(step):
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGINT)

    cut = train(_cfg(data, tmp_path, out=str(tmp_path / "cut"), **kw), on_step=interrupt)
    assert cut.interrupted and load_checkpoint(cut.last)["epoch_step"] == stop_at
    done = train(_cfg(data, tmp_path, out=None, resume=str(cut.last), **kw))
    assert _steps_after_resume(done.out) == list(range(stop_at + 1, 7))
    epochs = [[x for x in _log(run.out) if x["type"] == "epoch"] for run in (full, done)]
    assert [x["train_loss"] for x in epochs[0]] == [x["train_loss"] for x in epochs[1]]
    assert [x["best"] for x in epochs[0]] == [x["best"] for x in epochs[1]]
    a, b = load_checkpoint(full.best), load_checkpoint(done.best)
    assert (a["epoch"], a["best"]) == (b["epoch"], b["best"]) and a["best"] > 0


def test_cosine_schedule_decays_to_zero_and_resumes_exactly(data, tmp_path):
    """--lr-schedule cosine: step s (0-based) of N planned steps uses lr * (1 + cos(pi s / N)) / 2,
    as logged; a resumed run continues the same curve bit-exactly; the schedule is part of the run."""
    kw = dict(lr=1e-3, lr_schedule="cosine")
    full = train(_cfg(data, tmp_path, out=str(tmp_path / "full"), **kw))  # 3 epochs of 3 steps
    lines = _log(full.out)
    got = [x["lr"] for x in lines if x["type"] == "step"]
    want = [1e-3 * 0.5 * (1 + np.cos(np.pi * s / 9)) for s in range(9)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] == 1e-3 and got[-1] < 0.04 * 1e-3
    assert lines[0]["config"]["lr_schedule"] == "cosine"

    def interrupt(step):
        if step == 5:  # mid epoch 2
            os.kill(os.getpid(), signal.SIGINT)

    part = train(_cfg(data, tmp_path, out=str(tmp_path / "part"), **kw), on_step=interrupt)
    assert part.interrupted and part.step == 5
    resumed = train(_cfg(data, tmp_path, out=None, resume=str(part.out), **kw))
    assert _steps_after_resume(part.out) == list(range(6, 10))
    _assert_same(_weights(full.last), _weights(resumed.last))
    with pytest.raises(AfilmError, match=r"keeps its settings.*lr_schedule 'constant' \(was 'cosine'\)"):
        train(_cfg(data, tmp_path, out=None, resume=str(part.out), lr=1e-3))
    # max_steps, when it ends the run first, is the curve's end; constant (the default) stays put
    short = train(_cfg(data, tmp_path, out=str(tmp_path / "short"), max_steps=4, **kw))
    got = [x["lr"] for x in _log(short.out) if x["type"] == "step"]
    np.testing.assert_allclose(got, [1e-3 * 0.5 * (1 + np.cos(np.pi * s / 4)) for s in range(4)], rtol=1e-12)
    plain = train(_cfg(data, tmp_path, out=str(tmp_path / "plain"), max_steps=2))
    assert {x["lr"] for x in _log(plain.out) if x["type"] == "step"} == {3e-4}


def _log(run):
    return [json.loads(s) for s in (run / "log.jsonl").read_text().splitlines()]


def test_max_steps_and_no_validation_with_reference_file(data, tmp_path, capsys):
    """A reference-style file: only data/label, no attributes, so the recipe comes from options."""
    ref = tmp_path / "ref-train.h5"
    x, y = data["arrays"]
    with h5py.File(ref, "w") as f:
        f.create_dataset("data", data=x[:, :, None])
        f.create_dataset("label", data=y[:, :, None])
    cfg = _cfg(data, tmp_path, train=str(ref), val=None, max_steps=2)
    with pytest.raises(AfilmError, match=r"does not record its r/sr/degrade .*--r"):
        train(cfg)
    res = train(replace(cfg, r=4, sr=16000, degrade="decimate"))
    assert (res.step, res.epoch) == (2, 0) and res.best is not None  # best.pt follows the training loss
    assert "r=4, 16000 Hz, decimate" in capsys.readouterr().out  # the recipe it takes is shown
    ckpt = load_checkpoint(res.last)
    assert ckpt["recipe"] == {"r": 4, "sr": 16000, "degrade": "decimate", "patch": PATCH}
    assert ckpt["epoch_step"] == 2 and "val_loss" not in ckpt["metrics"]
    # a whole epoch's loss is not replaced by a few batches' when a later run stops inside an epoch
    more = train(replace(cfg, r=4, sr=16000, degrade="decimate", out=str(tmp_path / "more"), max_steps=4))
    assert load_checkpoint(more.best)["step"] == 3 and load_checkpoint(more.last)["step"] == 4
    with pytest.raises(AfilmError, match="prepared with r=4, but --r 2"):
        train(replace(cfg, train=str(data["train"]), r=2, out=str(tmp_path / "x")))


# ---------------------------------------------------------------- bad input


def _bad_files(tmp_path, data):
    x, y = data["arrays"]
    with h5py.File(tmp_path / "schema.h5", "w") as f:
        f.create_dataset("data", data=x[:, :, None])
        f.create_dataset("labels", data=y[:, :, None])
    _write(tmp_path / "empty.h5", x[:0], y[:0])
    _write(tmp_path / "odd.h5", x[:4, :1000], y[:4, :1000], patch=1000)
    _write(tmp_path / "r2.h5", x[:8], y[:8], r=2)


@pytest.mark.parametrize("case, match", [
    ("schema", "missing dataset 'label'"),
    ("empty", "contains no patches"),
    ("odd", "patches of 1000 samples do not fit 'afilm_tiny'"),
    ("spline", "no trainable parameters"),
    ("loss", "unknown loss 'l1'"),
    ("precision", "unknown precision 'fp16'"),
    ("schedule", "unknown learning-rate schedule 'step'"),
    ("lr", "--lr must be 0 or above, got -1"),
    ("val_r", "has r=2, but .* has r=4"),
    ("missing", "no such HDF5 file"),
    ("folder", "is a folder, not a file"),
])
def test_bad_input_is_one_clear_error(data, tmp_path, case, match):
    _bad_files(tmp_path, data)
    cfg = _cfg(data, tmp_path, max_steps=1)
    cfg = {"schema": replace(cfg, train=str(tmp_path / "schema.h5")),
           "empty": replace(cfg, train=str(tmp_path / "empty.h5")),
           "odd": replace(cfg, train=str(tmp_path / "odd.h5")),
           "spline": replace(cfg, model="spline"),
           "loss": replace(cfg, loss="l1"),
           "precision": replace(cfg, precision="fp16"),
           "schedule": replace(cfg, lr_schedule="step"),
           "lr": replace(cfg, lr=-1.0),
           "val_r": replace(cfg, val=str(tmp_path / "r2.h5")),
           "missing": replace(cfg, train=str(tmp_path / "nope.h5")),
           "folder": replace(cfg, train=str(tmp_path))}[case]
    with pytest.raises(AfilmError, match=match) as err:
        train(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()  # nothing written before the input is known good


def test_resume_refuses_other_r_other_settings_and_occupied_out(data, tmp_path):
    _bad_files(tmp_path, data)
    first = train(_cfg(data, tmp_path, max_steps=1, val=None))
    with pytest.raises(AfilmError, match="already holds a training run .*--resume .*--force"):
        train(_cfg(data, tmp_path, max_steps=1, val=None))
    with pytest.raises(AfilmError, match=r"has r=2, but checkpoint .* was trained with r=4"):
        train(_cfg(data, tmp_path, val=None, train=str(tmp_path / "r2.h5"), resume=str(first.out), out=None))
    with pytest.raises(AfilmError, match=r"keeps its settings.*lr 0.001 \(was 0.0003\)"):
        train(_cfg(data, tmp_path, val=None, lr=1e-3, resume=str(first.out), out=None))
    with pytest.raises(AfilmError, match="no such checkpoint"):
        train(_cfg(data, tmp_path, resume=str(tmp_path / "none.pt")))
    # --force with settings that fail their checks leaves the run it would have replaced untouched
    before = (first.out / "last.pt").read_bytes()
    with pytest.raises(AfilmError, match="no trainable parameters"):
        train(_cfg(data, tmp_path, max_steps=2, val=None, force=True, model="spline"))
    assert (first.out / "last.pt").read_bytes() == before and (first.out / "log.jsonl").exists()
    forced = train(_cfg(data, tmp_path, max_steps=2, val=None, force=True))  # --force starts over
    lines = (forced.out / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["type"] == "start" and sum('"start"' in s for s in lines) == 1
    # resuming an earlier checkpoint in place would overwrite the run's later steps: refused, or branched
    (forced.out / "step2.pt").write_bytes((forced.out / "last.pt").read_bytes())
    train(_cfg(data, tmp_path, max_steps=3, val=None, resume=str(forced.out), out=None))
    with pytest.raises(AfilmError, match=r"would overwrite .*last\.pt.*--out NEW_FOLDER"):
        train(_cfg(data, tmp_path, max_steps=4, val=None, resume=str(forced.out / "step2.pt"), out=None))
    assert load_checkpoint(forced.out / "last.pt")["step"] == 3
    branch = train(_cfg(data, tmp_path, max_steps=4, val=None, resume=str(forced.out / "step2.pt"),
                        out=str(tmp_path / "branch")))
    assert branch.step == 4 and load_checkpoint(forced.out / "last.pt")["step"] == 3


# ---------------------------------------------------------------- the real CLI


def _afilm(*args, cwd, **kw):
    env = {**os.environ, "AFILM_DISABLE_PLUGINS": "1"}
    return subprocess.run([sys.executable, "-m", "afilm_cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, **kw)


def test_rmse_loss_is_the_mean_of_per_patch_rmses():
    from afilm_cli.train import loss_fn

    y = torch.zeros(2, 1, 64)
    pred = torch.cat([torch.full((1, 1, 64), 0.1), torch.full((1, 1, 64), 0.3)])
    assert loss_fn(pred, y, "rmse").item() == pytest.approx(0.2, rel=1e-6)  # (0.1 + 0.3) / 2
    assert loss_fn(pred, y, "mse").item() == pytest.approx(0.05, rel=1e-6)  # (0.01 + 0.09) / 2, not 0.2^2


def test_cli_finds_prepared_data_and_says_so(data, tmp_path):
    (tmp_path / "data").mkdir()
    for key in ("train", "val"):
        (tmp_path / "data" / data[key].name).write_bytes(data[key].read_bytes())
    p = _afilm("train", "--model", "afilm_tiny", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
               cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "data/vctk-mini-r4-train.h5 (24 patches" in p.stdout and "data/vctk-mini-r4-val.h5 (8" in p.stdout
    assert "spline" in p.stdout and "done: 1 epoch, 3 steps" in p.stdout
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("afilm_tiny-")
    assert {"last.pt", "best.pt", "log.jsonl"} <= {f.name for f in run.iterdir()}
    # --data-dir: the newest *-train.h5 there, with its -val.h5; --loss rmse kept in the run's config
    other = tmp_path / "mine"
    other.mkdir()
    for i, stem in enumerate(("b-new", "a-old")):  # names in the other order than their times
        for key in ("train", "val"):
            (other / f"{stem}-{key}.h5").write_bytes(data[key].read_bytes())
            os.utime(other / f"{stem}-{key}.h5", (2e9 - i, 2e9 - i))
    p = _afilm("train", "--model", "afilm_tiny", "--data-dir", "mine", "--max-steps", "1", "--loss", "rmse",
               "--device", "cpu", "--out", "r2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "mine/b-new-train.h5 (24 patches" in p.stdout and "mine/b-new-val.h5 (8" in p.stdout
    assert load_checkpoint(tmp_path / "r2" / "last.pt")["train_config"]["loss"] == "rmse"
    # an empty folder: one line telling where data comes from
    empty = tmp_path / "empty"
    empty.mkdir()
    p = _afilm("train", "--model", "afilm_tiny", cwd=empty)
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "afilm prepare vctk --r 4" in p.stderr and "Traceback" not in p.stderr


def test_cli_ctrl_c_saves_a_resumable_checkpoint(data, tmp_path):
    args = ["train", "--model", "afilm_tiny", "--train", str(data["train"]), "--val", str(data["val"]),
            "--epochs", "200", "--batch-size", "4", "--device", "cpu", "--log-every", "1", "--out", "run",
            "--no-progress"]
    env = {**os.environ, "AFILM_DISABLE_PLUGINS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "afilm_cli", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and log.read_text().count('"step"') >= 2):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "afilm train --resume run" in err and "afilm: interrupted" not in err  # said once, with the hint
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["interrupted"] and ckpt["step"] >= 2
    p = _afilm("train", "--resume", "run", "--epochs", str(ckpt["epoch"] + 1), "--no-progress", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    epochs = ckpt["epoch"] + 1
    assert "resuming" in p.stdout and f"done: {epochs} epoch{'s' if epochs != 1 else ''}," in p.stdout
    again = load_checkpoint(tmp_path / "run" / "last.pt")
    assert not again["interrupted"] and again["step"] == 6 * (ckpt["epoch"] + 1)
    assert _steps_after_resume(tmp_path / "run") == list(range(ckpt["step"] + 1, again["step"] + 1))


@pytest.mark.slow
def test_torchrun_two_processes_gloo(data, tmp_path):
    env = {**os.environ, "AFILM_DISABLE_PLUGINS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "afilm_cli", "train", "--model", "afilm_tiny", "--train", str(data["train"]),
           "--val", str(data["val"]), "--epochs", "2", "--max-steps", "4", "--batch-size", "4",
           "--device", "cpu", "--log-every", "1", "--out", str(tmp_path / "ddp"), "--no-progress"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("train: ") == 1 and "x2 processes" in p.stdout  # rank 0 alone prints
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["train_config"]["world_size"] == 2 and len(ckpt["rng"]["cpu"]) == 2
    # 24 patches / (4 per rank x 2 ranks) = 3 steps per epoch; stopped at step 4, inside epoch 2
    assert (ckpt["epoch"], ckpt["epoch_step"], ckpt["step"]) == (1, 1, 4)
    lines = [json.loads(s) for s in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["type"] == "step"] == [1, 2, 3, 4]  # one writer, no duplicates
    assert all(np.isfinite(x["val_snr"]) for x in lines if x["type"] == "epoch")
    # resumed by one process: the 8 patches the two ranks did are its first 2 batches of 4 (the ranks
    # take interleaved places of one order), so it goes on at batch 2 of 6, not 1 (4 patches twice)
    p = _afilm("train", "--resume", str(tmp_path / "ddp"), "--max-steps", "20", "--no-progress",
               cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "then 2 batches of the next" in p.stdout and "written by 2 processes, this run has 1" in p.stdout
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert (ckpt["epoch"], ckpt["epoch_step"], ckpt["step"]) == (2, 0, 8)


def test_init_starts_a_new_run_from_weights(data, tmp_path, capsys):
    """--init: the given weights with a fresh optimizer (lr 0 keeps them, so the run's last.pt must
    equal them exactly); a weights-only (bundled-style) file works; mismatches are one clear error;
    another ratio or degradation is fine-tuning, and the new run records its data's recipe."""
    from afilm_cli.pretrained import compact_checkpoint

    first = train(_cfg(data, tmp_path, epochs=1, out=str(tmp_path / "first")))
    weights = tmp_path / "weights.pt"
    compact_checkpoint(first.last, weights)  # fp16, no optimizer: cannot be resumed, can be an init
    with pytest.raises(AfilmError, match="--init"):
        train(_cfg(data, tmp_path, resume=str(weights)))
    res = train(_cfg(data, tmp_path, epochs=1, lr=0.0, init=str(weights), out=str(tmp_path / "ft")))
    start = {k: v.float() for k, v in load_checkpoint(weights)["state_dict"].items()}
    _assert_same(_weights(res.last), start)
    assert load_checkpoint(res.last)["train_config"]["init"] == str(weights)
    _bad_files(tmp_path, data)
    for bad, match in ((dict(model="tfilm_tiny"), "holds 'afilm_tiny' weights.*--model afilm_tiny"),
                       (dict(resume=str(first.out)), "use one")):
        with pytest.raises(AfilmError, match=match):
            train(_cfg(data, tmp_path, init=str(weights), out=str(tmp_path / "bad"), **bad))
    capsys.readouterr()
    res = train(_cfg(data, tmp_path, max_steps=1, val=None, train=str(tmp_path / "r2.h5"), init=str(weights),
                     out=str(tmp_path / "r2run")))
    assert load_checkpoint(res.last)["recipe"]["r"] == 2
    assert "was trained for another recipe (r=4 -> 2)" in capsys.readouterr().out
    # another degradation is what fine-tuning may be for: allowed, and the new run records the data's
    mixed = tmp_path / "mixed.h5"
    shutil.copy(data["train"], mixed)
    with h5py.File(mixed, "r+") as f:
        f.attrs["degrade"] = "decimate+resample"
    res = train(_cfg(data, tmp_path, max_steps=1, val=None, train=str(mixed), init=str(weights),
                     out=str(tmp_path / "mixed")))
    assert load_checkpoint(res.last)["recipe"]["degrade"] == "decimate+resample"


def test_cli_init_from_the_bundled_model_takes_its_architecture(data, tmp_path):
    p = _afilm("train", "--init", "afilm_speech_r4", "--train", data["train"], "--val", data["val"],
               "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress", "--out", "ft",
               "--lr-schedule", "cosine", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "afilm_small" in p.stdout and "done: 1 epoch, 3 steps" in p.stdout
    ckpt = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert ckpt["model_name"] == "afilm_small" and ckpt["train_config"]["lr_schedule"] == "cosine"


def test_cli_model_arg_changes_the_architecture_and_resume_keeps_it(data, tmp_path):
    """--model-arg KEY=VALUE: literals parsed (1e-3, [4, 8, 16, 16]), recorded in the checkpoint's
    model config (so upsample/eval rebuild it), kept by --resume; refused with --init and when bad."""
    common = ("--train", data["train"], "--val", data["val"], "--batch-size", "8", "--device", "cpu",
              "--no-progress")
    p = _afilm("train", "--model", "afilm_tiny", "--model-arg", "final_init_std=1e-3", "--model-arg",
               "channels=[4, 8, 16, 8]", "--epochs", "1", "--out", "run", "--threads", "1",
               "--log-every", "1", *common, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    config = load_checkpoint(tmp_path / "run" / "last.pt")["model_config"]
    assert config["final_init_std"] == 1e-3 and config["channels"] == [4, 8, 16, 8]
    model = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt"))
    assert model.final.conv.weight.shape[1] == 8 and model.down[3].conv.weight.shape[0] == 8
    p = _afilm("train", "--resume", "run", "--epochs", "2", "--device", "cpu", "--no-progress", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    resumed = load_checkpoint(tmp_path / "run" / "last.pt")
    assert resumed["model_config"]["channels"] == [4, 8, 16, 8]
    # and its run settings: options left out keep the run's values, not the CLI's defaults
    assert (resumed["train_config"]["threads"], resumed["train_config"]["log_every"]) == (1, 1)
    assert "1 CPU thread;" in p.stdout
    init = str(tmp_path / "run" / "last.pt")
    refused = [(("--model-arg", "channels=[4,4,4,4]", "--resume", "run"), "model_args"),
               (("--init", init, "--model-arg", "dropout=0", "--out", "x"), "cannot change it"),
               (("--model", "afilm_tiny", "--model-arg", "bogus=1", "--out", "x"), "unknown config .*bogus"),
               (("--model", "afilm_tiny", "--model-arg", "final_init_std", "--out", "x"), "KEY=VALUE")]
    for args, match in refused:
        p = _afilm("train", *args, *common, cwd=tmp_path)
        assert p.returncode != 0 and not (tmp_path / "x").exists()
        assert re.search(match, " ".join(p.stderr.split())), p.stderr


def test_a_closed_relu_gate_is_logged_and_warned_about(data, tmp_path):
    """Each epoch logs the open fraction of every up stage's ReLU gate; a closed one (here forced by
    a large negative bias on up.0's conv, kept by lr 0) gets a warning that says what to do."""
    healthy = train(_cfg(data, tmp_path, epochs=1, out=str(tmp_path / "ok")))
    epoch = [json.loads(s) for s in (healthy.out / "log.jsonl").read_text().splitlines()][-1]
    assert set(epoch["relu_open"]) == {"up.0", "up.1", "up.2", "up.3"}
    assert all(0.05 < f < 0.95 for f in epoch["relu_open"].values()), epoch["relu_open"]
    ckpt = load_checkpoint(healthy.last)
    ckpt["state_dict"]["up.0.conv.bias"].fill_(-1e3)
    torch.save(ckpt, tmp_path / "closed.pt")
    p = _afilm("train", "--init", tmp_path / "closed.pt", "--lr", "0", "--epochs", "1", "--train",
               data["train"], "--val", data["val"], "--batch-size", "8", "--device", "cpu", "--no-progress",
               "--out", "closed", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = " ".join((p.stdout + p.stderr).split())
    assert "up.0 0.00%" in out and "up_slope=0.2" in out
    assert "up.1" not in out.split("ReLU gate")[1].split("Start a")[0]  # only the closed one is named
    # --init keeps the architecture of its weights (--model-arg is refused with it): the advice says so
    assert ("does not reopen. Start a new run without --init, with --model afilm_tiny --model-arg "
            "up_slope=0.2 (a LeakyReLU there) --model-arg final_init_std=1e-3 (--init keeps the "
            "architecture of its weights).") in out, out
    refused = _afilm("train", "--init", tmp_path / "closed.pt", "--model-arg", "up_slope=0.2", "--train",
                     data["train"], cwd=tmp_path)
    assert refused.returncode == 2 and "--model-arg (up_slope) cannot change it" in refused.stderr


def test_progress_goes_to_plain_lines_where_the_output_is_not_a_terminal(monkeypatch):
    import io

    from rich.console import Console

    import afilm_cli.train_run as train_run
    from afilm_cli.train_run import EpochBar

    monkeypatch.setattr(train_run.time, "monotonic", lambda: 5.0)  # a still clock: no time left
    out = io.StringIO()
    with EpochBar(Console(file=out, force_terminal=False), enabled=True, every=0.0) as bar:
        bar.begin(0, 2, 5)  # resumed: 2 of 5 batches done
        bar.advance(0.5, 12.0)
        bar.advance(0.25, 13.0)
    assert out.getvalue().splitlines() == ["epoch 1: step 3/5  loss 0.5  12.0 patches/s  0:00:00 left",
                                           "epoch 1: step 4/5  loss 0.25  13.0 patches/s  0:00:00 left"]
    quiet = io.StringIO()
    with EpochBar(Console(file=quiet, force_terminal=False), enabled=False, every=0.0) as bar:
        bar.begin(0, 0, 5)
        bar.advance(0.5, 12.0)
    assert quiet.getvalue() == ""  # --no-progress


def test_cli_resume_passes_on_only_the_options_typed_again(monkeypatch, tmp_path):
    """--resume keeps the run's settings; what is typed again (--no-progress too, a negative flag
    whose parameter is named otherwise) is passed on as a change."""
    from typer.testing import CliRunner

    import afilm_cli.train as training
    from afilm_cli.main import app

    seen = {}

    def fake_resume_config(path, **changes):
        seen.update(changes, path=path)
        raise SystemExit(0)

    monkeypatch.setattr(training, "resume_config", fake_resume_config)
    runner = CliRunner()
    runner.invoke(app, ["train", "--resume", str(tmp_path), "--no-progress", "--threads", "1"])
    assert seen == {"path": str(tmp_path), "progress": False, "threads": 1}
    seen.clear()
    runner.invoke(app, ["train", "--resume", str(tmp_path), "--epochs", "3"])
    assert seen == {"path": str(tmp_path), "epochs": 3}


def test_adam_updates_as_the_reference_keras_adam():
    """Keras adds epsilon to sqrt(v) before the bias correction: with keras_eps, torch's Adam makes
    the Keras update step by step, small gradients (where the two differ up to 4x) included."""
    from afilm_cli.train import keras_eps

    cfg = TrainConfig(model="afilm_tiny")
    grads = [1e-6, -3e-7, 2e-3, 5e-8, 1e-6]
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w], lr=3e-4, betas=tuple(cfg.betas), eps=cfg.eps)
    m = v = keras_w = 0.0
    (b1, b2), lr, eps = cfg.betas, 3e-4, cfg.eps
    for t, g in enumerate(grads, start=1):
        w.grad = torch.tensor([g])
        opt.param_groups[0]["eps"] = keras_eps(cfg, t - 1)
        opt.step()
        # Keras (tf.keras optimizer_v2 / keras 3) Adam, transcribed
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        alpha = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        keras_w -= alpha * m / (math.sqrt(v) + eps)
        assert w.item() == pytest.approx(keras_w, rel=1e-5), t
    assert abs(keras_w) < 0.5 * 3e-4 * len(grads)  # epsilon did bite: no full lr-sized steps here


def test_training_sets_the_keras_epsilon(data, tmp_path):
    from afilm_cli.train import keras_eps

    result = train(_cfg(data, tmp_path, max_steps=3))
    ckpt = load_checkpoint(result.last)
    assert ckpt["optimizer"]["param_groups"][0]["eps"] == pytest.approx(keras_eps(TrainConfig(model="x"), 2))


def test_runs_started_in_the_same_second_get_their_own_folders(data, tmp_path, monkeypatch):
    """The default runs/<model>-<time> is claimed by creating it: a second run in the same second
    (a sweep sent to the background) gets runs/<model>-<time>-2, not the first run's files."""
    import afilm_cli.train_setup as setup

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(setup.time, "strftime", lambda fmt, *a: "20261127-131628")
    first = train(_cfg(data, tmp_path, out=None, max_steps=1, lr=1e-3))
    second = train(_cfg(data, tmp_path, out=None, max_steps=1, lr=1e-4))
    assert first.out == Path("runs/afilm_tiny-20261127-131628")
    assert second.out == Path("runs/afilm_tiny-20261127-131628-2")
    for result, lr in ((first, 1e-3), (second, 1e-4)):
        starts = [json.loads(line) for line in (result.out / "log.jsonl").read_text().splitlines()]
        assert [s["config"]["lr"] for s in starts if s["type"] == "start"] == [lr]
        assert load_checkpoint(result.last)["train_config"]["lr"] == lr


def test_out_naming_a_file_is_refused(data, tmp_path):
    (tmp_path / "bench.json").write_text("{}")
    with pytest.raises(AfilmError, match="bench.json is a file, not a folder"):
        train(_cfg(data, tmp_path, out=str(tmp_path / "bench.json"), max_steps=1))
    assert (tmp_path / "bench.json").read_text() == "{}"


def test_log_says_how_its_two_epoch_counts_read(data, tmp_path):
    result = train(_cfg(data, tmp_path, max_steps=4, epochs=2))  # 3 steps per epoch
    records = [json.loads(line) for line in (result.out / "log.jsonl").read_text().splitlines()]
    start = records[0]
    assert start["type"] == "start" and "epoch = the epoch being run, from 1" in start["epoch_note"]
    assert "elapsed = seconds since this process began that epoch" in start["epoch_note"]  # its unit
    steps = {r["step"]: r["epoch"] for r in records if r["type"] == "step"}
    assert steps == {1: 1, 2: 1, 3: 1, 4: 2}
    epochs = [(r["epoch"], r["epoch_step"]) for r in records if r["type"] == "epoch"]
    assert epochs == [(1, 0), (1, 1)]


def test_nan_or_integer_patches_stop_with_one_clear_error(data, tmp_path):
    """NaN in the patches made every loss NaN and the run 'finished' (best: None); int16 patches were
    taken as samples of +-32768. Training stops before a NaN step changes the weights."""
    d, l = (a.copy() for a in data["arrays"])
    d[5, 100] = np.nan
    bad = _write(tmp_path / "nan-train.h5", d, l)
    with pytest.raises(AfilmError, match=r"training loss is not a number at step 1 .*nothing was saved"):
        train(_cfg(data, tmp_path, train=str(bad), max_steps=3, batch_size=24))
    with pytest.raises(AfilmError, match="validation patches hold NaN or Inf"):
        train(_cfg(data, tmp_path, val=str(bad), max_steps=1, out=str(tmp_path / "v")))
    with h5py.File(tmp_path / "int-train.h5", "w") as f:
        for name, arr in (("data", data["arrays"][0]), ("label", data["arrays"][1])):
            f.create_dataset(name, data=(arr * 32767).astype(np.int16)[..., None])
    with pytest.raises(AfilmError, match="'data' is int16 .* must be floating-point samples"):
        train(_cfg(data, tmp_path, train=str(tmp_path / "int-train.h5"), max_steps=1, r=4, sr=16000,
                   degrade="decimate"))


def test_a_bad_model_setting_is_refused_before_the_data_is_read(tmp_path):
    """The config is checked first: a typo is not reported after minutes of loading a large split."""
    with pytest.raises(AfilmError, match="dropout"):
        train(TrainConfig(model="afilm_tiny", model_args={"dropout": 2.0}, train=str(tmp_path / "none.h5"),
                          out=str(tmp_path / "run")))
    with pytest.raises(AfilmError, match="no_such_model"):
        train(TrainConfig(model="no_such_model", train=str(tmp_path / "none.h5"), out=str(tmp_path / "r")))
    assert list(tmp_path.iterdir()) == []


def test_a_run_folder_that_cannot_be_made_is_one_line_before_training(data, tmp_path):
    """'afilm train -o /proc/x' ended in a generic "No such file or directory: /proc/x"."""
    (tmp_path / "notes.txt").write_text("keep")
    steps = []
    cases = [(tmp_path / "notes.txt" / "run", r"cannot create folder .*notes.txt/run: .*is a file")]
    if Path("/proc/self").is_dir():  # Linux: no folder can be made in /proc
        cases.append((Path("/proc/afilm-test-run"), "cannot create folder /proc/afilm-test-run: "))
    for out, match in cases:
        with pytest.raises(AfilmError, match=match) as err:
            train(_cfg(data, tmp_path, out=str(out), max_steps=1), on_step=steps.append)
        assert "\n" not in str(err.value)
    assert steps == [] and (tmp_path / "notes.txt").read_text() == "keep"


def test_a_damaged_checkpoint_is_one_line_naming_what_is_wrong(data, tmp_path):
    """A cut-off .pt relayed PyTorch's paragraph cut mid-sentence; weights that do not fit said
    "Error(s) in loading state_dict for UNet:" and named no key."""
    run = train(_cfg(data, tmp_path, max_steps=1, val=None))
    good = run.out / "last.pt"
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:300_000])
    with pytest.raises(AfilmError) as err:
        load_checkpoint(cut)
    assert str(err.value) == (f"{cut}: not a readable afilm checkpoint (truncated or corrupt: failed reading "
                              "zip archive: failed finding central directory)")
    ckpt = load_checkpoint(good)
    sd = ckpt["state_dict"]
    keys = list(sd)
    one = rf"do not fit model 'afilm_tiny': 1 missing \({re.escape(keys[0])}\)$"
    with pytest.raises(AfilmError, match=one):
        model_from_checkpoint({**ckpt, "state_dict": {k: v for k, v in sd.items() if k != keys[0]}})
    odd = {**{k: v for k, v in sd.items() if k not in keys[:5]}, "extra.weight": torch.zeros(1),
           keys[5]: torch.zeros(2, 3)}
    with pytest.raises(AfilmError) as err:
        model_from_checkpoint({**ckpt, "state_dict": odd})
    assert str(err.value) == (
        f"checkpoint weights do not fit model 'afilm_tiny': 5 missing ({', '.join(keys[:3])} and 2 more); "
        f"1 unexpected (extra.weight); 1 of another shape ({keys[5]}: 2x3 vs "
        f"{'x'.join(map(str, sd[keys[5]].shape))} in the model)")
    # --init with such weights: the same line, naming the file (it was torch's RuntimeError)
    torch.save({**ckpt, "state_dict": odd}, tmp_path / "odd.pt")
    with pytest.raises(AfilmError, match=r"odd\.pt: checkpoint weights do not fit model 'afilm_tiny': 5 "):
        train(_cfg(data, tmp_path, init=str(tmp_path / "odd.pt"), out=str(tmp_path / "ft"), max_steps=1))
    # what upsample and eval load: the same line, naming the file
    from afilm_cli.infer import load_model

    with pytest.raises(AfilmError, match=r"odd\.pt: checkpoint weights do not fit model 'afilm_tiny': 5 "):
        load_model(tmp_path / "odd.pt")


# ---------------------------------------------------------------- divergence, resumed data, odd settings


@pytest.mark.parametrize("lr, val, what", [
    (math.inf, True, "the weights are no longer finite"),
    (1e2, True, "the validation loss is not a number"),  # finite weights, NaN output
    (1e2, False, "the model's output is no longer finite"),  # the same, seen on a training batch
])
def test_a_run_that_diverges_at_an_epoch_end_keeps_its_last_good_checkpoint(data, tmp_path, monkeypatch,
                                                                            capsys, lr, val, what):
    """A step that broke the weights at an epoch's end was validated (val loss nan), saved as last.pt
    (every tensor NaN), blamed on closed ReLU gates, and only the next step stopped the run."""
    import afilm_cli.train as training

    real, bad_step = training.lr_at, [5]  # the last step of epoch 2 (3 per epoch)
    monkeypatch.setattr(training, "lr_at", lambda cfg, s, n: lr if s == bad_step[0] else real(cfg, s, n))
    kw = {}
    if not val:  # a name without -train.h5: no sibling validation file is found
        kw = {"val": None, "train": str(shutil.copy(data["train"], tmp_path / "patches.h5"))}
    with pytest.raises(AfilmError, match=rf"diverged: {what} after step 6 .*run/last.pt keeps the last saved "
                                         r"state and .*run/best.pt the best$"):
        train(_cfg(data, tmp_path, epochs=2, **kw))
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 3 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert "ReLU gate" not in capsys.readouterr().out
    assert _log(tmp_path / "run")[-1] == {"type": "diverged", "step": 6, "reason": what}
    bad_step[0] = 2  # the end of the first epoch: no checkpoint yet
    with pytest.raises(AfilmError, match=r"diverged: .*after step 3 .*nothing was saved in .*new$"):
        train(_cfg(data, tmp_path, epochs=1, out=str(tmp_path / "new"), **kw))
    assert not (tmp_path / "new" / "last.pt").exists()


def test_ctrl_c_after_a_diverging_step_saves_nothing(data, tmp_path, monkeypatch):
    import afilm_cli.train as training

    real = training.lr_at
    monkeypatch.setattr(training, "lr_at", lambda cfg, s, n: math.inf if s == 3 else real(cfg, s, n))

    def interrupt(step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(AfilmError, match=r"diverged: the weights are no longer finite after step 4 "):
        train(_cfg(data, tmp_path, epochs=2), on_step=interrupt)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3


def test_lr_must_be_finite(data, tmp_path):
    for lr in (math.inf, math.nan):
        with pytest.raises(AfilmError, match=f"--lr must be a finite number, got {lr}"):
            train(_cfg(data, tmp_path, lr=lr, max_steps=1))
    assert not (tmp_path / "run").exists()


def test_resume_refuses_another_patch_count_mid_epoch_and_another_patch_length(data, tmp_path):
    """A run stopped 2 batches into an epoch 'continued' that epoch on a file with fewer batches with no
    step; the patch length of the training file was not compared on resume."""
    x, y = data["arrays"]
    few = _write(tmp_path / "few.h5", x[:8], y[:8])  # one batch per epoch
    short = _write(tmp_path / "short.h5", x[:, :1024], y[:, :1024], patch=1024)
    part = train(_cfg(data, tmp_path, max_steps=2, val=None))  # stopped inside epoch 1
    ckpt = load_checkpoint(part.last)
    assert (ckpt["epoch_step"], ckpt["train_patches"]) == (2, 24)
    resume = dict(out=None, val=None, max_steps=None, resume=str(part.out))
    match = rf"few.h5 holds 8 patches, but .*last.pt stopped 2 batches into an epoch of {data['train']} \(24 "
    with pytest.raises(AfilmError, match=match + r"patches\).*--train .*--init "):
        train(_cfg(data, tmp_path, train=str(few), **resume))
    del ckpt["train_patches"]  # a checkpoint from before the count was kept: no step left is refused
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(AfilmError, match=r"few.h5 holds 8 patches, but .*old.pt stopped 2 batches"):
        train(_cfg(data, tmp_path, train=str(few), **{**resume, "resume": str(tmp_path / "old.pt"),
                                                        "out": str(tmp_path / "old")}))
    with pytest.raises(AfilmError, match=r"short.h5 holds patches of 1024 samples, but checkpoint .* was "
                                         r"trained on 2048: .*--patch 2048"):
        train(_cfg(data, tmp_path, train=str(short), **resume))
    done = train(_cfg(data, tmp_path, epochs=1, **resume))  # the same file goes on
    assert done.step == 3


def test_resume_mid_epoch_refuses_other_patches_of_the_same_count(data, tmp_path):
    """Only the patch count and length were compared: a mid-epoch resume over another file of 24
    patches of 2048 went on with the first file's batch order."""
    x, y = data["arrays"]
    other = _write(tmp_path / "other.h5", x[::-1].copy(), y[::-1].copy())  # same count and length
    copy = _write(tmp_path / "copy.h5", x, y)  # the same patches under another name
    part = train(_cfg(data, tmp_path, max_steps=2, val=None))
    assert len(load_checkpoint(part.last)["train_fingerprint"]) == 16
    resume = dict(out=None, val=None, max_steps=None, resume=str(part.out))
    with pytest.raises(AfilmError, match=rf"other.h5 holds other patches than {data['train']} \(24 of "
                                         r"each\), on which .*last.pt stopped 2 batches into an epoch.*"
                                         r"--train .*--init "):
        train(_cfg(data, tmp_path, train=str(other), **resume))
    # with the run's validation file: copy.h5 has no *-val.h5 beside it, and the run validated
    resume["val"] = str(data["val"])
    assert train(_cfg(data, tmp_path, train=str(copy), epochs=1, **resume)).step == 3


def test_a_bundled_model_as_model_is_refused_for_init(data, tmp_path):
    """train --model afilm_speech_r4 quietly started from the pretrained weights, its log saying
    init: null."""
    with pytest.raises(AfilmError, match=r"^--model afilm_speech_r4 is a bundled pretrained model: to "
                                         r"fine-tune it, pass --init afilm_speech_r4 "):
        train(_cfg(data, tmp_path, model="afilm_speech_r4", max_steps=1))
    assert not (tmp_path / "run").exists()


def test_bf16_on_cpu_is_said_to_train_in_fp32(data, tmp_path, capsys):
    """--precision bf16 enables autocast on CUDA alone; on CPU it was accepted without a word. And the
    checkpoints and the log recorded bf16 for a run that trained in fp32 (so a resume on CUDA switched
    to bf16): they record fp32, what ran."""
    res = train(_cfg(data, tmp_path, max_steps=1, val=None, precision="bf16"))
    out = capsys.readouterr().out
    assert ("--precision bf16 is autocast on CUDA only: this run on cpu trains in fp32, and its checkpoints "
            "record fp32") in out
    assert load_checkpoint(res.last)["train_config"]["precision"] == "fp32"
    assert _log(res.out)[0]["config"]["precision"] == "fp32"
    assert resume_config(str(res.out)).precision == "fp32"


def test_validation_patches_of_another_length_are_refused(data, tmp_path):
    x, y = data["arrays"]
    short = _write(tmp_path / "short.h5", x[:4, :1024], y[:4, :1024], patch=1024)
    with pytest.raises(AfilmError, match=r"short.h5 holds patches of 1024 samples, but .*-train.h5 of 2048"):
        train(_cfg(data, tmp_path, val=str(short), max_steps=1))
    assert not (tmp_path / "run").exists()


def test_a_folder_with_only_a_log_says_the_run_saved_nothing(data, tmp_path):
    """A run that saved nothing (diverged in epoch 1, a double Ctrl-C) left log.jsonl alone, and was
    called a run to continue with --resume, which then failed: 'last.pt: no such checkpoint'."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"type": "start"}\n')
    with pytest.raises(AfilmError, match=r"run holds an earlier training run that saved no checkpoint "
                                         r"\(only log.jsonl\); pass --force to replace it$"):
        train(_cfg(data, tmp_path, max_steps=1))
    for call in (lambda: train(_cfg(data, tmp_path, out=None, resume=str(run))),
                 lambda: resume_config(str(run))):  # the CLI's way in
        with pytest.raises(AfilmError, match=r"run: the run there saved no checkpoint .*--force$"):
            call()
    assert train(_cfg(data, tmp_path, max_steps=1, force=True)).step == 1
    # best.pt without last.pt: --force would delete best.pt, so --init is what is suggested
    (run / "last.pt").unlink()
    with pytest.raises(AfilmError, match=r"run: has best.pt but no last.pt .*--init .*best.pt$"):
        resume_config(str(run))


def test_max_steps_0_drops_a_resumed_runs_limit(data, tmp_path, capsys):
    from typer.testing import CliRunner

    from afilm_cli.main import app

    part = train(_cfg(data, tmp_path, epochs=2, max_steps=4))
    assert train(resume_config(str(part.out))).step == 4  # the limit stays with the run
    said = " ".join(capsys.readouterr().out.split())
    assert "nothing to do: the run has done 1 epoch and 4 steps; raise --max-steps (or give --max-steps " \
           "0: no limit)" in said
    done = train(resume_config(str(part.out), max_steps=0))
    assert (done.epoch, done.step) == (2, 6)
    assert load_checkpoint(done.last)["train_config"]["max_steps"] is None
    with pytest.raises(AfilmError, match="--max-steps must be 0 .* got -1"):
        train(_cfg(data, tmp_path, max_steps=-1, out=str(tmp_path / "neg")))
    seen = {}

    def fake_resume_config(path, **changes):
        seen.update(changes)
        raise SystemExit(0)

    import afilm_cli.train as training

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "resume_config", fake_resume_config)
        CliRunner().invoke(app, ["train", "--resume", str(part.out), "--max-steps", "0"])
    assert seen == {"max_steps": 0}


def test_val_that_is_the_training_file_is_warned_about(data, tmp_path, capsys):
    train(_cfg(data, tmp_path, val=str(data["train"]), max_steps=1))
    out = " ".join(capsys.readouterr().out.split())
    assert f"--val is the training file ({data['train']}): best.pt will be chosen on training data" in out


def test_plain_progress_lines_come_early_and_say_the_time_left(monkeypatch):
    """Where the output is not a terminal, the plain line had no time left and came at most every 60 s:
    an epoch under a minute showed nothing between the model line and its summary."""
    import io

    from rich.console import Console

    import afilm_cli.train_run as train_run

    clock = [100.0]
    monkeypatch.setattr(train_run.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    with train_run.EpochBar(Console(file=out, force_terminal=False), enabled=True) as bar:
        bar.begin(0, 0, 100)
        for _ in range(60):  # 1 s a step: lines after 10 s, then 60 s later (step 70 is not reached)
            clock[0] += 1.0
            bar.advance(0.5, 8.0)
        bar.begin(1, 50, 100)  # a resumed epoch: its time left counts only the steps run now
        for _ in range(15):
            clock[0] += 2.0
            bar.advance(0.25, 4.0)
    assert out.getvalue().splitlines() == ["epoch 1: step 10/100  loss 0.5  8.0 patches/s  0:01:30 left",
                                           "epoch 2: step 55/100  loss 0.25  4.0 patches/s  0:01:30 left"]


def test_transformer_model_args_on_a_tfilm_model_are_refused(data, tmp_path):
    """--model-arg heads=3 on tfilm_tiny was accepted and changed nothing (it has no transformer)."""
    with pytest.raises(AfilmError, match=r"--model-arg heads, ff_dim: these configure AFiLM's transformer"):
        train(_cfg(data, tmp_path, model="tfilm_tiny", model_args={"heads": 3, "ff_dim": 7}, max_steps=1))
    with pytest.raises(AfilmError, match=r"--model-arg heads: these configure"):  # switched to tfilm here
        train(_cfg(data, tmp_path, model="afilm_tiny", model_args={"modulation": "tfilm", "heads": 2},
                   max_steps=1))
    assert not (tmp_path / "run").exists()


def test_degrade_help_is_the_one_prepare_applies_and_a_bad_one_is_refused(tmp_path):
    """train --help said "two joined by +" where prepare joins any of the three, each once; and any word
    was taken, recorded in the checkpoint and refused only when the checkpoint was loaded."""
    from afilm_cli.audio import degrade_methods
    from afilm_cli.commands.options import DEGRADE_SPEC

    p = subprocess.run([sys.executable, "-m", "afilm_cli", "train", "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "400"})  # each option's help on one line
    assert p.returncode == 0, p.stderr
    line = next(s for s in p.stdout.splitlines() if "--degrade" in s)
    assert f"For HDF5 files without a recipe: {DEGRADE_SPEC}." in " ".join(line.split())
    assert degrade_methods("subsample+decimate+resample") == ("subsample", "decimate", "resample")
    with pytest.raises(AfilmError, match=r"^unknown degradation 'decimate\+bogus'; known: "):
        train(TrainConfig(model="afilm_tiny", degrade="decimate+bogus", train=str(tmp_path / "none.h5"),
                          out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_a_batch_size_above_the_patch_count_is_warned_about(data, tmp_path):
    """--batch-size 64 on 24 patches trained one step of 24 per epoch without a word (the loader keeps
    a partial batch: the step count and the patches per step were not what was asked)."""
    p = _afilm("train", "--model", "afilm_tiny", "--train", str(data["train"]), "--val", str(data["val"]),
               "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--threads", "1", "--out", "run",
               "--no-progress", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    said = " ".join(p.stdout.split())
    assert ("warning: --batch-size 64 is more than the 24 training patches: every epoch is one step, on a "
            "batch of 24" in said)
    assert "done: 1 epoch, 1 step" in said
    p = _afilm("train", "--model", "afilm_tiny", "--train", str(data["train"]), "--val", str(data["val"]),
               "--max-steps", "1", "--batch-size", "24", "--device", "cpu", "--threads", "1", "--out", "run2",
               "--no-progress", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "--batch-size" not in p.stdout  # a batch of every patch is what was asked


def test_commands_suggested_for_a_run_folder_with_a_space_can_be_typed_as_given(data, tmp_path):
    """'pass --resume run ü 1 to continue it' split into three words where it was pasted; the interrupt
    line already quoted its path, the refusals now do too."""
    args = ("train", "--model", "afilm_tiny", "--train", str(data["train"]), "--val", str(data["val"]),
            "--batch-size", "8", "--threads", "1", "--no-progress", "--out", "run ü 1")
    assert _afilm(*args, "--max-steps", "1", cwd=tmp_path).returncode == 0
    again = _afilm(*args, "--max-steps", "2", cwd=tmp_path)
    assert again.returncode == 2
    suggested = re.search(r"pass (--resume .*) to continue it", again.stderr)
    assert suggested and suggested.group(1) == "--resume 'run ü 1'", again.stderr
    resumed = _afilm("train", *shlex.split(suggested.group(1)), "--max-steps", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(tmp_path / "run ü 1" / "last.pt")["step"] == 2


def test_no_training_data_suggests_a_prepare_that_writes_where_train_looks(tmp_path):
    """With --data-dir elsewhere, the suggested 'afilm prepare vctk --r 4' wrote to data/, where this
    train command would still not look."""
    proc = _afilm("train", "--model", "afilm_tiny", "--data-dir", "my data", cwd=tmp_path)
    assert proc.returncode == 2
    assert "(afilm prepare vctk --r 4 --out 'my data')" in proc.stderr, proc.stderr
    plain = _afilm("train", "--model", "afilm_tiny", cwd=tmp_path)
    assert "(afilm prepare vctk --r 4)" in plain.stderr, plain.stderr


def test_compile_is_said_before_the_first_step(data, tmp_path, capsys, monkeypatch):
    """--compile printed nothing while torch.compile worked at the first step (about 2.5 minutes for
    afilm_tiny on a 2-core CPU, and 40 s more at the first validation): the run looked hung. Here
    dynamo really traces the model, with its eager backend (inductor's code generation is what takes
    minutes); the line is out before step 1 is done, and not where there is no step to run."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, backend="eager"))
    said = "compiling the model with torch.compile: the first steps and the first validation take longer"
    seen = []
    res = train(_cfg(data, tmp_path, max_steps=1, compile=True),
                on_step=lambda step: seen.append(capsys.readouterr().out))
    lines = seen[0].splitlines()
    assert lines[-1] == said and lines[-2].startswith("model: afilm_tiny"), seen[0]
    assert said not in capsys.readouterr().out  # said once
    train(resume_config(str(res.out), compile=True))  # --max-steps 1 reached: nothing to compile for
    out = capsys.readouterr().out
    assert "nothing to do" in out and "compiling" not in out
    # the real CLI: the line on stdout with the run's other lines (torch.compile a no-op here, by torch's
    # own switch, to keep it short), below the line that names the model
    args = ["train", "--model", "afilm_tiny", "--train", str(data["train"]), "--max-steps", "1",
            "--batch-size", "8", "--device", "cpu", "--compile", "--out", "cli"]
    env = {**os.environ, "AFILM_DISABLE_PLUGINS": "1", "TORCH_COMPILE_DISABLE": "1"}
    p = subprocess.run([sys.executable, "-m", "afilm_cli", *args], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[lines.index(said) - 1].startswith("model: afilm_tiny"), p.stdout


def test_paths_with_brackets_are_shown_as_written(data, tmp_path):
    """Run and data paths went through rich markup: 'd[red]/x-train.h5' was shown as 'd/x-train.h5',
    'run [x]' as 'run ', and a '[/y]' in --out stopped the run with a MarkupError traceback."""
    folder = tmp_path / "d[red]"
    folder.mkdir()
    train_file = folder / "x-train.h5"
    train_file.write_bytes(data["train"].read_bytes())
    args = ("train", "--model", "afilm_tiny", "--train", "d[red]/x-train.h5", "--val", "d[red]/x-train.h5",
            "--batch-size", "8", "--threads", "1", "--no-progress", "--max-steps", "1")
    p = _afilm(*args, "--out", "run [x]", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "train: d[red]/x-train.h5 (24 patches" in p.stdout and "val:   d[red]/x-train.h5 (24" in p.stdout
    assert "run: run [x]\n" in p.stdout and "--val is the training file (d[red]/x-train.h5)" in p.stdout
    p = _afilm(*args, "--out", "run[/y]", cwd=tmp_path)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "run: run[/y]\n" in p.stdout


@pytest.mark.parametrize("r, sr", [(0, 16000), (1, 16000), (4, 0), (4, -5), (4, 16001)])
def test_a_recipe_upsample_cannot_use_is_refused_before_training(data, tmp_path, r, sr):
    """--r 0, --r 1, --sr 0, a negative --sr or an --sr that --r does not divide were taken for a file
    without a recipe, trained on and recorded: upsample then failed on every checkpoint of the run
    ('checkpoint recipe lacks integer r and sr', 'signal of -10 samples', 'low rate 4000.25 Hz')."""
    ref = tmp_path / "ref-train.h5"
    x, y = data["arrays"]
    with h5py.File(ref, "w") as f:
        f.create_dataset("data", data=x[:, :, None])
        f.create_dataset("label", data=y[:, :, None])
    cfg = _cfg(data, tmp_path, train=str(ref), val=None, max_steps=1, degrade="decimate")
    with pytest.raises(AfilmError, match=rf"r={r} and sr={sr} are not a recipe: r must be 2 or above and "
                                         r"divide sr") as err:
        train(replace(cfg, r=r, sr=sr))
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


def test_a_resumed_run_with_no_better_epoch_says_it_saved_no_best(data, tmp_path):
    """Resumed into a new folder, a run whose epochs never beat the score it resumed with writes no
    best.pt there; the closing line said 'best: None'."""
    res = train(_cfg(data, tmp_path, epochs=1))
    ckpt = load_checkpoint(res.last)
    ckpt["best"] = 0.0  # a score no epoch beats
    torch.save(ckpt, tmp_path / "start.pt")
    p = _afilm("train", "--resume", "start.pt", "--out", "branch", "--epochs", "2", "--no-progress",
               cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "branch" / "best.pt").exists()
    assert p.stdout.splitlines()[-1] == ("done: 2 epochs, 6 steps; best: none (no epoch of this run beat the "
                                         "best score it resumed with); last: branch/last.pt"), p.stdout


def test_a_resumed_run_whose_data_moved_says_so(data, tmp_path):
    """The run's files are recorded by absolute path; moved since, the resume said only '...: no such
    HDF5 file', leaving the user to guess that --train and --val point a resumed run elsewhere."""
    folder = tmp_path / "data"
    folder.mkdir()
    for key in ("train", "val"):
        shutil.copy(data[key], folder / data[key].name)
    res = train(_cfg(data, tmp_path, epochs=1, train=str(folder / data["train"].name),
                     val=str(folder / data["val"].name)))
    folder.rename(tmp_path / "moved")
    gone = (r"^the resumed run's training file .*/data/vctk-mini-r4-train\.h5 and validation file "
            r".*/data/vctk-mini-r4-val\.h5 are not there any more; if moved, pass --train FILE and "
            r"--val FILE$")
    with pytest.raises(AfilmError, match=gone):
        train(resume_config(str(res.out), epochs=2))
    moved_train = str(tmp_path / "moved" / data["train"].name)
    with pytest.raises(AfilmError, match=r"^the resumed run's validation file .* is not there any more; if "
                                         r"moved, pass --val FILE$"):
        train(resume_config(str(res.out), epochs=2, train=moved_train))
    done = train(resume_config(str(res.out), epochs=2, train=moved_train,
                               val=str(tmp_path / "moved" / data["val"].name)))
    assert done.epoch == 2
    with pytest.raises(AfilmError, match=r"nope\.h5: no such HDF5 file$"):  # a file typed, not the run's
        train(resume_config(str(res.out), epochs=3, train=str(tmp_path / "nope.h5")))


def test_data_dir_with_resume_is_refused(data, tmp_path):
    """--data-dir on --resume was taken and never looked in: the run went on with its recorded files
    (or failed on them, moved) while the user believed it read the folder named."""
    res = train(_cfg(data, tmp_path, epochs=1))
    p = _afilm("train", "--resume", str(res.out), "--epochs", "2", "--data-dir", "elsewhere", cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr == ("afilm: error: --data-dir: a resumed run goes on with its own training and "
                        "validation files; to give others, pass --train FILE (and --val FILE)\n")
    assert load_checkpoint(res.last)["epoch"] == 1


def test_resume_of_a_bundled_model_points_to_init(tmp_path):
    """'--resume afilm_speech_r4' said 'no such checkpoint', and its file 'not a training checkpoint ...
    it cannot be resumed', neither naming --init, which fine-tunes it."""
    p = _afilm("train", "--resume", "afilm_speech_r4", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr == (
        "afilm: error: afilm_speech_r4 is a bundled model, not a run: there is nothing to resume; start a "
        "new run from its weights with --init afilm_speech_r4\n")
    from afilm_cli.pretrained import bundled_checkpoint_path

    shutil.copy(bundled_checkpoint_path("afilm_speech_r4"), tmp_path / "weights.pt")
    p = _afilm("train", "--resume", "weights.pt", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.endswith(
        "cannot be resumed; start a new run from its weights with --init weights.pt\n"), p.stderr
    assert not (tmp_path / "runs").exists()


def test_resume_into_another_folder_with_nothing_to_do_writes_nothing(data, tmp_path):
    """A finished run resumed into another folder with no step left made that folder with a log alone
    (its 'done' line named a last.pt that was not there, and a later --resume of it said the run saved
    nothing); with --force over another run's folder, that run's checkpoints were deleted for it."""
    res = train(_cfg(data, tmp_path, epochs=1))
    other = train(_cfg(data, tmp_path, epochs=1, out=str(tmp_path / "other"), seed=1))
    kept = {p.name: p.read_bytes() for p in other.out.iterdir()}
    for out, force in ((tmp_path / "new", False), (other.out, True)):
        with pytest.raises(AfilmError, match=rf"^nothing to do: the run has done 1 epoch and 3 steps; raise "
                                             rf"--epochs; nothing was written to {re.escape(str(out))}$"):
            train(resume_config(str(res.out), out=str(out), force=force))
    assert not (tmp_path / "new").exists()
    assert {p.name: p.read_bytes() for p in other.out.iterdir()} == kept
    assert train(resume_config(str(res.out))).step == 3  # in its own folder: a warning, as before


def test_counts_of_one_are_said_in_the_singular(data, tmp_path, capsys):
    """train said '1 epochs', '1 patches', '1 steps', 'stopped 1 batches into an epoch': a count of one
    took the plural in its lines and messages."""
    x, y = data["arrays"]
    one = _write(tmp_path / "one.h5", x[10:11], y[10:11])
    one_val = _write(tmp_path / "one-val.h5", x[12:13], y[12:13])
    two = _write(tmp_path / "two.h5", x[10:12], y[10:12])
    p = _afilm("train", "--model", "afilm_tiny", "--train", str(one), "--val", str(one_val), "--epochs", "1",
               "--batch-size", "2", "--device", "cpu", "--threads", "1", "--out", "run", "--no-progress",
               cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    said = " ".join(p.stdout.split())
    assert "one.h5 (1 patch of 2048, in memory;" in said and "one-val.h5 (1 patch)" in said
    assert "1 CPU thread;" in said
    assert ("--batch-size 2 is more than the 1 training patch: every epoch is one step, on a batch of 1"
            in said)
    assert p.stdout.splitlines()[-1].startswith("done: 1 epoch, 1 step; best: run/best.pt")
    train(resume_config(str(tmp_path / "run")))
    said = " ".join(capsys.readouterr().out.split())
    assert "nothing to do: the run has done 1 epoch and 1 step; raise --epochs" in said
    part = train(_cfg(data, tmp_path, train=str(two), val=None, batch_size=1, max_steps=3,
                      out=str(tmp_path / "part")))  # one epoch of two steps, then one step of the next
    with pytest.raises(AfilmError, match=r"one.h5 holds 1 patch, but .*last.pt stopped 1 batch into an epoch "
                                         r"of .*two.h5 \(2 patches\)"):
        train(resume_config(str(part.out), train=str(one)))
    capsys.readouterr()
    assert train(resume_config(str(part.out), max_steps=4)).step == 4
    said = " ".join(capsys.readouterr().out.split())
    assert "last.pt: 1 epoch done, then 1 batch of the next; step 3" in said
    train(resume_config(str(part.out)))  # and more than one in the plural
    said = " ".join(capsys.readouterr().out.split())
    assert "two.h5 (2 patches of 2048" in said
    assert "nothing to do: the run has done 2 epochs and 4 steps" in said


def test_a_resumed_run_validates_on_the_patches_it_validated_on(data, tmp_path):
    """best.pt holds the run's best score, which a resumed run compares its epochs with: resumed with
    --val OTHER, new epochs were scored on OTHER against a best measured on the run's own validation
    set; a run without validation, resumed after a *-val.h5 appeared beside its training file (or with
    --val), compared validation losses with its best training loss."""
    x, y = data["arrays"]
    other = _write(tmp_path / "other.h5", x[8:16], y[8:16])  # 8 patches, as the run's, but others
    fewer = _write(tmp_path / "fewer.h5", x[8:12], y[8:12])
    moved = tmp_path / "moved-val.h5"
    shutil.copy(data["val"], moved)
    res = train(_cfg(data, tmp_path, epochs=1))
    ckpt = load_checkpoint(res.last)
    assert ckpt["val_patches"] == 8 and ckpt["val_fingerprint"] == PatchFile(data["val"]).fingerprint()
    before = {p.name: p.read_bytes() for p in res.out.iterdir()}
    p = _afilm("train", "--resume", "run", "--val", str(other), "--epochs", "2", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert p.stderr == (f"afilm: error: {other} holds other validation patches than {data['val']} (8 of "
                        f"each), on which run/last.pt chose best.pt: best.pt compares scores on one "
                        f"validation set; resume with --val {data['val']} (or a moved copy of it), or start "
                        f"a new run that validates on {other} with --init run/best.pt\n")
    with pytest.raises(AfilmError, match=r"fewer.h5 holds other validation patches than .* \(4 patches, not "
                                         r"8\), on which"):
        train(resume_config(str(res.out), epochs=2, val=str(fewer)))
    # the run's training file alone, under a name without a *-val.h5 beside it: no validation file
    alone = tmp_path / "alone" / "solo-train.h5"
    alone.parent.mkdir()
    shutil.copy(data["train"], alone)
    with pytest.raises(AfilmError, match=r"^.*run/last.pt validated on .*vctk-mini-r4-val.h5, and this "
                                         r"resume has no validation file: best.pt compares scores on one "
                                         r"validation set; pass --val .* \(or a moved copy of it\), or start "
                                         r"a new run without validation with --init .*run/best.pt$"):
        train(_cfg(data, tmp_path, epochs=2, out=None, resume=str(res.out), train=str(alone), val=None))
    assert {p.name: p.read_bytes() for p in res.out.iterdir()} == before  # refused before any work
    assert train(resume_config(str(res.out), epochs=2, val=str(moved))).epoch == 2  # the same patches, moved
    # a run without validation goes on without it: a *-val.h5 that appears is not taken up, --val refused
    solo = train(_cfg(data, tmp_path, epochs=1, train=str(alone), val=None, out=str(tmp_path / "solo")))
    assert load_checkpoint(solo.last)["val_patches"] is None
    shutil.copy(data["val"], alone.parent / "solo-val.h5")
    p = _afilm("train", "--resume", "solo", "--epochs", "2", "--no-progress", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "val:   none" in p.stdout and "val_loss" not in load_checkpoint(solo.last)["metrics"]
    p = _afilm("train", "--resume", "solo", "--epochs", "3", "--val", str(data["val"]), cwd=tmp_path)
    assert p.returncode == 2 and p.stderr == (
        f"afilm: error: solo/last.pt was trained without validation (best.pt follows its training loss), so "
        f"--val {data['val']} cannot be added on resume: best.pt compares scores on one validation set; "
        f"resume without --val, or start a new run that validates on it with --init solo/best.pt\n")
    # checkpoints from before the validation patches were recorded: presence compared, contents cannot be
    for path in (res.last, solo.last):
        old = load_checkpoint(path)
        del old["val_patches"], old["val_fingerprint"]
        torch.save(old, path.parent / "old.pt")
    assert train(resume_config(str(res.out / "old.pt"), epochs=3, val=str(other),
                               out=str(tmp_path / "old-run"))).epoch == 3
    with pytest.raises(AfilmError, match=r"old.pt was trained without validation"):
        train(resume_config(str(solo.out / "old.pt"), epochs=3, val=str(other),
                            out=str(tmp_path / "old-solo")))


def test_force_keeps_the_replaced_run_until_the_new_one_saves(data, tmp_path):
    """--force deleted the run already in --out before the new run had saved anything: a new run that
    failed at its first step (NaN patches, a double Ctrl-C) left the folder with a log alone."""
    old = train(_cfg(data, tmp_path, epochs=1))
    before = {p.name: p.read_bytes() for p in old.out.iterdir()}
    assert set(before) == {"last.pt", "best.pt", "log.jsonl"}
    d, l = (a.copy() for a in data["arrays"])
    d[5, 100] = np.nan
    bad = _write(tmp_path / "nan-train.h5", d, l)
    p = _afilm("train", "--model", "afilm_tiny", "--train", str(bad), "--val", str(data["val"]), "--out",
               "run", "--force", "--batch-size", "24", "--device", "cpu", "--no-progress", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.endswith("nothing was saved, and the earlier run in run is kept as it was\n")
    assert {p.name: p.read_bytes() for p in old.out.iterdir()} == before  # and no log.jsonl.new left

    def second_ctrl_c(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(data, tmp_path, epochs=1, force=True, seed=1), on_step=second_ctrl_c)
    assert {p.name: p.read_bytes() for p in old.out.iterdir()} == before
    # the first checkpoint replaces the old run: its best.pt goes (an interrupted save is no best) and
    # the new log, written aside until then, takes the old one's place
    # killed while saving its first checkpoint (here: at the second file, best.pt): last.pt was new
    # beside the old best.pt, and `upsample --ckpt run` took the old run's model without a word
    real_save, saves = torch.save, []

    def killed_at_best(obj, f, *a, **k):
        saves.append(Path(f).name)
        if len(saves) == 2:
            raise SystemExit(137)
        return real_save(obj, f, *a, **k)

    with mock.patch.object(torch, "save", killed_at_best), pytest.raises(SystemExit):
        train(_cfg(data, tmp_path, epochs=1, force=True, seed=1))
    assert saves[0].startswith(".last.tmp-") and saves[1].startswith(".best.tmp-")
    assert {p.name: p.read_bytes() for p in old.out.iterdir()} == before
    before_signal = signal.getsignal(signal.SIGINT)
    cut = train(_cfg(data, tmp_path, epochs=1, force=True, seed=1),
                on_step=lambda step: os.kill(os.getpid(), signal.SIGINT))
    assert signal.getsignal(signal.SIGINT) is before_signal
    assert cut.interrupted and sorted(p.name for p in cut.out.iterdir()) == ["last.pt", "log.jsonl"]
    assert load_checkpoint(cut.last)["step"] == 1 and load_checkpoint(cut.last)["train_config"]["seed"] == 1
    assert [r["type"] for r in _log(cut.out)] == ["start", "step", "interrupted"]
    p = subprocess.run([sys.executable, "-m", "afilm_cli", "train", "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "400"})  # each option's help on one line
    line = next(s for s in p.stdout.splitlines() if "--force" in s)
    assert "Its files stay until this run saves its first checkpoint" in " ".join(line.split())

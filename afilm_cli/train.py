"""Training, nanoGPT-shaped: a config block, one flat loop, evaluate() under no_grad, a plain
checkpoint dict. ``train(TrainConfig(...))`` is the library entry point; ``afilm train`` only builds
the config. Reference settings (REFERENCE.md section 3): MSE, Adam 3e-4 (0.9, 0.999), batch 16, 20 epochs.

Resume is exact: the checkpoint holds the weights, the optimizer, the global step, the epoch and the
number of batches already done in it, and the torch RNG states (dropout) of every rank. The batch
order is a pure function of (seed, epoch) (see data/loader.py), so a run stopped anywhere - at an
epoch's end, by --max-steps, or by Ctrl-C between two steps - continues with the very batches and
dropout masks an uninterrupted run would have used. Bit for bit at the same CPU thread count (give
--threads a number: ``auto`` follows the machine's load, and another count reorders float sums).

Multi-GPU: ``torchrun --nproc-per-node N -m afilm_cli train ...`` (DistributedDataParallel, nccl on
CUDA, gloo on CPU). --batch-size is per process; rank 0 alone prints, logs and writes checkpoints.

Beside this file: train_setup.py (device, data files and recipe, run folder, resume, RNG states),
train_run.py (console, log.jsonl, checkpoints, progress bar, Ctrl-C) and threads.py (CPU threads).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from afilm_cli import metrics
from afilm_cli.audio import degrade_methods
from afilm_cli.checkpoint import load_weights
from afilm_cli.data.h5 import PatchFile
from afilm_cli.data.loader import PatchLoader
from afilm_cli.diagnostics import dead_gates, relu_open_fraction
from afilm_cli.errors import AfilmError
from afilm_cli.level import patches_level
from afilm_cli.models import check_length, check_output
from afilm_cli.threads import num_threads, resolve_threads
from afilm_cli.train_run import Run, StopFlag
from afilm_cli.train_setup import (
    check_resumed_epoch,
    check_resumed_val,
    data_recipe,
    find_data,
    init_model_name,  # noqa: F401  (public here: afilm train --init uses it)
    load_init,
    load_resume,
    patches_record,
    pick_device,
    resume_config,  # noqa: F401  (public here: afilm train --resume uses it)
    run_dir,
    same_file,
    set_rng,
    steps_for_world,
)
from afilm_cli.wording import counted


@dataclass
class TrainConfig:
    model: str = "afilm"              # a registered model name (afilm models lists them)
    model_args: dict[str, Any] = field(default_factory=dict)  # create_model overrides (--model-arg)
    train: str | None = None          # HDF5 patches; None: the newest <data_dir>/*-train.h5
    val: str | None = None            # None: the train file's sibling *-val.h5, if there is one
    data_dir: str = "data"
    out: str | None = None            # None: runs/<model>-<timestamp> (or the resumed run's folder)
    epochs: int = 20
    batch_size: int = 16              # per process under torchrun
    lr: float = 3e-4
    lr_schedule: str = "constant"     # constant (the reference) | cosine: to 0 at the run's last step
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-7                 # Keras' Adam default, applied as Keras applies it: keras_eps
    loss: str = "mse"                 # mse (AFiLM code) | rmse (TFiLM code: mean per-patch RMSE)
    max_steps: int | None = None      # stop after this many optimizer steps in total (0: no limit)
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda
    threads: int | str = "auto"       # torch CPU threads; auto: the cores no other process is busy on
    compile: bool = False             # torch.compile the model
    precision: str = "fp32"           # fp32 | bf16 (autocast, CUDA only): bf16 measured slower (README)
    resume: str | None = None         # a checkpoint, or a run folder (its last.pt)
    init: str | None = None           # new run from these weights (checkpoint or bundled model name)
    force: bool = False               # replace a run already in `out`
    r: int | None = None              # recipe for HDF5 files that do not record it (reference files)
    sr: int | None = None
    degrade: str | None = None
    log_every: int = 50               # a JSONL step line every N steps
    progress: bool = True             # rich progress bar
    world_size: int = field(default=1, repr=False)  # set by train() under torchrun

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


LOSSES = ("mse", "rmse")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainResult:
    out: Path
    last: Path | None
    best: Path | None
    epoch: int                        # completed epochs
    step: int                         # optimizer steps in total
    metrics: dict[str, Any]           # of the last validation (or training) pass
    interrupted: bool = False


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based). Cosine runs from --lr down to 0 over
    the run's planned steps (--epochs, or --max-steps when that ends it sooner), so it depends on
    the planned length: raising --epochs on --resume stretches the rest of the curve."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def keras_eps(cfg: TrainConfig, step: int) -> float:
    """PyTorch's Adam epsilon for optimizer step ``step`` (0-based) that makes its update the reference's
    Keras Adam update: Keras adds epsilon to sqrt(v) before the bias correction, PyTorch after it, so
    the same update takes eps / sqrt(1 - beta2**t) at step t = step + 1 (3.2e-6 for 1e-7 at t = 1, the
    difference under 1% after 5,000 steps). It matters where gradients are small against epsilon."""
    return cfg.eps / math.sqrt(1.0 - cfg.betas[1] ** (step + 1))


def _finite_everywhere(value: float, device: torch.device) -> bool:
    """Whether the loss is finite on every rank (one rank's NaN reaches all gradients through DDP)."""
    finite = math.isfinite(value)
    if dist.is_initialized():
        flag = torch.tensor([0.0 if finite else 1.0], device=device)
        dist.all_reduce(flag)
        finite = flag.item() == 0.0
    return finite


def loss_fn(pred: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mse":
        return torch.mean((pred - y) ** 2)
    # the TFiLM code's loss: RMSE per patch, then the mean; the epsilon keeps sqrt's gradient finite
    return torch.mean(torch.sqrt(torch.mean((pred - y) ** 2, dim=(1, 2)) + 1e-12))


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: PatchLoader, cfg: TrainConfig, device: torch.device,
             with_spline: bool = False) -> dict[str, float]:
    """Loss, RMSE, SNR and LSD of ``model`` on ``loader`` (and of the spline input if asked).

    SNR is over all validation samples at once (the SNR of the concatenated patches); LSD (log10
    convention, metrics.lsd) is the mean of the per-patch values, since an STFT frame spanning two
    unrelated patches would mean nothing. Sums are all-reduced across ranks under torchrun.
    """
    model.eval()
    s = torch.zeros(8, dtype=torch.float64)  # loss*n, n, err2, ref2, lsd, spline err2, spline lsd, samples
    for x, y in loader.batches(0):
        with _autocast(device, cfg.precision):
            out = model(x.to(device))
        check_output(cfg.model, x, out)  # a model fine in training mode may not be in eval mode
        pred = out.float().cpu()
        s[0] += loss_fn(pred, y, cfg.loss).item() * len(x)
        s[1] += len(x)
        s[2] += ((pred.double() - y.double()) ** 2).sum()
        s[3] += (y.double() ** 2).sum()
        s[4] += sum(metrics.lsd(p, t) for p, t in zip(pred.numpy(), y.numpy(), strict=True))
        if with_spline:
            s[5] += ((x.double() - y.double()) ** 2).sum()
            s[6] += sum(metrics.lsd(p, t) for p, t in zip(x.numpy(), y.numpy(), strict=True))
        s[7] += y.numel()
    if dist.is_initialized():
        s = s.to(device)
        dist.all_reduce(s)
        s = s.cpu()
    model.train()
    loss, n, err2, ref2, lsd_sum, s_err2, s_lsd, samples = s.tolist()
    if not (math.isfinite(ref2) and math.isfinite(s_err2)):
        raise AfilmError(f"{loader.patches.path}: the validation patches hold NaN or Inf samples")
    out = {"loss": loss / n, "rmse": math.sqrt(err2 / samples), "snr": _snr(ref2, err2), "lsd": lsd_sum / n}
    if with_spline:
        out |= {"spline_snr": _snr(ref2, s_err2), "spline_lsd": s_lsd / n}
    return out


def train(cfg: TrainConfig, on_step=None) -> TrainResult:
    """Train as ``cfg`` says; returns where the checkpoints are. ``on_step(step)`` is a test hook."""
    if cfg.loss not in LOSSES:
        raise AfilmError(f"unknown loss {cfg.loss!r}; known: {', '.join(LOSSES)}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise AfilmError(f"unknown learning-rate schedule {cfg.lr_schedule!r}; "
                         f"known: {', '.join(LR_SCHEDULES)}")
    if cfg.precision not in PRECISIONS:
        raise AfilmError(f"unknown precision {cfg.precision!r}; known: {', '.join(PRECISIONS)}")
    if not math.isfinite(cfg.lr):  # inf passed Adam and made every weight NaN in one step
        raise AfilmError(f"--lr must be a finite number, got {cfg.lr:g}")
    if cfg.lr < 0:  # Adam refuses a negative rate with a traceback (0 is allowed: weights kept)
        raise AfilmError(f"--lr must be 0 or above, got {cfg.lr:g}")
    if cfg.max_steps is not None and cfg.max_steps < 0:
        raise AfilmError(f"--max-steps must be 0 (no limit) or above, got {cfg.max_steps}")
    if cfg.degrade is not None:  # else recorded in the checkpoints, which would then not load
        degrade_methods(cfg.degrade)
    if cfg.max_steps == 0:  # no limit: how a resumed run drops the one it was started with
        cfg = dataclasses.replace(cfg, max_steps=None)
    if not cfg.resume and not cfg.init:  # a new model's name and config checked before any data is read
        from afilm_cli.models import create_model
        from afilm_cli.registry import MODELS

        if MODELS.meta(cfg.model).get("pretrained"):  # it started from the weights, logged as no --init
            raise AfilmError(f"--model {cfg.model} is a bundled pretrained model: to fine-tune it, pass "
                             f"--init {cfg.model} (the run then starts from its weights, and says so)")
        with torch.device("meta"):
            model = create_model(cfg.model, **cfg.model_args)
        _refuse_unused_model_args(model, cfg.model_args)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cfg = dataclasses.replace(cfg, world_size=world)
    device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
    threads = resolve_threads(cfg.threads, device)

    if cfg.init and cfg.resume:
        raise AfilmError("--init starts a new run from weights and --resume continues a run: use one")
    ckpt = load_resume(cfg) if cfg.resume else None
    init = load_init(cfg) if cfg.init else None
    train_file, val_file = find_data(cfg, ckpt)
    # absolute, so that a resume from another folder finds the same files
    cfg = dataclasses.replace(cfg, train=str(train_file.resolve()),
                              val=str(val_file.resolve()) if val_file else None)
    train_pf, val_pf = PatchFile(train_file), None
    try:
        val_pf = PatchFile(val_file) if val_file else None
        for pf in (train_pf, val_pf):  # in memory when it fits, as the reference; else read per batch
            if pf is not None:
                pf.load_if_fits()
        with num_threads(threads):  # and back afterwards: train() is also a library call
            return _setup_and_loop(cfg, train_pf, val_pf, ckpt, rank, world, device, threads, on_step, init)
    finally:
        train_pf.close()
        if val_pf is not None:
            val_pf.close()
        if dist.is_initialized():
            dist.destroy_process_group()


LEVEL_BLOCKS = 64  # of 256 patches: the training level of a file read from disk, from 16,384 patches


def _setup_and_loop(cfg, train_pf, val_pf, ckpt, rank, world, device, threads, on_step, init=None
                    ) -> TrainResult:
    """Check the data against the model and the resumed run, build everything, then run the loop."""
    from afilm_cli.models import create_model

    recipe = data_recipe(train_pf, cfg, ckpt)
    # checkpointed: inference brings its input to this level; a file read from disk is sampled
    level = patches_level(train_pf.data, most=None if train_pf.in_memory else LEVEL_BLOCKS)
    if ckpt is not None:
        check_resumed_epoch(ckpt, train_pf, cfg.batch_size, world)
        check_resumed_val(ckpt, val_pf)
    if val_pf is not None:
        val_recipe = data_recipe(val_pf, cfg, ckpt)
        for key in ("r", "sr", "degrade"):
            if val_recipe[key] != recipe[key]:
                raise AfilmError(f"{val_pf.path} has {key}={val_recipe[key]}, "
                                 f"but {train_pf.path} has {key}={recipe[key]}")
    init_note = None
    if init is not None:  # fine-tuning to another ratio or low-pass is a use of --init
        changed = [f"{key}={init['recipe'][key]} -> {recipe[key]}" for key in ("r", "sr")
                   if init["recipe"][key] != recipe[key]]
        if changed:  # the models take the spline-upsampled signal at the high rate, whatever the ratio
            init_note = (f"{init['path']} was trained for another recipe ({', '.join(changed)}); the new run "
                         "is fine-tuned for its data's")
    if ckpt is not None and cfg.out and Path(cfg.out).resolve() != Path(ckpt["path"]).parent.resolve():
        idle = _nothing_to_do(cfg, ckpt["epoch"], ckpt["step"])
        if idle:  # a new folder would hold a log alone, and --force would have removed a run there for it
            raise AfilmError(f"{idle}; nothing was written to {cfg.out}")
    out, replaced = run_dir(cfg, ckpt)  # every rank checks, before the rendezvous: a refusal never hangs one

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    # a resumed or fine-tuned run keeps its checkpoint's architecture; a new one is the preset + --model-arg
    source = ckpt if ckpt is not None else init
    raw_model = create_model(cfg.model, **(source["model_config"] if source is not None else cfg.model_args))
    if sum(p.numel() for p in raw_model.parameters() if p.requires_grad) == 0:
        raise AfilmError(f"model {cfg.model!r} has no trainable parameters (it is the baseline "
                         "'afilm eval' reports beside every model); pick another with 'afilm models'")
    for pf in (train_pf, val_pf):
        if pf is not None:
            try:
                check_length(raw_model, pf.patch)
            except AfilmError as exc:
                raise AfilmError(f"{pf.path}: patches of {pf.patch} samples do not fit "
                                 f"{cfg.model!r}: {exc}") from None
    if val_pf is not None and val_pf.patch != train_pf.patch:  # AFiLM's attention spans the whole patch
        raise AfilmError(f"{val_pf.path} holds patches of {val_pf.patch} samples, but {train_pf.path} of "
                         f"{train_pf.patch}: validate on the training patch length (prepare with --patch "
                         f"{train_pf.patch})")
    if init is not None:  # fine-tuning: these weights, a fresh optimizer
        load_weights(raw_model, {k: v.float() if v.is_floating_point() else v
                                 for k, v in init["state_dict"].items()}, init["model_name"], init["path"])
    raw_model.to(device)
    optimizer = torch.optim.Adam(raw_model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    # completed epochs, batches done in the next one, steps, best score, (loss sum, patches) of those batches
    state = (0, 0, 0, math.inf, None)
    if ckpt is not None:
        load_weights(raw_model, ckpt["state_dict"], ckpt["model_name"], ckpt["path"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = (ckpt["epoch"], steps_for_world(ckpt["epoch_step"], len(ckpt["rng"]["cpu"]), world),
                 ckpt["step"], ckpt.get("best", math.inf), ckpt.get("epoch_loss"))

    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    eval_model = torch.compile(raw_model) if cfg.compile else raw_model
    model = eval_model
    if world > 1:  # evaluation bypasses DDP: its forward may sync buffers, and val shards are uneven
        model = torch.nn.parallel.DistributedDataParallel(
            eval_model, device_ids=[device.index] if device.type == "cuda" else None)
    rng_note = set_rng(ckpt["rng"], rank, world, device) if ckpt is not None else None
    if ckpt is None and rank > 0:
        torch.manual_seed(cfg.seed + rank)  # different dropout masks on different ranks
    loader = PatchLoader(train_pf, cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world)
    val_loader = (PatchLoader(val_pf, cfg.batch_size, shuffle=False, rank=rank, world_size=world)
                  if val_pf else None)
    no_bf16 = cfg.precision == "bf16" and device.type != "cuda"  # autocast is enabled on CUDA alone
    if no_bf16:  # the checkpoints and the log record what the run trains in (and a resume goes on in)
        cfg = dataclasses.replace(cfg, precision="fp32")
    run = Run(cfg, out, rank == 0, raw_model, optimizer, recipe, device,
              patches=patches_record("train", train_pf) | patches_record("val", val_pf),
              input_level_dbfs=round(level, 2) if math.isfinite(level) else None, replacing=replaced)
    if run.master:
        run.make_folder()  # a folder that cannot be written is said before the first step
        run.start(train_pf.path, val_pf.path if val_pf else None, len(train_pf), len(val_pf) if val_pf else 0,
                  resumed=ckpt and {**ckpt, "epoch_step": state[1]}, threads=threads,
                  in_memory=train_pf.in_memory, init=init)
        if val_pf is not None and same_file(val_pf.path, train_pf.path):
            run.warn(f"--val is the training file ({val_pf.path}): best.pt will be chosen on training data, "
                     "and the validation scores say nothing of unseen audio")
        per_rank = -(-len(train_pf) // world)  # what each process's loader shares out (wrapped around)
        if cfg.batch_size > per_rank:  # the loader keeps a partial batch (no drop_last): fewer patches a step
            each, per = (f" each of the {world} processes gets ({len(train_pf)} in all)", " per process"
                         ) if world > 1 else ("", "")
            few = counted(per_rank, "training patch", "training patches")
            run.warn(f"--batch-size {cfg.batch_size} is more than the {few}{each}: every epoch is one step, "
                     f"on a batch of {per_rank}{per}")
        if no_bf16:
            run.warn(f"--precision bf16 is autocast on CUDA only: this run on {device.type} trains in fp32, "
                     "and its checkpoints record fp32")
        for note in (rng_note, init_note):
            if note:
                run.warn(note)
    try:
        return _loop(cfg, run, (model, eval_model), loader, val_loader, state, device, on_step)
    finally:
        run.abandon()  # --force: a run that saved nothing leaves the run it was to replace as it was


def _loop(cfg, run, models, loader, val_loader, state, device, on_step):
    """The training loop proper: epochs of steps, validation and checkpoints at each epoch's end."""
    (model, eval_model), (epoch, epoch_step, step, best, carried) = models, state
    stop = StopFlag()
    metrics_: dict[str, Any] = {}
    spline: dict[str, float] = {}
    n_batches = len(loader)
    if val_loader is None:
        run.warn("no validation data: best.pt follows the training loss")
    idle = _nothing_to_do(cfg, epoch, step)
    if idle:
        run.warn(idle)
    elif cfg.compile:  # torch.compile works silently at the first step (minutes on a CPU): not a hang
        val = " and the first validation" if val_loader is not None else ""
        run.note(f"compiling the model with torch.compile: the first steps{val} take longer")
    with stop, run.progress() as bar:
        while epoch < cfg.epochs and not _done(cfg, step):
            run_left = (cfg.epochs - epoch) * n_batches - epoch_step  # steps, to the run's last
            if cfg.max_steps is not None:
                run_left = min(run_left, cfg.max_steps - step)
            ends_at = min(n_batches, epoch_step + run_left)
            bar.begin(epoch, epoch_step, n_batches, epochs=cfg.epochs, stop=ends_at,
                      after=run_left - (ends_at - epoch_step))
            # the epoch's loss so far: an epoch resumed midway counts the batches done before the stop
            # (added once, on rank 0: every rank's sum is all-reduced at the epoch's end)
            tot, t0, seen, rate = torch.zeros(2, dtype=torch.float64), time.perf_counter(), 0, 0.0
            if carried is not None and epoch_step and run.master:
                tot += torch.tensor(carried, dtype=torch.float64)
            carried = None
            interrupted = False
            for x, y in loader.batches(epoch, start=epoch_step):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with _autocast(device, cfg.precision):
                    pred = model(x)
                check_output(cfg.model, x, pred)  # (B, T) would broadcast against (B, 1, T) labels
                loss = loss_fn(pred.float(), y, cfg.loss)
                run.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                lv = loss.item()
                if not _finite_everywhere(lv, device):  # before the step: the weights stay as they were
                    raise AfilmError(f"the training loss is not a number at step {step + 1} (epoch "
                                     f"{epoch + 1}): the patches hold NaN or Inf samples, or the learning "
                                     f"rate is too high; {_kept(run)}")
                for group in run.optimizer.param_groups:
                    group["lr"], group["eps"] = lr_at(cfg, step, n_batches), keras_eps(cfg, step)
                run.optimizer.step()
                step, epoch_step, seen = step + 1, epoch_step + 1, seen + len(x) * cfg.world_size
                tot += torch.tensor([lv * len(x), len(x)], dtype=torch.float64)
                rate = seen / (time.perf_counter() - t0)
                bar.advance(lv, rate)
                if step % cfg.log_every == 0:
                    run.log(type="step", epoch=epoch + 1, step=step, loss=lv, patches_per_s=rate,
                            lr=run.optimizer.param_groups[0]["lr"], elapsed=time.perf_counter() - t0)
                if on_step is not None:
                    on_step(step)
                interrupted = stop.requested(device)
                if interrupted or _done(cfg, step):
                    break
            if interrupted:
                _check_finite(run, step, None, loader, device, output=False)  # quick: the save comes first
                ckpt = run.save(epoch, epoch_step, step, best, metrics_, interrupted=True,
                                epoch_loss=_all_sum(tot, device).tolist())
                return TrainResult(run.out, ckpt, run.best_path(), epoch, step, metrics_, interrupted=True)
            tot = _all_sum(tot, device)
            if epoch_step >= n_batches:
                epoch, epoch_step = epoch + 1, 0
            total, count = tot.tolist()
            train_loss = total / count if count else math.nan  # nan: no batch of this epoch was run
            metrics_ = {"epoch": epoch, "epoch_step": epoch_step, "step": step, "train_loss": train_loss,
                        "patches_per_s": rate}
            if val_loader is not None:
                val = evaluate(eval_model, val_loader, cfg, device, with_spline=not spline)
                spline = spline or {k: val.pop(k) for k in ("spline_snr", "spline_lsd")}
                metrics_ |= {f"val_{k}": v for k, v in val.items()} | spline
            # before the gate check (a NaN output reads as closed gates) and before anything is saved
            _check_finite(run, step, metrics_.get("val_loss"), loader, device)
            if run.master:
                gates = _gate_check(run, val_loader or loader, device)
                if gates:
                    metrics_["relu_open"] = gates
            score = metrics_.get("val_loss", train_loss)
            # without validation, a stop inside an epoch (--max-steps) scores only its batches: it may be
            # best while no whole epoch has been scored, and never replaces a whole epoch's score
            partial = val_loader is None and epoch_step != 0 and best != math.inf
            is_best = score < best and not partial  # False for nan
            best = score if is_best else best
            run.save(epoch, epoch_step, step, best, metrics_, is_best=is_best,
                     epoch_loss=tot.tolist() if epoch_step else None)
            run.log(type="epoch", **metrics_, best=is_best, time=time.perf_counter() - t0)
            run.summary(metrics_, is_best)
    return TrainResult(run.out, run.last_path(), run.best_path(), epoch, step, metrics_)


def _refuse_unused_model_args(model: torch.nn.Module, model_args: dict[str, Any]) -> None:
    """--model-arg heads=3 on a tfilm model was accepted and changed nothing: it has no transformer."""
    from afilm_cli.models.unet import TRANSFORMER_FIELDS

    unused = [k for k in model_args if k in TRANSFORMER_FIELDS]
    if unused and getattr(getattr(model, "config", None), "modulation", None) == "tfilm":
        raise AfilmError(f"--model-arg {', '.join(unused)}: these configure AFiLM's transformer, and a tfilm "
                         "model has none (its normaliser is an LSTM)")


def _kept(run) -> str:
    """What a run stopped by a non-finite loss or weights leaves that is still good."""
    if run.replacing:  # --force: nothing saved yet, and the run it was to replace is still there
        return f"nothing was saved, and the earlier run in {run.out} is kept as it was"
    if not run.last_path().exists():
        return f"nothing was saved in {run.out}"
    best = run.best_path()
    return f"{run.last_path()} keeps the last saved state" + (f" and {best} the best" if best else "")


def _check_finite(run, step: int, val_loss: float | None, loader: PatchLoader, device: torch.device,
                  output: bool = True) -> None:
    """Stop the run where its state diverged, before it is saved over the last good checkpoint: weights
    not finite (--lr too high), or finite weights that give a non-finite output, seen as the validation
    loss or, without one (and with ``output``), on a training batch. Every rank comes to the same answer."""
    if not _state_finite(run.raw_model):
        what = "the weights are no longer finite"
    elif val_loss is not None:
        what = None if math.isfinite(val_loss) else "the validation loss is not a number"
    elif output and not _finite_everywhere(_output_check(run, loader, device), device):
        what = "the model's output is no longer finite"
    else:
        what = None
    if what is not None:
        run.log(type="diverged", step=step, reason=what)  # the log may be all the run leaves
        raise AfilmError(f"the run diverged: {what} after step {step} (the learning rate is too high for "
                         f"this model and data); {_kept(run)}")


def _state_finite(model: torch.nn.Module) -> bool:
    flags = [torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


@torch.no_grad()
def _output_check(run, loader: PatchLoader, device: torch.device) -> float:
    """0 where the model's output on this rank's first training batch (eval mode) is finite, else NaN."""
    x, _ = next(iter(loader.batches(0)))
    model = run.raw_model
    model.eval()
    try:
        with _autocast(device, run.cfg.precision):
            finite = bool(torch.isfinite(model(x.to(device))).all())
    finally:
        model.train()
    return 0.0 if finite else math.nan


def _gate_check(run, loader: PatchLoader, device: torch.device) -> dict[str, float]:
    """Open fraction of each ReLU gate on one batch; warns about a dead one (it never recovers)."""
    x, _ = next(iter(loader.batches(0)))
    gates = relu_open_fraction(run.raw_model, x.to(device))
    dead = dead_gates(gates)
    if dead:
        shown = ", ".join(f"{name} {100 * gates[name]:.2f}%" for name in dead)
        fix = "--model-arg up_slope=0.2 (a LeakyReLU there) --model-arg final_init_std=1e-3"
        if run.cfg.init or run.cfg.resume:  # these keep the checkpoint's architecture: --model-arg is refused
            how = (f"Start a new run without --init, with --model {run.cfg.model} {fix} (--init keeps the "
                   "architecture of its weights)" if run.cfg.init else f"Start a new run with --model "
                   f"{run.cfg.model} {fix} (a resumed run keeps its architecture)")
        else:
            how = f"Start again with {fix}"
        run.warn(f"ReLU gate(s) nearly closed ({shown} of inputs above zero): the layers below them "
                 f"barely reach the output any more, and a ReLU that has closed does not reopen. {how}.")
    return gates


def _nothing_to_do(cfg: TrainConfig, epoch: int, step: int) -> str | None:
    """Why a run resumed at ``epoch`` and ``step`` has no step left to run, if it has none."""
    if not (epoch >= cfg.epochs or _done(cfg, step)):
        return None
    limit = "--epochs" if epoch >= cfg.epochs else "--max-steps (or give --max-steps 0: no limit)"
    return (f"nothing to do: the run has done {counted(epoch, 'epoch')} and {counted(step, 'step')}; "
            f"raise {limit}")


def _done(cfg: TrainConfig, step: int) -> bool:
    return cfg.max_steps is not None and step >= cfg.max_steps


def _autocast(device: torch.device, precision: str):
    # bf16 on CUDA only: on CPU autocast is emulated (far slower). Off by default: on an H200 it made
    # these models slower at batch 16 (0.55-0.84x the fp32 patches/s, benchmarks/results).
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and precision == "bf16")


def _snr(ref2: float, err2: float) -> float:
    return 10.0 * math.log10((ref2 + metrics.EPS) / (err2 + metrics.EPS))


def _all_sum(tot: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(loss sum, patches) over all ranks; a collective under torchrun."""
    if dist.is_initialized():
        tot = tot.to(device)
        dist.all_reduce(tot)
    return tot.cpu()

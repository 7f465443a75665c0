"""Training, nanoGPT-shaped: a config block, one flat loop, evaluate() under no_grad, a plain
checkpoint dict. ``train(TrainConfig(...))`` is the library entry point; ``afilm train`` only builds
the config. Reference settings (REFERENCE.md section 3): MSE, Adam 3e-4 (0.9, 0.999), batch 16, 20 epochs.

Resume is exact: the checkpoint holds the weights, the optimizer, the global step, the epoch and the
number of batches already done in it, and the torch RNG states (dropout) of every rank. The batch
order is a pure function of (seed, epoch) (see data/loader.py), so a run stopped anywhere - at an
epoch's end, by --max-steps, or by Ctrl-C between two steps - continues with the very batches and
dropout masks an uninterrupted run would have used.

Multi-GPU: ``torchrun --nproc-per-node N -m afilm_cli train ...`` (DistributedDataParallel, nccl on
CUDA, gloo on CPU). --batch-size is per process; rank 0 alone prints, logs and writes checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from afilm_cli import metrics
from afilm_cli.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from afilm_cli.data.h5 import PatchFile
from afilm_cli.data.loader import PatchLoader
from afilm_cli.errors import AfilmError


@dataclass
class TrainConfig:
    model: str = "afilm"              # a registered model name (afilm models lists them)
    train: str | None = None          # HDF5 patches; None: the newest <data_dir>/*-train.h5
    val: str | None = None            # None: the train file's sibling *-val.h5, if there is one
    data_dir: str = "data"
    out: str | None = None            # None: runs/<model>-<timestamp> (or the resumed run's folder)
    epochs: int = 20
    batch_size: int = 16              # per process under torchrun
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-7                 # Keras' Adam default, as the reference (PyTorch's is 1e-8)
    loss: str = "mse"                 # mse (AFiLM code) | rmse (TFiLM code: mean per-patch RMSE)
    max_steps: int | None = None      # stop after this many optimizer steps in total
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda
    compile: bool = False             # torch.compile the model
    resume: str | None = None         # a checkpoint, or a run folder (its last.pt)
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


# settings a resumed run must keep, or it would not be the same run
RUN_IDENTITY = ("model", "batch_size", "lr", "betas", "eps", "loss", "seed", "world_size")
LOSSES = ("mse", "rmse")


@dataclass
class TrainResult:
    out: Path
    last: Path | None
    best: Path | None
    epoch: int                        # completed epochs
    step: int                         # optimizer steps in total
    metrics: dict[str, Any]           # of the last validation (or training) pass
    interrupted: bool = False


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
        with _autocast(device):
            pred = model(x.to(device)).float().cpu()
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
    out = {"loss": loss / n, "rmse": math.sqrt(err2 / samples), "snr": _snr(ref2, err2), "lsd": lsd_sum / n}
    if with_spline:
        out |= {"spline_snr": _snr(ref2, s_err2), "spline_lsd": s_lsd / n}
    return out


def train(cfg: TrainConfig, on_step=None) -> TrainResult:
    """Train as ``cfg`` says; returns where the checkpoints are. ``on_step(step)`` is a test hook."""
    if cfg.loss not in LOSSES:
        raise AfilmError(f"unknown loss {cfg.loss!r}; known: {', '.join(LOSSES)}")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cfg = dataclasses.replace(cfg, world_size=world)
    device = _device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))

    ckpt = _load_resume(cfg) if cfg.resume else None
    train_file, val_file = _find_data(cfg)
    # absolute, so that a resume from another folder finds the same files
    cfg = dataclasses.replace(cfg, train=str(train_file.resolve()),
                              val=str(val_file.resolve()) if val_file else None)
    train_pf, val_pf = PatchFile(train_file), None
    try:
        val_pf = PatchFile(val_file) if val_file else None
        return _setup_and_loop(cfg, train_pf, val_pf, ckpt, rank, world, device, on_step)
    finally:
        train_pf.close()
        if val_pf is not None:
            val_pf.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def _setup_and_loop(cfg, train_pf, val_pf, ckpt, rank, world, device, on_step) -> TrainResult:
    """Check the data against the model and the resumed run, build everything, then run the loop."""
    from afilm_cli.models import create_model

    recipe = _recipe(train_pf, cfg, ckpt)
    if val_pf is not None:
        val_recipe = _recipe(val_pf, cfg, ckpt)
        for key in ("r", "sr", "degrade"):
            if val_recipe[key] != recipe[key]:
                raise AfilmError(f"{val_pf.path} has {key}={val_recipe[key]}, "
                                 f"but {train_pf.path} has {key}={recipe[key]}")
    out = _out_dir(cfg, ckpt)  # every rank checks, before the rendezvous, so a refusal never hangs one

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    raw_model = create_model(cfg.model)
    if sum(p.numel() for p in raw_model.parameters() if p.requires_grad) == 0:
        raise AfilmError(f"model {cfg.model!r} has no trainable parameters (it is the baseline "
                         "'afilm eval' reports beside every model); pick another with 'afilm models'")
    for pf in (train_pf, val_pf):
        if pf is not None:
            try:
                raw_model.check_length(pf.patch)
            except AfilmError as exc:
                raise AfilmError(f"{pf.path}: patches of {pf.patch} samples do not fit "
                                 f"{cfg.model!r}: {exc}") from None
    raw_model.to(device)
    optimizer = torch.optim.Adam(raw_model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    state = (0, 0, 0, math.inf)  # completed epochs, batches done in the next one, steps, best score
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = (ckpt["epoch"], ckpt["epoch_step"], ckpt["step"], ckpt.get("best", math.inf))

    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    eval_model = torch.compile(raw_model) if cfg.compile else raw_model
    model = eval_model
    if world > 1:  # evaluation bypasses DDP: its forward may sync buffers, and val shards are uneven
        model = torch.nn.parallel.DistributedDataParallel(
            eval_model, device_ids=[device.index] if device.type == "cuda" else None)
    if ckpt is not None:
        _set_rng(ckpt["rng"], rank, world, device)
    elif rank > 0:
        torch.manual_seed(cfg.seed + rank)  # different dropout masks on different ranks
    loader = PatchLoader(train_pf, cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world)
    val_loader = (PatchLoader(val_pf, cfg.batch_size, shuffle=False, rank=rank, world_size=world)
                  if val_pf else None)
    run = _Run(cfg, out, rank == 0, raw_model, optimizer, recipe, device)
    if run.master:
        run.start(train_pf.path, val_pf.path if val_pf else None, len(train_pf), len(val_pf) if val_pf else 0,
                  resumed=ckpt)
    return _loop(cfg, run, (model, eval_model), loader, val_loader, state, device, on_step)


def _loop(cfg, run, models, loader, val_loader, state, device, on_step):
    """The training loop proper: epochs of steps, validation and checkpoints at each epoch's end."""
    (model, eval_model), (epoch, epoch_step, step, best) = models, state
    stop = _StopFlag()
    metrics_: dict[str, Any] = {}
    spline: dict[str, float] = {}
    n_batches = len(loader)
    if val_loader is None:
        run.warn("no validation data: best.pt follows the training loss")
    if epoch >= cfg.epochs or _done(cfg, step):
        run.warn(f"nothing to do: the run has done {epoch} epochs and {step} steps; "
                 "raise --epochs or --max-steps")
    with stop, run.progress() as bar:
        while epoch < cfg.epochs and not _done(cfg, step):
            bar.begin(epoch, epoch_step, n_batches)
            tot, t0, seen, rate = torch.zeros(2, dtype=torch.float64), time.perf_counter(), 0, 0.0
            interrupted = False
            for x, y in loader.batches(epoch, start=epoch_step):
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with _autocast(device):
                    pred = model(x)
                loss = loss_fn(pred.float(), y, cfg.loss)
                run.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                run.optimizer.step()
                step, epoch_step, seen = step + 1, epoch_step + 1, seen + len(x) * cfg.world_size
                lv = loss.item()
                tot += torch.tensor([lv * len(x), len(x)], dtype=torch.float64)
                rate = seen / (time.perf_counter() - t0)
                bar.advance(lv, rate)
                if step % cfg.log_every == 0:
                    run.log(type="step", epoch=epoch + 1, step=step, loss=lv, patches_per_s=rate,
                            elapsed=time.perf_counter() - t0)
                if on_step is not None:
                    on_step(step)
                interrupted = stop.requested(device)
                if interrupted or _done(cfg, step):
                    break
            if interrupted:
                ckpt = run.save(epoch, epoch_step, step, best, metrics_, interrupted=True)
                return TrainResult(run.out, ckpt, run.best_path(), epoch, step, metrics_, interrupted=True)
            if epoch_step >= n_batches:
                epoch, epoch_step = epoch + 1, 0
            train_loss = _all_mean(tot, device)
            metrics_ = {"epoch": epoch, "epoch_step": epoch_step, "step": step, "train_loss": train_loss,
                        "patches_per_s": rate}
            if val_loader is not None:
                val = evaluate(eval_model, val_loader, cfg, device, with_spline=not spline)
                spline = spline or {k: val.pop(k) for k in ("spline_snr", "spline_lsd")}
                metrics_ |= {f"val_{k}": v for k, v in val.items()} | spline
            score = metrics_.get("val_loss", train_loss)
            is_best = score < best
            best = min(best, score)
            run.save(epoch, epoch_step, step, best, metrics_, is_best=is_best)
            run.log(type="epoch", **metrics_, best=is_best, time=time.perf_counter() - t0)
            run.summary(metrics_, is_best)
    return TrainResult(run.out, run.last_path(), run.best_path(), epoch, step, metrics_)


class _Run:
    """What rank 0 does beside the maths: printing, the JSONL log, the progress bar, checkpoints."""

    def __init__(self, cfg, out, master, raw_model, optimizer, recipe, device):
        from rich.console import Console

        self.cfg, self.out, self.master = cfg, out, master
        self.raw_model, self.optimizer, self.recipe, self.device = raw_model, optimizer, recipe, device
        self.console = Console(highlight=False, soft_wrap=True)

    def start(self, train_file, val_file, n_train, n_val, resumed) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        params = sum(p.numel() for p in self.raw_model.parameters())
        self.console.print(f"train: {train_file} ({n_train} patches of {self.recipe['patch']})")
        self.console.print(f"val:   {val_file} ({n_val} patches)" if val_file else "val:   none")
        self.console.print(f"model: {self.cfg.model} ({params:,} parameters) on {self.device}"
                           f"{f' x{self.cfg.world_size} processes' if self.cfg.world_size > 1 else ''}; "
                           f"run: {self.out}")
        if resumed:
            self.console.print(f"resuming {resumed['path']}: {resumed['epoch']} epochs done, then "
                               f"{resumed['epoch_step']} batches of the next; step {resumed['step']}")
        self.log(type="resume" if resumed else "start", config=self.cfg.to_dict(), recipe=self.recipe,
                 train_file=str(train_file), val_file=str(val_file) if val_file else None, parameters=params,
                 metrics_note="val_snr: over all validation samples; val_lsd: mean of per-patch LSD (log10)")

    def warn(self, message: str) -> None:
        if self.master:
            self.console.print(f"[yellow]warning:[/] {message}")

    def log(self, **record) -> None:
        if self.master:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def summary(self, m: dict[str, Any], is_best: bool) -> None:
        if not self.master:
            return
        where = f"epoch {m['epoch']}"
        if m["epoch_step"]:  # --max-steps stopped inside an epoch
            where = f"epoch {m['epoch'] + 1} (stopped at step {m['step']})"
        line = f"{where}: train loss {m['train_loss']:.4g}"
        if "val_loss" in m:
            line += (f"  val loss {m['val_loss']:.4g}"
                     f"  SNR {m['val_snr']:.2f} dB (spline {m['spline_snr']:.2f})"
                     f"  LSD {m['val_lsd']:.3f} (spline {m['spline_lsd']:.3f})")
        self.console.print(line + ("  *best*" if is_best else ""), markup=False)

    def last_path(self) -> Path:
        return self.out / "last.pt"

    def best_path(self) -> Path | None:
        return self.out / "best.pt" if (self.out / "best.pt").exists() else None

    def save(self, epoch, epoch_step, step, best, metrics_, *, is_best=False, interrupted=False) -> Path:
        rng = _get_rng(self.device)  # a collective under torchrun: every rank takes part
        if self.master:
            ckpt = make_checkpoint(self.raw_model, self.recipe, optimizer=self.optimizer.state_dict(),
                                   epoch=epoch, epoch_step=epoch_step, step=step, best=best, rng=rng,
                                   metrics=metrics_, train_config=self.cfg.to_dict(), interrupted=interrupted)
            save_checkpoint(self.last_path(), ckpt)
            if is_best:
                save_checkpoint(self.out / "best.pt", ckpt)
            if interrupted:
                self.log(type="interrupted", epoch=epoch, epoch_step=epoch_step, step=step)
        return self.last_path()

    def progress(self) -> _Bar:
        return _Bar(self.console, enabled=self.master and self.cfg.progress)


class _Bar:
    """A rich progress bar per epoch showing the loss and the throughput (patches/s)."""

    def __init__(self, console, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4g}"),
                                 TextColumn("{task.fields[rate]:.1f} patches/s"), TimeRemainingColumn(),
                                 console=console, disable=not enabled, transient=True)
        self.task = None

    def __enter__(self) -> _Bar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def begin(self, epoch: int, done: int, total: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task("", total=total, completed=done, epoch=epoch + 1, loss=math.nan,
                                           rate=0.0)

    def advance(self, loss: float, rate: float) -> None:
        self.progress.update(self.task, advance=1, loss=loss, rate=rate)


class _StopFlag:
    """Ctrl-C asks the loop to stop after the current step (a half-done optimizer step could not be
    resumed); a second Ctrl-C interrupts at once. Under torchrun the ranks agree on when to stop."""

    def __init__(self):
        self.flag = False
        self._old = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)

    def _handle(self, signum, frame) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def requested(self, device: torch.device) -> bool:
        if not dist.is_initialized():
            return self.flag
        t = torch.tensor([float(self.flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def _done(cfg: TrainConfig, step: int) -> bool:
    return cfg.max_steps is not None and step >= cfg.max_steps


def _autocast(device: torch.device):
    # bf16 on CUDA only: on CPU autocast would be slower and change the numbers the tests pin down
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _snr(ref2: float, err2: float) -> float:
    return 10.0 * math.log10((ref2 + metrics.EPS) / (err2 + metrics.EPS))


def _all_mean(tot: torch.Tensor, device: torch.device) -> float:
    if dist.is_initialized():
        tot = tot.to(device)
        dist.all_reduce(tot)
    total, count = tot.tolist()
    return total / max(count, 1)


def _device(name: str, local_rank: int) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise AfilmError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise AfilmError("--device cuda: no CUDA device is available (use --device cpu)")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def _get_rng(device: torch.device) -> dict[str, list[torch.Tensor]]:
    """Every rank's torch RNG states, gathered on rank 0 (dropout is the only randomness left)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.empty(0, dtype=torch.uint8)
    mine = {"cpu": torch.get_rng_state(), "cuda": cuda}
    if not dist.is_initialized():
        return {k: [v] for k, v in mine.items()}
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return {k: [g[k] for g in gathered] for k in mine}


def _set_rng(rng: dict[str, list[torch.Tensor]], rank: int, world: int, device: torch.device) -> None:
    if len(rng["cpu"]) != world:
        warnings.warn(f"checkpoint was written by {len(rng['cpu'])} processes, this run has {world}: "
                      "resuming, but not bit-exactly", stacklevel=2)
        torch.manual_seed(torch.initial_seed() + rank)
        return
    torch.set_rng_state(rng["cpu"][rank])
    if device.type == "cuda" and rng["cuda"][rank].numel():
        torch.cuda.set_rng_state(rng["cuda"][rank], device)


def _load_resume(cfg: TrainConfig) -> dict[str, Any]:
    path = Path(cfg.resume)
    if path.is_dir():
        path = path / "last.pt"
    ckpt = load_checkpoint(path)
    stored = ckpt.get("train_config")
    if stored is None or "optimizer" not in ckpt or "rng" not in ckpt:
        raise AfilmError(f"{path}: holds weights only (no optimizer/RNG state), so it cannot be resumed; "
                         "start a new run from it instead")
    stored = {**stored, "betas": tuple(stored["betas"]), "world_size": stored.get("world_size", 1)}
    mine = {**cfg.to_dict(), "betas": tuple(cfg.betas)}
    differ = [f"{k} {mine[k]!r} (was {stored[k]!r})" for k in RUN_IDENTITY
              if k != "world_size" and mine[k] != stored[k]]
    if differ:
        raise AfilmError(f"{path}: a resumed run keeps its settings, but these differ: {', '.join(differ)}")
    ckpt["path"] = str(path)
    return ckpt


def resume_config(path: str, **changes: Any) -> TrainConfig:
    """The config of the run checkpointed at ``path`` (file or run folder), with ``changes``."""
    p = Path(path)
    ckpt = load_checkpoint(p / "last.pt" if p.is_dir() else p)
    stored = dict(ckpt.get("train_config") or {})
    if not stored:
        raise AfilmError(f"{path}: not a training checkpoint (no train_config); it cannot be resumed")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    stored = {k: v for k, v in stored.items() if k in known}
    stored["betas"] = tuple(stored.get("betas", (0.9, 0.999)))
    stored.update(out=None, force=False)  # default to continuing in the checkpoint's own folder
    return TrainConfig(**{**stored, **changes, "resume": str(path)})


def _find_data(cfg: TrainConfig) -> tuple[Path, Path | None]:
    """The train/val files: as given, or the newest *-train.h5 under data_dir and its *-val.h5."""
    if cfg.train:
        train = Path(cfg.train)
    else:
        found = sorted(Path(cfg.data_dir).glob("*-train.h5"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise AfilmError(f"no training data: no *-train.h5 in {cfg.data_dir}/; "
                             "run 'afilm prepare vctk --r 4' first, or pass --train FILE")
        train = found[-1]
    if cfg.val:
        return train, Path(cfg.val)
    sibling = train.with_name(train.name.replace("-train.h5", "-val.h5"))
    return train, (sibling if sibling != train and sibling.is_file() else None)


def _recipe(pf: PatchFile, cfg: TrainConfig, ckpt: dict[str, Any] | None) -> dict[str, Any]:
    """r, sr, degrade, patch: from the file's attributes, else from --r/--sr/--degrade."""
    rec = {k: pf.recipe[k] for k in ("r", "sr", "degrade", "patch")}
    for key in ("r", "sr", "degrade"):
        given = getattr(cfg, key)
        if rec[key] is None:
            rec[key] = given
        elif given is not None and given != rec[key]:
            raise AfilmError(f"{pf.path} was prepared with {key}={rec[key]}, but --{key} {given} was given")
    missing = [k for k in ("r", "sr", "degrade") if rec[k] is None]
    if missing:
        raise AfilmError(f"{pf.path} does not record its {'/'.join(missing)} (a file from the reference "
                         "code?); pass --r, --sr and --degrade, e.g. --r 4 --sr 16000 --degrade decimate")
    if ckpt is not None:
        for key in ("r", "sr", "degrade"):
            if ckpt["recipe"][key] != rec[key]:
                raise AfilmError(f"{pf.path} has {key}={rec[key]}, but checkpoint {ckpt['path']} was "
                                 f"trained with {key}={ckpt['recipe'][key]}")
    return rec


def _out_dir(cfg: TrainConfig, ckpt: dict[str, Any] | None) -> Path:
    """The run folder; refuses one that holds another run unless --force (or it is the resumed one)."""
    if cfg.out:
        out = Path(cfg.out)
    elif ckpt is not None:
        out = Path(ckpt["path"]).parent
    else:
        out = Path("runs") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    held = [n for n in ("last.pt", "best.pt", "log.jsonl") if (out / n).exists()]
    continuing = ckpt is not None and Path(ckpt["path"]).parent.resolve() == out.resolve()
    if held and not continuing:
        if not cfg.force:
            raise AfilmError(f"{out} already holds a training run ({held[0]}); pass --resume {out} to "
                             "continue it, or --force to replace it")
        if int(os.environ.get("RANK", 0)) == 0:
            for n in held:
                (out / n).unlink()
    return out

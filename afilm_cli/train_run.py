"""Training's bookkeeping beside the maths: what rank 0 prints and logs (log.jsonl), the checkpoints it
writes, the per-epoch progress bar, and the Ctrl-C flag that stops the loop between two steps."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from afilm_cli.atomic import make_output_dir
from afilm_cli.checkpoint import make_checkpoint, save_checkpoints
from afilm_cli.errors import AfilmError
from afilm_cli.interrupts import CtrlC
from afilm_cli.train_setup import get_rng
from afilm_cli.wording import counted


def claim_new_folder(base: Path) -> Path:
    """``base``, else ``base-2``, ``base-3``...: the first folder this process creates itself, so two
    runs started in the same second (a sweep sent to the background) never share the default name."""
    make_output_dir(base.parent)  # runs/ unwritable: one line, not an OSError from the loop below
    path, i = base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            i += 1
            path = base.with_name(f"{base.name}-{i}")
        except OSError as exc:
            raise AfilmError(f"cannot create folder {path}: {exc.strerror or exc}") from None


class Run:
    """What rank 0 does beside the maths: printing, the JSONL log, the progress bar, checkpoints."""

    def __init__(self, cfg, out, master, raw_model, optimizer, recipe, device, patches=None,
                 input_level_dbfs=None, replacing=()):
        from rich.console import Console

        self.cfg, self.out, self.master = cfg, out, master
        # checkpointed (train_setup.patches_record): a resume mid-epoch needs the same training patches,
        # and any resume the same validation patches (best.pt compares scores on one set)
        self.patches = patches or {}
        self.input_level_dbfs = input_level_dbfs  # the training data's RMS level (afilm_cli/level.py)
        self.raw_model, self.optimizer, self.recipe, self.device = raw_model, optimizer, recipe, device
        # --force over another run: its files (train_setup.run_dir) stay until this run's first checkpoint
        # replaces them (save), and this run logs to log.jsonl.new until then, so that a run that fails
        # before it leaves the other as it was (abandon); never a log of two runs
        self.replacing = list(replacing)
        # no markup: the lines hold paths and messages, where '[x]' is text (warn() marks up its label)
        self.console = Console(highlight=False, soft_wrap=True, markup=False)

    def make_folder(self) -> None:
        """Create the run folder (a fresh name when none was given), or say in one line why it cannot
        be: before the first step, so that no training is lost to a folder that cannot be written."""
        if self.cfg.out is None and self.cfg.resume is None:
            self.out = claim_new_folder(self.out)
        else:
            make_output_dir(self.out)
        if self.replacing:
            self._log_path().unlink(missing_ok=True)  # of an earlier attempt that was killed

    def _log_path(self) -> Path:
        return self.out / ("log.jsonl.new" if self.replacing else "log.jsonl")

    def abandon(self) -> None:
        """The run ends: one that saved no checkpoint over another run's files leaves them as they were
        (its own log, log.jsonl.new, goes; what went wrong was said)."""
        if self.master and self.replacing:
            self._log_path().unlink(missing_ok=True)

    def start(self, train_file, val_file, n_train, n_val, resumed, threads: int, in_memory: bool = False,
              init: dict | None = None) -> None:
        params = sum(p.numel() for p in self.raw_model.parameters())
        procs = f" x{self.cfg.world_size} processes" if self.cfg.world_size > 1 else ""
        cpu = f"{counted(threads, 'CPU thread')}{' each' if procs else ''}"
        where = "in memory" if in_memory else "read from disk per batch"
        level = "" if self.input_level_dbfs is None else f", {self.input_level_dbfs:.1f} dBFS RMS"
        rec = self.recipe
        self.console.print(f"train: {train_file} ({_patches(n_train)} of {rec['patch']}, {where}; "
                           f"r={rec['r']}, {rec['sr']} Hz, {rec['degrade']}{level})")
        self.console.print(f"val:   {val_file} ({_patches(n_val)})" if val_file else "val:   none")
        self.console.print(f"model: {self.cfg.model} ({params:,} parameters) on {self.device}{procs}, "
                           f"{cpu}; run: {self.out}")
        if init is not None:  # --init RUN takes its best.pt, else its last.pt: say which, and how far it got
            got = (f", after {counted(init['epoch'], 'epoch')} and {init['step']} steps"
                   if isinstance(init.get("epoch"), int) and isinstance(init.get("step"), int) else "")
            self.console.print(f"init:  {init['path']} ({init['model_name']} weights{got}; "
                               "a fresh optimizer)")
        if resumed:
            done = counted(resumed["epoch"], "epoch")
            then = counted(resumed["epoch_step"], "batch", "batches")
            self.console.print(f"resuming {resumed['path']}: {done} done, then {then} of the next; "
                               f"step {resumed['step']}")
        self.log(type="resume" if resumed else "start", config=self.cfg.to_dict(), recipe=self.recipe,
                 train_file=str(train_file), val_file=str(val_file) if val_file else None, parameters=params,
                 threads=threads, data_in_memory=in_memory, input_level_dbfs=self.input_level_dbfs,
                 **({"init_file": str(init["path"])} if init is not None else {}),
                 metrics_note="val_snr: pooled, over all validation samples at once (afilm eval's snr is the "
                              "mean of per-patch values); val_lsd: mean of per-patch LSD (log10)",
                 epoch_note="step records: epoch = the epoch being run, from 1; elapsed = seconds since "
                            "this process began that epoch (a resumed one: since the resume); epoch "
                            "records (and checkpoints): epoch = epochs completed, epoch_step = steps into "
                            "the next")

    def note(self, message: str) -> None:
        if self.master:
            self.console.print(message, markup=False)

    def warn(self, message: str) -> None:
        if self.master:
            from rich.markup import escape

            self.console.print(f"[yellow]warning:[/] {escape(message)}", markup=True)

    def log(self, **record) -> None:
        if self.master:
            with open(self._log_path(), "a") as f:
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
                     f"  SNR (pooled) {m['val_snr']:.2f} dB (spline {m['spline_snr']:.2f})"
                     f"  LSD {m['val_lsd']:.3f} (spline {m['spline_lsd']:.3f})")
        self.console.print(line + ("  *best*" if is_best else ""), markup=False)

    def last_path(self) -> Path:
        return self.out / "last.pt"

    def best_path(self) -> Path | None:
        return self.out / "best.pt" if (self.out / "best.pt").exists() else None

    def save(self, epoch, epoch_step, step, best, metrics_, *, is_best=False, interrupted=False,
             epoch_loss=None) -> Path:
        rng = get_rng(self.device)  # a collective under torchrun: every rank takes part
        if self.master:
            ckpt = make_checkpoint(self.raw_model, self.recipe, optimizer=self.optimizer.state_dict(),
                                   epoch=epoch, epoch_step=epoch_step, step=step, best=best, rng=rng,
                                   epoch_loss=epoch_loss, **self.patches,
                                   input_level_dbfs=self.input_level_dbfs,
                                   metrics=metrics_, train_config=self.cfg.to_dict(), interrupted=interrupted)
            best_pt = self.out / "best.pt"
            # the first checkpoint over another run: that run's best.pt goes unless this one replaces it
            stale = (best_pt,) if self.replacing and not is_best else ()
            save_checkpoints(ckpt, [self.last_path(), *([best_pt] if is_best else [])], stale=stale)
            if interrupted:
                self.log(type="interrupted", epoch=epoch, epoch_step=epoch_step, step=step)
            if self.replacing:  # and the new log, written aside until now, takes the old one's place
                new_log = self._log_path()
                self.replacing = []
                os.replace(new_log, self._log_path())
        return self.last_path()

    def progress(self) -> EpochBar:
        return EpochBar(self.console, enabled=self.master and self.cfg.progress)


class EpochBar:
    """A rich progress bar per epoch showing the loss and the throughput (patches/s); where the output
    is not a terminal (a log file, nohup), a plain line with the time left (epoch, run) instead: the first
    after ``first`` seconds (a log shows early that the run goes), then at most every ``every`` seconds,
    so a long epoch does not pass in silence."""

    def __init__(self, console, enabled: bool, every: float = 60.0, first: float = 10.0):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console, self.every = console, every
        self.wait = min(first, every)  # until the next plain line
        self.lines = enabled and not console.is_terminal
        self.progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4g}"),
                                 TextColumn("{task.fields[rate]:.1f} patches/s"), TimeRemainingColumn(),
                                 console=console, disable=not enabled or self.lines, transient=True)
        self.task, self.stop, self.after = None, 0, 0
        self.last_line = time.monotonic()
        self.epoch_start, self.start_done = self.last_line, 0  # for the time left: this session's pace

    def __enter__(self) -> EpochBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def begin(self, epoch: int, done: int, total: int, epochs: int | None = None, stop: int | None = None,
              after: int = 0) -> None:
        """Epoch ``epoch`` (0-based) of ``epochs``, ``done`` of its ``total`` batches run; this session
        stops it at batch ``stop`` (--max-steps; default: its end) and has ``after`` steps of later
        epochs to run: the plain line's time left counts to where this epoch stops, and, with later
        epochs, to the run's end (at this epoch's pace, validation aside)."""
        if self.task is not None:
            self.progress.remove_task(self.task)
        label = f"{epoch + 1}/{epochs}" if epochs else f"{epoch + 1}"
        self.task = self.progress.add_task("", total=total, completed=done, epoch=label, loss=math.nan,
                                           rate=0.0)
        self.epoch_start, self.start_done = time.monotonic(), done
        self.stop, self.after = (total if stop is None else min(stop, total)), after

    def advance(self, loss: float, rate: float) -> None:
        self.progress.update(self.task, advance=1, loss=loss, rate=rate)
        now = time.monotonic()
        if self.lines and now - self.last_line >= self.wait:
            self.last_line, self.wait = now, self.every
            (task,) = self.progress.tasks  # begin() keeps one: the epoch's (rich counts even when disabled)
            done = task.completed - self.start_done  # steps run since begin(): a resumed epoch skipped some
            pace = (now - self.epoch_start) / max(done, 1)
            left = max(self.stop - task.completed, 0) * pace
            if self.stop < task.total:  # --max-steps ends the run inside this epoch
                where = f"  {_clock(left)} left (--max-steps stops at step {self.stop:.0f} of this epoch)"
            elif self.after:
                where = f"  {_clock(left)} left in the epoch, {_clock(left + self.after * pace)} in the run"
            else:
                where = f"  {_clock(left)} left"
            self.console.print(f"epoch {task.fields['epoch']}: step {task.completed:.0f}/{task.total:.0f}  "
                               f"loss {loss:.4g}  {rate:.1f} patches/s{where}", markup=False)


def _patches(n: int) -> str:
    return counted(n, "patch", "patches")


def _clock(seconds: float) -> str:
    """H:MM:SS, as rich's progress bar shows the time remaining."""
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class StopFlag(CtrlC):
    """Ctrl-C asks the loop to stop after the current step (a half-done optimizer step could not be
    resumed); a second Ctrl-C interrupts at once. Under torchrun the ranks agree on when to stop."""

    def requested(self, device: torch.device) -> bool:
        if not dist.is_initialized():
            return self.flag
        t = torch.tensor([float(self.flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

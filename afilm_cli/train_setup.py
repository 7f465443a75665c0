"""What training needs before its first step: the device, the data files and their recipe, the run
folder, the resumed checkpoint, and the RNG states a checkpoint carries (see afilm_cli/train.py)."""

from __future__ import annotations

import dataclasses
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from afilm_cli.checkpoint import load_checkpoint
from afilm_cli.data.h5 import PatchFile
from afilm_cli.errors import AfilmError
from afilm_cli.wording import counted

if TYPE_CHECKING:
    from afilm_cli.train import TrainConfig

# settings a resumed run must keep, or it would not be the same run
RUN_IDENTITY = ("model", "model_args", "batch_size", "lr", "lr_schedule", "betas", "eps", "loss", "seed",
                "world_size")


def _q(path: Any) -> str:
    """A path as it must be typed in a suggested command line (quoted where it holds a space)."""
    return shlex.quote(str(path))


def pick_device(name: str, local_rank: int) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise AfilmError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise AfilmError("--device cuda: no CUDA device is available (use --device cpu)")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def get_rng(device: torch.device) -> dict[str, list[torch.Tensor]]:
    """Every rank's torch RNG states, gathered on rank 0 (dropout is the only randomness left)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.empty(0, dtype=torch.uint8)
    mine = {"cpu": torch.get_rng_state(), "cuda": cuda}
    if not dist.is_initialized():
        return {k: [v] for k, v in mine.items()}
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return {k: [g[k] for g in gathered] for k in mine}


def set_rng(rng: dict[str, list[torch.Tensor]], rank: int, world: int, device: torch.device) -> str | None:
    """Restore each rank's random state; with another number of processes, say so (returned)."""
    if len(rng["cpu"]) != world:
        torch.manual_seed(torch.initial_seed() + rank)
        procs = counted(len(rng["cpu"]), "process", "processes")
        return (f"checkpoint was written by {procs}, this run has {world}: resuming at the "
                "same patches of the epoch, but not bit-exactly")
    torch.set_rng_state(rng["cpu"][rank])
    if device.type == "cuda" and rng["cuda"][rank].numel():
        torch.cuda.set_rng_state(rng["cuda"][rank], device)
    return None


def steps_for_world(epoch_step: int, old_world: int, world: int) -> int:
    """Batches per rank already done in an epoch, counted for ``world`` processes: the ranks take
    interleaved positions of one order (loader.PatchLoader), so k batches on W ranks are the first
    k*W batches' patches of the order: k*W/W' batches on W' ranks (rounded down: a few patches of an
    uneven split are seen twice rather than skipped)."""
    return epoch_step * old_world // world


def resume_path(spec: str) -> Path:
    """The checkpoint --resume names: a file, or a run folder's last.pt. A folder with a log but no
    last.pt is a run that saved nothing (it stopped in its first epoch): said so, not "no such file"."""
    path = Path(spec)
    if not path.exists() and path.name == str(spec):  # a bundled model's name: --init's, not --resume's
        from afilm_cli.pretrained import BUNDLED

        if str(spec) in BUNDLED:
            raise AfilmError(f"{spec} is a bundled model, not a run: there is nothing to resume; start a new "
                             f"run from its weights with --init {spec}")
    if not path.is_dir():
        return path
    if not (path / "last.pt").exists() and (path / "best.pt").exists():  # --force would delete it
        raise AfilmError(f"{path}: has best.pt but no last.pt (the state to resume from); start a new run "
                         f"from its weights with --init {_q(path / 'best.pt')}")
    if not (path / "last.pt").exists() and (path / "log.jsonl").exists():
        raise AfilmError(f"{path}: the run there saved no checkpoint (log.jsonl only), so there is nothing "
                         f"to resume; start it again with --out {_q(path)} --force")
    return path / "last.pt"


def load_resume(cfg: TrainConfig) -> dict[str, Any]:
    """The checkpoint --resume names (a file, or a run folder's last.pt), checked against ``cfg``."""
    path = resume_path(cfg.resume)
    ckpt = load_checkpoint(path)
    stored = ckpt.get("train_config")
    if stored is None or "optimizer" not in ckpt or "rng" not in ckpt:
        raise AfilmError(f"{path}: holds weights only (no optimizer/RNG state), so it cannot be resumed; "
                         f"start a new run from it with --init {_q(path)}")
    stored = {**stored, "betas": tuple(stored["betas"]), "world_size": stored.get("world_size", 1),
              "model_args": stored.get("model_args", {}),
              "lr_schedule": stored.get("lr_schedule", "constant")}  # runs from before the option
    mine = {**cfg.to_dict(), "betas": tuple(cfg.betas)}
    differ = [f"{k} {mine[k]!r} (was {stored[k]!r})" for k in RUN_IDENTITY
              if k != "world_size" and mine[k] != stored[k]]
    if differ:
        raise AfilmError(f"{path}: a resumed run keeps its settings, but these differ: {', '.join(differ)}")
    ckpt["path"] = str(path)
    return ckpt


def init_model_name(spec: str) -> str:
    from afilm_cli.pretrained import checkpoint_path

    return load_checkpoint(checkpoint_path(spec))["model_name"]


def load_init(cfg: TrainConfig) -> dict[str, Any]:
    """The checkpoint --init names, checked against ``cfg``, to start a new run from."""
    from afilm_cli.pretrained import checkpoint_path

    path = checkpoint_path(cfg.init)
    if cfg.model_args:
        raise AfilmError(f"--init {cfg.init}: the run takes the architecture of these weights, so "
                         f"--model-arg ({', '.join(cfg.model_args)}) cannot change it")
    ckpt = load_checkpoint(path)
    if ckpt["model_name"] != cfg.model:
        raise AfilmError(f"{path}: holds {ckpt['model_name']!r} weights, but the run trains {cfg.model!r}; "
                         f"use --model {ckpt['model_name']}")
    ckpt["path"] = str(path)
    return ckpt


def resume_config(path: str, **changes: Any) -> TrainConfig:
    """The config of the run checkpointed at ``path`` (file or run folder), with ``changes``."""
    from afilm_cli.train import TrainConfig  # here: train.py imports this module

    ckpt = load_checkpoint(resume_path(path))
    stored = dict(ckpt.get("train_config") or {})
    if not stored:
        raise AfilmError(f"{path}: not a training checkpoint (no train_config), so it cannot be resumed; "
                         f"start a new run from its weights with --init {_q(path)}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    stored = {k: v for k, v in stored.items() if k in known}
    stored["betas"] = tuple(stored.get("betas", (0.9, 0.999)))
    # continue in the checkpoint's own folder, from its own weights (not the run's --init again)
    stored.update(out=None, force=False, init=None)
    return TrainConfig(**{**stored, **changes, "resume": str(path)})


def find_data(cfg: TrainConfig, ckpt: dict[str, Any] | None = None) -> tuple[Path, Path | None]:
    """The train/val files: as given, or the newest *-train.h5 under data_dir and its *-val.h5;
    ``ckpt``: the resumed checkpoint, whose files' absence is said as such."""
    if cfg.train:
        train = Path(cfg.train)
    else:
        found = sorted(Path(cfg.data_dir).glob("*-train.h5"), key=lambda p: p.stat().st_mtime)
        if not found:  # prepare writes to data/ unless told: the suggestion names this --data-dir
            out = "" if Path(cfg.data_dir) == Path("data") else f" --out {_q(cfg.data_dir)}"
            raise AfilmError(f"no training data: no *-train.h5 in {cfg.data_dir}/; "
                             f"prepare some first (afilm prepare vctk --r 4{out}), or pass --train FILE")
        train = found[-1]
    if ckpt is not None:  # the resumed run's own files, by the absolute paths it recorded: moved since?
        gone = [(kind, option, path) for kind, option, path in (("training", "--train", cfg.train),
                                                                 ("validation", "--val", cfg.val))
                if path and path == ckpt["train_config"].get(option[2:]) and not Path(path).exists()]
        if gone:
            files = " and ".join(f"{kind} file {path}" for kind, _, path in gone)
            options = " and ".join(f"{option} FILE" for _, option, _ in gone)
            raise AfilmError(f"the resumed run's {files} {'are' if len(gone) > 1 else 'is'} not there any "
                             f"more; if moved, pass {options}")
    if cfg.val:
        return train, Path(cfg.val)
    if ckpt is not None and ckpt["train_config"].get("val") is None:
        return train, None  # the run had none: a *-val.h5 that appeared since would change best.pt's scale
    from afilm_cli.data.recipe import read_split_sources, val_path_for

    sibling = val_path_for(train) if train.name.endswith("-train.h5") else None
    if sibling is None or not sibling.is_file():
        return train, None
    runs = [read_split_sources(p) for p in (train, sibling)]
    if None not in runs and runs[0] != runs[1]:  # files from before this attribute carry none
        raise AfilmError(f"{sibling} was not prepared with {train} (another run's split: they may share "
                         "files); pass --val FILE, or prepare again with --force")
    return train, sibling


def data_recipe(pf: PatchFile, cfg: TrainConfig, ckpt: dict[str, Any] | None) -> dict[str, Any]:
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
    # as prepare's Recipe.validate: else recorded in checkpoints that upsample and eval cannot use
    if rec["r"] < 2 or rec["sr"] < 1 or rec["sr"] % rec["r"]:
        raise AfilmError(f"{pf.path}: r={rec['r']} and sr={rec['sr']} are not a recipe: r must be 2 or above "
                         "and divide sr (the low rate sr/r is a whole number of Hz), e.g. --r 4 --sr 16000")
    if ckpt is not None:
        for key in ("r", "sr", "degrade"):
            if ckpt["recipe"][key] != rec[key]:
                raise AfilmError(f"{pf.path} has {key}={rec[key]}, but checkpoint {ckpt['path']} was "
                                 f"trained with {key}={ckpt['recipe'][key]}")
        old = ckpt["recipe"].get("patch")
        if old is not None and old != rec["patch"]:  # AFiLM's attention spans the patch: another model
            raise AfilmError(f"{pf.path} holds patches of {rec['patch']} samples, but checkpoint "
                             f"{ckpt['path']} was trained on {old}: a resumed run keeps its patch length; "
                             f"use data prepared with --patch {old}, or start a new run from these weights "
                             f"with --init {_q(ckpt['path'])}")
    return rec


def patches_record(kind: str, pf: PatchFile | None) -> dict[str, Any]:
    """What a checkpoint records of the run's ``kind`` ("train" or "val") patches: their count and
    :meth:`PatchFile.fingerprint`, as ``<kind>_patches`` and ``<kind>_fingerprint`` (None: no such file)."""
    return {f"{kind}_patches": len(pf) if pf is not None else None,
            f"{kind}_fingerprint": pf.fingerprint() if pf is not None else None}


def same_patches(ckpt: dict[str, Any], kind: str, pf: PatchFile) -> bool | None:
    """Whether ``pf`` holds the ``kind`` patches ``ckpt`` recorded (:func:`patches_record`): the same
    count and fingerprint (a checkpoint with the count but no fingerprint: the count alone); None where
    the checkpoint records no count (written before it was recorded)."""
    old = ckpt.get(f"{kind}_patches")
    if old is None:
        return None
    digest = ckpt.get(f"{kind}_fingerprint")
    return old == len(pf) and (digest is None or digest == pf.fingerprint())


def check_resumed_epoch(ckpt: dict[str, Any], train_pf: PatchFile, batch_size: int, world: int) -> None:
    """A run stopped inside an epoch goes on with the rest of that epoch's batch order, which only means
    something on the training file it was stopped on: refused on a file with another patch count, or
    the same count of other patches (:meth:`PatchFile.fingerprint`)."""
    if not ckpt["epoch_step"]:
        return
    old = ckpt.get("train_patches")
    n = len(train_pf)
    same = same_patches(ckpt, "train", train_pf)
    if same is None:  # checkpoints from before it was recorded: refuse at least an epoch with no step left
        per_rank = -(-n // world)
        if steps_for_world(ckpt["epoch_step"], len(ckpt["rng"]["cpu"]), world) < -(-per_rank // batch_size):
            return
    elif same:
        return
    was = ckpt["train_config"].get("train")
    stopped = f"{ckpt['path']} stopped {counted(ckpt['epoch_step'], 'batch', 'batches')} into an epoch"
    what = (f"holds other patches than {was} ({n} of each), on which {stopped}" if old == n else
            f"holds {counted(n, 'patch', 'patches')}, but {stopped} of {was}"
            + (f" ({counted(old, 'patch', 'patches')})" if old is not None else ""))
    if was is not None and same_file(Path(was), Path(train_pf.path)):  # prepared again in place
        count = f"{n} of each" if old == n else f"{counted(n, 'patch', 'patches')}, not {old}"
        raise AfilmError(f"{train_pf.path} has changed since {stopped} on it (other patches: {count}), and "
                         "the rest of that epoch cannot go on over other patches; put the run's file back "
                         f"as it was, or start a new run from these weights with --init {_q(ckpt['path'])}")
    raise AfilmError(f"{train_pf.path} {what}, which cannot go on over another file; resume with --train "
                     f"{_q(was)}, or start a new run from these weights with --init {_q(ckpt['path'])}")


def check_resumed_val(ckpt: dict[str, Any], val_pf: PatchFile | None) -> None:
    """A resumed run compares each epoch's score with the best the run has had (best.pt's): its
    validation loss, or without validation its training loss, which only compare on the same patches.
    Refused: a validation file where the run had none, none where it had one, and other patches than
    it had (count and fingerprint, as the training patches of check_resumed_epoch); the same patches
    moved elsewhere are the same set. Checkpoints from before the validation patches were recorded
    (no val_patches) are compared on presence alone: their path is all there is to go on, and it
    would refuse a moved copy, which is the same set."""
    was = ckpt["train_config"].get("val")
    if val_pf is None and was is None:
        return
    if val_pf is not None and was is not None and same_patches(ckpt, "val", val_pf) is not False:
        return
    best = Path(ckpt["path"]).parent / "best.pt"
    init = f"--init {_q(best if best.exists() else ckpt['path'])}"
    why = "best.pt compares scores on one validation set"
    if was is None:
        raise AfilmError(f"{ckpt['path']} was trained without validation (best.pt follows its training "
                         f"loss), so --val {val_pf.path} cannot be added on resume: {why}; resume without "
                         f"--val, or start a new run that validates on it with {init}")
    if val_pf is None:
        raise AfilmError(f"{ckpt['path']} validated on {was}, and this resume has no validation file: {why}; "
                         f"pass --val {_q(was)} (or a moved copy of it), or start a new run without "
                         f"validation with {init}")
    old, n = ckpt["val_patches"], len(val_pf)
    count = f"{n} of each" if old == n else f"{counted(n, 'patch', 'patches')}, not {old}"
    if same_file(Path(was), Path(val_pf.path)):  # prepared again in place: no use naming it again
        raise AfilmError(f"{val_pf.path} has changed since {ckpt['path']} chose best.pt on it (other "
                         f"validation patches: {count}): {why}; put the run's file back as it was, or "
                         f"start a new run that validates on it with {init}")
    raise AfilmError(f"{val_pf.path} holds other validation patches than {was} ({count}), on which "
                     f"{ckpt['path']} chose best.pt: {why}; resume with --val {_q(was)} (or a moved copy of "
                     f"it), or start a new run that validates on {val_pf.path} with {init}")


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def run_dir(cfg: TrainConfig, ckpt: dict[str, Any] | None) -> tuple[Path, list[Path]]:
    """The run folder and the files of another run in it that --force replaces (not here: they stay
    until the new run saves its first checkpoint, train_run.Run.save); refuses a folder that holds
    another run unless --force, and a resume in place from a checkpoint other than the folder's last.pt
    (it would overwrite the run's later steps) unless --force."""
    if cfg.out:
        out = Path(cfg.out)
    elif ckpt is not None:
        out = Path(ckpt["path"]).parent
    else:  # a new name: the run claims a free variant of it when it starts (train_run.claim_new_folder)
        return Path("runs") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}", []
    if out.exists() and not out.is_dir():
        raise AfilmError(f"{out} is a file, not a folder; --out names the run's folder")
    held = [out / n for n in ("last.pt", "best.pt", "log.jsonl") if (out / n).exists()]
    continuing = ckpt is not None and Path(ckpt["path"]).parent.resolve() == out.resolve()
    if continuing and not cfg.force and (out / "last.pt").exists() \
            and Path(ckpt["path"]).resolve() != (out / "last.pt").resolve():
        raise AfilmError(f"resuming {ckpt['path']} in its own folder would overwrite {out / 'last.pt'}, the "
                         f"run's latest state; pass --out NEW_FOLDER to branch from it, or --force")
    if held and not continuing:
        if not cfg.force and not (out / "last.pt").exists():  # nothing there to resume
            saved = "no last.pt to resume" if (out / "best.pt").exists() else "no checkpoint"
            raise AfilmError(f"{out} holds an earlier training run that saved {saved} (only "
                             f"{', '.join(p.name for p in held)}); pass --force to replace it")
        if not cfg.force:
            raise AfilmError(f"{out} already holds a training run ({held[0].name}); pass --resume "
                             f"{_q(out)} to continue it, or --force to replace it")
        return out, held
    return out, []

"""Training throughput (patches/s) per model preset, through the real loop (afilm_cli.train.train).

Patches: real speech (../shared/data/vctk-mini, p225, r=4, 16 kHz, decimate) written as an afilm
HDF5 file, read lazily by the loader as in training. Each preset runs ``--warmup + --steps`` steps;
the rate is measured over the last ``--steps`` from the loop's own step log (so HDF5 reading, the
optimizer and the loss are included; validation is not). Defaults: the reference patch (8192) and
batch (16). The paper-size presets (afilm, tfilm) take minutes per step on a small CPU: ask for
them explicitly (``--models afilm tfilm --steps 2 --warmup 1``).

    nice python benchmarks/bench_train.py [--models afilm_tiny ...] [--device cpu|cuda] [--compile]

Writes benchmarks/results/train-<device>-<date>.json with the hardware and versions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VCTK = ROOT.parent / "shared" / "data" / "vctk-mini" / "wav48"
DEFAULT_MODELS = ["afilm_tiny", "tfilm_tiny", "afilm_small", "tfilm_small"]


def make_patches(path: Path, patch: int, n: int) -> None:
    from afilm_cli.audio import read_audio, resample, simulate_lr
    from afilm_cli.data.h5 import PatchWriter

    ups, hrs = [], []
    for f in sorted((VCTK / "p225").glob("*.wav")):
        x, sr = read_audio(f, mono=True)
        hr, _, up = simulate_lr(resample(x, sr, 16000), 4, "decimate")
        starts = range(0, len(hr) - patch + 1, patch // 2)
        ups += [up[s : s + patch] for s in starts]
        hrs += [hr[s : s + patch] for s in starts]
    reps = -(-n // len(ups))  # repeat the real patches if the benchmark wants more
    attrs = {"r": 4, "sr": 16000, "patch": patch, "stride": patch // 2, "degrade": "decimate"}
    with PatchWriter(path, patch, attrs=attrs) as w:
        w.append(np.stack(ups * reps)[:n], np.stack(hrs * reps)[:n])


def bench(model: str, data: Path, work: Path, args) -> dict:
    from afilm_cli.train import TrainConfig, train

    total = args.warmup + args.steps
    cfg = TrainConfig(model=model, train=str(data), val=None, out=str(work / model), epochs=1,
                      max_steps=total, batch_size=args.batch_size, device=args.device, compile=args.compile,
                      progress=False, log_every=1, force=True)
    t0 = time.perf_counter()
    res = train(cfg)
    wall = time.perf_counter() - t0
    steps = [json.loads(s) for s in (res.out / "log.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s["type"] == "step"]
    timed = steps[args.warmup - 1 :] if args.warmup else [{"elapsed": 0.0}, *steps]
    seconds = timed[-1]["elapsed"] - timed[0]["elapsed"]
    from afilm_cli.models import count_parameters, create_model

    return {"model": model, "parameters": count_parameters(create_model(model)),
            "patches_per_s": args.steps * args.batch_size / seconds, "step_s": seconds / args.steps,
            "audio_s_per_s": args.steps * args.batch_size * args.patch / 16000 / seconds,
            "steps_timed": args.steps, "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--patch", type=int, default=8192)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    import torch

    from afilm_cli.sysinfo import system_info

    load_before = os.getloadavg()  # the machine may be shared: record how busy it was
    work = Path(tempfile.mkdtemp(prefix="afilm-bench-train-"))
    data = work / "bench-train.h5"
    make_patches(data, args.patch, (args.warmup + args.steps) * args.batch_size)
    rows = []
    for name in args.models:
        row = bench(name, data, work, args)
        rows.append(row)
        print(f"{name:12s} {row['parameters']:>12,d} params  {row['patches_per_s']:8.2f} patches/s  "
              f"{row['step_s']:7.3f} s/step  {row['audio_s_per_s']:7.2f} s audio/s", flush=True)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    result = {"what": "training throughput: Adam step on real speech patches via afilm_cli.train.train",
              "date": dt.datetime.now().isoformat(timespec="seconds"), "system": system_info(),
              "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
              "settings": {**vars(args), "out": str(args.out), "threads": torch.get_num_threads(),
                           "precision": "fp32"},
              "results": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"train-{device}-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

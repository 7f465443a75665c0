"""Learning check: a small preset trained a few minutes on a CPU beats the spline baseline on
speakers it never saw (r=4, 16 kHz), on both SNR and LSD.

Data: ../shared/data/vctk-mini. Training speakers p225-p228 (utterances 001-011); evaluation
speakers p230 p233 p236 p243 p244 p254 p258 p259 p273 (one utterance each, none in training).
Recipe: resample 48 -> 16 kHz, decimate by r=4, cubic spline back (afilm_cli.audio.simulate_lr);
training patches overlap by half, evaluation patches do not (each sample counted once).
Metrics are the training loop's validation (afilm_cli.train.evaluate): SNR over all evaluation
samples, LSD (log10, afilm_cli.metrics.lsd) averaged over patches; the spline input beside them.

    nice python benchmarks/learning_check.py [--model afilm_small] [--steps 600] [--patch 4096]

Writes benchmarks/results/learning-check-<date>.json and exits non-zero when the model does not
beat the spline on both metrics. Ctrl-C stops training early and reports the last completed epoch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VCTK = ROOT.parent / "shared" / "data" / "vctk-mini" / "wav48"
TRAIN_SPEAKERS = ("p225", "p226", "p227", "p228")
EVAL_SPEAKERS = ("p230", "p233", "p236", "p243", "p244", "p254", "p258", "p259", "p273")


def write_patches(path: Path, files: list[Path], r: int, patch: int, stride: int) -> int:
    from afilm_cli.audio import read_audio, resample, simulate_lr
    from afilm_cli.data.h5 import PatchWriter

    attrs = {"r": r, "sr": 16000, "patch": patch, "stride": stride, "degrade": "decimate", "sam": 1.0,
             "seed": 0, "sources": [f.name for f in files]}
    with PatchWriter(path, patch, attrs=attrs) as w:
        for f in files:
            x, sr = read_audio(f, mono=True)
            hr, _, up = simulate_lr(resample(x, sr, 16000), r, "decimate")
            starts = range(0, len(hr) - patch + 1, stride)
            w.append(np.stack([up[s : s + patch] for s in starts]),
                     np.stack([hr[s : s + patch] for s in starts]))
    return w.count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="afilm_small")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--patch", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    import torch

    from afilm_cli.sysinfo import system_info
    from afilm_cli.train import TrainConfig, train

    work = Path(tempfile.mkdtemp(prefix="afilm-learning-"))
    train_files = [f for s in TRAIN_SPEAKERS for f in sorted((VCTK / s).glob("*.wav"))]
    eval_files = [f for s in EVAL_SPEAKERS for f in sorted((VCTK / s).glob("*.wav"))]
    n_train = write_patches(work / "lc-train.h5", train_files, 4, args.patch, args.patch // 2)
    n_eval = write_patches(work / "lc-val.h5", eval_files, 4, args.patch, args.patch)
    steps_per_epoch = -(-n_train // args.batch_size)
    epochs = -(-args.steps // steps_per_epoch)
    print(f"{n_train} training patches ({len(train_files)} files), {n_eval} evaluation patches "
          f"({len(eval_files)} files, unseen speakers); {args.steps} steps = {epochs} epochs", flush=True)
    cfg = TrainConfig(model=args.model, train=str(work / "lc-train.h5"), val=str(work / "lc-val.h5"),
                      out=str(work / "run"), epochs=epochs, max_steps=args.steps, batch_size=args.batch_size,
                      lr=args.lr, device="cpu", progress=False, log_every=50)
    t0 = time.perf_counter()
    res = train(cfg)
    seconds = time.perf_counter() - t0
    log = [json.loads(s) for s in (res.out / "log.jsonl").read_text().splitlines()]
    history = [{k: e[k] for k in ("epoch", "step", "train_loss", "val_snr", "val_lsd")}
               for e in log if e["type"] == "epoch"]
    m = res.metrics
    passed = m["val_snr"] > m["spline_snr"] and m["val_lsd"] < m["spline_lsd"]
    result = {
        "what": "learning check: train on 4 VCTK speakers, evaluate on 9 unseen ones, r=4, 16 kHz, decimate",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "system": system_info(),
        "settings": {**vars(args), "out": str(args.out), "epochs": epochs, "train_patches": n_train,
                     "eval_patches": n_eval, "threads": torch.get_num_threads()},
        "final": {"snr": m["val_snr"], "lsd": m["val_lsd"], "spline_snr": m["spline_snr"],
                  "spline_lsd": m["spline_lsd"], "step": m["step"]},
        "stopped_early_by_ctrl_c": res.interrupted,  # then "final" is the last completed epoch
        "history": history,
        "train_seconds": seconds,
        "passed": passed,
        "note": "SNR over all evaluation samples; LSD = mean per-patch log10 LSD (afilm_cli.metrics.lsd)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"learning-check-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.model}: SNR {m['val_snr']:.2f} dB (spline {m['spline_snr']:.2f}), LSD {m['val_lsd']:.3f} "
          f"(spline {m['spline_lsd']:.3f}) after {m['step']} steps, {seconds / 60:.1f} min; "
          f"{'PASS' if passed else 'FAIL'}; {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

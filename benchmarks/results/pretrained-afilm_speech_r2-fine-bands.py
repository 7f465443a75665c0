"""Finer band table than afilm eval's: error energy per band around the low rate's Nyquist.

Usage: python pretrained-afilm_speech_r2-fine-bands.py CKPT DEGRADE, on every fifth held-out
LibriSpeech test-other file of ../shared/data. Output as in pretrained-afilm_speech_r2-fine-bands-*.txt.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from afilm_cli import infer, metrics
from afilm_cli.audio import read_audio
from afilm_cli.stages import ArraySource

torch.set_num_threads(1)
ckpt, degrade = sys.argv[1], sys.argv[2]
loaded = infer.load_model(ckpt)
root = Path(__file__).resolve().parents[3] / "shared" / "data" / "librispeech-mini" / "test-other"
files = sorted(root.rglob("*.flac"))[::5]
ny = loaded.sr / (2 * loaded.r)
above = [2 * ny] if loaded.r > 2 else []
edges = sorted({0, *(f * ny for f in (0.8, 0.85, 0.9, 0.95, 1.0, 1.25, 1.5)), *above, loaded.sr / 2 + 0.1})
energy = {k: np.zeros(len(edges) - 1) for k in ("signal", "spline", "model")}
for f in files:
    x, sr = read_audio(f, mono=True)
    hr_stage, _, spline_stage, n = infer.simulate_pipeline(ArraySource(x), sr, loaded, degrade)
    hr, spline = hr_stage.read(0, n)[:, 0], spline_stage.read(0, n)[:, 0]
    pred = infer.predict(loaded, ArraySource(spline), n, threads=1)[:, 0]
    energy["signal"] += metrics.band_energy(hr, loaded.sr, edges)
    energy["spline"] += metrics.band_energy(hr - spline, loaded.sr, edges)
    energy["model"] += metrics.band_energy(hr - pred, loaded.sr, edges)
total = energy["signal"].sum()
for i in range(len(edges) - 1):
    db = {k: 10 * np.log10(v[i] / total) for k, v in energy.items()}
    print(f"{edges[i]:.0f}-{edges[i + 1]:.0f}: sig {db['signal']:6.1f} spline err {db['spline']:6.1f} "
          f"model err {db['model']:6.1f} gain {db['spline'] - db['model']:+.2f}")

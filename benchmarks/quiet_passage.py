"""A quiet passage inside a loud file: how much better than the cubic spline the bundled
afilm_speech_r4 upsamples it, for a passage 20, 40 and 60 dB below the rest of its file.

Data: ../shared/data/librispeech-mini/test-other, held-out speakers: for each of 10 speakers, its first
utterance (loud, as recorded) followed by its second, scaled down. Both resampled to 16 kHz, decimated
by 4 (the bundled model's recipe) and upsampled as one file through the Python API (the path of
`afilm upsample`); the SNR of the quiet part, less its first 8192 samples (the windows that straddle
the change of level), is compared with the spline's on the same samples.

    python benchmarks/quiet_passage.py [OUT.json]

Prints the mean gain over the spline per level and writes the per-pair figures to OUT.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from afilm_cli import infer
from afilm_cli.audio import degrade, read_audio, resample, spline_up
from afilm_cli.metrics import snr

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "librispeech-mini" / "test-other"
SKIP = 8192


def speech(path: Path) -> np.ndarray:
    x, sr = read_audio(path, mono=True)
    x = resample(x, sr, 16000).astype(np.float32)
    return x[: len(x) // 4 * 4]


def main() -> None:
    speakers: dict[str, list[Path]] = {}
    for f in sorted(DATA.rglob("*.flac")):
        speakers.setdefault(f.parent.name, []).append(f)
    pairs = [(speech(v[0]), speech(v[1])) for v in speakers.values()][:10]
    model = infer.load_model("afilm_speech_r4")
    result = {}
    for db in (-20, -40, -60):
        g = 10 ** (db / 20)
        gains = []
        for loud, quiet in pairs:
            lr_loud, lr_quiet = degrade(loud, 4, "decimate"), degrade(quiet, 4, "decimate")
            y = infer.upsample_array(np.concatenate([lr_loud, lr_quiet * g]).astype(np.float32), 4000, model)
            truth = quiet[SKIP:]
            ours = y[len(loud) + SKIP :][: len(truth)] / g
            gains.append(snr(ours, truth) - snr(spline_up(lr_quiet, 4)[SKIP : len(quiet)], truth))
        result[f"{db} dB"] = {"mean_gain_over_spline_db": round(float(np.mean(gains)), 3),
                              "per_pair_db": [round(float(x), 2) for x in gains]}
        print(f"{db} dB: {result[f'{db} dB']['mean_gain_over_spline_db']:+.3f} dB over the spline "
              f"(10 pairs: {result[f'{db} dB']['per_pair_db']})", flush=True)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Parity of `afilm convert keras` with the original Keras AFiLM / TFiLM (ncarraz/AFILM, codes/models).

Needs TensorFlow, which afilm does not depend on, so it runs in two interpreters:

1. in a separate venv with tensorflow-cpu 2.16 + tf-keras 2.16 and a checkout of the original code
   (not shipped with afilm)::

       TF_USE_LEGACY_KERAS=1 /tmp/tf/bin/python benchmarks/keras_parity.py keras \\
           --code /tmp/AFILM/codes --model tfilm --dir /tmp/parity

   builds the original model, gives it random weights (its own init plus noise on every bias and
   LayerNorm vector, so that none is trivially zero or one), saves it in both .h5 layouts
   (model.save and model.save_weights) and its output on a random 8192-sample batch, with dropout off
   (the reference hard-codes ``training=True`` in the AFiLM transformer call; it is patched to False
   here at run time);
2. in afilm's venv::

       python benchmarks/keras_parity.py compare --model tfilm --dir /tmp/parity

   converts both files, runs afilm on the same input, writes ``afilm-export.h5`` (to-keras) and
   records the max abs difference in benchmarks/results/keras-parity-<date>.json;
3. optionally, back in the TF venv, ``keras-load --dir /tmp/parity`` loads afilm's export into a fresh
   original model with ``load_weights`` and records its output difference too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

BATCH = 2
LENGTH = 8192
REFERENCE = ("ncarraz/AFILM codes/models at b12801c (tf-keras, TF_USE_LEGACY_KERAS=1); AFiLM transformer "
             "called with training=False instead of the hard-coded True; random weights: Keras init plus "
             "N(0, 0.1) noise on every bias / LayerNorm vector; input 0.1 * N(0, 1)")


def _keras_model(code: str, model: str):
    sys.path.insert(0, code)
    import tensorflow as tf

    if model == "afilm":
        from models import afilm as mod

        def make_normalizer(self, x_in):  # the reference with training=True replaced by False
            x_down = tf.keras.layers.MaxPooling1D(pool_size=self.block_size, padding="valid")(x_in)
            return self.transformer(x_down, training=False)

        mod.AFiLM.make_normalizer = make_normalizer
        return mod.get_afilm(n_layers=4, scale=4)
    from models import tfilm as mod

    return mod.get_tfilm(n_layers=4, scale=4)


def keras_phase(args) -> None:
    import tensorflow as tf

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(0)
    t0 = time.perf_counter()
    net = _keras_model(args.code, args.model)
    rng = np.random.default_rng(0)
    weights = []
    for w in net.weights:  # own init for kernels; noise on 1-D vectors (biases, gamma, beta)
        v = w.numpy()
        if v.ndim == 1:
            v = v + rng.normal(0, 0.1, v.shape).astype(np.float32)
        weights.append(v)
    net.set_weights(weights)
    net.save(out / f"{args.model}-full.h5")
    net.save_weights(out / f"{args.model}-weights.h5")
    x = (0.1 * rng.standard_normal((BATCH, LENGTH, 1))).astype(np.float32)
    y = net(x, training=False).numpy()
    y2 = net(x, training=False).numpy()
    np.savez(out / f"{args.model}-io.npz", x=x, y=y)
    try:
        import tf_keras

        keras_version = tf_keras.__version__
    except ImportError:
        keras_version = getattr(tf.keras, "__version__", "?")
    meta = {"tensorflow": tf.__version__, "keras": keras_version, "keras_deterministic": bool(
        np.array_equal(y, y2)), "keras_build_s": round(time.perf_counter() - t0, 1)}
    (out / f"{args.model}-keras.json").write_text(json.dumps(meta))
    print(json.dumps(meta))


def keras_load_phase(args) -> None:
    """Load afilm's export into the original model and compare with the original output."""
    out = Path(args.dir)
    net = _keras_model(args.code, args.model)
    net.load_weights(out / f"{args.model}-afilm-export.h5")
    io = np.load(out / f"{args.model}-io.npz")
    y = net(io["x"], training=False).numpy()
    res = {"export_loaded_by_keras_max_abs_diff": float(np.abs(y - io["y"]).max())}
    (out / f"{args.model}-keras-load.json").write_text(json.dumps(res))
    print(json.dumps(res))


def compare_phase(args) -> None:
    import torch

    from afilm_cli.keras_io import load_keras_model, read_keras_h5, write_keras_h5

    out = Path(args.dir)
    io = np.load(out / f"{args.model}-io.npz")
    x = torch.from_numpy(io["x"]).transpose(1, 2).contiguous()  # (N, T, 1) -> (N, 1, T)
    y_keras = io["y"][:, :, 0]
    result = {"model": args.model, "reference": REFERENCE, "input": [BATCH, LENGTH],
              "y_keras_abs_max": float(np.abs(y_keras).max()),
              "residual_abs_max": float(np.abs(y_keras - io["x"][:, :, 0]).max())}
    for layout in ("full", "weights"):
        path = out / f"{args.model}-{layout}.h5"
        net, info = load_keras_model(path, args.model, r=4)
        with torch.no_grad():
            y = net(x)[:, 0].numpy()
        result[f"{layout}_h5_max_abs_diff"] = float(np.abs(y - y_keras).max())
        result[f"{layout}_h5_layout"] = info["format"]
    # export back and compare every array with the file Keras wrote
    export = out / f"{args.model}-afilm-export.h5"
    write_keras_h5(export, net, r=4)
    src, back = read_keras_h5(out / f"{args.model}-weights.h5"), read_keras_h5(export)
    result["export_arrays_identical"] = all(
        np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(src.arrays, back.arrays, strict=True))
    for name in ("keras", "keras-load"):
        p = out / f"{args.model}-{name}.json"
        if p.exists():
            result.update(json.loads(p.read_text()))
    result.update({"torch": torch.__version__, "python": platform.python_version(),
                   "cpu": platform.processor() or platform.machine(), "device": "cpu", "dtype": "float32"})
    print(json.dumps(result, indent=1))
    if args.record:
        res = Path(__file__).parent / "results" / f"keras-parity-{datetime.date.today().isoformat()}.json"
        old = json.loads(res.read_text()) if res.exists() else {}
        old[args.model] = result
        res.write_text(json.dumps(old, indent=1) + "\n")
        print(f"recorded in {res}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=("keras", "compare", "keras-load"))
    p.add_argument("--model", choices=("afilm", "tfilm"), default="tfilm")
    p.add_argument("--dir", default="/tmp/keras-parity")
    p.add_argument("--code", help="the original code's codes/ folder (keras phases)")
    p.add_argument("--record", action="store_true", help="write benchmarks/results/keras-parity-<date>.json")
    args = p.parse_args()
    {"keras": keras_phase, "compare": compare_phase, "keras-load": keras_load_phase}[args.phase](args)


if __name__ == "__main__":
    main()

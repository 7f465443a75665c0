#!/bin/bash
# Everything that needs a CUDA GPU, in one time-boxed pass, for a short GPU slot:
#   1. the CUDA tests (pytest -m gpu: kernels vs the reference, bf16/compile tolerances),
#   2. afilm bench --kernels (Triton vs eager vs torch.compile at the paper model's layer shapes),
#   3. afilm bench --model --train for the paper models and the bundled preset.
# Each step has its own time box, and bench rewrites its JSON as it goes, so a step that runs out of
# time keeps what it measured. Results go to $OUT (default benchmarks/results/gpu-<date>).
#
#   bash benchmarks/gpu_session.sh
#
# Runs from a source checkout without installing afilm (PYTHONPATH). Python packages missing on the
# machine (soundfile, on images without it) can be carried as wheels in .whl/: they are installed
# into /tmp/afilm-site first.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu-$(date +%F)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 COLUMNS=160 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
T0=$SECONDS
stamp() { echo "=== [$((SECONDS - T0)) s] $*"; }

if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/afilm-site .whl/*.whl || exit 3
    export PYTHONPATH=$PYTHONPATH:/tmp/afilm-site
fi
command -v nvidia-smi > /dev/null || { echo "gpu_session.sh: no NVIDIA GPU here (no nvidia-smi)" >&2; exit 4; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || exit 4

stamp "pytest -m gpu"
timeout "${TESTS_S:-240}" $PY -m pytest tests -m gpu -q -p no:cacheprovider --junitxml="$OUT/pytest-gpu.xml"
stamp "bench kernels"
timeout "${KERNELS_S:-200}" $PY -m afilm_cli bench --kernels --json "$OUT/bench-kernels.json"
stamp "bench model + train"
timeout "${MODEL_S:-240}" $PY -m afilm_cli bench --model --train --models "${MODELS:-afilm,afilm_small,tfilm}" \
    --json "$OUT/bench-model.json"
stamp end

#!/bin/bash
# Everything that needs a CUDA GPU, in one time-boxed pass, for a short GPU slot:
#   tests    the CUDA tests (pytest -m gpu: kernels vs the reference, CUDA graphs, bf16/compile tolerances),
#   model    afilm bench --model (real-time factor: eager, CUDA graph, Triton, bf16, compile),
#   kernels  afilm bench --kernels (Triton vs eager vs torch.compile at the paper model's layer shapes),
#   train    afilm bench --train (training step throughput).
# STEPS picks them (default: all four, in that order). Each has its own time box, and bench rewrites
# its JSON as it goes, so a step that runs out of time keeps what it measured. Results go to $OUT
# (default benchmarks/results/gpu-<date>).
#
#   bash benchmarks/gpu_session.sh                 # or: STEPS="model kernels" bash benchmarks/gpu_session.sh
#   STEPS=kernels LAYERS=U4,U3,U2,U1 bash benchmarks/gpu_session.sh   # only these layer shapes
#
# Runs from a source checkout without installing afilm (PYTHONPATH). Python packages missing on the
# machine (soundfile, on images without it) can be carried as wheels in .whl/: they are installed
# into /tmp/afilm-site first.
set -u
cd "$(dirname "$0")/.."
# the GPU first: a machine without one leaves no empty results folder behind
command -v nvidia-smi > /dev/null || { echo "gpu_session.sh: no NVIDIA GPU here (no nvidia-smi)" >&2; exit 4; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || exit 4
OUT=${OUT:-benchmarks/results/gpu-$(date +%F)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 COLUMNS=160 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
STEPS=${STEPS:-tests model kernels train}
T0=$SECONDS
stamp() { echo "=== [$((SECONDS - T0)) s] $*"; }

if compgen -G "${WHEELS:-.whl}/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/afilm-site "${WHEELS:-.whl}"/*.whl || exit 3
    export PYTHONPATH=$PYTHONPATH:/tmp/afilm-site
fi

for step in $STEPS; do
    stamp "$step"
    case $step in
        tests) timeout "${TESTS_S:-240}" $PY -m pytest tests -m gpu -q -p no:cacheprovider -rs --continue-on-collection-errors \
                   --junitxml="$OUT/pytest-gpu.xml" ;;
        # spline: the same path with no network, i.e. the ceiling set by the CPU side (resampler,
        # spline, overlap-add); on an H100 every AFiLM variant landed at 214-236x realtime
        model) timeout "${MODEL_S:-240}" $PY -m afilm_cli bench --model --models "${MODELS:-afilm,spline,afilm_small,tfilm}" \
                   --json "$OUT/bench-model.json" ;;
        kernels) timeout "${KERNELS_S:-300}" $PY -m afilm_cli bench --kernels ${LAYERS:+--layers "$LAYERS"} \
                     --json "$OUT/bench-kernels.json" ;;
        train) timeout "${TRAIN_S:-150}" $PY -m afilm_cli bench --train --models "${MODELS:-afilm,afilm_small,tfilm}" \
                   --json "$OUT/bench-train.json" ;;
        *) echo "gpu_session.sh: unknown step $step" >&2 ;;
    esac
done
stamp end

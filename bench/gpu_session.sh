#!/usr/bin/env bash
# One lent-GPU session: the Triton checks and benchmarks (gpu_check.py), then tracking speed
# (gpu_e2e.py). Results and logs go to $OUT (the device tool's folder) or bench/results.
# Python packages the GPU machine lacks (sam2 = edgetam-dimos and its hydra/iopath deps, a newer
# transformers) travel as wheels in .whl/ (see docs/triton.md, "On a lent GPU").
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    site=$(mktemp -d)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl && export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# tuned configs: shared by both scripts (gpu_e2e.py does not tune again) and brought back
export EDGETAM_TRITON_TUNING_CACHE=${EDGETAM_TRITON_TUNING_CACHE:-$OUT/triton_tuned.json}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv 2>&1 | tee "$OUT/nvidia_smi.txt"
python3 bench/gpu_check.py --out "$OUT" --budget "${CHECK_BUDGET:-270}" 2>&1 | tee "$OUT/gpu_check.log"
python3 bench/gpu_e2e.py --out "$OUT" --budget "${E2E_BUDGET:-150}" 2>&1 | tee "$OUT/gpu_e2e.log"

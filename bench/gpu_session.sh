#!/usr/bin/env bash
# One lent-GPU session of at most SESSION_BUDGET seconds (default 480, 8 minutes): tracking speed
# of every tracker in one run (gpu_tracker.py: edgetam.Tracker eager and CUDA-graph replay, Meta's
# predictor eager and with its compile option, HF's model; 1024 / 512, 1 / 3 objects, fp32 /
# bf16; GPU memory after 500 frames), then the Triton kernel checks (gpu_check.py) with the time
# left. Results and logs go to $OUT (the device tool's folder) or bench/results.
#   bash bench/gpu_session.sh                    # on the GPU machine
#   python3 bench/gpu_tracker.py --smoke --out out/gpu_smoke   # CPU check that the tracker bench runs
# Python packages the GPU machine lacks (sam2 = edgetam-dimos and its hydra/iopath deps, a newer
# transformers) travel as wheels in .whl/ (see docs/triton.md, "On a lent GPU").
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
SESSION_BUDGET=${SESSION_BUDGET:-480}
TRACKER_BUDGET=${TRACKER_BUDGET:-330}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    site=$(mktemp -d)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl && export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# tuned configs: shared by the scripts (later ones do not tune again) and brought back
export EDGETAM_TRITON_TUNING_CACHE=${EDGETAM_TRITON_TUNING_CACHE:-$OUT/triton_tuned.json}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv 2>&1 | tee "$OUT/nvidia_smi.txt"
timeout $((TRACKER_BUDGET + 60)) python3 bench/gpu_tracker.py --out "$OUT" \
    --budget "$TRACKER_BUDGET" 2>&1 | tee "$OUT/gpu_tracker.log"
left=$((SESSION_BUDGET - SECONDS - 15))
if [ "$left" -gt 40 ]; then
    timeout "$left" python3 bench/gpu_check.py --out "$OUT" --budget $((left - 20)) 2>&1 \
        | tee "$OUT/gpu_check.log"
else
    echo "gpu_session: no time left for gpu_check.py" | tee "$OUT/gpu_check.log"
fi

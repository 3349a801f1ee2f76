#!/usr/bin/env bash
# The GPU checks in one run (README, Large models): the CUDA tests, the cost table's GPU column
# and the GPT-2-small-class probe. Each step has its own time limit, so that one that hangs
# leaves the others their time; every step's output lands in OUT_DIR as it finishes.
#
#     bash bench/gpu.sh [OUT_DIR]        # default bench/results/gpu
set -u
out=${1:-bench/results/gpu}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run COMMAND under a limit, keep its log
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s)"
    local started=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$out/$name.log"
    echo "=== $name: rc=$rc, $((SECONDS - started)) s"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $py -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__,
             "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
} 2>&1 | tee "$out/device.txt"

# The gpu-marked tests (they are skipped without CUDA); -W default: the image's newer libraries
# may warn where the pinned ones do not, and a warning is not what this run checks.
# test_optimizers.py holds no GPU test and imports lion-pytorch, which GPU images lack.
step cuda-tests 150 $py -m pytest -q -rA -m gpu -W default -p no:cacheprovider \
    --ignore=tests/newton/test_optimizers.py tests/newton
step bench-core 130 $py -m bench.core --device cuda --json "$out/core.json"
# The README's CPU defaults, then a budget closer to the service's (40 steps, 40 calibration
# steps per candidate) on longer sequences.
step large-defaults 100 $py -m bench.large --device cuda --out "$out/large-defaults.json"
step large-service 180 $py -m bench.large --device cuda --steps 40 --calibration-steps 40 \
    --batch-size 16 --context 256 --out "$out/large-service.json"

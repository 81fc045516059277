#!/usr/bin/env bash
# Every GPU check of the DDP, launcher, performance, analysis, SeqSetVAE and promise work in
# one batch, for a machine with one GPU (about 8 minutes on an H200):
#
#     OUT=/some/dir bash benchmarks/gpu_checks.sh
#
# The GPU tests (pytest -m gpu: sync checks, precision, peak memory, SeqSetVAE without host syncs)
# run in one step; the rest are benchmarks writing their records.
#
# Each step's log goes to $OUT/logs/<step>.log (and the benchmark JSON records to
# docs/benchmarks/*gpu*); $OUT/gpu_results.tgz holds all of them, rebuilt after each step.
# One GPU cannot show DDP scaling: the DDP steps show nccl at world size 1 and devices=auto.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
PY=${PY:-python3}
mkdir -p "$OUT/logs"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRAINFORGE_DATA_DIR=/tmp/tf_data

step() {  # step NAME LIMIT_S CMD...: run it, keep its log, print its end
  local name=$1 limit=$2 t0
  shift 2
  t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  echo "=== $name rc=$? $(( $(date +%s) - t0 ))s: $*"
  tail -n "${TAIL:-7}" "$OUT/logs/$name.log" | cut -c1-400
  cp docs/benchmarks/*gpu* "$OUT/logs/" 2>/dev/null
  tar czf "$OUT/gpu_results.tgz" -C "$OUT" logs
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
# issue 10 (the open one) first: step overhead against hand loops (a2: a copy of the hand loop,
# the run's noise), data on the device, compile, no host sync in an epoch
step overhead 200 "$PY" benchmarks/bench_overhead.py --rounds 9 --control --json docs/benchmarks/overhead_gpu.jsonl
step compile 130 "$PY" benchmarks/bench_compile.py --out docs/benchmarks/compile_gpu.json
step gpu_tests 240 "$PY" -m pytest -q -rs -p no:cacheprovider -m gpu tests/
# issue 8: the default experiment under nccl (torchrun, world size 1) and with trainer.devices=auto
step ddp_nccl 90 "$PY" -m torch.distributed.run --nproc_per_node=1 train.py hydra.run.dir=/tmp/r_nccl
step ddp_auto 60 "$PY" train.py trainer.devices=auto hydra.run.dir=/tmp/r_auto
# issue 9: 4 short jobs on one GPU, jobs_per_gpu=1 vs 4
step sweep 120 "$PY" benchmarks/bench_sweep.py --gpu
# issue 14: the precision benchmark's record (README's Measured table)
step precision 90 "$PY" benchmarks/bench_precision.py --json docs/benchmarks/precision_gpu.json

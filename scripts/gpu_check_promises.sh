#!/usr/bin/env bash
# GPU checks of issue 14; without a GPU the GPU cases skip with a reason and the benchmark is skipped.
#   1. autocast really runs the model in bf16 / fp16 on cuda (a forward hook reads the dtype inside the model)
#   2. precision=auto is bf16 exactly on GPUs of compute capability >= 8
#   3. the precision benchmark writes docs/benchmarks/precision_gpu.json (machine, command, date, figures)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src"
python -m pytest tests/test_promises.py -q -rs -p no:cacheprovider -k "precision_auto or autocast"
if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  python scripts/bench_precision.py --json docs/benchmarks/precision_gpu.json
else
  echo "no CUDA GPU: bench_precision skipped"
fi

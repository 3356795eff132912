#!/usr/bin/env bash
# Run the speed/memory benchmark on a CUDA GPU (issue 4); finishes in a few minutes.
#
#   bash benchmarks/run_gpu.sh            # quick grid on cuda -> docs/results/benchmarks_gpu.md
#   bash benchmarks/run_gpu.sh --full     # full grid on cuda (more minutes)
#
# Extra arguments are passed to bench_speed.py (e.g. --cap 30). Timings synchronize CUDA
# around every measurement; memory is torch.cuda.max_memory_allocated in a subprocess.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
QUICK="--quick"
if [[ "${1:-}" == "--full" ]]; then QUICK=""; shift; fi
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" benchmarks/bench_speed.py $QUICK \
    --device cuda --out docs/results/benchmarks_gpu.md --plot docs/results/benchmark_scaling_gpu.png "$@"

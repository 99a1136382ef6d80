#!/usr/bin/env bash
# GPU check in one call, for a machine with no network (its own torch, Triton and timm):
#   builds fastlayers (CUDA sources for the local GPU), prints `fastlayers info`, runs the tests marked cuda and
#   then the whole suite, and runs every benchmark on the GPU. Logs and results go to OUTDIR.
# Usage: benchmarks/device_check.sh [OUTDIR]   (default benchmarks/results/device)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/device}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST="$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo 9.0)"
  export TORCH_CUDA_ARCH_LIST
fi
status=0
step() {  # step NAME CMD...: run, log to OUT/NAME.log, remember failure
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  if "$@" >"$OUT/$name.log" 2>&1; then echo "   ok ($((SECONDS - t0)) s)"; else echo "   FAILED ($((SECONDS - t0)) s), tail:"; tail -n 30 "$OUT/$name.log"; status=1; fi
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/gpu.txt" 2>&1 || true
step build "$PY" -m pip install --no-build-isolation --no-deps -e .
step info "$PY" -m fastlayers info
cat "$OUT/info.log"
step tests_cuda "$PY" -m pytest -q -m cuda tests
tail -n 3 "$OUT/tests_cuda.log"
step tests_all "$PY" -m pytest -q tests -x
tail -n 3 "$OUT/tests_all.log"
step bench "$PY" benchmarks/run.py --device cuda --out "$OUT"
cat "$OUT/REPORT.md" 2>/dev/null
exit $status

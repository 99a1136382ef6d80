#!/usr/bin/env bash
# GPU check in one call, for a lent GPU machine as it is: its own python3, torch, Triton and timm, no network,
# no installs. Builds fastlayers (CUDA sources for the local GPU's arch only), prints `fastlayers info`, runs the
# tests marked cuda and the Triton launcher tests on the GPU, runs compute-sanitizer (memcheck, racecheck) over the
# cuda tests, and benchmarks every family against its GPU peer (fresh inputs, achieved GB/s over the measured
# device copy bandwidth). Logs and results go to OUTDIR; OUTDIR/summary.txt says what passed and how long it took.
#
# Usage: benchmarks/device_check.sh [OUTDIR]   (default benchmarks/results/device)
# Environment:
#   DRY_RUN=1      on a machine without a GPU: run every step that needs none (import, info, collection of the
#                  cuda tests, the benchmark harness on the CPU in quick mode) and print the GPU commands instead
#                  of running them. CI runs this so the script cannot rot.
#   STEPS="..."    the steps to run, in this order (default: build info tests bench sanitizer)
#   BUDGET_S=480   seconds for the whole check: a step that would start later is skipped (said in the summary),
#                  each step is cut to the time left, and the sanitizer takes what the others leave.
#   PYTHON=python3 the interpreter to use.
#   TESTS_MAX_S=200, BENCH_MAX_S=240: the most the test and benchmark steps may take.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/device}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
DRY="${DRY_RUN:-0}"
STEPS="${STEPS:-build info tests bench sanitizer}"
BUDGET="${BUDGET_S:-480}"
export PYTHONUNBUFFERED=1
START=$SECONDS
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
status=0

note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - (SECONDS - START))); }

# step NAME LIMIT_S CMD...: run with a time limit in its own process group (so a timeout also ends the workers it
# started, e.g. pytest-xdist's, which would otherwise run on and disturb the steps after it), log to OUT/NAME.log,
# record the outcome.
step() {
  local name=$1 limit=$2; shift 2
  rm -f "$OUT/$name.log"
  local rem; rem=$(left)
  if [ "$rem" -le 5 ]; then note "$name: SKIPPED (budget spent)"; status=1; return 0; fi
  [ "$limit" -gt "$rem" ] && limit=$rem
  echo "== $name (limit ${limit} s): $*"
  local t0=$SECONDS
  rm -f "$OUT/.$name.timeout"
  setsid "$@" >"$OUT/$name.log" 2>&1 &
  local pid=$!
  setsid bash -c "sleep $limit; touch '$OUT/.$name.timeout'; kill -TERM -- -$pid; sleep 10; kill -KILL -- -$pid" \
    >/dev/null 2>&1 &
  local watchdog=$!
  wait "$pid"
  local rc=$?
  kill -KILL -- -"$watchdog" 2>/dev/null; wait "$watchdog" 2>/dev/null
  kill -KILL -- -"$pid" 2>/dev/null  # whatever the step left behind
  if [ -e "$OUT/.$name.timeout" ]; then
    note "$name: TIMED OUT after $((SECONDS - t0)) s"; status=1
  elif [ $rc -eq 0 ]; then
    note "$name: ok ($((SECONDS - t0)) s)"
  else
    note "$name: FAILED rc=$rc ($((SECONDS - t0)) s)"; status=1
    tail -n 25 "$OUT/$name.log"
  fi
  rm -f "$OUT/.$name.timeout"
  tail -n 2 "$OUT/$name.log"
}

if [ "$DRY" = "1" ]; then
  note "DRY_RUN: no GPU steps run; $(uname -m), $($PY -c 'import torch; print("torch", torch.__version__)')"
else
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv >"$OUT/gpu.txt" 2>&1 || true
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST="$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
    export TORCH_CUDA_ARCH_LIST
  fi
fi

# Tests that launch on the GPU: every cuda-marked test, and the Triton launcher tests (on the GPU when present).
GPU_TESTS=(-m "cuda or triton" tests)
XDIST=()
$PY -c "import xdist" 2>/dev/null && XDIST=(-n 8)

do_build() {
  if [ "$DRY" = "1" ]; then
    step build 60 "$PY" -c "import fastlayers, fastlayers._C; print(fastlayers._C.build_info())"
  else
    step build 300 "$PY" -m pip install --no-build-isolation --no-deps -v -e .
  fi
}

do_info() {
  step info 60 "$PY" -m fastlayers info
  cat "$OUT/info.log" 2>/dev/null
}

do_tests() {
  if [ "$DRY" = "1" ]; then
    step tests 120 "$PY" -m pytest -q --collect-only "${GPU_TESTS[@]}"
  else
    # -v: each test's outcome is logged as it finishes, so a step cut by its limit still names its failures.
    step tests "${TESTS_MAX_S:-200}" "$PY" -m pytest -v -rfEs "${XDIST[@]}" "${GPU_TESTS[@]}"
  fi
}

do_sanitizer() {
  # No caching allocator, so an access past a tensor's end is past a cudaMalloc block, which memcheck sees.
  # torch.compile tests are left out: each compiles for minutes under the sanitizer and adds no kernel of ours.
  local SAN=(compute-sanitizer --error-exitcode 9 --print-limit 20)
  local SAN_TESTS=(-m cuda -k "not compile" -p no:cacheprovider tests)
  if [ "$DRY" = "1" ] || ! command -v compute-sanitizer >/dev/null; then
    note "sanitizer: not run here ($([ "$DRY" = "1" ] && echo DRY_RUN || echo 'no compute-sanitizer')): ${SAN[*]} --tool memcheck $PY -m pytest ${SAN_TESTS[*]}"
    return 0
  fi
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 step memcheck $(( $(left) * 3 / 4 )) "${SAN[@]}" --tool memcheck \
    "$PY" -m pytest -v -x "${SAN_TESTS[@]}"
  # racecheck looks at shared memory, over the CUDA C++ kernels (mp, ncache). Not the Triton ones: every Triton
  # reduction whose result several lanes hold is reported as a write-write hazard (the lanes' butterfly sums can
  # differ in the last bit; triton-lang/triton#7264), which run 3 saw in the ECA forward and which would fail the
  # step on every run without saying anything about our code.
  step racecheck $(( $(left) - 5 )) "${SAN[@]}" --tool racecheck "$PY" -m pytest -v -x -m cuda \
    -k "not compile and (mp or ncache)" -p no:cacheprovider tests
}

do_bench() {
  if [ "$DRY" = "1" ]; then
    step overhead 60 "$PY" benchmarks/host_overhead.py --device cpu
    step bench 600 "$PY" benchmarks/run.py eca --device cpu --quick --min-run-time 0.01 --out "$OUT/bench"
  else
    step overhead 60 "$PY" benchmarks/host_overhead.py --device cuda
    cat "$OUT/overhead.log"
    # --quick on a GPU: the real sizes, fewer cases (each bench module says which), short timings.
    local limit=$(( $(left) - 5 )); [ "$limit" -gt "${BENCH_MAX_S:-240}" ] && limit=${BENCH_MAX_S:-240}
    step bench "$limit" "$PY" benchmarks/run.py --device cuda --quick --min-run-time 0.1 --out "$OUT/bench"
    cat "$OUT/bench/REPORT.md" 2>/dev/null
  fi
}

for s in $STEPS; do
  case "$s" in
    build|info|tests|sanitizer|bench) "do_$s" ;;
    *) note "unknown step '$s' (known: build info tests sanitizer bench)"; status=1 ;;
  esac
done
note "total: $((SECONDS - START)) s, status $status"
# One archive of every log (the device tool brings back few files).
tar -C "$OUT" -czf "$OUT/logs.tgz" --exclude=logs.tgz . 2>/dev/null || true
exit $status

#!/usr/bin/env bash
# make asan: the extension built with AddressSanitizer and UndefinedBehaviorSanitizer (CPU kernels; CUDA has
# compute-sanitizer, see benchmarks/device_check.sh), then the test suite and the fuzz slice run against it.
#
# The build happens in a copy of the working tree (ASAN_DIR, default build/asan-tree) so the normal in-place build
# is left alone; objects stay there between runs, so a second `make asan` recompiles only what changed. Python is
# not built with ASan, so libasan (and libubsan) are preloaded; leak detection is off (CPython and torch keep
# allocations for the process' lifetime by design). Any report aborts the process, which fails the test or
# records a crash in the fuzz report.
#
# Environment: PYTHON (default .venv/bin/python), ASAN_DIR, PYTEST_ARGS (default: the whole suite, -x; "none"
# skips it),
# FUZZ_CASES (default 300 per family; 0 skips the fuzz run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY="${PYTHON:-$ROOT/.venv/bin/python}"
DIR="${ASAN_DIR:-$ROOT/build/asan-tree}"
mkdir -p "$DIR"
# The working tree as it is (tracked and untracked files that git does not ignore). tar keeps the files' times,
# so ninja recompiles only sources that changed since the last run.
rm -rf "$DIR/src" && mkdir -p "$DIR/src"
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -C "$DIR/src" -xf -
ln -sfn ../../kernels "$DIR/src/python/fastlayers/kernels"
# Tests and the fuzz read ../shared/data beside the checkout when it is there.
[ -d "$ROOT/../shared" ] && ln -sfn "$ROOT/../shared" "$DIR/shared"
cd "$DIR/src"
mkdir -p "$DIR/build" && ln -sfn "$DIR/build" build
echo "== building the sanitizer build in $DIR (CPU kernels only)"
t0=$SECONDS
FASTLAYERS_SANITIZE=1 MAX_JOBS="${MAX_JOBS:-2}" "$PY" setup.py -q build_ext --inplace >"$DIR/build.log" 2>&1 \
  || { tail -40 "$DIR/build.log"; exit 1; }
echo "   built in $((SECONDS - t0)) s"
# Proof that the kernels are instrumented (a build that silently dropped the flags would pass everything).
for SO in "$DIR"/src/python/fastlayers/_C*.so; do  # _C (stable ABI) and _C_aten
  # the symbol list first: `nm | grep -q` under pipefail fails when grep quits early and nm gets SIGPIPE
  syms=$(nm -D "$SO")
  grep -q __asan_report_load <<<"$syms" && grep -q __ubsan_handle <<<"$syms" \
    || { echo "error: $SO carries no ASan/UBSan instrumentation"; exit 1; }
done
ASAN_LIB=$(gcc -print-file-name=libasan.so)
UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
export LD_PRELOAD="$ASAN_LIB:$UBSAN_LIB"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_odr_violation=0:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONPATH="$DIR/src/python:$DIR/src"
export FASTLAYERS_UNDER_ASAN=1  # tests that cap the address space skip: ASan reserves terabytes of it
# The sanitized build must be the one imported (not the editable install of the source tree).
"$PY" -c "import fastlayers._C as c, sys; assert c.__file__.startswith('$DIR'), c.__file__; print('   using', c.__file__)"
if [ "${PYTEST_ARGS:-tests}" != "none" ]; then
  echo "== test suite under ASan+UBSan"
  t0=$SECONDS
  set +e
  "$PY" -m pytest -q -x -p no:cacheprovider ${PYTEST_ARGS:-tests} >"$DIR/tests.log" 2>&1
  rc=$?
  set -e
  tail -15 "$DIR/tests.log"
  echo "   tests: $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || exit $rc
fi
if [ "${FUZZ_CASES:-300}" != "0" ]; then
  echo "== fuzz slice under ASan+UBSan (${FUZZ_CASES:-300} cases per family)"
  # The fuzz workers inherit LD_PRELOAD; glibc's malloc checker would fight ASan's allocator, so it is off here.
  FUZZ_NO_MALLOC_CHECK=1 "$PY" -m fuzz.run --cases "${FUZZ_CASES:-300}" --seed 0 --report "$DIR/fuzz-report.md"
fi

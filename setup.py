"""Builds fastlayers' two compiled libraries from csrc/.

- fastlayers._C: the op schemas and the CPU kernels of the families in STABLE_FAMILIES, on the LibTorch stable ABI
  only (torch/csrc/stable, torch/headeronly; TORCH_TARGET_VERSION 2.13): one binary loads under every torch from
  2.13 on.
- fastlayers._C_aten: everything that needs more of ATen (the CPU kernels of the other families, which call ATen
  GEMMs inside parallel regions, and every CUDA kernel: streams, device guards, sort/searchsorted). It loads only
  under the torch minor release it was compiled against.

C++ sources are always compiled. CUDA sources (csrc/**/*.cu) are compiled too when the installed torch has CUDA,
nvcc is found and FASTLAYERS_NO_CUDA is not 1. Build with `pip install --no-build-isolation -e .` so the
libraries are compiled against the torch that will import them.
"""

import glob
import json
import os
import platform
import re
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))

# torch finds the toolkit from `which nvcc`; where that is a wrapper script (/usr/local/bin/nvcc here) the guessed
# root has no lib64 and linking -lcudart fails. Prefer the standard toolkit root when it exists.
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

# Families whose CPU kernels are written against the stable ABI (csrc/common/stable.h). The others (and all CUDA
# code) are compiled into _C_aten: hyper and align multiply with ATen GEMMs (at::mm_out / bmm_out into buffers
# inside parallel regions), which the stable ABI only offers as allocating dispatcher calls.
STABLE_FAMILIES = ("eca", "mp", "ncache")
# The oldest torch the stable library targets (major, minor): the wheel's torch floor. Built against an older torch
# (the lent GPU machine has 2.11), that torch's own version is the target: headers cannot target a newer ABI.
STABLE_TARGET = min((2, 13), tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]))
# Sources in both libraries (each holds its own ISA choice and output pool).
SHARED_SOURCES = ("csrc/common/cpu_isa.cpp", "csrc/common/cpu_cache.cpp")


def _base_version():
    with open(os.path.join(ROOT, "python", "fastlayers", "_version.py")) as f:
        return re.search(r'^BASE = "([^"]+)"', f.read(), re.MULTILINE).group(1)


def _torch_minor():
    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


def _build_config(with_cuda, arch_list):
    """What the compiled library depends on. The torch C++ ABI changes between minor releases, so a build loads
    only under the torch minor release it was compiled against."""
    cuda = torch.version.cuda if with_cuda else None
    variant = "cu" + cuda.replace(".", "") if cuda else "cpu"
    version = _base_version()
    # An sdist holds no binary, so it keeps the plain version (pip checks that a wheel built from it matches).
    if os.environ.get("FASTLAYERS_LOCAL_VERSION", "0") == "1" and "sdist" not in sys.argv[1:]:
        version += "+pt" + _torch_minor().replace(".", "") + variant
    return {
        "version": version,
        "torch_built": torch.__version__,
        "torch_requires": _torch_minor(),
        "cuda": cuda,
        "variant": variant,
        "cuda_arch_list": arch_list or None,
        "python_abi": "abi3 (CPython >= 3.10)",
        # fastlayers._C (these families' CPU kernels) loads under any torch from stable_torch_min on; _C_aten
        # (the rest, and CUDA) only under torch_requires.
        "stable_torch_min": "{}.{}".format(*STABLE_TARGET),
        "stable_families": list(STABLE_FAMILIES),
    }


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "**", pattern), recursive=True))


def _split_sources(cpp):
    """(stable, aten) C++ sources: see the module docstring and STABLE_FAMILIES."""
    stable, aten = list(SHARED_SOURCES), list(SHARED_SOURCES)
    for src in cpp:
        parts = src.split(os.sep)
        if src in SHARED_SOURCES:
            continue
        if parts[1] in STABLE_FAMILIES or src in ("csrc/ops.cpp", "csrc/module.cpp") or src.endswith("_stable.cpp"):
            stable.append(src)
        else:
            aten.append(src)
    return stable, aten


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


def _extensions():
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
        # The CUDA wheel's list: SASS for A100/H100-class GPUs, PTX that newer GPUs JIT-compile. Development builds
        # use the same default so `make wheel` links the CUDA wheel from the objects `make build` compiled.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        arch_list = os.environ["TORCH_CUDA_ARCH_LIST"]
        macros.append(("FASTLAYERS_WITH_CUDA", None))
        # cu13 wheels keep cusparse.h (pulled in by ATen/cuda headers) outside the toolkit.
        for site in sys.path:
            inc = os.path.join(site, "nvidia", "cu13", "include")
            if os.path.isdir(inc):
                include_dirs.append(inc)
                break
    print(f"fastlayers: CUDA sources {'on' if with_cuda else 'off'} ({why}); {platform.machine()}", flush=True)
    stable_src, aten_src = _split_sources(cpp)
    # The modules use only the limited C API (csrc/module*.cpp), so one binary serves every CPython >= 3.10.
    common = dict(include_dirs=include_dirs, define_macros=macros, extra_link_args=link, py_limited_api=True)
    # Any use of a header outside the stable ABI is a compile error (ATen/ATen.h refuses under these macros).
    target = "-DTORCH_TARGET_VERSION=0x{:02x}{:02x}000000000000".format(*STABLE_TARGET)
    stable = CppExtension(name="fastlayers._C", sources=stable_src,
                          extra_compile_args={"cxx": cxx + ["-DTORCH_STABLE_ONLY", target]}, **common)
    config = _build_config(with_cuda, arch_list)
    if with_cuda:
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        aten = CUDAExtension(name="fastlayers._C_aten", sources=aten_src + cu,
                             extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **common)
    else:
        aten = CppExtension(name="fastlayers._C_aten", sources=aten_src, extra_compile_args={"cxx": cxx}, **common)
    return [stable, aten], config


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
        base = os.environ.get("FASTLAYERS_BUILD_BASE")
        temp = os.environ.get("FASTLAYERS_BUILD_TEMP") or (os.path.join(base, "temp") if base else "build/temp")
        self.build_temp = os.path.join(ROOT, temp)

    def build_extension(self, ext):
        # One folder (and ninja file) per library: they compile the shared sources with different flags.
        temp = self.build_temp
        self.build_temp = os.path.join(temp, ext.name.split(".")[-1])
        try:
            super().build_extension(ext)
        finally:
            self.build_temp = temp

    def run(self):
        super().run()
        # Next to the binary, so an editable install and a wheel each describe the library they actually hold.
        dirs = [os.path.join(self.build_lib, "fastlayers")]
        if self.inplace or getattr(self, "editable_mode", False):
            dirs.append(self.get_finalized_command("build_py").get_package_dir("fastlayers"))
        for d in dirs:
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "_build_config.json"), "w") as f:
                json.dump(BUILD_CONFIG, f, indent=1)

    def get_outputs(self):
        return super().get_outputs() + [os.path.join(self.build_lib, "fastlayers", "_build_config.json")]


EXTENSIONS, BUILD_CONFIG = _extensions()
_options = {"bdist_wheel": {"py_limited_api": "cp310"}}
if os.environ.get("FASTLAYERS_BUILD_BASE"):
    _options["build"] = {"build_base": os.environ["FASTLAYERS_BUILD_BASE"]}

setup(
    version=BUILD_CONFIG["version"],
    # _C loads under any torch from stable_torch_min on; _C_aten only under the minor release it was built
    # against (fastlayers/_compat.py says which families that leaves out); numpy and tqdm are used by the data
    # loaders and progress bars.
    install_requires=[f"torch>={BUILD_CONFIG['stable_torch_min']}", "numpy", "tqdm"],
    options=_options,
    packages=_packages(),
    package_dir={"fastlayers": "python/fastlayers", "fastlayers.kernels": "kernels"},
    ext_modules=EXTENSIONS,
    cmdclass={"build_ext": BuildExt},
)

"""What a built fastlayers says about itself, and the clear errors for a wheel under the wrong torch.

The end-to-end checks (the wheel installed in a fresh venv with no compiler, the suite run against it, the wheel
imported under torch 2.13) are `make wheel-test` (packaging/wheel_test.sh); these test the rules it relies on.
"""

import importlib
import json
import os
import re
import shutil
import subprocess
import sys

import fastlayers
import pytest
import torch
from fastlayers import _compat

CPU = {"version": "0.1.0+pt214cpu", "torch_built": "2.14.1+cpu", "torch_requires": "2.14", "cuda": None,
       "variant": "cpu", "cuda_arch_list": None, "stable_torch_min": "2.13"}
CUDA = {"version": "0.1.0+pt214cu130", "torch_built": "2.14.1+cu130", "torch_requires": "2.14", "cuda": "13.0",
        "variant": "cu130", "cuda_arch_list": "8.0;9.0+PTX", "stable_torch_min": "2.13"}


@pytest.mark.parametrize("config", [CPU, CUDA])
def test_same_minor_release_loads(config):
    assert _compat.mismatch(config, "2.14.1+cu130", "13.0") is None
    assert _compat.mismatch(config, "2.14.0", "13.1") is None


def test_cpu_wheel_loads_under_a_cpu_or_cuda_torch():
    assert _compat.mismatch(CPU, "2.14.1+cpu", None) is None
    assert _compat.mismatch(CPU, "2.14.1+cu126", "12.6") is None


@pytest.mark.parametrize("config", [CPU, CUDA])
def test_other_minor_release_names_what_to_install(config):
    why = _compat.mismatch(config, "2.13.0+cpu", None)
    assert why.startswith(f"fastlayers {config['version']} was compiled against torch {config['torch_built']}")
    assert "loads only under torch 2.14.x" in why and "torch 2.13.0+cpu" in why
    assert "pip install 'torch==2.14.*'" in why
    assert "+pt213cpu" in why  # the wheel for the torch they have (a CPU build here)
    assert "+pt213cu126" in _compat.mismatch(config, "2.13.0+cu126", "12.6")
    assert "--no-build-isolation" in why  # and how to build from source


def test_cuda_wheel_under_cpu_only_torch():
    why = _compat.mismatch(CUDA, "2.14.1+cpu", None)
    assert "CPU-only build" in why and "+pt214cpu" in why and "CUDA 13 build of torch 2.14" in why


def test_cuda_wheel_under_other_cuda_major():
    why = _compat.mismatch(CUDA, "2.14.1+cu126", "12.6")
    assert "compiled with CUDA 13.0" in why and "uses CUDA 12.6" in why and "+pt214cu126" in why


def test_load_library_refuses_a_torch_older_than_the_stable_target(monkeypatch):
    monkeypatch.setattr(_compat, "build_config", lambda: dict(CPU, stable_torch_min="2.99"))
    with pytest.raises(ImportError, match=r"needs torch 2\.99 or newer, but this Python has torch"):
        _compat.load_library()


def test_load_library_under_another_torch_keeps_the_stable_families(monkeypatch):
    # _C_aten is pinned: under another minor release it is not loaded and aten_error() says why; _C still loads.
    monkeypatch.setattr(_compat, "build_config", lambda: dict(CPU, torch_requires="2.13", torch_built="2.13.0"))
    monkeypatch.setattr(_compat, "_aten_error", None)
    assert _compat.load_library() is fastlayers._C
    assert "loads only under torch 2.13.x" in _compat.aten_error() and "hyper and align" in _compat.aten_error()


def test_cpu_build_refuses_cuda_tensors(monkeypatch):
    monkeypatch.setattr(_compat, "build_config", lambda: CPU)
    with pytest.raises(RuntimeError, match=r"fastlayers spmm: got CUDA tensors, but this fastlayers build "
                                           r"\(0\.1\.0\+pt214cpu\) has no CUDA kernels"):
        _compat.require_cuda_kernels(torch.device("cuda", 0), "spmm")
    _compat.require_cuda_kernels(torch.device("cpu"), "spmm")  # the CPU kernels are there
    monkeypatch.setattr(_compat, "build_config", lambda: CUDA)
    _compat.require_cuda_kernels(torch.device("cuda", 0), "spmm")


def test_build_config_describes_this_build():
    config = _compat.build_config()
    assert config is not None, "setup.py writes _build_config.json next to the library"
    assert config["torch_requires"] == ".".join(torch.__version__.split("+")[0].split(".")[:2])
    assert config["version"] == fastlayers.__version__
    assert bool(config["cuda"]) == fastlayers._C.build_info()["cuda"]
    assert (config["variant"] == "cpu") == (config["cuda"] is None)
    assert os.path.basename(fastlayers._C.__file__) == "_C.abi3.so"  # one binary for every CPython >= 3.10
    assert config["stable_torch_min"] == "2.13" and "eca" in config["stable_families"]
    assert _compat.aten_error() is None  # under the torch it was built for, both libraries load
    with open(os.path.join(os.path.dirname(fastlayers._C.__file__), "_build_config.json")) as f:
        assert json.load(f) == config


def test_info_says_what_the_binary_was_built_against():
    out = subprocess.run([sys.executable, "-m", "fastlayers", "info"], capture_output=True, text=True, check=True)
    config = _compat.build_config()
    assert f"built against torch: {config['torch_built']}" in out.stdout
    assert f"needs torch: {config['torch_requires']}.x" in out.stdout
    assert f"build variant: {config['variant']}" in out.stdout


def test_check_wheel_rejects_a_bad_wheel(tmp_path):
    # packaging/check_wheel.py gates `make wheel`: a wheel without the library, the Triton kernels or honest
    # metadata must fail it.
    import zipfile

    bad = tmp_path / "fastlayers-0.1.0-cp310-abi3-linux_x86_64.whl"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("fastlayers/_build_config.json", json.dumps(CPU))
        z.writestr("fastlayers/libtorch_cpu.so", b"")
        z.writestr("fastlayers-0.1.0.dist-info/METADATA", "Name: fastlayers\nVersion: 0.1.0\nRequires-Dist: torch\n")
        z.writestr("fastlayers-0.1.0.dist-info/WHEEL", "Tag: cp311-cp311-linux_x86_64\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "packaging", "check_wheel.py"), str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    for why in ("expected exactly fastlayers/_C.abi3.so and fastlayers/_C_aten.abi3.so",
                "fastlayers/kernels/eca.py missing", "vendors fastlayers/libtorch_cpu.so", "does not require torch>=2.13",
                "should end with +pt214cpu",
                "not tagged cp310-abi3"):
        assert why in r.stdout, (why, r.stdout)


def test_info_reports_where_each_family_runs():
    from fastlayers.__main__ import backends

    build = fastlayers._C.build_info()
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    if flags and not os.environ.get("FASTLAYERS_CPU_ISA"):  # the widest path this CPU has (common/cpu_isa.cpp)
        avx2 = {"avx2", "fma"} <= set(flags)
        avx512 = avx2 and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= set(flags)
        assert build["cpu_isa"] == ("avx512" if avx512 else "avx2" if avx2 else "scalar")
    where = backends(build)
    assert set(where) == {"mp", "ncache", "eca", "hyper", "align"}
    for family in ("mp", "ncache"):
        gpu = "CUDA C++" if build["cuda"] else "none: CUDA tensors raise"
        assert where[family].startswith(f"CPU: C++, {build['cpu_isa']}; CUDA: {gpu}"), where[family]
    triton = importlib.import_module("fastlayers.ops.eca")._triton_eca is not None
    for family in ("eca", "hyper", "align"):
        assert where[family].endswith("CUDA: Triton" if triton else "(Triton is not importable)"), where[family]


def test_stable_library_imports_no_torch_cpp_symbol():
    # fastlayers._C must load under every torch >= 2.13: it may call libtorch only through the stable C shim
    # (aoti_torch_* / torch_* C functions), never a C++ symbol of c10, at or torch, whose ABI changes per release.
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("needs binutils' nm")
    out = subprocess.run([nm, "-D", "--undefined-only", fastlayers._C.__file__], capture_output=True, text=True,
                         check=True).stdout
    assert "aoti_torch_" in out  # it does use the shim
    pinned = re.findall(r"\b(_ZN(?:K)?\d+(?:c10|at|torch)\w*)", out)
    assert not pinned, pinned[:5]

"""Checks built wheels before anyone installs them: what must be inside, what must not, and honest metadata.

    python packaging/check_wheel.py dist/fastlayers-*.whl

Per wheel: the abi3 extension and its _build_config.json, the Triton kernels (fastlayers.kernels), no vendored
torch/CUDA runtime library, Requires-Dist pinning the torch minor release the binary was built against, a local
version tag naming that torch and the variant (cpu / cuXYZ), a cp310-abi3 tag; for a CUDA wheel, cuobjdump must
find SASS for every listed arch and PTX where the list asks for it. Exit status 1 on any failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

KERNELS = ("fastlayers/kernels/eca.py", "fastlayers/kernels/hyper.py", "fastlayers/kernels/align.py")
FORBIDDEN = re.compile(r"(libtorch|libc10|libgomp|libcudart|libcublas|libnvrtc)[^/]*\.so")


def _cuobjdump():
    """cuobjdump from PATH, the CUDA toolkit, or the copy Triton ships (a toolkit may come without it)."""
    import importlib.util

    cands = [shutil.which("cuobjdump"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")]
    spec = importlib.util.find_spec("triton")
    if spec and spec.origin:
        cands.append(os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", "cuobjdump"))
    return next((c for c in cands if c and os.path.exists(c)), None)


def check(path: str) -> list[str]:
    bad = []
    name = os.path.basename(path)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        so = sorted(n for n in names if re.fullmatch(r"fastlayers/_C.*\.so", n))
        if so != ["fastlayers/_C.abi3.so", "fastlayers/_C_aten.abi3.so"]:
            bad.append(f"expected exactly fastlayers/_C.abi3.so and fastlayers/_C_aten.abi3.so, found {so}")
        else:
            bad += _check_stable_binary(z)
        if "fastlayers/_build_config.json" not in names:
            return bad + ["fastlayers/_build_config.json missing"]
        config = json.loads(z.read("fastlayers/_build_config.json"))
        bad += [f"{k} missing (Triton kernels not packaged)" for k in KERNELS if k not in names]
        bad += [f"vendors {n}: torch provides it at run time" for n in names if FORBIDDEN.search(n)]
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        wheel = z.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
        req = f"torch>={config.get('stable_torch_min', '(no stable library in this build)')}"
        if not re.search(rf"^Requires-Dist: {re.escape(req)}$", meta, re.MULTILINE):
            bad.append(f"METADATA does not require {req}")
        version = re.search(r"^Version: (.+)$", meta, re.MULTILINE).group(1)
        tag = "+pt" + config["torch_requires"].replace(".", "") + config["variant"]
        if not version.endswith(tag) or version != config["version"]:
            bad.append(f"version {version} should end with {tag} and equal the build's {config['version']}")
        if not re.search(r"^Tag: cp310-abi3-", wheel, re.MULTILINE):
            bad.append("not tagged cp310-abi3")
        if config["cuda"]:
            bad += _check_cuda_binary(z, config)
    print(f"{name}: {'ok' if not bad else 'FAILED'} (version {config.get('version')}, torch {config['torch_built']}, "
          f"variant {config['variant']}, arch list {config['cuda_arch_list']})")
    return bad


def _check_stable_binary(z: zipfile.ZipFile) -> list[str]:
    """_C must import nothing from libtorch but the stable C shim: a C++ symbol of c10/at/torch (mangled _ZN...)
    would tie it to one torch release."""
    nm = shutil.which("nm")
    if nm is None:
        return ["nm not found: cannot check that _C uses only the stable ABI"]
    with tempfile.TemporaryDirectory() as d:
        so = z.extract("fastlayers/_C.abi3.so", d)
        out = subprocess.run([nm, "-D", "--undefined-only", so], capture_output=True, text=True).stdout
    pinned = sorted(set(re.findall(r"\b(_ZN(?:K)?\d+(?:c10|at|torch)\w*)", out)))
    return [f"_C imports torch C++ symbols outside the stable ABI: {pinned[:5]}"] if pinned else []


def _check_cuda_binary(z: zipfile.ZipFile, config: dict) -> list[str]:
    tool = _cuobjdump()
    if tool is None:
        return ["cuobjdump not found: cannot check the CUDA wheel's device code"]
    with tempfile.TemporaryDirectory() as d:
        so = z.extract("fastlayers/_C_aten.abi3.so", d)
        elf = subprocess.run([tool, "--list-elf", so], capture_output=True, text=True).stdout
        ptx = subprocess.run([tool, "--list-ptx", so], capture_output=True, text=True).stdout
    bad = []
    for arch in config["cuda_arch_list"].replace(" ", ";").split(";"):
        if not arch:
            continue
        sm = "sm_" + arch.replace("+PTX", "").replace(".", "")
        if sm not in elf:
            bad.append(f"no SASS for {sm}")
        if arch.endswith("+PTX") and sm not in ptx:
            bad.append(f"no PTX for {sm} (newer GPUs JIT from it)")
    sass, ptxs = (sorted(set(re.findall(r"sm_\d+", text))) for text in (elf, ptx))
    print(f"  device code: SASS {sass}, PTX {ptxs}")
    return bad


def main(paths: list[str]) -> int:
    if not paths:
        print("no wheels given")
        return 1
    failed = False
    for p in paths:
        for b in check(p):
            print("  FAIL:", b)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

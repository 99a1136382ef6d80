"""``python -m fastlayers info`` (also the ``fastlayers`` console script): how this install was built and what
it can run."""

import argparse
import sys

# family -> (an op the family's CUDA path registers, the kind of GPU kernel it is)
_FAMILIES = {
    "mp": ("spmm_fwd", "CUDA C++"),
    "ncache": ("ncache_update", "CUDA C++"),
    "eca": ("eca_fwd", "Triton"),
    "hyper": ("hyper_linear_fwd", "Triton"),
    "align": ("sinkhorn_fwd", "Triton"),
}


def backends(build: dict) -> dict:
    """Per family, what a CPU call and a CUDA call run in this install, read from the dispatcher's registrations
    and the CPU the process runs on (not from what the build was asked to do)."""
    import torch

    from ._compat import aten_error

    missing = "none: fastlayers._C_aten is not loaded (see its line above)"
    out = {}
    for family, (op, kind) in _FAMILIES.items():
        cpu = f"C++, {build['cpu_isa']}" if torch._C._dispatch_has_kernel_for_dispatch_key(
            f"fastlayers::{op}", "CPU") else (missing if aten_error() else "plain-PyTorch reference")
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"fastlayers::{op}", "CUDA"):
            gpu = kind
        elif kind == "CUDA C++" and build["cuda"] and aten_error():
            gpu = missing
        elif kind == "Triton":
            gpu = "plain-PyTorch reference (Triton is not importable)"
        else:
            gpu = "none: CUDA tensors raise (a build without CUDA kernels; install the CUDA wheel)"
        out[family] = f"CPU: {cpu}; CUDA: {gpu}"
    return out


def info() -> dict:
    import torch

    import fastlayers

    build = fastlayers._C.build_info()
    config = fastlayers._compat.build_config() or {}
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    ops = sorted(s.name.split("::", 1)[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("fastlayers::"))
    return {
        "fastlayers": fastlayers.__version__,
        "installed at": fastlayers.__path__[0],
        "built against torch": config.get("torch_built", "unknown (no _build_config.json)"),
        "needs torch": (f"{config['torch_requires']}.x for fastlayers._C_aten (hyper and align on the CPU, every CUDA "
                        f"kernel); >= {config.get('stable_torch_min')} for fastlayers._C ("
                        f"{', '.join(config.get('stable_families', []))} on the CPU)") if config else "unknown",
        "fastlayers._C_aten": fastlayers._compat.aten_error() or "loaded",
        "build variant": config.get("variant"),
        "Python ABI": config.get("python_abi"),
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda,
        "CUDA device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "compiled CPU kernels": True,
        "compiled CUDA kernels": build["cuda"],
        "CUDA arch list": config.get("cuda_arch_list"),
        "OpenMP": build["openmp"],
        "compiler": build["compiler"],
        "CPU ISA": build["cpu_isa"] + " (of " + ", ".join(fastlayers._C.cpu_isa_info()["supported"]) + ")"
                   + ("; align runs its SSE2 build on avx2" if build["cpu_isa"] == "avx2" else ""),
        "Triton": triton_version,
        "CPU threads": torch.get_num_threads(),
        "CPU output pool": fastlayers.cpu_cache.stats(),
        **{f"{family} runs": where for family, where in backends(build).items()},
        "ops": ops,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fastlayers", description="fastlayers command line")
    ap.add_argument("command", nargs="?", default="info", choices=["info"], help="what to show (default: info)")
    ap.parse_args(argv)
    for key, value in info().items():
        if key == "ops":
            value = ", ".join(value)
        print(f"{key:>22}: {value}")
    from fastlayers.ops import _backend

    # Per op and device: the backend a float32 input runs on and why each other backend does not
    # (fastlayers.ops.backend_table(); fastlayers.ops.explain(op, device, dtype, side) for any other input).
    print("\nbackends (float32 input; fastlayers.ops.explain() for others):")
    print(_backend.format_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())

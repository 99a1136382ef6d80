"""``python -m fastlayers info`` (also the ``fastlayers`` console script): how this install was built and what
it can run."""

import argparse
import sys


def info() -> dict:
    import torch

    import fastlayers

    build = fastlayers._C.build_info()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    ops = sorted(s.name.split("::", 1)[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("fastlayers::"))
    return {
        "fastlayers": fastlayers.__version__,
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda,
        "CUDA device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "compiled CPU kernels": True,
        "compiled CUDA kernels": build["cuda"],
        "CUDA arch list": build["cuda_arch_list"] or None,
        "OpenMP": build["openmp"],
        "compiler": build["compiler"],
        "Triton": triton_version,
        "CPU threads": torch.get_num_threads(),
        "CPU output pool": fastlayers.cpu_cache.stats(),
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
    return 0


if __name__ == "__main__":
    sys.exit(main())

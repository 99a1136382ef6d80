"""Loads the compiled library only under a torch it can run with, and says what to install when it can't.

The torch C++ ABI changes between minor releases: a binary compiled against torch 2.14 fails to load under 2.13
with an "undefined symbol" from the dynamic loader, and a CUDA build needs torch's CUDA libraries. setup.py writes
what the binary depends on to ``_build_config.json`` next to it; this module compares that with the running torch
before the binary is loaded.
"""

from __future__ import annotations

import functools
import json
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCE_BUILD = ("build fastlayers from source against the torch you have: pip install --no-build-isolation "
                 "fastlayers-<version>.tar.gz, or `pip install --no-build-isolation -e .` in a clone (needs a C++ "
                 "compiler with OpenMP; nvcc too for the CUDA kernels)")


@functools.cache
def build_config() -> dict | None:
    """The facts setup.py recorded about the compiled library (version, torch_built, torch_requires, cuda,
    variant, cuda_arch_list), or None where the library was built without them. Read once: the file sits next
    to a binary that cannot change under a running process. Treat the dict as read-only."""
    try:
        with open(os.path.join(_HERE, "_build_config.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def _tag(minor: str, variant: str) -> str:
    return "+pt" + minor.replace(".", "") + variant


def mismatch(config: dict, torch_version: str, torch_cuda: str | None) -> str | None:
    """Why the library described by ``config`` cannot load under a torch ``torch_version`` with CUDA
    ``torch_cuda`` (None for a CPU-only torch), as the message to show; None when it can."""
    ours, req = config["version"], config["torch_requires"]
    have = _minor(torch_version)
    theirs = "cpu" if torch_cuda is None else "cu" + torch_cuda.replace(".", "")
    if have != req:
        return (f"fastlayers {ours} was compiled against torch {config['torch_built']} and loads only under torch "
                f"{req}.x, but this Python has torch {torch_version}. Install torch {req} (pip install "
                f"'torch=={req}.*'), or the fastlayers wheel built for your torch (version tag "
                f"{_tag(have, theirs)}), or {_SOURCE_BUILD}.")
    cuda = config.get("cuda")
    if cuda and torch_cuda is None:
        return (f"fastlayers {ours} holds CUDA {cuda} kernels and needs a CUDA build of torch {req}, but torch "
                f"{torch_version} is a CPU-only build. Install the CPU wheel of fastlayers (version tag "
                f"{_tag(req, 'cpu')}) or a CUDA {cuda.split('.')[0]} build of torch {req}.")
    if cuda and torch_cuda.split(".")[0] != cuda.split(".")[0]:
        return (f"fastlayers {ours} was compiled with CUDA {cuda}, but torch {torch_version} uses CUDA {torch_cuda}. "
                f"Install the fastlayers wheel for {theirs} (version tag {_tag(req, theirs)}), or {_SOURCE_BUILD}.")
    return None


def load_library():
    """Imports fastlayers._C after checking the running torch against the build; ImportError with the fix if not."""
    import torch

    config = build_config()
    if config is not None:
        why = mismatch(config, torch.__version__, torch.version.cuda)
        if why:
            raise ImportError(why)
    try:
        from . import _C
    except (ImportError, OSError) as e:
        built = f" (built against torch {config['torch_built']})" if config else ""
        raise ImportError(f"fastlayers' compiled library{built} failed to load under torch {torch.__version__}: "
                          f"{e}. Reinstall the wheel that matches this torch, or {_SOURCE_BUILD}.") from e
    why = cpu_isa_error(_C.cpu_isa_info())
    if why:
        raise ImportError(why)
    return _C


def cpu_isa_error(info: dict) -> str | None:
    """Why FASTLAYERS_CPU_ISA could not be honoured, as the message to show; None when it was (or is unset).
    ``info`` is ``_C.cpu_isa_info()``: the C++ side never throws (it falls back to the best supported path), so
    the import raises here instead of running on a path the user did not ask for."""
    if info.get("error") is None:
        return None
    value, supported = info["requested"], ", ".join(info["supported"])
    if info["error"] == "unknown":
        return (f"FASTLAYERS_CPU_ISA={value!r} is not a CPU instruction set fastlayers knows; valid values: "
                f"{info['valid']} (this CPU supports {supported}). Unset it to use the best one.")
    return (f"FASTLAYERS_CPU_ISA={value!r} asks for a CPU instruction set this CPU (or its OS) does not support; "
            f"it supports: {supported}. Unset it to use the best one ({info['supported'][0]}).")


def require_cuda_kernels(device, op: str) -> None:
    """Raise where a CUDA tensor meets a build without CUDA kernels (the CPU wheel): running the plain-PyTorch
    reference instead would be silently slow, which is not what a user of the GPU kernels installed us for."""
    if device.type != "cuda":
        return
    config = build_config() or {}
    if config.get("cuda"):
        return
    import torch

    req = config.get("torch_requires", _minor(torch.__version__))
    variant = "cu" + (torch.version.cuda or "").replace(".", "")
    raise RuntimeError(
        f"fastlayers {op}: got CUDA tensors, but this fastlayers build ({config.get('version', 'source build')}) "
        f"has no CUDA kernels. Install the CUDA wheel of fastlayers (version tag {_tag(req, variant)}, for "
        f"torch's CUDA {torch.version.cuda}), or {_SOURCE_BUILD}.")

"""Loads the compiled libraries only under a torch they can run with, and says what to install when they can't.

fastlayers has two: ``_C`` (the op schemas and the CPU kernels of the families written against the LibTorch
stable ABI; it loads under every torch from ``stable_torch_min`` on) and ``_C_aten`` (the other families' CPU
kernels and every CUDA kernel). The torch C++ ABI changes between minor releases: ``_C_aten`` compiled against
torch 2.14 fails to load under 2.13 with an "undefined symbol" from the dynamic loader, and a CUDA build needs
torch's CUDA libraries. setup.py writes what the binaries depend on to ``_build_config.json`` next to them; this
module compares that with the running torch before ``_C_aten`` is loaded. Where it cannot load, the package still
imports and the families it holds raise :func:`aten_error`'s message when called.
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


def stable_mismatch(config: dict, torch_version: str) -> str | None:
    """Why the stable-ABI library cannot load under ``torch_version`` (older than it targets); None when it can."""
    need = config.get("stable_torch_min")
    if need is None:  # a build from before the split: everything is pinned to one torch
        return mismatch(config, torch_version, None)
    have = tuple(int(p) for p in _minor(torch_version).split("."))
    if have < tuple(int(p) for p in need.split(".")):
        return (f"fastlayers {config['version']} needs torch {need} or newer, but this Python has torch "
                f"{torch_version}. Upgrade torch (pip install 'torch>={need}'), or {_SOURCE_BUILD}.")
    return None


_aten_error: str | None = "fastlayers._C_aten was not loaded"


def aten_error() -> str | None:
    """None when fastlayers._C_aten (hyper, align and every CUDA kernel) is loaded, else why not, with the fix."""
    return _aten_error


def load_library():
    """Imports fastlayers._C (ImportError with the fix when this torch is too old for it), then fastlayers._C_aten
    where the running torch matches its build (else :func:`aten_error` says why). Returns _C."""
    global _aten_error
    import torch

    config = build_config()
    if config is not None:
        why = stable_mismatch(config, torch.__version__)
        if why:
            raise ImportError(why)
    built = f" (built against torch {config['torch_built']})" if config else ""
    try:
        from . import _C
    except (ImportError, OSError) as e:
        raise ImportError(f"fastlayers' compiled library{built} failed to load under torch {torch.__version__}: "
                          f"{e}. Reinstall the wheel that matches this torch, or {_SOURCE_BUILD}.") from e
    why = cpu_isa_error(_C.cpu_isa_info())
    if why:
        raise ImportError(why)
    why = mismatch(config, torch.__version__, torch.version.cuda) if config is not None else None
    if why:
        _aten_error = (f"{why} (fastlayers._C_aten, which holds the hyper and align CPU kernels and every CUDA "
                       f"kernel, is compiled against one torch; the other families run under any torch >= "
                       f"{config.get('stable_torch_min')}.)")
        return _C
    try:
        from . import _C_aten  # noqa: F401  (registers its kernels with the dispatcher)
    except (ImportError, OSError) as e:
        raise ImportError(f"fastlayers' torch-pinned library _C_aten{built} failed to load under torch "
                          f"{torch.__version__}: {e}. Reinstall the wheel that matches this torch, or "
                          f"{_SOURCE_BUILD}.") from e
    _aten_error = None
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

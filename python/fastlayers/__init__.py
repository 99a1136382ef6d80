"""fastlayers: drop-in fast layers for structure-aware deep learning.

Importing the package loads the compiled kernels (``fastlayers._C``), registers every op under
``torch.ops.fastlayers`` with its fake (meta) kernel and autograd formula, and registers the Triton kernels for
CUDA when Triton is importable.
"""

import torch  # noqa: F401  (the compiled library links against torch's symbols)

from . import _compat  # noqa: F401  (fastlayers._compat: the build/torch compatibility check, public for info)
from ._compat import build_config as _build_config
from ._compat import load_library as _load_library
from ._version import BASE as __version__

_C = _load_library()  # the op schemas and the CPU/CUDA kernels; a clear ImportError under a mismatched torch
__version__ = (_build_config() or {}).get("version", __version__)
from . import cpu_cache, nn, ops, reference
from .graph import Graph
from .ncache import NCache

__all__ = ["__version__", "cpu_cache", "cpu_isa", "nn", "ops", "reference"]


def cpu_isa() -> str:
    """The instruction set the CPU kernels run in this process: "avx512", "avx2" or "scalar" (the baseline).
    The best one this CPU supports, unless FASTLAYERS_CPU_ISA forces another (read once, at import). On "avx2" the
    align family (Sinkhorn, the hinge score, the IsoNet++ layer) runs its scalar (SSE2) build, which measured
    faster there (csrc/align/align_avx2.cpp says why)."""
    return _C.cpu_isa_info()["isa"]


__all__ += ["Graph"]
__all__ += ["NCache"]

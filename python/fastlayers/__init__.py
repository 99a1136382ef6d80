"""fastlayers: drop-in fast layers for structure-aware deep learning.

Importing the package loads the compiled kernels (``fastlayers._C``), registers every op under
``torch.ops.fastlayers`` with its fake (meta) kernel and autograd formula, and registers the Triton kernels for
CUDA when Triton is importable.
"""

from ._version import BASE as __version__  # noqa: E402  (replaced by the build's version below)

import torch  # noqa: F401  (the compiled library links against torch's symbols)

from . import _compat  # noqa: E402
from ._compat import build_config as _build_config, load_library as _load_library  # noqa: E402

_C = _load_library()  # the op schemas and the CPU/CUDA kernels; a clear ImportError under a mismatched torch
__version__ = (_build_config() or {}).get("version", __version__)
from . import cpu_cache, nn, ops, reference  # noqa: E402
from .graph import Graph  # noqa: E402
from .ncache import NCache  # noqa: E402

__all__ = ["ops", "nn", "reference", "cpu_cache", "__version__"]
__all__ += ["cpu_isa"]


def cpu_isa() -> str:
    """The instruction set the CPU kernels run in this process: "avx512", "avx2" or "scalar" (the baseline).
    The best one this CPU supports, unless FASTLAYERS_CPU_ISA forces another (read once, at import)."""
    return _C.cpu_isa_info()["isa"]


__all__ += ["Graph"]
__all__ += ["NCache"]

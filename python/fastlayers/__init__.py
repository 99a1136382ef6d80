"""fastlayers: drop-in fast layers for structure-aware deep learning.

Importing the package loads the compiled kernels (``fastlayers._C``), registers every op under
``torch.ops.fastlayers`` with its fake (meta) kernel and autograd formula, and registers the Triton kernels for
CUDA when Triton is importable.
"""

__version__ = "0.1.0"

import torch  # noqa: F401  (the compiled library links against torch's symbols)

from . import _C  # noqa: F401  (loads the op schemas and the CPU/CUDA kernels)
from . import cpu_cache, nn, ops, reference  # noqa: E402
from .graph import Graph  # noqa: E402
from .ncache import NCache  # noqa: E402

__all__ = ["ops", "nn", "reference", "cpu_cache", "__version__"]
__all__ += ["Graph"]
__all__ += ["NCache"]

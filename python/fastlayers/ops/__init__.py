"""Public functional ops. Each validates its arguments and calls ``torch.ops.fastlayers.<op>``."""

from .eca import eca
from .mp import block_spmm, edge_softmax, scatter, scatter_max, scatter_min, sddmm, segment, spmm

__all__ = ["eca"]
__all__ += ["scatter", "scatter_max", "scatter_min", "segment", "spmm", "sddmm", "edge_softmax", "block_spmm"]

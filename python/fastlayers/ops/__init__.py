"""Public functional ops. Each validates its arguments and calls ``torch.ops.fastlayers.<op>``."""

from ._double_backward import DoubleBackwardError
from .align import align_score, partner, sinkhorn
from .align_layer import isonet_layer
from .eca import eca
from .hyper import hyper_linear, interval_hyper_linear
from .mp import block_spmm, edge_softmax, scatter, scatter_max, scatter_min, sddmm, segment, spmm
from .ncache import ncache_lookup, ncache_pair_features, ncache_update

__all__ = ["eca"]
__all__ += ["scatter", "scatter_max", "scatter_min", "segment", "spmm", "sddmm", "edge_softmax", "block_spmm"]
__all__ += ["ncache_update", "ncache_lookup", "ncache_pair_features"]
__all__ += ["hyper_linear", "interval_hyper_linear"]
__all__ += ["sinkhorn", "align_score", "partner", "isonet_layer"]
__all__ += ["DoubleBackwardError"]

"""Public functional ops. Each validates its arguments, asks the backend module (fastlayers.ops._backend) which
implementation runs, and calls ``torch.ops.fastlayers.<op>`` (or the reference).

``use_reference()`` runs every op on its plain-PyTorch reference inside a ``with`` block; ``backend_table()``
and ``explain()`` say which backend runs where and why the others do not (``python -m fastlayers info``).
"""

from ._backend import NoBackendError, backend_table, explain, use_reference
from ._double_backward import DoubleBackwardError
from .align import align_score, partner, sinkhorn
from .eca import eca
from .hyper import hyper_linear, interval_hyper_linear
from .isonet_layer import isonet_layer
from .mp import block_spmm, edge_softmax, scatter, scatter_max, scatter_min, sddmm, segment, spmm
from .ncache import ncache_lookup, ncache_pair_features, ncache_update

__all__ = ["eca"]
__all__ += ["block_spmm", "edge_softmax", "scatter", "scatter_max", "scatter_min", "sddmm", "segment", "spmm"]
__all__ += ["ncache_lookup", "ncache_pair_features", "ncache_update"]
__all__ += ["hyper_linear", "interval_hyper_linear"]
__all__ += ["align_score", "isonet_layer", "partner", "sinkhorn"]
__all__ += ["DoubleBackwardError"]
__all__ += ["NoBackendError", "backend_table", "explain", "use_reference"]

"""Plain-PyTorch references of every op: the ground truth of the tests, the eager peer of the benchmarks, and the
fallback on devices that have no fastlayers kernel."""

from . import mp
from .align import align_score, partner, sinkhorn
from .eca import eca
from .hyper import hyper_abs_linear, hyper_linear, interval_hyper_linear, interval_linear
from .isonet_layer import isonet_layer
from .ncache import ncache_lookup, ncache_pair_features, ncache_update

__all__ = ["eca"]
__all__ += ["mp"]
__all__ += ["ncache_lookup", "ncache_pair_features", "ncache_update"]
__all__ += ["hyper_abs_linear", "hyper_linear", "interval_hyper_linear", "interval_linear"]
__all__ += ["align_score", "isonet_layer", "partner", "sinkhorn"]

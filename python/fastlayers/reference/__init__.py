"""Plain-PyTorch references of every op: the ground truth of the tests, the eager peer of the benchmarks, and the
fallback on devices that have no fastlayers kernel."""

from .align import align_score, partner, sinkhorn
from .align_layer import isonet_layer
from .eca import eca
from . import mp
from .hyper import hyper_abs_linear, hyper_linear, interval_hyper_linear, interval_linear
from .ncache import ncache_lookup, ncache_pair_features, ncache_update

__all__ = ["eca"]
__all__ += ["mp"]
__all__ += ["ncache_update", "ncache_lookup", "ncache_pair_features"]
__all__ += ["hyper_abs_linear", "hyper_linear", "interval_hyper_linear", "interval_linear"]
__all__ += ["sinkhorn", "align_score", "partner", "isonet_layer"]

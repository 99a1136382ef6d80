"""Plain-PyTorch references of every op: the ground truth of the tests, the eager peer of the benchmarks, and the
fallback on devices that have no fastlayers kernel."""

from .eca import eca
from .hyper import hyper_abs_linear, hyper_linear, interval_hyper_linear, interval_linear

__all__ = ["eca", "hyper_abs_linear", "hyper_linear", "interval_hyper_linear", "interval_linear"]

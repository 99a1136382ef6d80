"""Plain-PyTorch references of every op: the ground truth of the tests, the eager peer of the benchmarks, and the
fallback on devices that have no fastlayers kernel."""

from .align import align_score, partner, sinkhorn
from .eca import eca

__all__ = ["eca", "sinkhorn", "align_score", "partner"]

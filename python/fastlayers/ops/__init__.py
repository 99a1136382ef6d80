"""Public functional ops. Each validates its arguments and calls ``torch.ops.fastlayers.<op>``."""

from .align import align_score, partner, sinkhorn
from .eca import eca

__all__ = ["eca", "sinkhorn", "align_score", "partner"]

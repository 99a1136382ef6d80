"""Public functional ops. Each validates its arguments and calls ``torch.ops.fastlayers.<op>``."""

from .eca import eca

__all__ = ["eca"]

"""Public functional ops. Each validates its arguments and calls ``torch.ops.fastlayers.<op>``."""

from .eca import eca
from .hyper import hyper_linear, interval_hyper_linear

__all__ = ["eca", "hyper_linear", "interval_hyper_linear"]

"""Public functional ops. Each validates its arguments and calls ``torch.ops.fastlayers.<op>``."""

from .eca import eca
from .ncache import ncache_lookup, ncache_pair_features, ncache_update

__all__ = ["eca", "ncache_update", "ncache_lookup", "ncache_pair_features"]

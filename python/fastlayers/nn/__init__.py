"""Drop-in nn.Modules on fastlayers ops."""

from .eca import ECA, convert_timm
from .hyper import HyperLinear, HyperNetwork, IntervalHyperNetwork, mip_encode

__all__ = ["ECA", "convert_timm", "HyperLinear", "HyperNetwork", "IntervalHyperNetwork", "mip_encode"]

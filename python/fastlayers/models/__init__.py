"""Thin model classes of the research systems built on fastlayers ops and layers."""

from .dtrn import DTRN
from .hyperinterval import HyperInterval
from .isonet import IsoNet, IsoNetPP
from .nat import NAT

__all__ = ["NAT"]
__all__ += ["DTRN", "HyperInterval"]
__all__ += ["IsoNet", "IsoNetPP"]

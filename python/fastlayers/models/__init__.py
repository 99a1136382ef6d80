"""Thin model classes of the research systems built on fastlayers ops and layers."""

from .dtrn import DTRN
from .hei import HEI
from .hyperinterval import HyperInterval
from .isonet import IsoNet, IsoNetPP
from .nat import NAT
from .nsd import NSD
from .semba import SEMBA, SGCN

__all__ = ["NAT"]
__all__ += ["DTRN", "HyperInterval"]
__all__ += ["IsoNet", "IsoNetPP"]
__all__ += ["SEMBA", "SGCN"]
__all__ += ["HEI", "NSD"]

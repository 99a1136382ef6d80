"""Thin model classes of the research systems that use fastlayers kernels."""

from .isonet import IsoNet, IsoNetPP

__all__ = ["IsoNet", "IsoNetPP"]

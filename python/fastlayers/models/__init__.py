"""Thin model classes of the research systems built on fastlayers ops and layers."""

from .nat import NAT

__all__ = ["NAT"]

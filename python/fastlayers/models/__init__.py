"""Thin model classes of the research systems built on fastlayers ops."""

from .dtrn import DTRN
from .hyperinterval import HyperInterval

__all__ = ["DTRN", "HyperInterval"]

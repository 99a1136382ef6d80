"""Thin model classes of the research systems built on fastlayers ops."""

from .hyperinterval import HyperInterval

__all__ = ["HyperInterval"]

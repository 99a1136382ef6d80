"""Drop-in nn.Modules on fastlayers ops."""

from .eca import ECA, convert_timm

__all__ = ["ECA", "convert_timm"]

"""Drop-in nn.Modules on fastlayers ops."""

from .eca import ECA, convert_timm
from .hyper import HyperLinear, HyperNetwork, IntervalHyperNetwork, mip_encode
from .linkx import LINKX
from .mp import DirGNNConv, GATConv, GCNConv, GINConv, SAGEConv, SheafConv, SignedConv

__all__ = ["ECA", "convert_timm"]
__all__ += ["DirGNNConv", "GATConv", "GCNConv", "GINConv", "SAGEConv", "SheafConv", "SignedConv"]
__all__ += ["HyperLinear", "HyperNetwork", "IntervalHyperNetwork", "mip_encode"]
__all__ += ["LINKX"]

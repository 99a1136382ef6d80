"""Drop-in nn.Modules on fastlayers ops."""

from .eca import ECA, convert_timm
from .mp import DirGNNConv, GATConv, GCNConv, GINConv, SAGEConv, SheafConv, SignedConv

__all__ = ["ECA", "convert_timm"]
__all__ += ["GCNConv", "SAGEConv", "GINConv", "GATConv", "DirGNNConv", "SignedConv", "SheafConv"]

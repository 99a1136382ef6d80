"""Dataset loaders and generators (read from a path; nothing downloads)."""

from .graphs import NodeDataset, SignedEdges, load_bitcoin, load_geom_gcn, load_planetoid_npz

__all__ = ["NodeDataset", "SignedEdges", "load_bitcoin", "load_geom_gcn", "load_planetoid_npz"]

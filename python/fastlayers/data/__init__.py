"""Dataset loaders and generators (read from a path; nothing downloads)."""

from .graphs import NodeDataset, SignedEdges, load_bitcoin, load_geom_gcn, load_planetoid_npz
from .temporal import TemporalEdges, TemporalSplit, chronological_split, load_jodie_csv, load_snap_temporal

__all__ = ["NodeDataset", "SignedEdges", "load_bitcoin", "load_geom_gcn", "load_planetoid_npz"]
__all__ += ["TemporalEdges", "TemporalSplit", "chronological_split", "load_jodie_csv", "load_snap_temporal"]

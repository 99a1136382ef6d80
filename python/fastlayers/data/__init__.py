"""Dataset loaders and generators (read from a path; nothing downloads)."""

from .graphs import NodeDataset, SignedEdges, load_bitcoin, load_geom_gcn, load_planetoid_npz
from .metrics import hits_at_k, mean_average_precision
from .subgraph import PairBatch, SubgraphSplit, generate_pairs, is_subgraph, load_subgraph_split, make_batch
from .temporal import TemporalEdges, TemporalSplit, chronological_split, load_jodie_csv, load_snap_temporal

__all__ = ["NodeDataset", "SignedEdges", "load_bitcoin", "load_geom_gcn", "load_planetoid_npz"]
__all__ += ["TemporalEdges", "TemporalSplit", "chronological_split", "load_jodie_csv", "load_snap_temporal"]
__all__ += ["PairBatch", "SubgraphSplit", "generate_pairs", "hits_at_k", "is_subgraph", "load_subgraph_split",
            "make_batch", "mean_average_precision"]

"""Dataset loaders and generators (read from a path; nothing downloads). ``python -m fastlayers.data.fetch``
downloads the public datasets the examples use (see fastlayers.data.fetch)."""

from .graphs import (
            NodeDataset,
            SignedEdges,
            find_node_dataset,
            load_bitcoin,
            load_geom_gcn,
            load_heterophilous_npz,
            load_node_dataset,
            load_planetoid_npz,
)
from .metrics import hits_at_k, mean_average_precision
from .signed import SignedSplit, check_signed_edges, sample_non_edges, signed_temporal_split
from .subgraph import PairBatch, SubgraphSplit, generate_pairs, is_subgraph, load_subgraph_split, make_batch
from .temporal import TemporalEdges, TemporalSplit, chronological_split, load_jodie_csv, load_snap_temporal

__all__ = ["NodeDataset", "SignedEdges", "load_bitcoin", "load_geom_gcn", "load_planetoid_npz"]
__all__ += ["find_node_dataset", "load_heterophilous_npz", "load_node_dataset"]
__all__ += ["TemporalEdges", "TemporalSplit", "chronological_split", "load_jodie_csv", "load_snap_temporal"]
__all__ += ["SignedSplit", "check_signed_edges", "sample_non_edges", "signed_temporal_split"]
__all__ += ["PairBatch", "SubgraphSplit", "generate_pairs", "hits_at_k", "is_subgraph", "load_subgraph_split",
            "make_batch", "mean_average_precision"]

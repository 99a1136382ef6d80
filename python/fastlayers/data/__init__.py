"""Dataset loaders and generators."""

from .metrics import hits_at_k, mean_average_precision
from .subgraph import PairBatch, SubgraphSplit, generate_pairs, is_subgraph, load_subgraph_split, make_batch

__all__ = ["PairBatch", "SubgraphSplit", "generate_pairs", "hits_at_k", "is_subgraph", "load_subgraph_split",
           "make_batch", "mean_average_precision"]

"""Loaders of the graph datasets in their standard on-disk formats; they read from a path and never download.

- Geom-GCN node classification (WebKB texas/wisconsin/cornell, chameleon, ...): ``out1_graph_edges.txt``,
  ``out1_node_feature_label.txt`` and the ten ``<name>_split_0.6_0.2_<i>.npz`` split files.
- Planetoid Cora/Citeseer/PubMed in the npz layout of ../shared/data (x, y, edge_index, train/val/test idx).
- The SNAP signed Bitcoin OTC/Alpha edge list (``src,dst,rating,time``).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

import numpy as np
import torch

from ..graph import Graph


@dataclasses.dataclass
class NodeDataset:
    """A node classification dataset. Masks are bool [N] or, with several splits, [N, num_splits] (PyG's layout)."""

    x: torch.Tensor  # [N, F] float32
    y: torch.Tensor  # [N] int64
    edge_index: torch.Tensor  # [2, E] int64, as listed in the files
    graph: Graph
    train_mask: torch.Tensor
    val_mask: torch.Tensor
    test_mask: torch.Tensor

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1 if self.y.numel() else 0


def _read_rows(path: str, sep: str = "\t") -> list[list[str]]:
    with open(path) as f:
        lines = [ln.rstrip("\n") for ln in f if ln.strip()]
    return [ln.split(sep) for ln in lines[1:]]  # the first line is a header


def load_geom_gcn(root: str, name: str | None = None, split: int | None = None) -> NodeDataset:
    """Geom-GCN's files for one dataset, in ``root`` (or ``root/name``).

    Args:
        root: a folder holding out1_graph_edges.txt, out1_node_feature_label.txt and the split npz files, or
            their parent when ``name`` is given.
        name: dataset name (texas, wisconsin, ...); also the prefix of the split files.
        split: which of the splits to return as [N] masks; None returns every split as [N, num_splits].

    Returns:
        A :class:`NodeDataset`. Features are the files' bag-of-words rows (float32), edges the files' directed rows
        (self loops and all, unchanged), the graph indexed over all N nodes.

    Raises:
        FileNotFoundError: missing files. ValueError: a node id out of range or a malformed row.
    """
    folder = os.path.join(root, name) if name else root
    name = name or os.path.basename(os.path.normpath(folder))
    rows = _read_rows(os.path.join(folder, "out1_node_feature_label.txt"))
    n = len(rows)
    ids = np.array([int(r[0]) for r in rows])
    if sorted(ids.tolist()) != list(range(n)):
        raise ValueError(f"{folder}: node ids must be 0..{n - 1}")
    feats = [np.array(r[1].split(","), dtype=np.float32) for r in rows]
    if len({f.size for f in feats}) > 1:
        raise ValueError(f"{folder}: feature rows have different lengths")
    x = np.zeros((n, feats[0].size if feats else 0), dtype=np.float32)
    y = np.zeros(n, dtype=np.int64)
    for i, r, f in zip(ids, rows, feats):
        x[i], y[i] = f, int(r[2])
    edges = np.array([[int(a), int(b)] for a, b in _read_rows(os.path.join(folder, "out1_graph_edges.txt"))],
                     dtype=np.int64).reshape(-1, 2)
    edge_index = torch.from_numpy(edges.T.copy())
    graph = Graph.from_edge_index(edge_index, num_nodes=n)
    split_files = sorted(glob.glob(os.path.join(folder, f"{name}_split_*.npz")),
                         key=lambda p: int(re.findall(r"_(\d+)\.npz$", p)[0]))
    if not split_files:
        raise FileNotFoundError(f"{folder}: no {name}_split_*.npz files")
    masks = {k: [] for k in ("train_mask", "val_mask", "test_mask")}
    for p in split_files:
        with np.load(p) as z:
            for k in masks:
                masks[k].append(torch.from_numpy(z[k].astype(bool)))  # stored as bool or uint8
    if split is not None:
        if not 0 <= split < len(split_files):
            raise ValueError(f"split must be in [0, {len(split_files)}), got {split}")
        m = {k: v[split] for k, v in masks.items()}
    else:
        m = {k: torch.stack(v, 1) for k, v in masks.items()}
    return NodeDataset(torch.from_numpy(x), torch.from_numpy(y), edge_index, graph, **m)


def load_planetoid_npz(path: str) -> NodeDataset:
    """A Planetoid dataset stored as npz (x, y, edge_index, train_idx, val_idx, test_idx; the Kipf & Welling
    split), e.g. ../shared/data/nodeclf/cora/cora.npz. Masks are bool [N]."""
    with np.load(path) as z:
        x = torch.from_numpy(z["x"].astype(np.float32))
        y = torch.from_numpy(z["y"].astype(np.int64))
        edge_index = torch.from_numpy(z["edge_index"].astype(np.int64))
        idx = {k: torch.from_numpy(z[f"{k}_idx"].astype(np.int64)) for k in ("train", "val", "test")}
    n = x.size(0)
    masks = {}
    for k, i in idx.items():
        m = torch.zeros(n, dtype=torch.bool)
        m[i] = True
        masks[f"{k}_mask"] = m
    return NodeDataset(x, y, edge_index, Graph.from_edge_index(edge_index, num_nodes=n), **masks)


@dataclasses.dataclass
class SignedEdges:
    """A signed, timed edge list with node ids remapped to 0..N-1 (in increasing order of the original ids)."""

    edge_index: torch.Tensor  # [2, E] int64, rows in file order
    rating: torch.Tensor  # [E] int64
    sign: torch.Tensor  # [E] int64, +1 (rating > 0) or -1
    time: torch.Tensor  # [E] float64 (Unix seconds: float32 would lose them)
    node_ids: torch.Tensor  # [N] the original ids

    @property
    def num_nodes(self) -> int:
        return self.node_ids.numel()

    def split(self) -> tuple[Graph, Graph]:
        """(positive graph, negative graph) over all N nodes, for :class:`fastlayers.nn.SignedConv`."""
        pos = self.sign > 0
        return (Graph.from_edge_index(self.edge_index[:, pos], num_nodes=self.num_nodes),
                Graph.from_edge_index(self.edge_index[:, ~pos], num_nodes=self.num_nodes))


def load_bitcoin(path: str) -> SignedEdges:
    """SNAP's soc-sign-bitcoinotc / -alpha CSV (no header: ``src,dst,rating,time``), e.g.
    ../shared/data/signed/bitcoin_otc.csv (5,881 nodes, 35,592 edges)."""
    raw = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    if raw.shape[1] != 4:
        raise ValueError(f"{path}: expected 4 columns src,dst,rating,time, got {raw.shape[1]}")
    ends = raw[:, :2].astype(np.int64)
    node_ids, inv = np.unique(ends, return_inverse=True)
    edge_index = torch.from_numpy(inv.reshape(-1, 2).T.copy())
    rating = torch.from_numpy(raw[:, 2].astype(np.int64))
    sign = torch.where(rating > 0, 1, -1)
    return SignedEdges(edge_index, rating, sign, torch.from_numpy(raw[:, 3].copy()), torch.from_numpy(node_ids))

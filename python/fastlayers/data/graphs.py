"""Loaders of the graph datasets in their standard on-disk formats; they read from a path and never download.

- Geom-GCN node classification (WebKB texas/wisconsin/cornell, film, chameleon, ...): ``out1_graph_edges.txt``,
  ``out1_node_feature_label.txt`` and the ten ``<name>_split_0.6_0.2_<i>.npz`` split files.
- The heterophilous-graphs benchmark's npz files (Platonov et al.; chameleon.npz, squirrel_filtered.npz, ...).
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


def _feature_matrix(folder: str, header: str, rows: list[list[str]], ids: np.ndarray) -> np.ndarray:
    """The [N, F] float32 features of a Geom-GCN file, in either of its two forms.

    Dense rows (``feature`` header) list F 0/1 values. Film's rows (header ``feature(feature_amount:931)``) list
    the indices of the active features instead; its indices run to 931, one more than the header says, so the
    width is the larger of the header's count and the largest index + 1 (932, PyG's Actor)."""
    n = len(rows)
    amount = re.search(r"feature_amount:\s*(\d+)", header)
    if amount is None:
        feats = [np.array(r[1].split(","), dtype=np.float32) for r in rows]
        if len({f.size for f in feats}) > 1:
            raise ValueError(f"{folder}: feature rows have different lengths (dense form: the header has no "
                             f"feature_amount)")
        x = np.zeros((n, feats[0].size if feats else 0), dtype=np.float32)
        for i, f in zip(ids, feats):
            x[i] = f
        return x
    try:
        active = [np.array([int(t) for t in r[1].split(",") if t.strip()], dtype=np.int64) for r in rows]
    except ValueError as e:
        raise ValueError(f"{folder}: feature rows must be comma-separated feature indices ({e})") from None
    top = max((int(a.max()) for a in active if a.size), default=-1)
    if any(a.size and int(a.min()) < 0 for a in active):
        raise ValueError(f"{folder}: negative feature index")
    x = np.zeros((n, max(int(amount.group(1)), top + 1)), dtype=np.float32)
    for i, a in zip(ids, active):
        x[i, a] = 1.0
    return x


def load_geom_gcn(root: str, name: str | None = None, split: int | None = None) -> NodeDataset:
    """Geom-GCN's files for one dataset, in ``root`` (or ``root/name``).

    Args:
        root: a folder holding out1_graph_edges.txt, out1_node_feature_label.txt and the split npz files, or
            their parent when ``name`` is given.
        name: dataset name (texas, wisconsin, ...); also the prefix of the split files.
        split: which of the splits to return as [N] masks; None returns every split as [N, num_splits].

    Returns:
        A :class:`NodeDataset`. Features are the files' bag-of-words rows (float32 [N, F]): dense 0/1 rows, or
        (Film) rows of active feature indices, read into F = max(header count, largest index + 1) columns (932
        for Film). Edges are the files' directed rows (self loops and duplicates, unchanged), the graph indexed
        over all N nodes.

    Raises:
        FileNotFoundError: missing files. ValueError: a node id out of range or a malformed row.
    """
    folder = os.path.join(root, name) if name else root
    name = name or os.path.basename(os.path.normpath(folder))
    feature_file = os.path.join(folder, "out1_node_feature_label.txt")
    rows = _read_rows(feature_file)
    with open(feature_file) as f:
        header = f.readline()
    n = len(rows)
    if any(len(r) != 3 for r in rows):
        raise ValueError(f"{folder}: out1_node_feature_label.txt rows must be node_id<TAB>features<TAB>label")
    ids = np.array([int(r[0]) for r in rows], dtype=np.int64)
    if sorted(ids.tolist()) != list(range(n)):
        raise ValueError(f"{folder}: node ids must be 0..{n - 1}")
    x = _feature_matrix(folder, header, rows, ids)
    y = np.zeros(n, dtype=np.int64)
    for i, r in zip(ids, rows):
        y[i] = int(r[2])
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
            for k, m in masks.items():
                m.append(torch.from_numpy(z[k].astype(bool)))  # stored as bool or uint8
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


def load_heterophilous_npz(path: str, split: int | None = None) -> NodeDataset:
    """A dataset of the heterophilous-graphs benchmark (Platonov et al., ICLR 2023) stored as npz, e.g.
    ../shared/data/nodeclf/heterophilous/chameleon.npz: ``node_features`` [N, F], ``node_labels`` [N], ``edges``
    [E, 2] and ``train_masks`` / ``val_masks`` / ``test_masks`` [S, N]. Read with ``allow_pickle=False``.

    Args:
        path: the npz file.
        split: which split to return as [N] masks; None returns all as [N, S] (PyG's layout).

    Returns:
        A :class:`NodeDataset`: x float32 [N, F], y int64 [N], edge_index int64 [2, E] as stored (the benchmark
        lists each undirected edge once: symmetrise before message passing).

    Raises:
        FileNotFoundError: no such file. ValueError: a missing array, inconsistent shapes, a node id out of range
        or a split index out of range.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: {path} does not exist")
    with np.load(path, allow_pickle=False) as z:
        missing = {"node_features", "node_labels", "edges", "train_masks", "val_masks", "test_masks"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)}")
        x = torch.from_numpy(np.asarray(z["node_features"], dtype=np.float32))
        y = torch.from_numpy(np.asarray(z["node_labels"], dtype=np.int64))
        edges = np.asarray(z["edges"], dtype=np.int64)
        masks = {k[:-1]: torch.from_numpy(np.asarray(z[k]).astype(bool)) for k in
                 ("train_masks", "val_masks", "test_masks")}
    n = x.size(0)
    if x.dim() != 2 or y.shape != (n,):
        raise ValueError(f"{path}: node_features must be [N, F] and node_labels [N], got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise ValueError(f"{path}: edges must be [E, 2], got {edges.shape}")
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise ValueError(f"{path}: edge node ids must lie in [0, {n})")
    for k, m in masks.items():
        if m.dim() == 1:
            m = m.unsqueeze(0)
        if m.size(1) != n:
            raise ValueError(f"{path}: {k}s must be [S, N] with N = {n}, got {tuple(m.shape)}")
        masks[k] = m.t().contiguous()
    num_splits = masks["train_mask"].size(1)
    if split is not None:
        if not 0 <= split < num_splits:
            raise ValueError(f"split must be in [0, {num_splits}), got {split}")
        masks = {k: m[:, split] for k, m in masks.items()}
    edge_index = torch.from_numpy(edges.T.copy())
    return NodeDataset(x, y, edge_index, Graph.from_edge_index(edge_index, num_nodes=n), **masks)


def find_node_dataset(root: str, name: str) -> str:
    """Where dataset ``name`` lives under ``root``: a Geom-GCN folder or a heterophilous-graphs npz file.

    Looks at ``root/name``, ``root/name.npz`` and the same one and two folder levels down (so both a data root
    holding ``nodeclf/texas`` and ``nodeclf/heterophilous/chameleon.npz`` and the ``nodeclf`` folder itself work).
    ``name`` may be a folder or file name (``texas``, ``chameleon``, ``squirrel_filtered.npz``). Raises
    FileNotFoundError naming the paths tried."""
    if not isinstance(name, str) or not name or os.sep in name.strip(os.sep) or name in (".", ".."):
        raise ValueError(f"name must be a dataset folder or file name, got {name!r}")
    names = [name] if name.endswith(".npz") else [name, name + ".npz"]
    levels = [root] + sorted(glob.glob(os.path.join(root, "*", ""))) + sorted(glob.glob(os.path.join(root, "*", "*", "")))
    tried = []
    for folder in levels:
        for nm in names:
            p = os.path.join(folder, nm)
            tried.append(p)
            if os.path.isfile(p) and p.endswith(".npz"):
                return p
            if os.path.isfile(os.path.join(p, "out1_node_feature_label.txt")):
                return p
    raise FileNotFoundError(f"dataset {name!r}: no Geom-GCN folder (out1_node_feature_label.txt) or .npz file "
                            f"under {root} (tried {', '.join(tried[:4])}{', ...' if len(tried) > 4 else ''})")


def load_node_dataset(root: str, name: str, split: int | None = None) -> NodeDataset:
    """Load dataset ``name`` found under ``root`` by :func:`find_node_dataset`, in whichever of the two formats
    it is stored (:func:`load_geom_gcn` or :func:`load_heterophilous_npz`)."""
    path = find_node_dataset(root, name)
    if path.endswith(".npz"):
        return load_heterophilous_npz(path, split)
    return load_geom_gcn(path, None, split)


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

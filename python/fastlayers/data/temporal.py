"""Temporal interaction streams: SNAP edge lists and JODIE/TGN ``ml_`` CSV, chronological and inductive splits."""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np
import torch


@dataclasses.dataclass
class TemporalEdges:
    """A time-sorted edge stream with nodes renumbered 0 .. num_nodes - 1.

    src, dst, eid: [E] int64 (eid = position in the stream); t: [E] float64 (the file's time unit);
    edge_feat: [E, F] float32 or None; label: [E] int64 or None; node_ids: [num_nodes] original ids.
    """

    src: torch.Tensor
    dst: torch.Tensor
    t: torch.Tensor
    eid: torch.Tensor
    num_nodes: int
    node_ids: torch.Tensor
    edge_feat: torch.Tensor | None = None
    label: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.src.numel()


def _build(src, dst, t, edge_feat=None, label=None, path="") -> TemporalEdges:
    src, dst, t = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64), np.asarray(t, dtype=np.float64)
    if not (len(src) == len(dst) == len(t)):
        raise ValueError(f"{path}: columns have different lengths")
    if len(t) and (not np.all(np.isfinite(t)) or t.min() < 0):
        raise ValueError(f"{path}: times must be finite and >= 0")
    order = np.argsort(t, kind="stable")  # ties keep file order
    ids, inv = np.unique(np.concatenate([src, dst]), return_inverse=True)
    inv = inv.reshape(2, -1)
    feat = None
    if edge_feat is not None:
        feat = torch.from_numpy(np.ascontiguousarray(edge_feat[order], dtype=np.float32))
    return TemporalEdges(
        src=torch.from_numpy(inv[0][order].copy()), dst=torch.from_numpy(inv[1][order].copy()),
        t=torch.from_numpy(t[order].copy()), eid=torch.arange(len(t), dtype=torch.int64), num_nodes=len(ids),
        node_ids=torch.from_numpy(ids), edge_feat=feat,
        label=None if label is None else torch.from_numpy(np.asarray(label, dtype=np.int64)[order].copy()))


def load_snap_temporal(path: str) -> TemporalEdges:
    """SNAP temporal edge list: one ``src dst unixtime`` per line, whitespace separated; ``#``/``%`` lines and a
    ``src dst time`` header are skipped. Raises ValueError on a malformed line (with its number)."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0][0] in "#%":
                continue
            if len(parts) < 3:
                raise ValueError(f"{path}:{n}: expected 'src dst time', got {line.strip()!r}")
            try:
                rows.append((int(parts[0]), int(parts[1]), float(parts[2])))
            except ValueError:
                if not rows and n == 1:  # a header line
                    continue
                raise ValueError(f"{path}:{n}: expected integer ids and a numeric time, got {line.strip()!r}")
    a = np.array(rows, dtype=np.float64).reshape(-1, 3)
    return _build(a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), a[:, 2], path=path)


def load_jodie_csv(path: str, edge_feat_path: str | None = None) -> TemporalEdges:
    """JODIE/TGN processed stream ``ml_<name>.csv`` (columns u, i, ts, label, idx; an unnamed index column is
    ignored) and optionally its edge features ``ml_<name>.npy`` ([E, F], or [E + 1, F] with TGN's padding row 0,
    rows picked by idx). Defaults to the .npy beside the CSV when it exists."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"u", "i", "ts"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns u, i, ts (label, idx optional), got {reader.fieldnames}")
        cols = {k: [] for k in ("u", "i", "ts", "label", "idx")}
        for row in reader:
            for k, col in cols.items():
                if k in row and row[k] not in (None, ""):
                    col.append(float(row[k]))
    E = len(cols["u"])
    label = np.array(cols["label"], dtype=np.int64) if len(cols["label"]) == E else None
    idx = np.array(cols["idx"], dtype=np.int64) if len(cols["idx"]) == E else np.arange(1, E + 1)
    if edge_feat_path is None:
        guess = os.path.splitext(path)[0] + ".npy"
        edge_feat_path = guess if os.path.exists(guess) else None
    feat = None
    if edge_feat_path is not None:
        arr = np.load(edge_feat_path, allow_pickle=False)
        if arr.ndim != 2 or arr.shape[0] not in (E, E + 1):
            raise ValueError(f"{edge_feat_path}: expected [E, F] or [E + 1, F] edge features for E = {E}, got "
                             f"{arr.shape}")
        feat = arr[idx] if arr.shape[0] == E + 1 else arr
    return _build(np.array(cols["u"], dtype=np.int64), np.array(cols["i"], dtype=np.int64), np.array(cols["ts"]),
                  feat, label, path)


@dataclasses.dataclass
class TemporalSplit:
    """Edge indices of a chronological split and its inductive variant.

    train: training edges (edges touching a masked node removed); val, test: every edge of the period
    (transductive evaluation); val_new, test_new: the val/test edges with at least one node never seen in
    training (inductive evaluation); masked: the nodes hidden from training.
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    val_new: torch.Tensor
    test_new: torch.Tensor
    masked: torch.Tensor


def chronological_split(data: TemporalEdges, val: float = 0.15, test: float = 0.15, mask_frac: float = 0.1,
                        seed: int = 0) -> TemporalSplit:
    """Split by time quantiles (default 70/15/15) and mask ``mask_frac`` of the nodes that appear after the
    training period: their training edges are dropped, so val/test edges touching them are inductive."""
    if not (0 <= val and 0 <= test and val + test < 1):
        raise ValueError(f"val and test must be fractions with val + test < 1, got {val}, {test}")
    t = data.t.numpy()
    t_val, t_test = np.quantile(t, [1 - val - test, 1 - test]) if len(t) else (0.0, 0.0)
    period = np.where(t <= t_val, 0, np.where(t <= t_test, 1, 2))
    src, dst = data.src.numpy(), data.dst.numpy()
    later = np.unique(np.concatenate([src[period > 0], dst[period > 0]]))
    rng = np.random.default_rng(seed)
    masked = np.sort(rng.choice(later, size=int(mask_frac * len(later)), replace=False)) if len(later) else later
    is_masked = np.zeros(data.num_nodes, dtype=bool)
    is_masked[masked] = True
    touches = is_masked[src] | is_masked[dst]
    train = (period == 0) & ~touches
    seen = np.zeros(data.num_nodes, dtype=bool)
    seen[src[train]] = True
    seen[dst[train]] = True
    new_edge = ~seen[src] | ~seen[dst]

    def idx(m):
        return torch.from_numpy(np.flatnonzero(m))

    return TemporalSplit(train=idx(train), val=idx(period == 1), test=idx(period == 2),
                         val_new=idx((period == 1) & new_edge), test_new=idx((period == 2) & new_edge),
                         masked=torch.from_numpy(masked))

"""Signed temporal link prediction data: a checked chronological split of a signed edge stream (SEMBA's
protocol) and non-edge sampling.

Rules for bad input (checked by :func:`check_signed_edges`, which the split calls):
- a zero rating (its sign is undefined) or one with |rating| > ``max_rating``: ValueError;
- a self loop (a node rating itself): ValueError;
- non-finite times: ValueError. Times need not be sorted: the split orders the events by time (stable, so equal
  times keep file order), and every index it returns is in that order.
Node ids are already 0..N-1 in :class:`fastlayers.data.SignedEdges` (``load_bitcoin`` remaps them).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .graphs import SignedEdges


@dataclasses.dataclass
class SignedSplit:
    """Edge indices (into the SignedEdges rows, int64, in time order) of a chronological split.

    train / val / test: every edge of each period. ``*_transductive``: the val/test edges whose two endpoints both
    appear in training; ``*_inductive``: those whose two endpoints both do not (SEMBA's two test sets; edges with
    one seen and one unseen endpoint are in neither). ``train_nodes``: bool [N], the nodes seen in training.
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    val_transductive: torch.Tensor
    val_inductive: torch.Tensor
    test_transductive: torch.Tensor
    test_inductive: torch.Tensor
    train_nodes: torch.Tensor


def check_signed_edges(data: SignedEdges, max_rating: float = 10.0) -> None:
    """Raise ValueError for zero or out-of-range ratings, self loops or non-finite times (see the module rules);
    IndexError for node ids outside [0, num_nodes)."""
    ei, r, t = data.edge_index, data.rating, data.time
    if ei.dim() != 2 or ei.size(0) != 2:
        raise ValueError(f"edge_index must be [2, E], got shape {tuple(ei.shape)}")
    E = ei.size(1)
    if r.shape != (E,) or t.shape != (E,):
        raise ValueError(f"rating and time must be [E] = ({E},), got {tuple(r.shape)} and {tuple(t.shape)}")
    if E == 0:
        return
    if int(ei.min()) < 0 or int(ei.max()) >= data.num_nodes:
        raise IndexError(f"edge_index has ids outside [0, num_nodes = {data.num_nodes})")
    rd = r.double()
    bad = (rd == 0) | (rd.abs() > max_rating) | ~torch.isfinite(rd)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"rating must be nonzero with |rating| <= {max_rating:g}; edge {i} has {r[i].item()}")
    loops = ei[0] == ei[1]
    if bool(loops.any()):
        i = int(loops.nonzero()[0])
        raise ValueError(f"self loop at edge {i} (node {int(ei[0, i])}): a node cannot rate itself")
    if not bool(torch.isfinite(t.double()).all()):
        raise ValueError("time has non-finite values")


def signed_temporal_split(data: SignedEdges, val: float = 0.15, test: float = 0.15,
                          max_rating: float = 10.0) -> SignedSplit:
    """Chronological split of a signed stream by event count (default 70/15/15) after :func:`check_signed_edges`.

    Returns a :class:`SignedSplit`; its indices are in time order, so streaming ``train``, then ``val``, then
    ``test`` replays the events in time (the memory is carried through validation and test)."""
    if not (0 <= val and 0 <= test and val + test < 1):
        raise ValueError(f"val and test must be fractions with val + test < 1, got {val}, {test}")
    check_signed_edges(data, max_rating)
    E = data.edge_index.size(1)
    order = torch.from_numpy(np.argsort(data.time.numpy(), kind="stable")).long()
    n_train = round((1 - val - test) * E)
    n_val = round(val * E)
    tr, va, te = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
    seen = torch.zeros(data.num_nodes, dtype=torch.bool)
    seen[data.edge_index[:, tr].reshape(-1)] = True

    def parts(idx):
        s, d = data.edge_index[0, idx], data.edge_index[1, idx]
        return idx[seen[s] & seen[d]], idx[~seen[s] & ~seen[d]]

    vt, vi = parts(va)
    tt, ti = parts(te)
    return SignedSplit(tr, va, te, vt, vi, tt, ti, seen)


def sample_non_edges(src: torch.Tensor, num_nodes: int, edge_index: torch.Tensor,
                     generator: torch.Generator | None = None, tries: int = 50) -> torch.Tensor:
    """One random partner per source, int64 [B], such that (src, partner) is not an edge of ``edge_index`` (in
    either direction) and not a self loop. Draws up to ``tries`` rounds; a source whose rounds all hit edges (a
    node linked to almost everyone) keeps its last draw."""
    if num_nodes < 2:
        raise ValueError(f"num_nodes must be >= 2 to sample non-edges, got {num_nodes}")
    n = num_nodes
    keys = torch.cat([edge_index[0] * n + edge_index[1], edge_index[1] * n + edge_index[0]]).unique()
    out = torch.randint(0, n, (src.numel(),), generator=generator)
    for _ in range(tries):
        k = src * n + out
        pos = torch.searchsorted(keys, k).clamp_max(max(keys.numel() - 1, 0))
        bad = (out == src) | ((keys[pos] == k) if keys.numel() else torch.zeros_like(k, dtype=torch.bool))
        if not bool(bad.any()):
            break
        out[bad] = torch.randint(0, n, (int(bad.sum()),), generator=generator)
    return out

"""One IsoNet++ node layer in eager PyTorch, written as the published code (GMN's propagation layer) writes it:
interaction MLP on the concatenated [state, partner], edge inputs [z_u, z_v] gathered and concatenated per edge,
the message MLP on every edge, an unsorted segment sum at the targets, a GRU cell. Ground truth of
tests/test_isonet_layer.py, the layer of the eager IsoNet++ model, and the recompute of the op's backward."""

import torch
import torch.nn.functional as F


def isonet_layer(h, partner, edge_index, mask, inter_w1, inter_b1, inter_w2, inter_b2, msg_w1, msg_b1, msg_w2,
                 msg_b2, w_ih, w_hh, b_ih, b_hh, P=None, other=None, transpose=False) -> torch.Tensor:
    """h [N, D] node states; partner [N, D] or None (zeros: round 1); edge_index int64 [2, E] (row 0 source u,
    row 1 target v; messages u -> v) or a fastlayers.Graph; mask bool [N] (False rows come out 0).
    Weights as nn.Linear / nn.GRUCell hold them: inter_w1 [H, 2D], inter_b1 [H], inter_w2 [Z, H], inter_b2 [Z],
    msg_w1 [M1, 2Z], msg_b1 [M1], msg_w2 [M, M1], msg_b2 [M], w_ih [3D, M], w_hh [3D, D], b_ih, b_hh [3D].
    P [B, n, n_o] (with other [B * n_o, D], N = B * n) gives the partner instead: P other per pair, the alignment
    transport of IsoNet++ (with transpose, P is [B, n_o, n] and the partner is P^T other).
    Returns the new states [N, D], h's dtype."""
    edge_index = getattr(edge_index, "edge_index", edge_index)  # a fastlayers.Graph keeps the caller's edges
    src, dst = edge_index[0], edge_index[1]
    if P is not None:
        Pt = P.transpose(1, 2) if transpose else P
        partner = torch.bmm(Pt, other.view(Pt.shape[0], Pt.shape[2], -1)).reshape(h.shape)
    elif partner is None:
        partner = torch.zeros_like(h)
    z = F.linear(F.relu(F.linear(torch.cat([h, partner], 1), inter_w1, inter_b1)), inter_w2, inter_b2)
    m = F.linear(F.relu(F.linear(torch.cat([z[src], z[dst]], 1), msg_w1, msg_b1)), msg_w2, msg_b2)
    agg = torch.zeros(h.shape[0], m.shape[1], dtype=m.dtype, device=m.device).index_add_(0, dst, m)
    # A select, not the published product with the mask: padding rows come out 0 as documented, also where a NaN
    # reached them (NaN * 0 is NaN); real rows and every finite value are the same either way.
    out = torch.gru_cell(agg, h, w_ih, w_hh, b_ih, b_hh)
    return torch.where(mask[:, None], out, torch.zeros_like(out))

"""Alignment refinement in eager PyTorch: the published IsoNet/IsoNet++ Sinkhorn loop, hinge score and partner
transport. Ground truth of tests/test_align.py and the eager peer of benchmarks/bench_align.py."""

import torch


def gumbel_noise(shape, dtype, device, generator=None, eps: float = 1e-20) -> torch.Tensor:
    """Gumbel(0, 1) samples as the published code draws them: -log(eps - log(U + eps))."""
    u = torch.rand(shape, dtype=dtype, device=device, generator=generator)
    return -torch.log(eps - torch.log(u + eps))


def _valid(logits, row_mask, col_mask):
    b, n, m = logits.shape
    rm = torch.ones(b, n, dtype=torch.bool, device=logits.device) if row_mask is None else row_mask
    cm = torch.ones(b, m, dtype=torch.bool, device=logits.device) if col_mask is None else col_mask
    return rm[:, :, None] & cm[:, None, :]


def _safe_lse(x: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    # A line with no valid entry would give -inf - (-inf) = NaN (and NaN gradients): it gets lse 0 instead.
    has = valid.any(dim=dim, keepdim=True)
    return torch.logsumexp(torch.where(has, x, torch.zeros_like(x)), dim=dim, keepdim=True)


def sinkhorn(logits: torch.Tensor, row_mask=None, col_mask=None, tau: float = 0.1, num_iters: int = 20,
             mode: str = "masked", noise: float = 0.0, generator=None) -> torch.Tensor:
    """Log-domain Sinkhorn, rows then columns per iteration, in eager PyTorch (one ATen op per step).

    logits [B, N, M] float; row_mask [B, N] / col_mask [B, M] bool (True = real) or None (all real).
    mode="reference": padded logits are set to 0 and keep mass, as in the published loop; returns every entry.
    mode="masked": padded rows/columns are excluded and come back 0; a pair with no real row or column is all 0.
    Returns P [B, N, M] of logits' dtype.
    """
    valid = _valid(logits, row_mask, col_mask)
    if mode == "reference":
        x = logits
        if noise:
            x = x + noise * gumbel_noise(x.shape, x.dtype, x.device, generator)
        # Padding is zeroed after the noise: only real entries are perturbed (the documented contract, and what
        # the kernels compute from noisy logits).
        x = x.masked_fill(~valid, 0.0)
        x = x / tau
        for _ in range(num_iters):
            x = x - torch.logsumexp(x, dim=2, keepdim=True)
            x = x - torch.logsumexp(x, dim=1, keepdim=True)
        return x.exp()
    if noise:
        logits = logits + noise * gumbel_noise(logits.shape, logits.dtype, logits.device, generator)
    neg_inf = torch.full_like(logits, float("-inf"))
    x = torch.where(valid, logits / tau, neg_inf)
    for _ in range(num_iters):
        x = torch.where(valid, x - _safe_lse(x, valid, 2), neg_inf)
        x = torch.where(valid, x - _safe_lse(x, valid, 1), neg_inf)
    return torch.where(valid, x.exp(), torch.zeros_like(x))


def align_score(hq: torch.Tensor, hc: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """s[b] = -sum_{u,d} ReLU(hq - P hc)[b, u, d]. hq [B, N, D], hc [B, M, D], P [B, N, M] -> [B]."""
    return -torch.relu(hq - torch.bmm(P, hc)).sum(dim=(1, 2))


def partner(P: torch.Tensor, hq: torch.Tensor, hc: torch.Tensor):
    """(P hc [B, N, D], P^T hq [B, M, D]): each node's soft partner feature on the other side."""
    return torch.bmm(P, hc), torch.bmm(P.transpose(1, 2), hq)

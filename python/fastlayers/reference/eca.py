import torch
import torch.nn.functional as F


def eca(x: torch.Tensor, weight: torch.Tensor, circular: bool = False) -> torch.Tensor:
    """Efficient channel attention in eager PyTorch (the spec's three steps, no fusion).

    x: [N, C, *spatial] floating; weight: [k], k odd. Returns x * sigmoid(conv1d_over_channels(mean(x))),
    shape and memory format of x. The pooled mean and the gate are computed in float32 (or float64 for float64 x).
    """
    if x.numel() == 0:
        return torch.empty_like(x)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n, c = x.shape[:2]
    pooled = x.to(acc).mean(dim=tuple(range(2, x.dim()))).view(n, 1, c)
    k = weight.numel()
    pad = (k - 1) // 2
    w = weight.to(acc).view(1, 1, k)
    if circular:
        # F.pad's circular mode rejects pad > C; index arithmetic wraps any number of times.
        idx = torch.arange(-pad, c + pad, device=x.device) % max(c, 1)
        a = F.conv1d(pooled[:, :, idx], w)
    else:
        a = F.conv1d(pooled, w, padding=pad)
    gate = torch.sigmoid(a).view(n, c, *([1] * (x.dim() - 2)))
    return x * gate.to(x.dtype)

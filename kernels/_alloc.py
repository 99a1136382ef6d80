"""Output allocation for the Triton launchers. Tests set POISON so every output starts as NaN (integers: -1)."""

import torch

POISON = False


def _poisoned(t: torch.Tensor) -> torch.Tensor:
    if POISON and t.numel():
        t.fill_(float("nan") if t.dtype.is_floating_point else -1)
    return t


def empty_like(x: torch.Tensor) -> torch.Tensor:
    return _poisoned(torch.empty_like(x))


def empty(shape, dtype, device) -> torch.Tensor:
    return _poisoned(torch.empty(shape, dtype=dtype, device=device))

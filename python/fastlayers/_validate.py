"""Argument checks shared by the public ops: each raises TypeError/ValueError naming the argument."""

import torch

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CPU_FLOATS = (torch.float32, torch.float64)


def tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def floating(name: str, t: torch.Tensor) -> None:
    """A floating dtype fastlayers knows. Which of them runs on which device is the backend module's answer
    (fastlayers.ops._backend): an op's choose() raises for a dtype none of its backends takes there."""
    if t.dtype not in FLOATS:
        names = ", ".join(str(d).replace("torch.", "") for d in FLOATS)
        raise TypeError(f"{name} must have a floating dtype ({names}), got {t.dtype}")


def same_device(**tensors: torch.Tensor) -> None:
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}; move them to one device")


def boolean(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return v


def is_channels_last_dense(x: torch.Tensor) -> bool:
    """Channels (dim 1) innermost and dense: NHWC, NDHWC, and [N, L, C] transposed to [N, C, L].

    Mirrors csrc/common/checks.h so fake kernels predict the strides the real kernels produce.
    """
    return x.dim() >= 3 and not x.is_contiguous() and x.movedim(1, -1).is_contiguous()


def dense_like(x: torch.Tensor) -> torch.Tensor:
    """An empty tensor in the layout the kernels write for input x (x's own layout when dense, else contiguous)."""
    if is_channels_last_dense(x) or x.is_contiguous():
        return torch.empty_like(x)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)

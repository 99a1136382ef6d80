"""ECA: fastlayers.nn.ECA vs timm's EcaModule (same weights), forward and forward+backward."""

import math

import torch
from fastlayers.nn import ECA
from fastlayers.reference import eca as eager_eca
from harness import Case

try:
    from timm.layers import EcaModule
except ImportError:  # GPU machines without timm: the same eager computation, under fastlayers.reference
    EcaModule = None


class _EagerECA(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = ECA(channels=channels).conv

    def forward(self, x):
        return eager_eca(x, self.conv.weight.view(-1))

SHAPES = [(32, 256, 56, 56), (64, 2048, 7, 7), (8, 64, 112, 112)]
QUICK_SHAPES = [(4, 64, 28, 28), (8, 512, 7, 7)]


def specs(device, quick):
    dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]
    if quick and device != "cpu":  # the device check: real sizes, fewer cases
        return [(shape, layout, mode, torch.float32) for shape in SHAPES[:2] for layout in ("contiguous", "channels_last")
                for mode in ("forward", "forward+backward")] + \
            [(SHAPES[0], "contiguous", mode, torch.bfloat16) for mode in ("forward", "forward+backward")]
    return [(shape, layout, mode, dtype)
            for shape in (QUICK_SHAPES if quick else SHAPES)
            for dtype in dtypes
            for layout in ("contiguous", "channels_last")
            for mode in ("forward", "forward+backward")]


def build(spec, device):
    shape, layout, mode, dtype = spec
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    peer = (EcaModule or _EagerECA)(channels=shape[1]).to(device=device, dtype=dtype)
    ours = ECA(channels=shape[1]).to(device=device, dtype=dtype)
    ours.load_state_dict(peer.state_dict())
    nbytes = math.prod(shape) * torch.finfo(dtype).bits // 8
    name = f"{mode}, {layout}" + ("" if dtype == torch.float32 else f", {str(dtype)[6:]}")
    forward = mode == "forward"

    def make_inputs(i):
        x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
        if forward:
            return (x,)
        return x.requires_grad_(), torch.randn_like(x)

    if forward:
        def run(m, x):
            with torch.no_grad():
                return m(x)
        min_bytes = 2 * nbytes  # read x, write y
    else:
        def run(m, x, g):
            return torch.autograd.grad(m(x), (x, m.conv.weight), g)
        min_bytes = 5 * nbytes  # forward 2|x|; backward reads g and x, writes dx
    return Case(name=name, shape="x".join(map(str, shape)), ours=lambda *a: run(ours, *a),
                peer=lambda *a: run(peer, *a), peer_name="timm EcaModule" if EcaModule else "eager PyTorch",
                min_bytes=min_bytes, make_inputs=make_inputs, input_bytes=nbytes * (1 if forward else 2))

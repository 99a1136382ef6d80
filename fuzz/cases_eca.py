"""Fuzz cases of ECA: the public op over shapes, memory formats, kernel sizes and padding modes against
fastlayers.reference.eca in float64 (forward and backward, NaN inputs), hostile weights, and raw ops with
inconsistent pooled/gate tensors."""

from __future__ import annotations

import importlib

import fastlayers.ops as F
import torch

R = importlib.import_module("fastlayers.reference.eca")  # the package exports a function named eca too

from fuzz.common import Case, draw_int, grads, kinds_strategy, pick, torch_gen

OPS = torch.ops.fastlayers


def eca_case(draw):
    g = torch_gen(draw)
    nd = draw_int(draw, 1, 3)
    shape = [draw_int(draw, 0, 3), draw_int(draw, 0, 9)] + [draw_int(draw, 0, 4) for _ in range(nd)]
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if pick(draw, (True, False)) and nd >= 2:
        x = x.contiguous(memory_format=torch.channels_last if nd == 2 else torch.channels_last_3d)
    if x.numel() and draw_int(draw, 0, 9) == 0:
        x[tuple(draw_int(draw, 0, s - 1) for s in x.shape)] = float("nan")
    k = pick(draw, (1, 3, 5, 7))
    w = torch.randn(k, generator=g, dtype=torch.float64)
    circular = pick(draw, (True, False))
    if torch.isnan(x).any() or pick(draw, (True, False)):
        return Case("eca", "valid", lambda: F.eca(x, w, circular), lambda: R.eca(x, w, circular))
    return Case("eca", "valid", lambda: grads(lambda x, w: F.eca(x, w, circular), [x, w], g),
                lambda: grads(lambda x, w: R.eca(x, w, circular), [x, w], g))


def eca_bad_case(draw):
    x = torch.randn(2, 6, 3, 3)
    w = torch.randn(3)
    what = pick(draw, ("weight int64", "weight 2-D", "weight even", "weight empty", "x 2-D", "x int",
                       "x half, weight int64", "x half, weight 2-D", "circular not bool"))
    arg, circular = "weight", False
    if what == "weight int64":
        w = torch.tensor([1, 2, 3])
    elif what == "weight 2-D":
        w = w.view(1, 3)
    elif what == "weight even":
        w = torch.randn(4)
    elif what == "weight empty":
        w = torch.randn(0)
    elif what == "x 2-D":
        x, arg = x[0, :, 0], "x"
    elif what == "x int":
        x, arg = torch.ones(2, 6, 3, 3, dtype=torch.int64), "x"
    elif what == "x half, weight int64":
        x, w = x.half(), torch.tensor([1, 2, 3])
    elif what == "x half, weight 2-D":
        x, w = x.half(), w.view(1, 3)
    else:
        circular, arg = "yes", "circular"
    return Case("eca", what, lambda: F.eca(x, w, circular), arg=arg)


def raw_eca_case(draw):
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64)
    y, pooled, gate = OPS.eca_fwd(x, w, False)
    what = pick(draw, ("pooled short", "gate short", "grad shape", "weight 2-D", "weight int", "x 2-D"))
    g, arg = torch.randn_like(y), None
    if what == "pooled short":
        pooled, arg = pooled[:1], "pooled"
    elif what == "gate short":
        gate, arg = gate[:, :2], "gate"
    elif what == "grad shape":
        g, arg = g[:1], "grad"
    elif what == "weight 2-D":
        return Case("raw.eca_fwd", what, lambda: OPS.eca_fwd(x, w.view(1, 3), False), arg="weight")
    elif what == "weight int":
        return Case("raw.eca_fwd", what, lambda: OPS.eca_fwd(x, torch.tensor([1, 2, 3]), False), arg="weight")
    else:
        return Case("raw.eca_fwd", what, lambda: OPS.eca_fwd(x[0, :, 0], w, False), arg="x")
    return Case("raw.eca_bwd", what, lambda: OPS.eca_bwd(g, x, w, pooled, gate, False), arg=arg)


KINDS = [eca_case, eca_bad_case, raw_eca_case]


def cases():
    return kinds_strategy(KINDS)

"""Fuzz cases of the hypernetwork layers: hyper_linear and interval_hyper_linear over shapes (empty ones
included) and optional arguments against fastlayers.reference.hyper in float64 (forward and backward), and bad
shapes, dtypes and raw-op arguments."""

from __future__ import annotations

import fastlayers.ops as F
import torch
from fastlayers.reference import hyper as R

from fuzz.common import Case, draw_int, grads, kinds_strategy, pick, torch_gen

OPS = torch.ops.fastlayers


def _shapes(draw):
    B, I, O, h = draw_int(draw, 0, 4), draw_int(draw, 0, 5), draw_int(draw, 1, 5), draw_int(draw, 1, 4)
    T = pick(draw, (None, 1, 3))
    return B, I, O, h, T


def hyper_case(draw):
    g = torch_gen(draw)
    B, I, O, h, T = _shapes(draw)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    x = r(B, I) if T is None else r(B, T, I)
    phi, weight = r(B, h), r(O * I + O, h)
    opt = [r(O * I + O) if pick(draw, (True, False)) else None, r(O, I) if pick(draw, (True, False)) else None,
           r(O) if pick(draw, (True, False)) else None]
    if pick(draw, (True, False)):
        return Case("hyper_linear", "valid", lambda: F.hyper_linear(x, phi, weight, *opt),
                    lambda: R.hyper_linear(x, phi, weight, *opt))
    present = [t for t in opt if t is not None]
    where = [i for i, t in enumerate(opt) if t is not None]

    def fn(impl):
        def f(x, phi, weight, *p):
            o = list(opt)
            for i, t in zip(where, p):
                o[i] = t
            return impl(x, phi, weight, *o)
        return f
    inputs = [x, phi, weight] + present
    return Case("hyper_linear", "valid", lambda: grads(fn(F.hyper_linear), inputs, g),
                lambda: grads(fn(R.hyper_linear), inputs, g))


def interval_case(draw):
    g = torch_gen(draw)
    B, I, O, h, T = _shapes(draw)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    x_c = r(B, I) if T is None else r(B, T, I)
    x_r = x_c.abs() * 0.1
    phi_c, phi_r, weight = r(B, h), r(B, h).abs() * 0.1, r(O * I + O, h)
    bias = r(O * I + O) if pick(draw, (True, False)) else None
    if pick(draw, (True, False)):
        return Case("interval_hyper_linear", "valid",
                    lambda: F.interval_hyper_linear(x_c, x_r, phi_c, phi_r, weight, bias),
                    lambda: R.interval_hyper_linear(x_c, x_r, phi_c, phi_r, weight, bias))

    def fn(impl):
        return lambda *a: torch.cat([t.flatten() for t in impl(*a, bias)])
    inputs = [x_c, x_r, phi_c, phi_r, weight]
    return Case("interval_hyper_linear", "valid", lambda: grads(fn(F.interval_hyper_linear), inputs, g),
                lambda: grads(fn(R.interval_hyper_linear), inputs, g))


def hyper_bad_case(draw):
    B, I, O, h = 2, 3, 4, 5
    x, phi, weight = torch.randn(B, I), torch.randn(B, h), torch.randn(O * I + O, h)
    bias, bw, bb = None, None, None
    what = pick(draw, ("weight rows", "phi batch", "phi width", "x 4-D", "dtype mix", "bias length",
                       "base_weight shape", "base_bias shape", "x int", "raw weight rows", "raw w0 shape",
                       "interval x_r shape", "interval phi_r shape"))
    arg = None
    if what == "weight rows":
        weight, arg = torch.randn(O * I + O + 1, h), "weight"
    elif what == "phi batch":
        phi, arg = torch.randn(B + 1, h), "phi"
    elif what == "phi width":
        phi, arg = torch.randn(B, h + 1), "phi"
    elif what == "x 4-D":
        x, arg = torch.randn(B, 1, 1, I), "x"
    elif what == "dtype mix":
        phi = phi.double()
    elif what == "bias length":
        bias, arg = torch.randn(O * I), "bias"
    elif what == "base_weight shape":
        bw, arg = torch.randn(I, O), "base_weight"
    elif what == "base_bias shape":
        bb, arg = torch.randn(O + 1), "base_bias"
    elif what == "x int":
        x, arg = torch.ones(B, I, dtype=torch.int64), "x"
    elif what == "raw weight rows":
        return Case("raw.hyper_linear_fwd", what,
                    lambda: OPS.hyper_linear_fwd(x.view(B, 1, I), phi, torch.randn(O * I + O + 1, h), None, None),
                    arg="weight")
    elif what == "raw w0 shape":
        return Case("raw.hyper_linear_fwd", what,
                    lambda: OPS.hyper_linear_fwd(x.view(B, 1, I), phi, weight, torch.randn(I, O), None), arg="w0")
    elif what == "interval x_r shape":
        return Case("interval_hyper_linear", what,
                    lambda: F.interval_hyper_linear(x, x[:1], phi, phi.abs(), weight), arg="x_r")
    else:
        return Case("interval_hyper_linear", what,
                    lambda: F.interval_hyper_linear(x, x.abs(), phi, phi[:, :1].abs(), weight), arg="phi_r")
    return Case("hyper_linear", what, lambda: F.hyper_linear(x, phi, weight, bias, bw, bb), arg=arg)


KINDS = [hyper_case, interval_case, hyper_bad_case]


def cases():
    return kinds_strategy(KINDS)

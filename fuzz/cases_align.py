"""Fuzz cases of the alignment family: Sinkhorn (masked and reference modes, masks, noise), align_score, partner
and the fused IsoNet++ node layer against fastlayers.reference.align in float64 (forward and backward), NaN
inputs, and raw ops with shapes that disagree."""

from __future__ import annotations

import fastlayers.ops as F
import torch
from fastlayers import Graph
from fastlayers.reference import align as R
from fastlayers.reference import isonet_layer as ref_isonet_layer

from fuzz.common import Case, draw_int, grads, kinds_strategy, pick, torch_gen

OPS = torch.ops.fastlayers


def _nan(draw, x):
    if x.numel() and draw_int(draw, 0, 9) == 0:
        x = x.clone()
        x.view(-1)[draw_int(draw, 0, x.numel() - 1)] = float("nan")
    return x


def _masks(draw, g, B, N, M):
    if pick(draw, (True, False)):
        return None, None
    rm = torch.rand(B, N, generator=g) < 0.8
    cm = torch.rand(B, M, generator=g) < 0.8
    return rm, cm


def sinkhorn_case(draw):
    g = torch_gen(draw)
    B, N, M = draw_int(draw, 0, 3), draw_int(draw, 0, 6), draw_int(draw, 0, 6)
    logits = _nan(draw, torch.randn(B, N, M, generator=g, dtype=torch.float64))
    rm, cm = _masks(draw, g, B, N, M)
    tau = pick(draw, (0.05, 0.3, 1.0))
    iters = draw_int(draw, 1, 6)
    mode = pick(draw, ("masked", "reference"))
    noise = pick(draw, (0.0, 0.0, 0.5))
    seed = draw_int(draw, 0, 1000)

    def call(impl):
        def f(lg):
            gen = torch.Generator().manual_seed(seed)
            return impl(lg, rm, cm, tau=tau, num_iters=iters, mode=mode, noise=noise, generator=gen)
        return f

    if torch.isnan(logits).any() or not pick(draw, (True, False)):
        return Case("sinkhorn", "valid", lambda: call(F.sinkhorn)(logits), lambda: call(R.sinkhorn)(logits),
                    rtol=1e-7, atol=1e-9)
    return Case("sinkhorn", "valid", lambda: grads(call(F.sinkhorn), [logits], g),
                lambda: grads(call(R.sinkhorn), [logits], g), rtol=1e-6, atol=1e-8)


def sinkhorn_bad_case(draw):
    logits = torch.randn(2, 3, 4, dtype=torch.float64)
    what = pick(draw, ("tau zero", "tau nan", "noise inf", "noise nan", "noise negative", "iters zero",
                       "row_mask shape", "col_mask dtype", "logits 2-D", "mode"))
    kw, arg = {}, None
    if what == "tau zero":
        kw, arg = dict(tau=0.0), "tau"
    elif what == "tau nan":
        kw, arg = dict(tau=float("nan")), "tau"
    elif what.startswith("noise"):
        kw, arg = dict(noise={"noise inf": float("inf"), "noise nan": float("nan"), "noise negative": -1.0}[what]), \
            "noise"
    elif what == "iters zero":
        kw, arg = dict(num_iters=0), "num_iters"
    elif what == "row_mask shape":
        kw, arg = dict(row_mask=torch.ones(2, 4, dtype=torch.bool)), "row_mask"
    elif what == "col_mask dtype":
        kw, arg = dict(col_mask=torch.ones(2, 4)), "col_mask"
    elif what == "logits 2-D":
        logits, arg = logits[0], "logits"
    else:
        kw, arg = dict(mode="fast"), "mode"
    return Case("sinkhorn", what, lambda: F.sinkhorn(logits, **kw), arg=arg)


def transport_case(draw):
    g = torch_gen(draw)
    B, N, M, D = draw_int(draw, 0, 3), draw_int(draw, 0, 6), draw_int(draw, 0, 6), draw_int(draw, 0, 5)
    hq = _nan(draw, torch.randn(B, N, D, generator=g, dtype=torch.float64))
    hc = torch.randn(B, M, D, generator=g, dtype=torch.float64)
    P = torch.rand(B, N, M, generator=g, dtype=torch.float64)
    which = pick(draw, ("align_score", "partner"))
    fn, ref = (F.align_score, R.align_score) if which == "align_score" else \
        ((lambda P, hq, hc: torch.cat([t.flatten() for t in F.partner(P, hq, hc)])),
         (lambda P, hq, hc: torch.cat([t.flatten() for t in R.partner(P, hq, hc)])))
    args = [hq, hc, P] if which == "align_score" else [P, hq, hc]
    if torch.isnan(hq).any() or pick(draw, (True, False)):
        return Case(which, "valid", lambda: fn(*args), lambda: ref(*args))
    return Case(which, "valid", lambda: grads(fn, args, g), lambda: grads(ref, args, g))


def transport_bad_case(draw):
    B, N, M, D = 2, 3, 4, 5
    hq, hc, P = torch.randn(B, N, D), torch.randn(B, M, D), torch.rand(B, N, M)
    what = pick(draw, ("P shape", "hc batch", "dtype mix", "hq 2-D"))
    arg = {"P shape": "P", "hc batch": "hc", "dtype mix": None, "hq 2-D": "hq"}[what]
    if what == "P shape":
        P = torch.rand(B, M, N)
    elif what == "hc batch":
        hc = torch.randn(B + 1, M, D)
    elif what == "dtype mix":
        hc = hc.double()
    else:
        hq = hq[0]
    raw = pick(draw, (True, False))
    if raw:
        return Case("raw.align_score_fwd", what, lambda: OPS.align_score_fwd(hq, hc, P), arg=arg)
    return Case("align_score", what, lambda: F.align_score(hq, hc, P), arg=arg)


def raw_sinkhorn_case(draw):
    g = torch_gen(draw)
    B, N, M = draw_int(draw, 0, 2), draw_int(draw, 0, 4), draw_int(draw, 0, 4)
    logits = torch.randn(B, N, M, generator=g, dtype=torch.float64)
    rm, cm = torch.ones(B, N, dtype=torch.bool), torch.ones(B, M, dtype=torch.bool)
    what = pick(draw, ("valid", "row_mask short", "col_mask batch", "tau negative", "iters negative"))
    tau, iters, arg = 0.3, 3, None
    if what == "valid":
        ref = R.sinkhorn(logits, rm, cm, tau=tau, num_iters=iters, mode="masked")
        return Case("raw.sinkhorn_fwd", what, lambda: OPS.sinkhorn_fwd(logits, rm, cm, tau, iters, False)[0],
                    lambda: ref)
    if what == "row_mask short":
        rm, arg = torch.ones(B, N + 1, dtype=torch.bool), "row_mask"
    elif what == "col_mask batch":
        cm, arg = torch.ones(B + 1, M, dtype=torch.bool), "col_mask"
    elif what == "tau negative":
        tau, arg = -1.0, "tau"
    else:
        iters, arg = -1, "num_iters"
    return Case("raw.sinkhorn_fwd", what, lambda: OPS.sinkhorn_fwd(logits, rm, cm, tau, iters, False), arg=arg)


def _layer_weights(g, D, Hd, Z, M1, M):
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * 0.5
    return [r(Hd, 2 * D), r(Hd), r(Z, Hd), r(Z), r(M1, 2 * Z), r(M1), r(M, M1), r(M), r(3 * D, M), r(3 * D, D),
            r(3 * D), r(3 * D)]


def isonet_layer_case(draw):
    g = torch_gen(draw)
    N, D = draw_int(draw, 0, 7), draw_int(draw, 1, 4)
    E = draw_int(draw, 0, 2 * N) if N else 0
    ei = torch.randint(0, max(N, 1), (2, E), generator=g)
    graph = Graph.from_edge_index(ei, num_nodes=N)
    h = _nan(draw, torch.randn(N, D, generator=g, dtype=torch.float64))
    partner = torch.randn(N, D, generator=g, dtype=torch.float64) if pick(draw, (True, False)) else None
    mask = torch.rand(N, generator=g) < 0.8
    w = _layer_weights(g, D, draw_int(draw, 1, 5), draw_int(draw, 1, 4), draw_int(draw, 1, 5), draw_int(draw, 1, 4))

    def f(impl, gr):
        return lambda h, *ws: impl(h, partner, gr, mask, *ws)

    inputs = [h] + w
    if torch.isnan(h).any() or pick(draw, (True, False)):
        return Case("isonet_layer", "valid", lambda: f(F.isonet_layer, graph)(*inputs),
                    lambda: f(ref_isonet_layer, ei)(*inputs))
    return Case("isonet_layer", "valid", lambda: grads(f(F.isonet_layer, graph), inputs, g),
                lambda: grads(f(ref_isonet_layer, ei), inputs, g))


KINDS = [sinkhorn_case, sinkhorn_bad_case, transport_case, transport_bad_case, raw_sinkhorn_case, isonet_layer_case]


def cases():
    return kinds_strategy(KINDS)

"""Alignment refinement: fastlayers.ops.sinkhorn vs the eager loop of the published IsoNet/IsoNet++ code and POT's
batch log-domain solver (same 20 iterations, tau 0.1, rows then columns), forward and forward+backward; the
fused hinge score; and one IsoNet++ node and edge forward on fastlayers ops vs the same model on eager ops."""

import torch
from fastlayers.ops import align_score, sinkhorn
from fastlayers.reference import align as eager
from harness import Case

try:
    import ot.batch as ot_batch
except ImportError:  # GPU check machines may lack POT: its rows are left out
    ot_batch = None

TAU, ITERS = 0.1, 20
SHAPES = [(b, n) for b in (128, 1024) for n in (20, 24, 64)]
QUICK_SHAPES = [(128, 20)]


def specs(device, quick):
    out = []
    gpu_short = quick and device != "cpu"  # the device check: real sizes, fewer cases
    for b, n in [(1024, 20), (1024, 64)] if gpu_short else QUICK_SHAPES if quick else SHAPES:
        for mode in ("forward", "forward+backward"):
            out.append(("sinkhorn", b, n, mode, "eager"))
            if ot_batch is not None:
                out.append(("sinkhorn", b, n, mode, "pot"))
    out.append(("align_score", 128, 20, "forward+backward", "eager"))
    if _models_available():
        out.append(("isonetpp_node", 128, 20, "forward", "eager"))
        out.append(("isonetpp_node", 128, 20, "forward+backward", "eager"))  # one training step's model work
        if not gpu_short:
            out.append(("isonetpp_edge", 128, 20, "forward", "eager"))
    return out


def _models_available():
    try:
        from fastlayers.models import IsoNetPP  # noqa: F401
    except ImportError:
        return False
    return True


def _pot_plan(x, ones, grad):
    # Marginals of ones: P is doubly stochastic like the published loop's; tol 0 runs all ITERS iterations.
    return ot_batch.solve_batch(-x, reg=TAU, a=ones, b=ones, max_iter=ITERS, tol=0.0, method="log_sinkhorn",
                                grad=grad).plan


def build(spec, device):
    kind, b, n, mode, peer = spec
    if kind == "align_score":
        return _score_case(b, n, device)
    if kind in ("isonetpp_node", "isonetpp_edge"):
        return _isonet_case(b, device, variant=kind.split("_")[1], mode=mode)
    nbytes = b * n * n * 4
    ones = torch.ones(b, n, device=device)
    forward = mode == "forward"

    def make_inputs(i):
        x = torch.randn(b, n, n, device=device)
        return (x,) if forward else (x.requires_grad_(), torch.randn_like(x))

    def ours_fwd(x):
        return sinkhorn(x, tau=TAU, num_iters=ITERS, mode="reference")

    def eager_fwd(x):
        return eager.sinkhorn(x, tau=TAU, num_iters=ITERS, mode="reference")

    if forward:
        def run(f, x):
            with torch.no_grad():
                return f(x)
        peer_fn = (lambda x: _pot_plan(x, ones, "detach")) if peer == "pot" else eager_fwd
        min_bytes = 2 * nbytes
    else:
        def run(f, x, g):
            return torch.autograd.grad(f(x), x, g)
        peer_fn = (lambda x: _pot_plan(x, ones, "autodiff")) if peer == "pot" else eager_fwd
        min_bytes = 5 * nbytes  # forward 2|x|; backward reads g and x, writes dx
    return Case(name=f"sinkhorn {mode}", shape=f"B={b} N=M={n}", ours=lambda *a: run(ours_fwd, *a),
                peer=lambda *a: run(peer_fn, *a), peer_name="POT ot.batch log_sinkhorn" if peer == "pot" else "eager loop",
                min_bytes=min_bytes, make_inputs=make_inputs, input_bytes=nbytes * (1 if forward else 2))


def _score_case(b, n, device, d=10):
    def make_inputs(i):
        return (torch.randn(b, n, d, device=device, requires_grad=True),
                torch.randn(b, n, d, device=device, requires_grad=True),
                torch.rand(b, n, n, device=device, requires_grad=True), torch.randn(b, device=device))

    def run(f, hq, hc, P, g):
        return torch.autograd.grad(f(hq, hc, P), (hq, hc, P), g)
    nbytes = 4 * (2 * b * n * d + b * n * n)
    return Case(name="align_score forward+backward", shape=f"B={b} N=M={n} D={d}",
                ours=lambda *a: run(align_score, *a), peer=lambda *a: run(eager.align_score, *a), peer_name="eager",
                min_bytes=3 * nbytes, make_inputs=make_inputs, input_bytes=nbytes)


def _isonet_case(b, device, max_nodes=20, variant="node", mode="forward"):
    # Random pairs of the benchmark's sizes (queries 6-15 nodes, corpus 17-20), so the row runs without the data.
    import numpy as np
    from fastlayers.data import make_batch
    from fastlayers.models import IsoNetPP

    rng = np.random.default_rng(0)

    def graph(lo, hi):
        n = int(rng.integers(lo, hi + 1))
        e = [(i, int(rng.integers(0, i))) for i in range(1, n)]  # a random tree, then a few extra edges
        e += [(int(u), int(v)) for u, v in rng.integers(0, n, (4, 2)) if u > v and (u, v) not in e]
        return n, np.asarray(e[:24], dtype=np.int64)

    def make_inputs(i):
        queries = [graph(6, 15) for _ in range(b)]
        corpus = [graph(17, max_nodes) for _ in range(b)]
        return (make_batch(queries, corpus, [(j, j) for j in range(b)]).to(device),)

    ours = IsoNetPP(variant=variant).to(device).eval()
    peer = IsoNetPP(variant=variant, ops="eager").to(device).eval()
    peer.load_state_dict(ours.state_dict())

    def run(m, batch):
        if mode == "forward":
            with torch.no_grad():
                return m(batch)
        m.zero_grad(set_to_none=True)
        m(batch).sum().backward()

    first = make_inputs(0)[0]
    nbytes = sum(t.numel() * t.element_size() for t in vars(first).values() if isinstance(t, torch.Tensor))
    return Case(name=f"IsoNet++ {variant} {mode} (T=3, K=5)", shape=f"{b} pairs, 20 nodes",
                ours=lambda *a: run(ours, *a), peer=lambda *a: run(peer, *a), peer_name="same model, eager ops",
                min_bytes=0, make_inputs=lambda i: (first,) if i == 0 else make_inputs(i), input_bytes=nbytes)

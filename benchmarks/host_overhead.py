"""Host-side cost per call of the Python-launched ops, layer by layer, on a tiny input the GPU finishes at once.

A layer on a GPU is host-bound when its Python and launch work takes longer than its kernels; this separates that
work into the public op (validation + dispatcher + autograd wrapper + launcher), the registered op called
directly, and the Triton launcher alone, against the eager peer. Microseconds per call, median of 5 rounds of
200 calls, the device synchronised once per round (so the launch queue never fills).

Usage: python benchmarks/host_overhead.py [--device cuda]
"""

import argparse
import statistics
import time

import torch


def per_call_us(fn, device, calls=200, rounds=5):
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(out)


def rows(device):
    import fastlayers
    from fastlayers.kernels import align as talign
    from fastlayers.kernels import eca as teca
    from fastlayers.kernels import hyper as thyper
    from fastlayers.nn import ECA

    x = torch.randn(2, 16, 4, 4, device=device)
    w = torch.randn(3, device=device)
    m = ECA(kernel_size=3).to(device)
    out = [("eca forward: nn.ECA", lambda: m(x)),
           ("eca forward: fastlayers.ops.eca", lambda: fastlayers.ops.eca(x, w)),
           ("eca forward: torch.ops.fastlayers.eca_fwd", lambda: torch.ops.fastlayers.eca_fwd(x, w, False)),
           ("eca forward: Triton launcher alone", lambda: teca.eca_fwd(x, w, False))]
    try:
        from timm.layers import EcaModule

        tm = EcaModule(kernel_size=3).to(device)
        out.append(("eca forward: timm EcaModule", lambda: tm(x)))
    except ImportError:
        pass
    xs = torch.randn(4, 5, 6, device=device)
    out += [("sinkhorn forward: fastlayers.ops.sinkhorn", lambda: fastlayers.ops.sinkhorn(xs)),
            ("sinkhorn forward: Triton launcher alone",
             lambda: talign.sinkhorn_fwd(xs, torch.ones(4, 5, dtype=torch.bool, device=device),
                                         torch.ones(4, 6, dtype=torch.bool, device=device), 0.1, 20, False))]
    xh, ph = torch.randn(4, 8, device=device), torch.randn(4, 8, device=device)
    wh = torch.randn(8 * 8 + 8, 8, device=device)
    out += [("hyper_linear forward: fastlayers.ops.hyper_linear", lambda: fastlayers.ops.hyper_linear(xh, ph, wh)),
            ("hyper_linear forward: Triton launcher alone",
             lambda: thyper.hyper_linear_fwd(xh.unsqueeze(1), ph, wh, None, None))]
    out.append(("reference: one torch.add", lambda: torch.add(x, x)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    print(f"| call ({args.device}, no grad) | us per call |\n|---|---|")
    with torch.no_grad():
        for name, fn in rows(args.device):
            try:
                print(f"| {name} | {per_call_us(fn, args.device):.1f} |", flush=True)
            except Exception as e:  # noqa: BLE001 - a launcher that cannot run here (no GPU): say so, go on
                print(f"| {name} | n/a ({type(e).__name__}) |", flush=True)


if __name__ == "__main__":
    main()

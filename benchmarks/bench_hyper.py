"""hyper_linear vs materialise-then-bmm (hypnettorch-style) and torch.einsum, forward and forward+backward.

Each case also measures the peak extra memory of both sides: the peak bytes allocated during the call above what
was allocated before it, less the bytes every implementation must hold: the output y and, for forward+backward,
the gradients.
On the CPU that is read from the process's resident-set high-water mark (reset before each call, with glibc told
to return every block of 128 KiB and more to the system on free and the fastlayers output pool off, so the mark
follows live memory); on CUDA from torch.cuda.max_memory_allocated. ``extra_of_BOI`` divides fastlayers' figure
by B*O*I*4 bytes, the float32 per-sample weights a materialising implementation holds.
"""

import ctypes
import gc
import math

import fastlayers
import torch
from fastlayers.ops import hyper_linear
from fastlayers.reference import hyper_linear as materialise_bmm
from harness import Case

H = 128
FULL = [(b, n, t) for b in (256, 1024) for n in (128, 256) for t in (1, 16)]
QUICK = [(64, 32, 1), (64, 32, 4)]
PEERS = ("materialise+bmm", "einsum")


def _fixed_mmap_threshold():
    # M_MMAP_THRESHOLD = -3: a fixed threshold also stops glibc from raising it after large frees.
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 << 10)
    except (OSError, AttributeError):
        pass


_fixed_mmap_threshold()


def einsum_peer(x, phi, weight, bias):
    """The same layer with torch.einsum on the [O, I, h] tensor, contraction order chosen for the case: for one
    token the outer product x (outer) phi first ([B, I, h], then one GEMM of K = I*h), for many the weights
    first (contracting the tokens' outer products would cost T times the FLOPs)."""
    n_in = x.shape[-1]
    n_out = weight.shape[0] // (n_in + 1)
    t3 = weight[: n_out * n_in].view(n_out, n_in, -1)
    out_bias = phi @ weight[n_out * n_in:].t() + bias[n_out * n_in:]
    static = x @ bias[: n_out * n_in].view(n_out, n_in).t()
    if x.dim() == 2:
        return torch.einsum("bi,bh,oih->bo", x, phi, t3) + static + out_bias
    return torch.einsum("oih,bh,bti->bto", t3, phi, x) + static + out_bias.unsqueeze(1)


def _status_bytes(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def _result_bytes(out):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return sum(t.numel() * t.element_size() for t in outs if isinstance(t, torch.Tensor))


def peak_extra_bytes(fn, device):
    """Peak bytes allocated during fn() beyond those held before it and beyond fn's results (after one warm-up
    call, so one-time allocations of the libraries are not counted)."""
    fn()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before - _result_bytes(out)
    limit = fastlayers._C.cpu_cache_stats()["limit_bytes"]
    fastlayers._C.cpu_cache_set_limit(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        before = _status_bytes("VmRSS:")
        out = fn()
        peak = _status_bytes("VmHWM:")
        return max(0, peak - before - _result_bytes(out))
    finally:
        fastlayers._C.cpu_cache_set_limit(limit)


def specs(device, quick):
    if quick and device != "cpu":  # the device check: real sizes, fewer cases
        return [(b, n, t, "forward+backward", peer) for (b, n, t) in ((256, 128, 1), (1024, 256, 16))
                for peer in PEERS]
    return [(b, n, t, mode, peer) for (b, n, t) in (QUICK if quick else FULL)
            for mode in ("forward", "forward+backward") for peer in PEERS]


def build(spec, device):
    b, n, t, mode, peer = spec
    h = 32 if b < 256 else H
    dtype = torch.float32
    xshape = (b, n) if t == 1 else (b, t, n)
    # The hypernetwork's weights are the layer's parameters (one set); x and phi are each batch's (fresh).
    weight = torch.randn(n * n + n, h, device=device, dtype=dtype) / h ** 0.5
    bias = torch.randn(n * n + n, device=device, dtype=dtype)
    peer_fn = materialise_bmm if peer == "materialise+bmm" else einsum_peer
    elt = 4
    forward = mode == "forward"
    if not forward:
        weight.requires_grad_()
        bias.requires_grad_()

    def make_inputs(i):
        x = torch.randn(xshape, device=device, dtype=dtype)
        phi = torch.randn(b, h, device=device, dtype=dtype)
        if forward:
            return x, phi
        return x.requires_grad_(), phi.requires_grad_(), torch.randn(xshape, device=device, dtype=dtype)

    def call(fn, x, phi):
        return fn(x, phi, weight, bias=bias) if fn is hyper_linear else fn(x, phi, weight, bias)

    if forward:
        def run(fn, x, phi):
            with torch.no_grad():
                return call(fn, x, phi)
        min_bytes = elt * (b * math.prod(xshape[1:]) + b * h + weight.numel() + b * t * n)
    else:
        def run(fn, x, phi, g):
            y = call(fn, x, phi)
            return (*torch.autograd.grad(y, (x, phi, weight, bias), g), y.detach())  # y counted: it is alive
        min_bytes = 2 * elt * (b * math.prod(xshape[1:]) + b * h + weight.numel() + b * t * n)
    first = make_inputs(0)
    ours_extra = peak_extra_bytes(lambda: run(hyper_linear, *first), device)
    peer_extra = peak_extra_bytes(lambda: run(peer_fn, *first), device)
    boi = b * n * n * elt
    extra = {"ours_extra_MiB": ours_extra / 2**20, "peer_extra_MiB": peer_extra / 2**20,
             "extra_of_BOI": ours_extra / boi}
    in_bytes = elt * (math.prod(xshape) * (1 if forward else 2) + b * h)
    return Case(name=mode, shape=f"B={b} O=I={n} h={h} T={t}", ours=lambda *a: run(hyper_linear, *a),
                peer=lambda *a: run(peer_fn, *a), peer_name=peer, min_bytes=min_bytes, extra=extra,
                make_inputs=lambda i: first if i == 0 else make_inputs(i), input_bytes=in_bytes)

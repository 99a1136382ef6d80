"""The backend module (fastlayers.ops._backend): one answer to "which kernel runs", use_reference(), the refusal
error, the info table, and the Triton ops that torch.compile can trace into."""

import os
import subprocess
import sys
import textwrap
import threading

import fastlayers
import pytest
import torch
from fastlayers import Graph, reference
from fastlayers.ops import _backend as B

from .conftest import triton_available

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton not installed")


def _registered_ops():
    return sorted(s.name.split("::", 1)[1] for s in torch._C._jit_get_all_schemas()
                  if s.name.startswith("fastlayers::"))


def test_every_registered_op_is_declared_and_in_the_table():
    declared = {name for spec in B.declared_ops().values() for name in spec.registered}
    assert set(_registered_ops()) <= declared
    assert declared <= set(_registered_ops())
    rows = fastlayers.ops.backend_table()
    assert {(r["op"], r["device"]) for r in rows} == {(op, d) for op in B.declared_ops() for d in ("cpu", "cuda")}
    for r in rows:
        names = {b.name for b in B.declared_ops()[r["op"]].backends}
        # each backend either runs or says why not; with none left (a CPU-only build asked for CUDA) the row says so
        runs = {r["runs"]} if r["runs"] in names else set()
        assert runs or r["runs"] == "nothing (raises)", r
        assert set(r["refused"]) | runs == names, r


def test_info_prints_the_table():
    out = subprocess.run([sys.executable, "-m", "fastlayers", "info"], capture_output=True, text=True, check=True,
                         env={**os.environ, "TRITON_INTERPRET": "1"}).stdout
    assert "compiled CUDA kernels" in out  # what info printed before stays
    table = out.split("backends (float32 input", 1)[1]
    for op in B.declared_ops():
        assert f"\n{op} " in table
    assert "C++ CPU" in table and "reference: C++ CPU is preferred" in table


def test_selection_on_cpu():
    x = torch.randn(2, 3)
    assert B.choose("spmm", x) == B.CPP
    assert B.choose("eca", torch.randn(1, 2, 3).half()) == B.REFERENCE  # CPU autocast: no half CPU kernel
    winner, refused = fastlayers.ops.explain("eca", "cpu", torch.float16)
    assert winner == B.REFERENCE
    assert refused[B.CPP].startswith("dtype float16 needs CUDA")


def test_size_limit_reason():
    winner, refused = B._explain("sinkhorn", "cuda", torch.float32, 300, False)
    assert refused[B.TRITON] == "side 300 > 64 (Triton tile limit: a pair on chip)" or \
        refused[B.TRITON] == "triton is not importable"
    assert winner in (B.REFERENCE, B.CPP) or winner is None
    assert B._explain("sinkhorn", "cuda", torch.float32, 300, False)[0] != B.TRITON


def test_no_backend_error_lists_every_reason():
    x = torch.randn(4, 3, dtype=torch.float16)
    g = Graph.from_edge_index(torch.tensor([[0, 1], [1, 2]]), 4)
    with pytest.raises(B.NoBackendError) as err:
        fastlayers.ops.spmm(g, x)
    e = err.value
    assert isinstance(e, TypeError)
    msg = str(e)
    assert "fastlayers.spmm" in msg and "x must have a floating dtype" in msg and "float16" in msg
    for name in (B.CPP, B.CUDA_CPP, B.REFERENCE):
        assert f"{name}: " in msg and name in e.reasons


def test_cuda_without_cuda_kernels_refused(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setattr(B, "_cuda_built", lambda: False)
    B._decide.cache_clear()
    try:
        with FakeTensorMode():
            x = torch.empty(3, 2, device="cuda")
        with pytest.raises(RuntimeError, match="device cuda not built into this wheel") as err:
            B.choose("spmm", x)
        assert isinstance(err.value, B.NoBackendError)
        assert "refused for CUDA tensors" in err.value.reasons[B.REFERENCE]
        with pytest.raises(RuntimeError, match="device cuda not built"):
            B.choose("ncache_lookup", x.long())
    finally:
        monkeypatch.undo()
        B._decide.cache_clear()


# ---- use_reference ---------------------------------------------------------------------------------------------


def _forbid(monkeypatch, *names):
    def boom(*a, **k):
        raise AssertionError("a kernel ran under use_reference()")

    for name in names:
        monkeypatch.setattr(torch.ops.fastlayers, name, boom)


def test_use_reference_runs_the_references_without_kernels(monkeypatch):
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64)
    g = Graph.from_edge_index(torch.randint(0, 6, (2, 20)), 6)
    h = torch.randn(6, 4, dtype=torch.float64)
    logits = torch.randn(2, 5, 6, dtype=torch.float64)
    xh, phi, wh = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64), \
        torch.randn(4 * 5 + 5, 2, dtype=torch.float64)
    _forbid(monkeypatch, "eca_fwd", "spmm_fwd", "sinkhorn_fwd", "hyper_linear_fwd", "csr_index", "scatter_fwd",
            "eca_triton_fwd")
    with fastlayers.ops.use_reference():
        assert fastlayers.ops.explain("spmm", "cpu", torch.float64)[1][B.CPP] == "off: forced by use_reference()"
        torch.testing.assert_close(fastlayers.ops.eca(x, w), reference.eca(x, w, False))
        torch.testing.assert_close(fastlayers.ops.spmm(g, h), reference.mp.spmm(g, h, None, "sum"))
        torch.testing.assert_close(fastlayers.ops.sinkhorn(logits), reference.sinkhorn(logits))
        torch.testing.assert_close(fastlayers.ops.hyper_linear(xh, phi, wh), reference.hyper_linear(xh, phi, wh))
        idx = torch.tensor([0, 1, 1, 0, 2, 2])
        torch.testing.assert_close(fastlayers.ops.scatter(h, idx), reference.mp.scatter(h, idx))
        g2 = Graph.from_edge_index(torch.tensor([[0, 2, 1], [1, 1, 0]]), 3)  # the reference CSR build
        assert g2.rowptr.tolist() == [0, 1, 3, 3]


def test_use_reference_nests_and_restores_on_exception():
    assert not B.reference_forced()
    with fastlayers.ops.use_reference():
        with fastlayers.ops.use_reference():
            assert B.reference_forced()
        assert B.reference_forced()
        with pytest.raises(KeyError), fastlayers.ops.use_reference():
            raise KeyError("x")
        assert B.reference_forced()
    assert not B.reference_forced()
    assert B.choose("spmm", torch.randn(2, 2)) == B.CPP


def test_use_reference_is_thread_local():
    seen = {}
    entered, release = threading.Event(), threading.Event()

    def other():
        entered.wait()
        seen["other"] = B.choose("spmm", torch.randn(2, 2))
        release.set()

    t = threading.Thread(target=other)
    t.start()
    with fastlayers.ops.use_reference():
        entered.set()
        release.wait(30)
        seen["mine"] = B.choose("spmm", torch.randn(2, 2))
    t.join()
    assert seen == {"other": B.CPP, "mine": B.REFERENCE}


def test_reference_refusal_under_use_reference():
    # Forcing the reference does not widen what it accepts: float16 on the CPU is still refused, naming why.
    with fastlayers.ops.use_reference(), pytest.raises(TypeError, match="forced by use_reference"):
        fastlayers.ops.sinkhorn(torch.randn(1, 3, 3).half())


# ---- Triton ops ------------------------------------------------------------------------------------------------


@needs_triton
def test_triton_ops_match_reference_through_the_interpreter():
    # Where no GPU is present the triton ops run their kernels through TRITON_INTERPRET=1 on CPU tensors, the
    # same bodies (wrap_triton launches) that CUDA tensors take; gradients through the ops' autograd.
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = torch.ops.fastlayers.eca_triton_fwd(x, w, True)[0]
    ref = reference.eca(x, w, True)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(ref, (x, w), g))
    lg = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    m = torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool)
    P = torch.ops.fastlayers.sinkhorn_triton_fwd(lg, *m, 0.5, 5, False)[0]
    Pr = reference.sinkhorn(lg, tau=0.5, num_iters=5)
    torch.testing.assert_close(P, Pr)
    torch.testing.assert_close(torch.autograd.grad(P.sum(), lg), torch.autograd.grad(Pr.sum(), lg))


_TRACE = textwrap.dedent("""
    import os
    os.environ.pop("TRITON_INTERPRET", None)
    import torch, fastlayers
    from fastlayers.kernels import eca as K
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._subclasses.functional_tensor import dispatch_functionalize
    K._num_programs = lambda index: 132  # the device query needs a GPU; tracing needs only a number
    with FakeTensorMode():
        x, w = torch.empty(2, 16, 4, 4, device="cuda"), torch.empty(3, device="cuda")
    public = make_fx(lambda x, w: fastlayers.ops.eca(x, w), tracing_mode="fake")(x, w)
    inner = make_fx(dispatch_functionalize(lambda x, w: torch.ops.fastlayers.eca_triton_fwd(x, w, False)[0]),
                    tracing_mode="fake")(x, w)
    print("PUBLIC", "fastlayers.eca_triton_fwd" in public.code)
    print("HOP", "triton_kernel_wrapper" in inner.code)
""")


@needs_triton
def test_tracing_sees_the_triton_kernel():
    """CUDA inputs (fake: no GPU needed) route to the triton op, and functional tracing (what AOTAutograd does for
    Inductor) decomposes it into the triton_kernel_wrapper higher-order op. A subprocess: the interpreter that
    the other tests use has no JIT kernels to wrap."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _TRACE], capture_output=True, text=True, env=env, timeout=600)
    assert "PUBLIC True" in out.stdout and "HOP True" in out.stdout, out.stdout + out.stderr[-3000:]


def test_use_reference_reaches_the_ncache_fast_path(monkeypatch):
    """NCache.update / pair_features call the C++ op directly for kernel-ready inputs; under use_reference() they
    must ask the backend module like every op and run the reference (same results: exact mode)."""
    import fastlayers.ncache as nc

    g = torch.Generator().manual_seed(4)
    src, dst = torch.randint(0, 30, (2, 50), generator=g)
    t, eid, vals = torch.arange(50, dtype=torch.float64), torch.arange(50), torch.randn(50, 3, generator=g)
    want = fastlayers.NCache(30, (4, 3), 3, seed=2)
    want.update(src, dst, t, eid, vals)
    want_pf = want.pair_features(src[:10], dst[:10])

    def boom(*a, **k):
        raise AssertionError("a kernel ran under use_reference()")

    monkeypatch.setattr(nc, "_UPDATE_OP", boom)
    monkeypatch.setattr(nc, "_PAIR_OP", boom)
    _forbid(monkeypatch, "ncache_update", "ncache_pair_features")
    got = fastlayers.NCache(30, (4, 3), 3, seed=2)
    with fastlayers.ops.use_reference():
        got.update(src, dst, t, eid, vals)
        pf = got.pair_features(src[:10], dst[:10])
    for name in ("keys", "eids", "times", "values"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    for a, b in zip(pf, want_pf):
        assert torch.equal(a, b)

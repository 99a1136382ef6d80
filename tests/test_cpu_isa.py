"""The CPU kernels' instruction-set paths (csrc/common/cpu_isa.h): FASTLAYERS_CPU_ISA forces one, a bad or
unsupported value fails the import with the details, every family gives the same numbers on every path this
CPU can run, and no shared (non-ISA) function of the binary carries AVX/AVX-512 instructions.

Each path runs in its own process: the choice is made once per process, at import."""

import os
import re
import shutil
import subprocess
import sys

import fastlayers
import pytest
import torch

ISAS = ["avx512", "avx2", "scalar"]
HERE = os.path.dirname(os.path.abspath(__file__))


def _supported():
    return fastlayers._C.cpu_isa_info()["supported"]


def _env(**kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTLAYERS_CPU_ISA")}
    env.update(kw)
    return env


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], env=_env(**env), capture_output=True, text=True, timeout=300)


def test_default_is_the_best_supported():
    info = fastlayers._C.cpu_isa_info()
    assert info["supported"][-1] == "scalar" and info["supported"] == [i for i in ISAS if i in info["supported"]]
    if os.environ.get("FASTLAYERS_CPU_ISA") is None:
        assert fastlayers.cpu_isa() == info["supported"][0]
    assert fastlayers._C.build_info()["cpu_isa"] == fastlayers.cpu_isa()


@pytest.mark.parametrize("isa", ISAS)
def test_forced_isa_is_used(isa):
    if isa not in _supported():
        pytest.skip(f"this CPU lacks {isa}")
    r = _python("import fastlayers; print(fastlayers.cpu_isa(), fastlayers._C.build_info()['cpu_isa'])",
                FASTLAYERS_CPU_ISA=isa)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [isa, isa]
    r = _python("import sys; from fastlayers.__main__ import main; sys.exit(main([]))", FASTLAYERS_CPU_ISA=isa)
    assert r.returncode == 0, r.stderr
    assert re.search(rf"CPU ISA: {isa} ", r.stdout), r.stdout


def test_unknown_value_names_the_valid_ones():
    r = _python("import fastlayers", FASTLAYERS_CPU_ISA="sse9")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: FASTLAYERS_CPU_ISA='sse9'"), r.stderr
    assert "avx512, avx2, scalar" in last and "scalar" in last.split("supports")[-1]


@pytest.mark.parametrize("hide", ["avx512", "avx2"])
def test_unsupported_value_says_what_the_cpu_supports(hide):
    # FASTLAYERS_CPU_ISA_TEST_HIDE makes the library believe the CPU lacks `hide` (and anything wider).
    r = _python("import fastlayers", FASTLAYERS_CPU_ISA=hide, FASTLAYERS_CPU_ISA_TEST_HIDE=hide)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ImportError: FASTLAYERS_CPU_ISA='{hide}'"), r.stderr
    assert "does not support" in last
    supports = last.split("it supports:")[1]
    assert hide not in supports.split("Unset")[0] and "scalar" in supports
    # Hidden but not asked for: the import works and falls back.
    r = _python("import fastlayers; print(fastlayers.cpu_isa())", FASTLAYERS_CPU_ISA_TEST_HIDE=hide)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in (["avx2", "scalar"] if hide == "avx512" else ["scalar"])


# ---- the same numbers on every path ----------------------------------------------------------------------------
# float64: within 1e-12 of the largest magnitude of each output (norm-wise). The paths differ only in summation
# order (vector width: 8/4/2 partial sums) and FMA contraction, a few ulps per reduction; measured at most 3e-14
# (the IsoNet++ layer's gradients).
# float32: the same reorderings cost up to ~n * eps(float32) = 6e-8 relative per reduction of n terms (n <= ~300
# here, partial sums kept in float32 by design), so 1e-5 for the single-pass families (measured <= 3e-7). The
# IsoNet++ layer chains ~6 products, a GRU and, backward, their transposes, and its gradients are differences of
# terms ~10x larger (cancellation): measured 1.4e-5, so align gets 1e-4, the tolerance its own float32 tests use
# against the reference. A wrong kernel (a dropped lane, a wrong tail) gives O(1) differences.
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
TOL_ALIGN_F32 = 1e-4


def _tol(name, dtype):
    if dtype == torch.float32 and name.startswith(("isonet_layer", "sinkhorn", "align_score")):
        return TOL_ALIGN_F32
    return TOL[dtype]


def _family_outputs(dtype):
    """Outputs and gradients of every family's CPU kernels on seeded random inputs (same inputs on every path)."""
    from fastlayers import Graph, ops

    torch.manual_seed(0)
    out = {}

    def grads(name, fn, *inputs):
        inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        y = fn(*inputs)
        ys = y if isinstance(y, tuple) else (y,)
        g = [torch.randn_like(t) for t in ys]
        torch.autograd.backward(ys, g)
        out[name] = [t.detach() for t in ys]
        out[name + ".grad"] = [t.grad for t in inputs if t.grad is not None]

    r = lambda *s: torch.randn(*s, dtype=dtype)
    # eca: contiguous and channels-last, odd sizes (vector tails), zero and circular padding
    for cl in (False, True):
        x = r(3, 37, 9, 11)
        x = x.to(memory_format=torch.channels_last) if cl else x
        grads(f"eca.cl{cl}", lambda x, w, cl=cl: ops.eca(x, w, cl), x, r(5))
    # hyper: T = 1 and T > 1, with bias and base weight; the interval variant
    B, I, O, h = 6, 13, 7, 9
    grads("hyper.t1", ops.hyper_linear, r(B, I), r(B, h), r(O * I + O, h), r(O * I + O), r(O, I), r(O))
    grads("hyper.t5", ops.hyper_linear, r(B, 5, I), r(B, h), r(O * I + O, h), r(O * I + O))
    grads("hyper.interval", ops.interval_hyper_linear, r(B, I), r(B, I).abs(), r(B, h), r(B, h).abs(),
          r(O * I + O, h), r(O * I + O))
    # align: Sinkhorn with masks, the hinge score, the fused IsoNet++ layer (plain and with transport)
    b, n, m = 5, 11, 13
    rm, cm = torch.rand(b, n) > 0.2, torch.rand(b, m) > 0.2
    rm[:, 0] = cm[:, 0] = True
    grads("sinkhorn", lambda x: ops.sinkhorn(x, rm, cm, tau=0.5, num_iters=20), r(b, n, m))
    grads("align_score", ops.align_score, r(b, n, 10), r(b, n, 10), torch.rand(b, n, n, dtype=dtype))
    N, D = 35, 10
    src, dst = torch.randint(0, N, (100,)), torch.randint(0, N, (100,))
    g = Graph.from_edge_index(torch.stack([src, dst]), num_nodes=N)
    mask = torch.rand(N) > 0.2
    shapes = [(10, 2 * D), (10,), (10, 10), (10,), (20, 20), (20,), (20, 20), (20,), (3 * D, 20), (3 * D, D),
              (3 * D,), (3 * D,)]
    ws = [r(*s) * 0.5 for s in shapes]
    grads("isonet_layer", lambda h, p, *w: ops.isonet_layer(h, p, g, mask, *w), r(N, D), r(N, D), *ws)
    P, other = torch.rand(5, 7, 6, dtype=dtype), r(30, D)
    grads("isonet_layer.transport",
          lambda h, P, o, *w: ops.isonet_layer(h, None, g, mask, *w, P=P, other=o), r(N, D), P, other, *ws)
    # mp: spmm (every reduce, with and without weights, multi-head weights), scatter, segment, sddmm,
    # edge_softmax, block_spmm (full and diagonal)
    x = r(N, 19)
    for red in ("sum", "mean", "max", "min"):
        grads(f"spmm.{red}", lambda x, red=red: ops.spmm(g, x, reduce=red), x)
        grads(f"spmm.{red}.w", lambda x, w, red=red: ops.spmm(g, x, w, reduce=red), x, r(100))
    grads("spmm.heads", lambda x, w: ops.spmm(g, x, w), r(N, 3, 19), r(100, 3))
    idx = torch.randint(0, 20, (300,))
    for red in ("sum", "mean", "max", "min"):
        grads(f"scatter.{red}", lambda s, red=red: ops.scatter(s, idx, 0, 20, reduce=red), r(300, 17))
    indptr = torch.tensor([0, 3, 3, 10, 40])
    for red in ("sum", "mean", "max", "min"):
        grads(f"segment.{red}", lambda s, red=red: ops.segment(s, indptr, red), r(40, 9))
    grads("sddmm", lambda a, c: ops.sddmm(g, a, c), r(N, 2, 21), r(N, 2, 21))
    grads("edge_softmax", lambda s: ops.edge_softmax(g, s), r(100, 2))
    grads("block_spmm", lambda B_, x: ops.block_spmm(g, B_, x), r(100, 3, 3), r(N, 3, 18))
    grads("block_spmm.diag", lambda B_, x: ops.block_spmm(g, B_, x), r(100, 3), r(N, 3, 18))
    # ncache: pair features on NAT's (32, 16), whose aligned path has per-ISA code (no float dtype of its own)
    from fastlayers import NCache

    c = NCache(40, (32, 16), 4, seed=1)
    gen = torch.Generator().manual_seed(0)
    for i in range(20):
        s, d = torch.randint(0, 40, (30,), generator=gen), torch.randint(0, 40, (30,), generator=gen)
        c.update(s, d, torch.full((30,), float(i), dtype=torch.float64), torch.arange(30) + 30 * i,
                 torch.randn(30, 4, generator=gen))
    u, v = torch.randint(0, 40, (200,), generator=gen), torch.randint(0, 40, (200,), generator=gen)
    u[:20], u[20:50], v[20:50] = v[:20], s, d
    out["ncache.pairs"] = [t.double() for t in c.pair_features(u, v)]
    return out


def _run_on(isa, tmp_path):
    path = str(tmp_path / f"{isa}.pt")
    r = subprocess.run([sys.executable, __file__, path], env=_env(FASTLAYERS_CPU_ISA=isa), capture_output=True,
                       text=True, timeout=600, cwd=HERE)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(path)


def test_every_family_matches_across_isas(tmp_path):
    isas = _supported()
    if len(isas) < 2:
        pytest.skip("this CPU supports one path only")
    results = {isa: _run_on(isa, tmp_path) for isa in isas}
    base = results["scalar"]
    worst = {}
    for isa in isas[:-1]:
        for dtype in TOL:
            for name, ref in base[str(dtype)].items():
                got = results[isa][str(dtype)][name]
                assert len(got) == len(ref), name
                for a, e in zip(got, ref):
                    scale = max(e.abs().max().item(), 1e-300) if e.numel() else 1.0
                    err = (a - e).abs().max().item() / scale if e.numel() else 0.0
                    worst[(isa, str(dtype))] = max(worst.get((isa, str(dtype)), 0.0), err)
                    assert err <= _tol(name, dtype), f"{name} ({dtype}) on {isa} vs scalar: {err:.3g} relative"
                    assert torch.isfinite(a).all(), name
    print("worst norm-wise relative difference against scalar:", worst)


# ---- no AVX code outside the per-ISA namespaces ----------------------------------------------------------------
def test_no_wide_instructions_outside_isa_namespaces():
    """A function that is not in a per-ISA namespace is shared (inline functions, templates from torch or the STL,
    the op code): the linker keeps one copy of each, so none may hold AVX/AVX-512 instructions, or a CPU without
    them would crash on it. zmm may appear only in functions of an avx512 namespace, ymm also in avx2 ones."""
    objdump = shutil.which("objdump")
    if objdump is None or not sys.platform.startswith("linux"):
        pytest.skip("needs binutils' objdump")
    import fastlayers._C_aten

    dump = "".join(subprocess.run([objdump, "-d", "-C", "--no-show-raw-insn", lib.__file__], capture_output=True,
                                  text=True, timeout=300).stdout for lib in (fastlayers._C, fastlayers._C_aten))
    if "fastlayers::" not in dump:
        pytest.skip("the library's symbol table is stripped (a wheel): this check runs on source builds")
    bad, fn, isa_fns = [], None, {"avx512": 0, "avx2": 0}
    for line in dump.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            fn = head.group(1)
            continue
        if fn is None or ("%zmm" not in line and "%ymm" not in line):
            continue
        if "::avx512::" in fn:
            isa_fns["avx512"] += 1
            continue
        if "::avx2::" in fn and "%zmm" not in line:
            isa_fns["avx2"] += 1
            continue
        bad.append(f"{fn}: {line.strip()}")
    assert not bad, "wide instructions outside the per-ISA namespaces:\n" + "\n".join(bad[:20])
    if fastlayers._C.build_info()["cpu_isa"] != "scalar" or "avx512" in _supported():
        assert isa_fns["avx512"] > 0 and isa_fns["avx2"] > 0, "per-ISA code not found (symbols stripped?)"


if __name__ == "__main__":  # worker: python test_cpu_isa.py OUT.pt, under one FASTLAYERS_CPU_ISA
    torch.set_num_threads(2)
    torch.save({str(dt): _family_outputs(dt) for dt in TOL} | {"isa": fastlayers.cpu_isa()}, sys.argv[1])

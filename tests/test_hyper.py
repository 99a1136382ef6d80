"""hyper_linear: C++ (CPU) and Triton (interpreter here, GPU under -m cuda) kernels against the eager reference."""

import pytest
import torch
from fastlayers import reference
from fastlayers.ops import hyper_linear

from .conftest import triton_available, triton_launchers

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton not installed")

# (B, T, I, O, h); T = None means x is [B, I]. Sizes are odd so no tile divides them.
SHAPES = [(5, None, 4, 3, 6), (33, None, 17, 11, 9), (6, 1, 5, 4, 3), (7, 3, 5, 2, 4), (9, 18, 13, 7, 10)]
OPTIONS = ["none", "bias", "base", "all"]


def _inputs(shape, option, dtype=torch.float64, device="cpu", grad=False):
    b, t, i, o, h = shape
    def r(*s):
        return torch.randn(*s, dtype=dtype, device=device, requires_grad=grad)

    x = r(b, i) if t is None else r(b, t, i)
    kw = {}
    if option in ("bias", "all"):
        kw["bias"] = r(o * i + o)
    if option in ("base", "all"):
        kw["base_weight"] = r(o, i)
        kw["base_bias"] = r(o)
    return (x, r(b, h), r(o * i + o, h)), kw


@pytest.fixture(params=[None, "700"], ids=["default_tiles", "tiny_tiles"])
def tiles(request, monkeypatch):
    """Runs a test with the default tiles and with 700-byte tiles, so small shapes cross many tile borders."""
    if request.param is not None:
        monkeypatch.setenv("FASTLAYERS_HYPER_TILE_BYTES", request.param)
    return request.param


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("option", OPTIONS)
def test_forward_matches_reference_float64(shape, option, tiles):
    args, kw = _inputs(shape, option)
    y = hyper_linear(*args, **kw)
    assert not torch.isnan(y).any()
    torch.testing.assert_close(y, reference.hyper_linear(*args, **kw), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("option", OPTIONS)
def test_backward_matches_reference_float64(shape, option, tiles):
    args, kw = _inputs(shape, option, grad=True)
    leaves = [*args, *kw.values()]
    y = hyper_linear(*args, **kw)
    g = torch.randn_like(y)
    ours = torch.autograd.grad(y, leaves, g)
    ref = torch.autograd.grad(reference.hyper_linear(*args, **kw), leaves, g)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("wanted", ["x", "phi", "weight", "bias", "x+weight"])
@pytest.mark.parametrize("tokens", [None, 3])
def test_partial_gradients(wanted, tokens):
    # Only some leaves need gradients: the backward skips the rest and still gets the wanted ones right.
    (x, phi, w), kw = _inputs((6, tokens, 5, 4, 3), "bias")
    leaves = {"x": x, "phi": phi, "weight": w, "bias": kw["bias"]}
    names = wanted.split("+")
    for n in names:
        leaves[n].requires_grad_()
    y = hyper_linear(x, phi, w, **kw)
    g = torch.randn_like(y)
    ours = torch.autograd.grad(y, [leaves[n] for n in names], g)
    ref = torch.autograd.grad(reference.hyper_linear(x, phi, w, **kw), [leaves[n] for n in names], g)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("tokens", [None, 1, 3])
def test_gradcheck(tokens):
    args, kw = _inputs((3, tokens, 4, 2, 3), "all", grad=True)
    names = list(kw)
    fn = lambda x, p, w, *rest: hyper_linear(x, p, w, **dict(zip(names, rest)))
    assert torch.autograd.gradcheck(fn, (*args, *kw.values()))


def test_float32_matches_reference():
    for shape in [(300, None, 40, 24, 32), (40, 8, 24, 20, 16)]:
        args, kw = _inputs(shape, "all", dtype=torch.float32)
        torch.testing.assert_close(hyper_linear(*args, **kw), reference.hyper_linear(*args, **kw),
                                   rtol=1e-4, atol=1e-4)


def test_non_contiguous_inputs():
    x = torch.randn(8, 12, dtype=torch.float64)[:, ::2]
    phi = torch.randn(5, 8, dtype=torch.float64).t()
    w = torch.randn(5, 4 * 6 + 4, dtype=torch.float64).t()
    torch.testing.assert_close(hyper_linear(x, phi, w), reference.hyper_linear(x, phi, w))


def test_strided_bias_and_base_weight():
    (x, phi, w), _ = _inputs((4, None, 3, 2, 5), "none")
    bias = torch.randn(8, 2, dtype=torch.float64)[:, 0]
    base_weight = torch.randn(3, 2, dtype=torch.float64).t()
    base_bias = torch.randn(2, 3, dtype=torch.float64)[:, 1]
    for t in (x, x.unsqueeze(1).expand(4, 3, 3)):
        torch.testing.assert_close(hyper_linear(t, phi, w, bias, base_weight, base_bias),
                                   reference.hyper_linear(t, phi, w, bias, base_weight, base_bias))


def test_shapes_and_squeeze():
    (x, phi, w), _ = _inputs((4, None, 3, 5, 2), "none")
    assert hyper_linear(x, phi, w).shape == (4, 5)
    assert hyper_linear(x.unsqueeze(1).expand(4, 7, 3), phi, w).shape == (4, 7, 5)


@pytest.mark.parametrize("shape", [(0, None, 3, 2, 4), (0, 5, 3, 2, 4), (3, 0, 3, 2, 4)])
def test_empty(shape):
    args, kw = _inputs(shape, "all", grad=True)
    y = hyper_linear(*args, **kw)
    b, t, _i, o, _h = shape
    assert y.shape == ((b, o) if t is None else (b, t, o))
    grads = torch.autograd.grad(y.sum(), [*args, *kw.values()])
    for g, leaf in zip(grads, [*args, *kw.values()]):
        assert g.shape == leaf.shape and torch.all(g == 0)


def test_opcheck():
    op = torch.ops.fastlayers
    for shape in [(4, 1, 3, 2, 5), (3, 4, 3, 2, 5)]:
        args, kw = _inputs(shape, "all", grad=True)
        w0, b0 = kw["base_weight"], kw["base_bias"]
        torch.library.opcheck(op.hyper_linear_fwd, (*args, w0, b0))
        torch.library.opcheck(op.hyper_linear_fwd, (*args, None, None))
        plain = [a.detach() for a in args]
        g = torch.randn(shape[0], shape[1], shape[3], dtype=torch.float64)
        for need in [(True, True), (True, False), (False, True)]:
            torch.library.opcheck(op.hyper_linear_bwd, (g, *plain, w0.detach(), *need))
        torch.library.opcheck(op.hyper_linear_bwd, (g, *plain, None, True, True))


def test_deterministic():
    args, kw = _inputs((50, None, 20, 10, 8), "bias", dtype=torch.float32, grad=True)
    leaves = [*args, *kw.values()]
    y = hyper_linear(*args, **kw)
    g = torch.randn_like(y)
    a = torch.autograd.grad(hyper_linear(*args, **kw), leaves, g)
    b = torch.autograd.grad(hyper_linear(*args, **kw), leaves, g)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.slow
@pytest.mark.compiler
def test_torch_compile_fullgraph():
    args, kw = _inputs((6, 2, 5, 3, 4), "all", dtype=torch.float32, grad=True)
    fn = torch.compile(lambda x, p, w, b: hyper_linear(x, p, w, bias=b), fullgraph=True)
    y = fn(*args, kw["bias"])
    torch.testing.assert_close(y, hyper_linear(*args, bias=kw["bias"]))
    y.sum().backward()
    assert args[2].grad is not None


# ---- bad input ------------------------------------------------------------------------------------------------


def _good():
    return torch.randn(4, 3), torch.randn(4, 5), torch.randn(2 * 3 + 2, 5)


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (lambda x, p, w: (x, p, torch.randn(9, 5)), ValueError, "weight rows must be O\\*I \\+ O"),
        (lambda x, p, w: (x, p, torch.randn(0, 5)), ValueError, "weight rows must be O\\*I \\+ O"),
        (lambda x, p, w: (x, p, torch.randn(8, 6)), ValueError, "weight must have h = 5"),
        (lambda x, p, w: (x, p, torch.randn(8)), ValueError, "weight must be"),
        (lambda x, p, w: (x, torch.randn(3, 5), w), ValueError, "phi has 3 rows but x has batch 4"),
        (lambda x, p, w: (x, torch.randn(4, 5, 1), w), ValueError, "phi must be"),
        (lambda x, p, w: (torch.randn(4), p, w), ValueError, "x must be"),
        (lambda x, p, w: (torch.randn(4, 1, 1, 3), p, w), ValueError, "x must be"),
        (lambda x, p, w: (x, p.double(), w), TypeError, "phi has dtype torch.float64"),
        (lambda x, p, w: (x, p, w.double()), TypeError, "weight has dtype"),
        (lambda x, p, w: (x.long(), p, w), TypeError, "x must have a floating"),
        (lambda x, p, w: (x.half(), p.half(), w.half()), TypeError, "x must have a floating"),
        (lambda x, p, w: (x, p.to("meta"), w), ValueError, "phi is on meta"),
        (lambda x, p, w: ([1.0], p, w), TypeError, "x must be a torch.Tensor"),
        (lambda x, p, w: (x, None, w), TypeError, "phi must be a torch.Tensor"),
    ],
)
def test_bad_input(change, exc, match):
    with pytest.raises(exc, match=match):
        hyper_linear(*change(*_good()))


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        ({"bias": torch.randn(7)}, ValueError, "bias must have shape \\[8\\]"),
        ({"base_weight": torch.randn(3, 2)}, ValueError, "base_weight must have shape \\[2, 3\\]"),
        ({"base_bias": torch.randn(3)}, ValueError, "base_bias must have shape \\[2\\]"),
        ({"bias": torch.randn(8, dtype=torch.float64)}, TypeError, "bias has dtype"),
        ({"base_weight": torch.randn(2, 3, device="meta")}, ValueError, "base_weight is on meta"),
        ({"base_bias": "zero"}, TypeError, "base_bias must be a torch.Tensor"),
    ],
)
def test_bad_optional_input(kw, exc, match):
    with pytest.raises(exc, match=match):
        hyper_linear(*_good(), **kw)


# ---- Triton kernels -------------------------------------------------------------------------------------------


def _op_args(shape, dtype):
    b, t, i, o, h = shape
    r = lambda *s: torch.randn(*s, dtype=dtype)
    return r(b, t, i), r(b, h), r(o * i + o, h), r(o, i), r(o)


# The last two cross the Triton tile borders: samples, outputs and h (T = 1); inputs, outputs, h and the dphi
# partial sums (T > 1).
TRITON_SHAPES = [(5, 1, 4, 3, 6), (20, 1, 17, 19, 20), (7, 3, 5, 2, 4), (9, 18, 17, 19, 20), (70, 1, 20, 70, 70),
                 (3, 20, 40, 40, 40)]


@needs_triton
@pytest.mark.parametrize("shape", TRITON_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_matches_reference(shape, dtype):
    tk = triton_launchers("hyper")

    x, phi, w, w0, b0 = _op_args(shape, dtype)
    tol = dict(rtol=1e-11, atol=1e-11) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    leaves = [t.clone().requires_grad_() for t in (x, phi, w, w0, b0)]
    bias = torch.cat([torch.zeros(w.shape[0] - b0.shape[0], dtype=dtype), leaves[4]])
    ref = reference.hyper_linear(leaves[0], leaves[1], leaves[2], bias=bias, base_weight=leaves[3])
    y = tk.hyper_linear_fwd(x, phi, w, w0, b0)
    torch.testing.assert_close(y, ref, **tol)
    g = torch.randn_like(ref)
    expect = torch.autograd.grad(ref, leaves, g)
    got = tk.hyper_linear_bwd(g, x, phi, w, w0, True, True)
    for a, b in zip(got, expect):
        torch.testing.assert_close(a, b, **tol)


@needs_triton
@pytest.mark.parametrize("tokens", [1, 3])
def test_triton_partial_and_no_static(tokens):
    tk = triton_launchers("hyper")

    x, phi, w, _, _ = _op_args((6, tokens, 5, 4, 3), torch.float64)
    cpu = torch.ops.fastlayers.hyper_linear_bwd
    g = torch.randn(6, tokens, 4, dtype=torch.float64)
    torch.testing.assert_close(tk.hyper_linear_fwd(x, phi, w, None, None),
                               torch.ops.fastlayers.hyper_linear_fwd(x, phi, w, None, None))
    for need in [(True, False), (False, True)]:
        got = tk.hyper_linear_bwd(g, x, phi, w, None, *need)
        want = cpu(g, x, phi, w, None, *need)
        if need[0]:
            torch.testing.assert_close(got[0], want[0])
            torch.testing.assert_close(got[1], want[1])
        torch.testing.assert_close(got[2][-4:], want[2][-4:])  # output-bias rows: always computed
        if need[1]:
            torch.testing.assert_close(got[2], want[2])
        else:
            assert torch.all(got[2][:-4] == 0)


@needs_triton
@pytest.mark.parametrize("shape", [(0, 1, 3, 2, 4), (0, 4, 3, 2, 4), (3, 0, 3, 2, 4)])
def test_triton_empty(shape):
    tk = triton_launchers("hyper")

    x, phi, w, w0, b0 = _op_args(shape, torch.float32)
    y = tk.hyper_linear_fwd(x, phi, w, w0, b0)
    assert y.shape == (shape[0], shape[1], shape[3])
    gx, gphi, gw, gw0, gb0 = tk.hyper_linear_bwd(torch.randn(y.shape), x, phi, w, w0, True, True)
    assert gx.shape == x.shape and gphi.shape == phi.shape and gw.shape == w.shape
    assert torch.all(gw == 0) and torch.all(gw0 == 0) and torch.all(gb0 == 0)


# ---- CUDA (run by benchmarks/device_check.sh) ----------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("tokens", [None, 1, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_reference(tokens, dtype):
    args, kw = _inputs((64, tokens, 48, 40, 32), "all", dtype=dtype, device="cuda", grad=True)
    leaves = [*args, *kw.values()]
    tol = {torch.float32: 2e-3, torch.float16: 3e-2, torch.bfloat16: 1e-1}[dtype]
    y = hyper_linear(*args, **kw)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    r = reference.hyper_linear(*ref_leaves[:3], **dict(zip(kw, ref_leaves[3:])))
    scale = r.abs().max().item()
    torch.testing.assert_close(y.double(), r, rtol=tol, atol=tol * scale)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, leaves, g), torch.autograd.grad(r, ref_leaves, g.double())):
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol * b.abs().max().item())


@pytest.mark.cuda
def test_cuda_gradcheck_and_opcheck():
    args, kw = _inputs((3, 2, 4, 2, 3), "all", device="cuda", grad=True)
    names = list(kw)
    fn = lambda x, p, w, *rest: hyper_linear(x, p, w, **dict(zip(names, rest)))
    assert torch.autograd.gradcheck(fn, (*args, *kw.values()))
    torch.library.opcheck(torch.ops.fastlayers.hyper_linear_fwd, (*args, kw["base_weight"], kw["base_bias"]))


# ---- interval propagation: hyper_abs_linear and interval_hyper_linear -------------------------------------------


def _abs_args(shape, dtype=torch.float64, w0=True, grad=False):
    b, t, i, o, h = shape
    r = lambda *s: torch.randn(*s, dtype=dtype, requires_grad=grad)
    return r(b, t, i), r(b, h), r(o * i, h), (r(o, i) if w0 else None)


@pytest.mark.parametrize("shape", [(5, 1, 4, 3, 6), (7, 3, 5, 2, 4), (9, 18, 13, 7, 10)])
@pytest.mark.parametrize("w0", [True, False])
def test_abs_linear_matches_reference(shape, w0, tiles):
    args = _abs_args(shape, w0=w0, grad=True)
    leaves = [a for a in args if a is not None]
    y = torch.ops.fastlayers.hyper_abs_linear_fwd(*args)
    r = reference.hyper_abs_linear(*args)
    torch.testing.assert_close(y, r, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(r)
    for a, b in zip(torch.autograd.grad(y, leaves, g), torch.autograd.grad(r, leaves, g)):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_abs_linear_gradcheck_and_opcheck():
    args = _abs_args((3, 2, 4, 2, 3), grad=True)
    assert torch.autograd.gradcheck(torch.ops.fastlayers.hyper_abs_linear_fwd, args)
    torch.library.opcheck(torch.ops.fastlayers.hyper_abs_linear_fwd, args)
    torch.library.opcheck(torch.ops.fastlayers.hyper_abs_linear_fwd, (*args[:3], None))
    plain = [a.detach() for a in args]
    g = torch.randn(3, 2, 2, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fastlayers.hyper_abs_linear_bwd, (g, *plain))
    torch.library.opcheck(torch.ops.fastlayers.hyper_abs_linear_bwd, (g, *plain[:3], None))


def _interval_args(shape, bias=True, grad=False, dtype=torch.float64):
    b, t, i, o, h = shape
    xs = (b, i) if t is None else (b, t, i)
    def r(*s, positive=False):
        v = torch.rand(*s, dtype=dtype) if positive else torch.randn(*s, dtype=dtype)
        return v.requires_grad_(grad)

    args = (r(*xs), r(*xs, positive=True), r(b, h), r(b, h, positive=True), r(o * i + o, h))
    return args, ({"bias": r(o * i + o)} if bias else {})


@pytest.mark.parametrize("shape", [(6, None, 5, 4, 3), (4, 3, 5, 2, 6)])
@pytest.mark.parametrize("bias", [True, False])
def test_interval_matches_reference(shape, bias, tiles):
    from fastlayers.ops import interval_hyper_linear

    args, kw = _interval_args(shape, bias, grad=True)
    leaves = [*args, *kw.values()]
    ours = interval_hyper_linear(*args, **kw)
    ref = reference.interval_hyper_linear(*args, **kw)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    gc, gr = torch.randn_like(ref[0]), torch.randn_like(ref[1])
    got = torch.autograd.grad(ours, leaves, (gc, gr))
    want = torch.autograd.grad(ref, leaves, (gc, gr))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_interval_bounds_contain_sampled_layers():
    # The interval must contain the output of every layer whose weights and input lie in the intervals.
    from fastlayers.ops import interval_hyper_linear

    (x_c, x_r, phi_c, phi_r, w), kw = _interval_args((5, None, 4, 3, 6))
    y_c, y_r = interval_hyper_linear(x_c, x_r, phi_c, phi_r, w, **kw)
    assert torch.all(y_r >= 0)
    for _ in range(20):
        x = x_c + x_r * (2 * torch.rand_like(x_r) - 1)
        phi = phi_c + phi_r * (2 * torch.rand_like(phi_r) - 1)
        y = reference.hyper_linear(x, phi, w, **kw)
        assert torch.all(y >= y_c - y_r - 1e-12) and torch.all(y <= y_c + y_r + 1e-12)


def test_interval_gradcheck():
    from fastlayers.ops import interval_hyper_linear

    args, kw = _interval_args((3, 2, 3, 2, 3), grad=True)
    assert torch.autograd.gradcheck(lambda *a: interval_hyper_linear(*a[:5], bias=a[5]), (*args, kw["bias"]))


@pytest.mark.parametrize("shape", [(0, None, 3, 2, 4), (0, 2, 3, 2, 4)])
def test_interval_empty(shape):
    from fastlayers.ops import interval_hyper_linear

    args, kw = _interval_args(shape, grad=True)
    y_c, y_r = interval_hyper_linear(*args, **kw)
    assert y_c.shape == y_r.shape and y_c.shape[0] == 0
    grads = torch.autograd.grad((y_c.sum() + y_r.sum()), [*args, *kw.values()])
    assert all(torch.all(g == 0) for g in grads)


def test_interval_bad_input():
    from fastlayers.ops import interval_hyper_linear

    (x_c, x_r, phi_c, phi_r, w), _ = _interval_args((4, None, 3, 2, 5))
    with pytest.raises(ValueError, match="x_r must have x_c's shape"):
        interval_hyper_linear(x_c, x_r[:, :2], phi_c, phi_r, w)
    with pytest.raises(ValueError, match="phi_r must have phi_c's shape"):
        interval_hyper_linear(x_c, x_r, phi_c, phi_r[:3], w)
    with pytest.raises(TypeError, match="x_r has dtype"):
        interval_hyper_linear(x_c, x_r.float(), phi_c, phi_r, w)
    with pytest.raises(ValueError, match="weight rows must be"):
        interval_hyper_linear(x_c, x_r, phi_c, phi_r, w[:-1])
    with pytest.raises(TypeError, match="phi_r must be a torch.Tensor"):
        interval_hyper_linear(x_c, x_r, phi_c, None, w)


@needs_triton
@pytest.mark.parametrize("shape", [(5, 1, 4, 3, 6), (9, 18, 17, 19, 20), (3, 20, 40, 40, 40)])
@pytest.mark.parametrize("w0", [True, False])
def test_triton_abs_linear_matches_reference(shape, w0):
    tk = triton_launchers("hyper")

    args = _abs_args(shape, w0=w0)
    leaves = [a.clone().requires_grad_() for a in args if a is not None]
    r = reference.hyper_abs_linear(*leaves, *([] if w0 else [None]))
    torch.testing.assert_close(tk.hyper_abs_linear_fwd(*args), r, rtol=1e-11, atol=1e-11)
    g = torch.randn_like(r)
    got = tk.hyper_abs_linear_bwd(g, *args)
    for a, b in zip(got, torch.autograd.grad(r, leaves, g)):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)

"""ECA: fused C++ (CPU) and Triton (interpreter here, GPU under -m cuda) kernels against the eager reference."""

import fastlayers
import pytest
import torch
from fastlayers import reference
from fastlayers.nn import ECA, convert_timm
from fastlayers.ops import eca

from .conftest import needs, triton_available, triton_launchers


def _layouts(dtype=torch.float64, device="cpu"):
    """(name, x) covering 1D/2D/3D spatial, contiguous, channels-last, and a strided (sliced) view."""
    def r(*s):
        return torch.randn(*s, dtype=dtype, device=device)

    return [
        ("2d", r(3, 10, 5, 7)),
        ("2d_cl", r(3, 10, 5, 7).to(memory_format=torch.channels_last)),
        ("1d", r(2, 9, 13)),
        ("1d_cl", r(2, 13, 9).transpose(1, 2)),
        ("3d", r(2, 6, 3, 4, 5)),
        ("3d_cl", r(2, 6, 3, 4, 5).to(memory_format=torch.channels_last_3d)),
        ("strided", r(3, 20, 6, 8)[:, ::2, 1:, ::2]),
        ("one_channel", r(2, 1, 4, 4)),
        ("one_pixel", r(4, 12, 1, 1)),
    ]


LAYOUTS = [name for name, _ in _layouts()]


def _case(name, **kw):
    return dict(_layouts(**kw))[name]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", [1, 3, 5, 9])
@pytest.mark.parametrize("circular", [False, True])
def test_forward_matches_reference_float64(layout, k, circular):
    x = _case(layout)
    w = torch.randn(k, dtype=torch.float64)
    y = eca(x, w, circular)
    torch.testing.assert_close(y, reference.eca(x, w, circular), rtol=1e-12, atol=1e-12)
    assert not torch.isnan(y).any()
    if x.is_contiguous() or x.movedim(1, -1).is_contiguous():
        assert y.stride() == x.stride(), "output must keep the input's memory format"


@needs("hypothesis")
def test_random_shapes_match_reference():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=40, deadline=None)
    @given(
        n=st.integers(1, 4),
        c=st.integers(1, 70),
        spatial=st.lists(st.integers(1, 9), min_size=1, max_size=3),
        k=st.sampled_from([1, 3, 5, 7, 9, 15]),
        circular=st.booleans(),
        channels_last=st.booleans(),
    )
    def check(n, c, spatial, k, circular, channels_last):
        x = torch.randn(n, *spatial, c, dtype=torch.float64).movedim(-1, 1)  # channels-last strides
        if not channels_last:
            x = x.contiguous()
        x.requires_grad_()
        w = torch.randn(k, dtype=torch.float64, requires_grad=True)
        g = torch.randn(x.shape, dtype=torch.float64)
        y = eca(x, w, circular)
        r = reference.eca(x, w, circular)
        torch.testing.assert_close(y, r, rtol=1e-12, atol=1e-12)
        got = torch.autograd.grad(y, (x, w), g)
        want = torch.autograd.grad(r, (x, w), g)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-11)

    check()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("circular", [False, True])
def test_backward_matches_reference_float64(layout, circular):
    x = _case(layout).requires_grad_()
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(x.shape, dtype=torch.float64)
    gx, gw = torch.autograd.grad(eca(x, w, circular), (x, w), g)
    rx, rw = torch.autograd.grad(reference.eca(x, w, circular), (x, w), g)
    torch.testing.assert_close(gx, rx, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(gw, rw, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("cl", [False, True])
def test_gradcheck(circular, cl):
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: eca(a, b, circular), (x, w))


def test_float32_large_matches_reference():
    # Large enough to take several sample blocks and every thread; float32 accumulates in chunks then in double.
    x = torch.randn(6, 64, 40, 40)
    w = torch.randn(5)
    for xx in (x, x.to(memory_format=torch.channels_last)):
        torch.testing.assert_close(eca(xx, w), reference.eca(xx, w), rtol=1e-5, atol=1e-6)


def test_kernel_wider_than_channels():
    # The rule gives k = 3 even for C = 1 or 2; circular wraps several times.
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    w = torch.randn(7, dtype=torch.float64)
    for circular in (False, True):
        torch.testing.assert_close(eca(x, w, circular), reference.eca(x, w, circular))


def test_weight_promoted_and_grad_dtype():
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float32, requires_grad=True)
    y = eca(x, w)
    assert y.dtype == torch.float64
    y.sum().backward()
    assert w.grad.dtype == torch.float32 and x.grad.dtype == torch.float64


def test_deterministic():
    x = torch.randn(5, 32, 9, 9, requires_grad=True)
    w = torch.randn(5, requires_grad=True)
    g = torch.randn(x.shape)
    a = torch.autograd.grad(eca(x, w), (x, w), g)
    b = torch.autograd.grad(eca(x, w), (x, w), g)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("shape", [(0, 8, 4, 4), (3, 0, 4, 4), (2, 4, 0, 3)])
def test_empty(shape):
    x = torch.randn(shape, requires_grad=True)
    w = torch.randn(3, requires_grad=True)
    y = eca(x, w)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape
    assert torch.all(w.grad == 0)


def test_opcheck():
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    for xx in (x, x.detach().to(memory_format=torch.channels_last).requires_grad_()):
        for circular in (False, True):
            torch.library.opcheck(torch.ops.fastlayers.eca_fwd, (xx, w, circular))
    y, p, s = torch.ops.fastlayers.eca_fwd(x.detach(), w.detach(), False)
    torch.library.opcheck(torch.ops.fastlayers.eca_bwd, (torch.randn_like(y), x.detach(), w.detach(), p, s, False))


@pytest.mark.slow
@pytest.mark.compiler
def test_torch_compile_fullgraph():
    m = ECA(channels=32)
    x = torch.randn(2, 32, 6, 6, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True)
    y = compiled(x)
    torch.testing.assert_close(y, m(x))
    y.sum().backward()
    assert x.grad is not None and m.conv.weight.grad is not None


# ---- nn.ECA and timm ----------------------------------------------------------------------------------------


@needs("timm")
@pytest.mark.parametrize("channels", [1, 2, 16, 64, 100, 128, 256, 512, 1024, 2048, 4096])
def test_kernel_size_rule_matches_timm(channels):
    from timm.layers import EcaModule

    assert ECA(channels=channels).kernel_size == EcaModule(channels=channels).conv.weight.shape[-1]


@needs("timm")
@pytest.mark.parametrize("cls, circular", [("EcaModule", False), ("CecaModule", True)])
@pytest.mark.parametrize("cl", [False, True])
def test_same_outputs_as_timm(cls, circular, cl):
    import timm.layers

    ref = getattr(timm.layers, cls)(channels=256)
    ours = ECA(channels=256, circular=circular)
    ours.load_state_dict(ref.state_dict())  # same key and shape: conv.weight [1, 1, k]
    assert ours.conv.weight.shape == (1, 1, 5)
    x = torch.randn(4, 256, 7, 7)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    g = torch.randn(x.shape)
    ours(xa).backward(g)
    ref(xb).backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.conv.weight.grad, ref.conv.weight.grad, rtol=1e-4, atol=1e-5)


def test_state_dict_round_trip():
    a = ECA(channels=64)
    b = ECA(channels=64)
    b.load_state_dict(a.state_dict())
    assert list(a.state_dict()) == ["conv.weight"]
    assert torch.equal(a.conv.weight, b.conv.weight)


@needs("timm")
def test_convert_timm_ecaresnet():
    import timm
    from timm.layers import EcaModule

    model = timm.create_model("ecaresnet26t", pretrained=False).eval()
    n_eca = sum(isinstance(m, EcaModule) for m in model.modules())
    assert n_eca > 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    convert_timm(model)
    assert sum(isinstance(m, EcaModule) for m in model.modules()) == 0
    assert sum(isinstance(m, ECA) for m in model.modules()) == n_eca
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


@needs("timm")
def test_convert_timm_bare_and_unsupported():
    from timm.layers import CecaModule, EcaModule

    c = CecaModule(channels=64)
    new = convert_timm(c)
    assert isinstance(new, ECA) and new.circular
    mlp = torch.nn.Sequential(EcaModule(channels=64, use_mlp=True))
    with pytest.warns(UserWarning, match="does not fuse"):
        convert_timm(mlp)
    assert isinstance(mlp[0], EcaModule)


# ---- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, w, kw, exc, match",
    [
        (torch.randn(4, 8), torch.randn(3), {}, ValueError, "x must be"),
        (torch.randn(1, 2, 3, 4, 5, 6), torch.randn(3), {}, ValueError, "x must be"),
        (torch.randn(2, 4, 3, 3), torch.randn(4), {}, ValueError, "odd"),
        (torch.randn(2, 4, 3, 3), torch.randn(0), {}, ValueError, "odd"),
        (torch.randn(2, 4, 3, 3), torch.randn(1, 1, 3), {}, ValueError, "weight must be 1-D"),
        (torch.randn(2, 4, 3, 3), torch.ones(3, dtype=torch.int64), {}, TypeError, "weight must have a floating"),
        (torch.ones(2, 4, 3, 3, dtype=torch.int64), torch.randn(3), {}, TypeError, "x must have a floating"),
        ([1.0, 2.0], torch.randn(3), {}, TypeError, "x must be a torch.Tensor"),
        (torch.randn(2, 4, 3, 3), torch.randn(3), {"circular": 1}, TypeError, "circular"),
        (torch.randn(2, 4, 3, 3), torch.randn(3, device="meta"), {}, ValueError, "weight is on meta"),
    ],
)
def test_bad_input(x, w, kw, exc, match):
    with pytest.raises(exc, match=match):
        eca(x, w, **kw)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_takes_reference(dtype):
    x = torch.randn(2, 8, 4, 4).to(dtype)
    w = torch.randn(3)
    torch.testing.assert_close(eca(x, w), reference.eca(x, w))


def test_module_bad_args():
    with pytest.raises(ValueError, match="kernel_size"):
        ECA(kernel_size=4)
    with pytest.raises(ValueError, match="channels"):
        ECA(channels=0)
    with pytest.raises(ValueError, match="channels"):
        ECA(channels=8)(torch.randn(2, 4, 3, 3))


# ---- the CPU output pool ----------------------------------------------------------------------------------------


def test_output_pool_reuses_and_keeps_live_outputs_intact():
    x = torch.randn(2, 64, 64, 64)  # 2 MiB: pooled
    w = torch.randn(3)
    y1 = eca(x, w)
    keep = y1.clone()
    before = fastlayers.cpu_cache.stats()
    y2 = eca(x, w)  # y1 alive: must get a different block
    assert y1.data_ptr() != y2.data_ptr()
    torch.testing.assert_close(y1, keep, rtol=0, atol=0)
    del y1, y2
    eca(x, w)
    after = fastlayers.cpu_cache.stats()
    assert after["hits"] > before["hits"]


def test_output_pool_can_be_disabled():
    old = fastlayers.cpu_cache.stats()["limit_bytes"]
    try:
        fastlayers.cpu_cache.set_limit(0)
        assert fastlayers.cpu_cache.stats()["cached_bytes"] == 0
        x = torch.randn(2, 64, 64, 64)
        torch.testing.assert_close(eca(x, torch.ones(3)), reference.eca(x, torch.ones(3)))
        with pytest.raises(ValueError, match="nbytes"):
            fastlayers.cpu_cache.set_limit(-1)
    finally:
        fastlayers.cpu_cache.set_limit(old)


# ---- Triton kernels -------------------------------------------------------------------------------------------


needs_triton = pytest.mark.skipif(not triton_available(), reason="triton not installed")


@needs_triton
@pytest.mark.parametrize("layout", ["2d", "2d_cl", "1d", "3d_cl", "strided", "one_channel"])
@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_matches_reference(layout, circular, dtype):
    tk = triton_launchers("eca")

    x = _case(layout, dtype=dtype)
    w = torch.randn(5, dtype=dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    y, p, s = tk.eca_fwd(x, w, circular)
    torch.testing.assert_close(y, reference.eca(x, w, circular), **tol)
    xr = x.clone().requires_grad_()
    wr = w.clone().requires_grad_()
    g = torch.randn(x.shape, dtype=dtype)
    rx, rw = torch.autograd.grad(reference.eca(xr, wr, circular), (xr, wr), g)
    dx, dw = tk.eca_bwd(g, x, w, p, s, circular)
    torch.testing.assert_close(dx, rx, **tol)
    torch.testing.assert_close(dw, rw, **tol)


@needs_triton
@pytest.mark.parametrize("c", [3, 64, 65, 130, 200])
@pytest.mark.parametrize("k", [1, 3, 9, 31])
@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("cl", [False, True])
def test_triton_channel_blocks_and_halo(c, k, circular, cl):
    """Channels split over programs (64 per block here): the conv's taps cross block borders (the halo), wrap
    around (circular), reach past the edge (zero padding) and, at k=31 with C=65, overlap the block itself."""
    tk = triton_launchers("eca")
    x = torch.randn(2, c, 3, 2, dtype=torch.float64)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(k, dtype=torch.float64)
    y, p, s = tk.eca_fwd(x, w, circular)
    torch.testing.assert_close(y, reference.eca(x, w, circular), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p, x.mean((2, 3)), rtol=1e-12, atol=1e-12)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    g = torch.randn(x.shape, dtype=torch.float64)
    rx, rw = torch.autograd.grad(reference.eca(xr, wr, circular), (xr, wr), g)
    dx, dw = tk.eca_bwd(g, x, w, p, s, circular)
    torch.testing.assert_close(dx, rx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dw, rw, rtol=1e-12, atol=1e-12)


@needs_triton
@pytest.mark.parametrize("circular", [False, True])
def test_triton_large_planes_take_narrow_blocks(circular):
    """64x64 planes: 8 channels per program (the L2-sized block), so C=20 spans three blocks, the last partial."""
    tk = triton_launchers("eca")
    x = torch.randn(1, 20, 64, 64, dtype=torch.float64)
    w = torch.randn(5, dtype=torch.float64)
    y, p, s = tk.eca_fwd(x, w, circular)
    torch.testing.assert_close(y, reference.eca(x, w, circular), rtol=1e-12, atol=1e-12)
    g = torch.randn(x.shape, dtype=torch.float64)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    rx, rw = torch.autograd.grad(reference.eca(xr, wr, circular), (xr, wr), g)
    dx, dw = tk.eca_bwd(g, x, w, p, s, circular)
    torch.testing.assert_close(dx, rx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dw, rw, rtol=1e-12, atol=1e-12)


@needs_triton
def test_triton_agrees_with_cpu_kernel():
    tk = triton_launchers("eca")

    x = torch.randn(3, 40, 9, 9, dtype=torch.float64)
    w = torch.randn(7, dtype=torch.float64)
    y_cpu, p_cpu, s_cpu = torch.ops.fastlayers.eca_fwd(x, w, True)
    y_tr, p_tr, s_tr = tk.eca_fwd(x, w, True)
    torch.testing.assert_close(y_tr, y_cpu)
    torch.testing.assert_close(p_tr, p_cpu)
    torch.testing.assert_close(s_tr, s_cpu)


# ---- CUDA (run by benchmarks/device_check.sh) ----------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("circular", [False, True])
def test_cuda_matches_reference(dtype, cl, circular):
    x = torch.randn(8, 96, 14, 14, device="cuda", dtype=dtype)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(5, device="cuda", dtype=torch.float32)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    xa = x.clone().requires_grad_()
    wa = w.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    wb = w.clone().requires_grad_()
    y = eca(xa, wa, circular)
    r = reference.eca(xb, wb, circular)
    assert y.stride() == x.stride()
    torch.testing.assert_close(y, r, rtol=tol, atol=tol)
    g = torch.randn_like(y)
    y.backward(g)
    r.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(wa.grad, wb.grad, rtol=10 * tol, atol=10 * tol * x.numel() ** 0.5)


@pytest.mark.cuda
@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("circular", [False, True])
def test_cuda_float64_to_the_last_digits(cl, circular):
    """float64 on the GPU agrees with the reference to 1e-12, on planes of 13x15 (1/S is not a float32 value:
    a scale handed to the kernel as a float32 scalar fails here) and 300 channels (several channel blocks)."""
    x = torch.randn(3, 300, 13, 15, device="cuda", dtype=torch.float64)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(7, device="cuda", dtype=torch.float64)
    xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    xb, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
    y, r = eca(xa, wa, circular), reference.eca(xb, wb, circular)
    torch.testing.assert_close(y, r, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, (xa, wa), g), torch.autograd.grad(r, (xb, wb), g),
                               rtol=1e-11, atol=1e-11)


@pytest.mark.cuda
def test_cuda_gradcheck_and_opcheck():
    x = torch.randn(2, 6, 4, 4, device="cuda", dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, device="cuda", dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: eca(a, b, True), (x, w))
    torch.library.opcheck(torch.ops.fastlayers.eca_fwd, (x, w, False))


@pytest.mark.cuda
def test_cuda_compile_module():
    m = ECA(channels=64).cuda()
    x = torch.randn(4, 64, 8, 8, device="cuda")
    torch.testing.assert_close(torch.compile(m, fullgraph=True)(x), m(x))

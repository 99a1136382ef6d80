"""fastlayers.nn hypernetwork modules against plain PyTorch compositions of the same parameters."""

import math

import pytest
import torch
from fastlayers import reference
from fastlayers.nn import HyperLinear, HyperNetwork, IntervalHyperNetwork, mip_encode
from torch import nn


def test_mip_encode_constant_norm():
    g = torch.rand(7, 5, dtype=torch.float64)
    e = mip_encode(g)
    assert e.shape == (7, 10)
    torch.testing.assert_close(e.norm(dim=-1), torch.full((7,), math.sqrt(5), dtype=torch.float64))
    torch.testing.assert_close(e[:, :5], torch.cos(g * math.pi / 2))


@pytest.mark.parametrize("chunk_size", [None, 7])
@pytest.mark.parametrize("mip", [False, True])
def test_hypernetwork_generates_and_applies(chunk_size, mip):
    target = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    hn = HyperNetwork(target, embedding_dim=5, hidden=(8,), chunk_size=chunk_size, mip=mip).double()
    z = torch.rand(5, dtype=torch.float64)
    params = hn.generate(z)
    assert [tuple(v.shape) for v in params.values()] == [tuple(p.shape) for p in target.parameters()]
    x = torch.randn(6, 4, dtype=torch.float64)
    w1, b1, w2, b2 = params.values()
    expect = torch.tanh(x @ w1.t() + b1) @ w2.t() + b2
    torch.testing.assert_close(hn(z, x), expect)
    # Per-sample weight sets: network b applied to sample b.
    zs = torch.rand(3, 5, dtype=torch.float64)
    xs = torch.randn(3, 4, dtype=torch.float64)
    ys = hn(zs, xs)
    for b in range(3):
        torch.testing.assert_close(ys[b], hn(zs[b], xs[b:b + 1])[0])
    # Gradients reach the hypernetwork, not the target's own tensors.
    hn(z, x).sum().backward()
    assert hn.head.weight.grad is not None and target[0].weight.grad is None


def test_hypernetwork_mip_starts_at_target_parameters():
    target = nn.Linear(4, 3).double()
    hn = HyperNetwork(target, embedding_dim=2, hidden=(8,), mip=True).double()
    flat = torch.cat([p.reshape(-1) for p in target.parameters()])
    gen = hn.flat(torch.rand(2, dtype=torch.float64))
    assert (gen - flat).abs().max() < 0.05 * flat.abs().max()


@pytest.mark.parametrize("mip", [False, True])
@pytest.mark.parametrize("tokens", [None, 3])
def test_hyperlinear_matches_reference(mip, tokens):
    layer = HyperLinear(5, 4, embedding_dim=3, hidden=(6,), mip=mip).double()
    x = torch.randn(7, 5, dtype=torch.float64) if tokens is None else torch.randn(7, tokens, 5, dtype=torch.float64)
    z = torch.rand(7, 3, dtype=torch.float64)
    phi = layer.trunk(mip_encode(z) if mip else z)
    expect = reference.hyper_linear(x, phi, layer.head.weight, layer.head.bias, layer.base_weight, layer.base_bias)
    torch.testing.assert_close(layer(x, z), expect)
    # One shared embedding: the same as repeating it per sample.
    torch.testing.assert_close(layer(x, z[0]), layer(x, z[:1].expand(7, 3)))
    layer(x, z).sum().backward()
    assert layer.head.weight.grad is not None and layer.trunk[0].weight.grad is not None


def test_hyperlinear_initial_scale_like_linear():
    torch.manual_seed(1)
    layer = HyperLinear(256, 64, embedding_dim=8, hidden=(64,))
    y = layer(torch.randn(512, 256), torch.rand(512, 8))
    ref = nn.Linear(256, 64)(torch.randn(512, 256))
    assert 0.1 < y.std().item() / ref.std().item() < 10


def _interval_reference(net, x, mu, r):
    """The same forward in plain PyTorch: materialised interval weights, spec formulas per layer."""
    phi_c, phi_r = mu, r
    for layer in net.trunk:
        c, rad = layer(phi_c), phi_r @ layer.weight.abs().t()
        lo, hi = torch.relu(c - rad), torch.relu(c + rad)
        phi_c, phi_r = (hi + lo) / 2, (hi - lo) / 2
    x_c, x_r = x, torch.zeros_like(x)
    for k, head in enumerate(net.heads):
        i, o = net.layer_sizes[k], net.layer_sizes[k + 1]
        tc, tr = head(phi_c), phi_r @ head.weight.abs().t()
        wc, wr = tc[: o * i].view(o, i), tr[: o * i].view(o, i)
        x_c, x_r = reference.interval_linear(wc, wr, x_c, x_r, tc[o * i:], tr[o * i:])
        if k < len(net.heads) - 1:
            lo, hi = torch.relu(x_c - x_r), torch.relu(x_c + x_r)
            x_c, x_r = (hi + lo) / 2, (hi - lo) / 2
    return x_c, x_r


def test_interval_hypernetwork_matches_reference_and_contains_samples():
    net = IntervalHyperNetwork((6, 5, 3), embedding_dim=4, hidden=(7, 8)).double()
    x = torch.randn(9, 6, dtype=torch.float64)
    mu, r = torch.randn(4, dtype=torch.float64), 0.1 * torch.rand(4, dtype=torch.float64)
    y_c, y_r = net(x, mu, r)
    e_c, e_r = _interval_reference(net, x, mu, r)
    torch.testing.assert_close(y_c, e_c)
    torch.testing.assert_close(y_r, e_r)
    for _ in range(10):
        z = mu + r * (2 * torch.rand_like(r) - 1)
        y, _ = net(x, z)  # a point embedding: radius 0
        assert torch.all(y >= y_c - y_r - 1e-12) and torch.all(y <= y_c + y_r + 1e-12)
    _y0, r0 = net(x, mu)
    assert torch.all(r0.abs() < 1e-12)
    assert net.generate(mu).shape == (5 * 6 + 5 + 3 * 5 + 3,)


def test_module_bad_args():
    with pytest.raises(ValueError, match="embedding_dim"):
        HyperLinear(3, 2, embedding_dim=0)
    with pytest.raises(ValueError, match="hidden"):
        HyperLinear(3, 2, embedding_dim=2, hidden=())
    with pytest.raises(ValueError, match="chunk_size"):
        HyperNetwork(nn.Linear(2, 2), embedding_dim=2, chunk_size=0)
    with pytest.raises(ValueError, match="no parameters"):
        HyperNetwork(nn.ReLU(), embedding_dim=2)
    with pytest.raises(ValueError, match="layer_sizes"):
        IntervalHyperNetwork((4,), embedding_dim=2)


@pytest.mark.slow
@pytest.mark.compiler
def test_hyperlinear_torch_compile_fullgraph():
    layer = HyperLinear(6, 4, embedding_dim=3, hidden=(5,))
    x, z = torch.randn(8, 6), torch.rand(8, 3)
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(x, z), layer(x, z))

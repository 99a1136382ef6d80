"""NSD against a dense float64 reference of sheaf diffusion built from the coboundary, gradcheck, edge cases."""

import pytest
import torch
import torch.nn.functional as F
from fastlayers import Graph
from fastlayers.models import NSD
from fastlayers.models.nsd import _orthogonal, sym_inv_sqrt

D64 = torch.float64


def _pairs(ei):
    """The undirected simple edges {u, v}, u < v, of an edge list."""
    return sorted({(min(a, b), max(a, b)) for a, b in ei.t().tolist() if a != b})


def _inv_sqrt_newton(a, iters=60):
    """a^{-1/2} of one SPD matrix by the coupled Newton-Schulz iteration: plain differentiable torch, no eigh, so
    an independent reference that also differentiates through repeated eigenvalues."""
    c = torch.linalg.matrix_norm(a)
    eye = torch.eye(a.size(0), dtype=a.dtype)
    y, z = a / c, eye
    for _ in range(iters):
        t = 0.5 * (3 * eye - z @ y)
        y, z = y @ t, t @ z
    return z / c.sqrt()


def _end_map(m, x_flat, t, a, b):
    """F_{a<e} for the edge {a, b}: the model's learner weights applied the textbook way to [x_a, x_b]."""
    k = 0 if m.linear else t
    raw = m.map_self[k].weight @ x_flat[a] + m.map_other[k].weight @ x_flat[b]
    d = m.d
    w = None
    if m.edge_weights:
        w, raw = torch.sigmoid(raw[-1]), raw[:-1]
    f = torch.tanh(raw)
    if m.variant == "diag":
        f = torch.diag(f)
    elif m.variant == "orthogonal":
        s = torch.zeros(d, d, dtype=x_flat.dtype)
        iu = torch.triu_indices(d, d, 1)
        s = s.index_put((iu[0], iu[1]), f)
        f = torch.linalg.matrix_exp(s - s.t())
    else:
        f = f.view(d, d)
    return f, w


def _dense_laplacian(m, xs, pairs, t):
    """(D + I)^{-1/2} delta^T delta (D + I)^{-1/2} with delta the coboundary (delta x)_e = F_{v<e} x_v - F_{u<e} x_u
    of the undirected edges, D the diagonal blocks of delta^T delta; lp/hp dimensions appended as fixed maps."""
    n, Dm = xs.size(0), m.D
    x_flat = xs.reshape(n, -1) if not m.sparse_learner else xs.sum(1)
    delta = torch.zeros(len(pairs) * Dm, n * Dm, dtype=xs.dtype)
    for e, (u, v) in enumerate(pairs):
        (fu, wu), (fv, wv) = _end_map(m, x_flat, t, u, v), _end_map(m, x_flat, t, v, u)
        ext = len(m.extra)
        if ext:
            # v's fixed maps are +1; u's are +1 (low pass) and -1 (high pass); the pair's orientation is arbitrary
            # for both (delta^T delta is the same either way).
            fu = torch.block_diag(fu, torch.diag(torch.tensor(m.extra, dtype=xs.dtype)))
            fv = torch.block_diag(fv, torch.eye(ext, dtype=xs.dtype))
        if wu is not None:  # a weighted rotation w O: the weight scales the whole map, fixed dimensions too
            fu, fv = wu * fu, wv * fv
        delta[e * Dm:(e + 1) * Dm, v * Dm:(v + 1) * Dm] = fv
        delta[e * Dm:(e + 1) * Dm, u * Dm:(u + 1) * Dm] = -fu
    L = delta.t() @ delta
    blockdiag = torch.block_diag(*[L[i * Dm:(i + 1) * Dm, i * Dm:(i + 1) * Dm] for i in range(n)])
    S = _inv_sqrt_newton(blockdiag + torch.eye(n * Dm, dtype=xs.dtype))
    return S @ L @ S


def _dense_forward(m, x, ei):
    """The discrete NSD model (eval mode) with the dense Laplacian."""
    n, Dm, C = x.size(0), m.D, m.hidden
    pairs = _pairs(ei)
    h = m.lin1(x)
    if m.use_act:
        h = F.elu(h)
    if m.lin12 is not None:
        h = m.lin12(h)
    xs = h.view(n, Dm, C)
    L = None
    for t in range(m.layers):
        if L is None or not m.linear:
            L = _dense_laplacian(m, xs, pairs, t)
        z = xs
        if m.left is not None:
            z = torch.einsum("ij,njc->nic", m.left[t].weight, z)
        if m.right is not None:
            z = z @ m.right[t].weight.t()
        lz = (L @ z.reshape(n * Dm, C)).view(n, Dm, C)
        if m.use_act:
            lz = F.elu(lz)
        xs = (1 + torch.tanh(m.eps[t])).view(1, Dm, 1) * xs - lz
    return m.lin2(xs.reshape(n, Dm * C))


def _graph_edges(n=9, e=22, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])  # no isolated nodes here
    return torch.cat([ei, ring], 1)  # directed rows, duplicates and self loops included


def _model(variant, extra=False, **kw):
    torch.manual_seed(3)
    m = NSD(6, 3, variant, d=3, hidden=4, layers=2, add_lp=extra, add_hp=extra, **kw).double().eval()
    with torch.no_grad():  # off the identity / zero initialisation, so every term matters
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("extra", [False, True])
@pytest.mark.parametrize("variant", ["diag", "orthogonal", "general"])
def test_matches_dense_sheaf_diffusion(variant, extra, one_thread):
    m = _model(variant, extra)
    ei = _graph_edges()
    x = torch.randn(9, 6, dtype=D64, requires_grad=True)
    y = m(x, ei)
    xr = x.detach().clone().requires_grad_()
    r = _dense_forward(m, xr, ei)
    torch.testing.assert_close(y, r, rtol=1e-9, atol=1e-9)
    go = torch.randn_like(y)
    params = [p for p in m.parameters()]
    g1 = torch.autograd.grad(y, [x] + params, go, allow_unused=True)
    g2 = torch.autograd.grad(r, [xr] + params, go, allow_unused=True)
    for a, b in zip(g1, g2):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("kw", [dict(linear=True), dict(sparse_learner=True, second_linear=True),
                                dict(edge_weights=False, left_weights=False, right_weights=False)])
def test_options_match_dense_reference(kw, one_thread):
    for variant in ("diag", "orthogonal"):
        m = _model(variant, **kw)
        ei = _graph_edges(seed=1)
        x = torch.randn(9, 6, dtype=D64)
        torch.testing.assert_close(m(x, ei), _dense_forward(m, x, ei), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variant", ["diag", "orthogonal", "general"])
def test_gradcheck(variant, one_thread):
    m = _model(variant, extra=True)
    g = Graph.from_edge_index(torch.tensor([[0, 1, 1, 2, 3, 0], [1, 0, 2, 1, 0, 3]]), num_nodes=5)  # 4 isolated
    x = torch.randn(5, 6, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t, g), (x,))
    w = m.map_self[1].weight
    assert torch.autograd.gradcheck(lambda t: torch.func.functional_call(m, {"map_self.1.weight": t}, (x, g)),
                                    (w.detach().clone().requires_grad_(),))


def test_sym_inv_sqrt_forward_and_backward_at_repeated_eigenvalues():
    a = torch.randn(4, 3, 3, dtype=D64)
    a = a @ a.transpose(1, 2) + torch.eye(3, dtype=D64)
    s = sym_inv_sqrt(a)
    torch.testing.assert_close(s @ a @ s, torch.eye(3, dtype=D64).expand(4, 3, 3))
    assert torch.autograd.gradcheck(lambda b: sym_inv_sqrt(b + b.transpose(1, 2)), (a.clone().requires_grad_(),))
    # At A = 2 I (all eigenvalues equal, where eigh's own backward is NaN) the derivative in a symmetric direction E
    # is -E / (2 * 2^{3/2}).
    eye = (2 * torch.eye(3, dtype=D64)).unsqueeze(0).requires_grad_()
    e = torch.randn(1, 3, 3, dtype=D64)
    e = e + e.transpose(1, 2)
    (g,) = torch.autograd.grad(sym_inv_sqrt(eye), eye, e)
    torch.testing.assert_close(g, -e / (2 * 2 ** 1.5))


@pytest.mark.parametrize("d", [2, 3, 4])
def test_orthogonal_maps_are_the_matrix_exponential(d):
    """The closed forms (d = 2, 3) against matrix_exp, at angles near and at 0 too, and their gradients."""
    m = d * (d - 1) // 2
    p = torch.randn(40, m, dtype=D64) * 2
    p[0], p[1], p[2] = 0, 1e-5, 1e-3
    iu = torch.triu_indices(d, d, 1)
    a = torch.zeros(40, d, d, dtype=D64)
    a[:, iu[0], iu[1]] = p
    torch.testing.assert_close(_orthogonal(p, d), torch.linalg.matrix_exp(a - a.transpose(1, 2)))
    assert torch.autograd.gradcheck(lambda t: _orthogonal(t, d), (p[:4].clone().requires_grad_(),))


def test_self_loops_duplicates_and_direction_do_not_matter(one_thread):
    m = _model("general")
    x = torch.randn(6, 6, dtype=D64)
    base = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])  # node 5 isolated
    messy = torch.cat([base, base.flip(0), base[:, :2], torch.tensor([[2, 5], [2, 5]])], 1)
    torch.testing.assert_close(m(x, base), m(x, messy))


def test_isolated_nodes_are_only_rescaled(one_thread):
    m = _model("orthogonal", extra=True)
    x = torch.randn(4, 6, dtype=D64, requires_grad=True)
    ei = torch.tensor([[0, 1], [1, 0]])
    y = m(x, ei)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    # Node 3 has no edge: its output depends on its own features only.
    x2 = x.detach().clone()
    x2[[0, 1, 2]] += 1.0
    torch.testing.assert_close(m(x2, ei)[3], y[3].detach())


def test_empty_inputs():
    m = _model("general")
    assert m(torch.randn(5, 6, dtype=D64), torch.zeros(2, 0, dtype=torch.long)).shape == (5, 3)
    assert m(torch.randn(0, 6, dtype=D64), torch.zeros(2, 0, dtype=torch.long)).shape == (0, 3)


def test_learns_a_heterophilous_toy_graph():
    """Two classes, every edge joins different classes, features only weakly informative: NSD fits it."""
    torch.manual_seed(0)
    n = 60
    y = torch.arange(n) % 2
    src = torch.randint(0, n, (300,))
    dst = (src + 2 * torch.randint(0, n // 2, (300,)) + 1) % n  # odd offset: the other class
    x = torch.randn(n, 8) + 0.3 * y[:, None]
    m = NSD(8, 2, "diag", d=2, hidden=8, layers=2)
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    g = Graph.from_edge_index(torch.stack([src, dst]), num_nodes=n)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(m(x, g), y).backward()
        opt.step()
    assert (m(x, g).argmax(1) == y).float().mean() > 0.95


def test_bad_arguments():
    with pytest.raises(ValueError, match="variant"):
        NSD(4, 2, "bundle")
    with pytest.raises(ValueError, match="d must be"):
        NSD(4, 2, "diag", d=0)
    with pytest.raises(ValueError, match="d must be >= 2"):
        NSD(4, 2, "orthogonal", d=1)
    with pytest.raises(ValueError, match="hidden"):
        NSD(4, 2, hidden=0)
    m = NSD(4, 2)
    with pytest.raises(ValueError, match="x must be"):
        m(torch.randn(5, 3), torch.tensor([[0], [1]]))
    with pytest.raises(TypeError, match="x must be"):
        m([[0.0] * 4], torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match="nodes"):
        m(torch.randn(5, 4), Graph.from_edge_index(torch.tensor([[0], [1]]), num_nodes=3))

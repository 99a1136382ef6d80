"""HEI pieces against plain-PyTorch references (float64), double backward through the backbones, LINKX, errors."""

import pytest
import torch
import torch.nn.functional as F
from fastlayers import Graph
from fastlayers.models import HEI
from fastlayers.models.hei import GCN, MLP, irm_penalty, local_homophily, neighbourhood_score
from fastlayers.nn import LINKX

D64 = torch.float64


def _graph(n=10, e=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    return torch.cat([ei, ei.flip(0)], 1)


def test_neighbourhood_score_matches_a_loop():
    ei = _graph()
    ei = ei[:, ei[1] != 9]  # node 9 has no in-neighbour
    x = torch.randn(10, 5, dtype=D64)
    s = neighbourhood_score(x, ei)
    xn = x / x.norm(dim=1, keepdim=True)
    for v in range(10):
        nb = ei[0, ei[1] == v]
        ref = ((xn[v] - xn[nb]) ** 2).sum(1).mean() if nb.numel() else torch.tensor(0.0, dtype=D64)
        torch.testing.assert_close(s[v], ref)


def test_local_homophily():
    ei = torch.tensor([[0, 1, 2, 0], [1, 0, 0, 2]])
    h = local_homophily(torch.tensor([0, 0, 1, 1]), ei)
    torch.testing.assert_close(h[:2], torch.tensor([0.5, 1.0], dtype=D64))
    assert h[2] == 0 and torch.isnan(h[3])


def test_irm_penalty_matches_closed_form():
    """d/dw mean_k CE(w z, y) at w = 1 is the env-weighted mean of (softmax(z) - onehot(y)) . z."""
    z = torch.randn(12, 3, dtype=D64)
    y = torch.randint(0, 3, (12,))
    env = torch.rand(12, 2, dtype=D64)
    per_node = ((torch.softmax(z, 1) - F.one_hot(y, 3)) * z).sum(1)
    ref = ((env * per_node[:, None]).sum(0) / env.sum(0)) ** 2
    torch.testing.assert_close(irm_penalty(z, y, env), ref)
    zz, ee = z.clone().requires_grad_(), env.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: irm_penalty(a, y, b), (zz, ee))


def test_linkx_matches_dense_reference():
    torch.manual_seed(0)
    ei = _graph()
    m = LINKX(10, 5, 8, 3, num_layers=2, num_edge_layers=2, num_node_layers=2).double().eval()
    x = torch.randn(10, 5, dtype=D64)
    A = torch.zeros(10, 10, dtype=D64).index_put_((ei[1], ei[0]), torch.ones(ei.size(1), dtype=D64), accumulate=True)
    h_a = A @ m.adj_weight + m.adj_bias
    h_a = m.edge_mlp[0](F.relu(h_a))
    h_x = m.node_mlp[1](F.relu(m.node_mlp[0](x)))
    h = F.relu(m.cat_lin(torch.cat([h_a, h_x], 1)) + h_a + h_x)
    ref = m.final_mlp[1](F.relu(m.final_mlp[0](h)))
    torch.testing.assert_close(m(x, ei), ref)


def _hei(backbone):
    torch.manual_seed(1)
    return HEI(backbone, num_envs=3).double()


@pytest.mark.parametrize("kind", ["gcn", "linkx"])
def test_hei_objective_is_twice_differentiable_through_the_backbone(kind, one_thread):
    """gradgradcheck of the IRM penalty as a function of the input features: its second derivative runs through
    the backbone's spmm / scatter backward twice."""
    n, f = 6, 3
    ei = _graph(n, 10, seed=2)
    g = Graph.from_edge_index(ei, num_nodes=n)
    backbone = GCN(f, 4, 2, dropout=0.0) if kind == "gcn" else LINKX(n, f, 4, 2)
    model = _hei(backbone.double()).eval()
    y = torch.randint(0, 2, (n,))
    env = torch.rand(n, 3, dtype=D64)

    def penalty(x):
        return irm_penalty(model(x, g), y, env).sum()

    x = torch.randn(n, f, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(penalty, (x,))
    assert torch.autograd.gradgradcheck(penalty, (x,))


def test_hei_losses_and_environments():
    n, f = 20, 4
    ei = _graph(n, 50)
    x = torch.randn(n, f, dtype=D64)
    y = torch.randint(0, 3, (n,))
    mask = torch.rand(n) < 0.6
    model = _hei(GCN(f, 8, 3).double())
    q = model.environments(x, ei)
    assert q.shape == (n, 3)
    torch.testing.assert_close(q.sum(1), torch.ones(n, dtype=D64))
    out = model.losses(x, ei, y, mask)
    assert out["classifier"].requires_grad and out["environment"].requires_grad
    (out["classifier"] + out["environment"]).backward()
    # The classifier loss never reaches the environment network and vice versa: each optimiser owns its part.
    assert all(p.grad is not None for p in model.env_parameters())
    model.zero_grad()
    model.losses(x, ei, y, mask)["classifier"].backward()
    assert all(p.grad is None for p in model.env_parameters())
    model.zero_grad()
    model.losses(x, ei, y, mask)["environment"].backward()
    assert all(p.grad is None for p in model.classifier_parameters())


def test_hei_trains_and_penalty_weight_zero_is_erm():
    torch.manual_seed(0)
    n, f = 40, 6
    ei = _graph(n, 80)
    x = torch.randn(n, f)
    y = (x[:, 0] > 0).long()
    mask = torch.ones(n, dtype=torch.bool)
    model = HEI(MLP(f, 16, 2, dropout=0.0), penalty_weight=0.0)
    out = model.losses(x, ei, y, mask)
    torch.testing.assert_close(out["classifier"], F.cross_entropy(model(x, ei), y))
    model.penalty_weight = 1.0
    opt = torch.optim.Adam(model.classifier_parameters(), lr=0.05)
    opt_env = torch.optim.Adam(model.env_parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        opt_env.zero_grad()
        out = model.losses(x, ei, y, mask)
        (out["classifier"] + out["environment"]).backward()
        opt.step()
        opt_env.step()
    assert (model(x, ei).argmax(1) == y).float().mean() > 0.9


def test_empty_graph_and_isolated_nodes():
    x = torch.randn(5, 3)
    s = neighbourhood_score(x, torch.zeros(2, 0, dtype=torch.long))
    assert torch.equal(s, torch.zeros(5))
    m = HEI(GCN(3, 4, 2))
    assert m.environments(x, torch.zeros(2, 0, dtype=torch.long)).shape == (5, 2)
    assert LINKX(0, 3, 4, 2)(torch.randn(0, 3), torch.zeros(2, 0, dtype=torch.long)).shape == (0, 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_envs"):
        HEI(MLP(3, 4, 2), num_envs=1)
    with pytest.raises(TypeError, match="backbone"):
        HEI(lambda x, g: x)
    m = HEI(MLP(3, 4, 2))
    x, ei = torch.randn(5, 3), torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="y must be"):
        m.losses(x, ei, torch.zeros(4, dtype=torch.long), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be"):
        m.losses(x, ei, torch.zeros(5, dtype=torch.long), torch.ones(5))
    with pytest.raises(ValueError, match="x must be"):
        LINKX(5, 3, 4, 2)(torch.randn(6, 3), ei)
    with pytest.raises(ValueError, match="hidden"):
        LINKX(5, 3, 0, 2)
    with pytest.raises(ValueError, match="x must be"):
        neighbourhood_score(torch.randn(5), ei)

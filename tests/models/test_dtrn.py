"""DTRN: shapes, the generated LayerNorm parameters, task-stacked computation, and a tiny synthetic training run."""

import pytest
import torch
from fastlayers.examples.dtrn import run
from fastlayers.models import DTRN
from fastlayers.models.dtrn import synthetic_multitask


def _model():
    return DTRN([4, 5, 6], n_items=20, n_behaviours=2, n_tasks=3, dim=8, heads=2)


def test_shapes_and_initial_layer_norm():
    torch.manual_seed(0)
    m = _model()
    fields = torch.stack([torch.randint(0, c, (7,)) for c in (4, 5, 6)], dim=1)
    seqs = torch.randint(0, 20, (7, 2, 5))
    assert m(fields, seqs).shape == (7, 3)
    p = m.layer_norm_params()
    assert p.shape == (3, 2, 4, 8)
    torch.testing.assert_close(p[:, :, 0], torch.ones(3, 2, 8))  # gains start at 1, biases at 0
    torch.testing.assert_close(p[:, :, 1], torch.zeros(3, 2, 8))


def test_task_stacking_matches_one_task_at_a_time():
    # The stacked [tasks * N, L, d] computation gives each task what a loop over tasks would.
    torch.manual_seed(0)
    m = _model()
    with torch.no_grad():
        m.hyper.head.weight.normal_()  # make the generated LayerNorms differ per task and behaviour
    fields = torch.stack([torch.randint(0, c, (4,)) for c in (4, 5, 6)], dim=1)
    seqs = torch.randint(0, 20, (4, 2, 5))
    out = m(fields, seqs)
    p = m.layer_norm_params()
    for t in range(3):
        for k in range(2):
            x = m.items(seqs[:, k])
            q = p[t, k][None].expand(4, -1, -1)
            h = m.encoder(x, q[:, 0], q[:, 1], q[:, 2], q[:, 3])
            mask = (seqs[:, k] != 0)[..., None].float()
            pooled = (h * mask).sum(1) / mask.sum(1).clamp_min(1)
            if k == 0:
                pools = [pooled]
            else:
                pools.append(pooled)
        e = torch.stack([emb(fields[:, j]) for j, emb in enumerate(m.fields)], dim=1)
        gate = torch.sigmoid(torch.relu(e.mean(-1) @ m.gate1[t]) @ m.gate2[t])
        z = torch.cat([(gate[..., None] * e).flatten(1), *pools], dim=-1)
        expect = (torch.relu(z @ m.tower1[t]) @ m.tower2[t]).squeeze(-1)
        torch.testing.assert_close(out[:, t], expect, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert m.hyper.trunk[0].weight.grad.abs().sum() > 0


def _sequential_layer_norm_params(m, hyper):
    """The computation before the TIM hypernetwork was a fastlayers.nn.HyperNetwork: an nn.Sequential on
    [task embedding, behaviour embedding], viewed as (gain1, bias1, gain2, bias2), residual around (1, 0)."""
    t = m.task_emb[:, None, :].expand(-1, m.n_beh, -1)
    b = m.beh_emb[None, :, :].expand(m.n_tasks, -1, -1)
    out = hyper(torch.cat([t, b], dim=-1)).view(m.n_tasks, m.n_beh, 4, m.dim)
    return out + torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=out.dtype)[:, None]


def test_hypernetwork_generates_what_the_sequential_did():
    # Same numbers and gradients (float64) as the nn.Sequential it replaced, with the same weights.
    torch.manual_seed(0)
    m = _model().double()
    with torch.no_grad():
        for p in m.hyper.parameters():
            p.normal_()
    old = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32)).double()
    old[0].load_state_dict(m.hyper.trunk[0].state_dict())
    old[2].load_state_dict(m.hyper.head.state_dict())
    new_p, old_p = m.layer_norm_params(), _sequential_layer_norm_params(m, old)
    torch.testing.assert_close(new_p, old_p, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(new_p)
    g_new = torch.autograd.grad((new_p * w).sum(), [m.task_emb, m.beh_emb, *m.hyper.trunk[0].parameters(),
                                                   *m.hyper.head.parameters()])
    g_old = torch.autograd.grad((old_p * w).sum(), [m.task_emb, m.beh_emb, *old[0].parameters(),
                                                   *old[2].parameters()])
    for a, b in zip(g_new, g_old):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # Only the hypernetwork's trunk and head train: the LayerNorm templates are frozen.
    assert not any(p.requires_grad for p in m.hyper.target.parameters())


def test_same_initialisation_and_old_checkpoints_load():
    # The hypernetwork draws its initial weights in the order the nn.Sequential did, so a seed gives the same model.
    torch.manual_seed(0)
    m = _model()
    torch.manual_seed(0)
    torch.nn.ModuleList(torch.nn.Embedding(c, 8) for c in (4, 5, 6))
    torch.nn.Embedding(20, 8, padding_idx=0)
    torch.randn(3, 8), torch.randn(2, 8)
    first = torch.nn.Linear(16, 32)
    torch.testing.assert_close(m.hyper.trunk[0].weight, first.weight, rtol=0, atol=0)
    # A state_dict saved with the nn.Sequential names (hyper.0.*, hyper.2.*) loads, strictly, into the same numbers.
    state = {k: v for k, v in m.state_dict().items() if not k.startswith("hyper.")}
    state.update({"hyper.0.weight": torch.randn(32, 16), "hyper.0.bias": torch.randn(32),
                  "hyper.2.weight": torch.randn(32, 32), "hyper.2.bias": torch.randn(32)})
    m2 = _model()
    m2.load_state_dict(state)
    torch.testing.assert_close(m2.hyper.head.weight, state["hyper.2.weight"], rtol=0, atol=0)
    torch.testing.assert_close(m2.hyper.trunk[0].bias, state["hyper.0.bias"], rtol=0, atol=0)
    m2.load_state_dict(m.state_dict())  # and the new names, of course


def test_bad_args():
    with pytest.raises(ValueError, match="divisible"):
        DTRN([3], n_items=5, n_behaviours=1, n_tasks=1, dim=5, heads=2)


def test_synthetic_training_learns_both_tasks(one_thread):
    _fields, _seqs, labels = synthetic_multitask(100, n_tasks=2)
    assert labels.shape == (100, 2) and 0.2 < labels.mean() < 0.8
    acc = run(steps=120, verbose=False)
    assert all(a > 0.65 for a in acc)

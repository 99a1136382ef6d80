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
        m.hyper[-1].weight.normal_()  # make the generated LayerNorms differ per task and behaviour
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
    assert m.hyper[0].weight.grad.abs().sum() > 0


def test_bad_args():
    with pytest.raises(ValueError, match="divisible"):
        DTRN([3], n_items=5, n_behaviours=1, n_tasks=1, dim=5, heads=2)


def test_synthetic_training_learns_both_tasks(one_thread):
    fields, seqs, labels = synthetic_multitask(100, n_tasks=2)
    assert labels.shape == (100, 2) and 0.2 < labels.mean() < 0.8
    acc = run(steps=120, verbose=False)
    assert all(a > 0.65 for a in acc)

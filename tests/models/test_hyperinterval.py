"""HyperInterval: the loss terms, the regulariser, and a tiny continual run on two Split Digits tasks."""

import pytest
import torch
from fastlayers.examples.hyperinterval import TASKS, accuracy, split_digits
from fastlayers.models import HyperInterval


def _model():
    return HyperInterval((64, 16, 2), n_tasks=3, embedding_dim=8, hidden=(16,), eps=1.0)


def test_split_digits():
    tasks = split_digits(0)
    assert len(tasks) == len(TASKS) == 5
    for xtr, ytr, xte, yte in tasks:
        assert xtr.shape[1] == 64 and 0 <= xtr.min() and xtr.max() <= 1
        assert set(ytr.tolist()) == {0, 1} and set(yte.tolist()) == {0, 1}
        assert xtr.shape[0] > 2 * xte.shape[0]


def test_worst_case_loss_exceeds_mid_loss():
    torch.manual_seed(0)
    m = _model()
    x, y = torch.rand(20, 64), torch.randint(0, 2, (20,))
    mid = m.loss(x, y, 0, kappa=1.0, eps=1.0)
    worst = m.loss(x, y, 0, kappa=0.0, eps=1.0)
    assert worst > mid
    # With no radius the worst case is the mid point.
    torch.testing.assert_close(m.loss(x, y, 0, kappa=0.0, eps=0.0), m.loss(x, y, 0, kappa=1.0, eps=0.0))


def test_regulariser_pulls_to_stored_outputs():
    torch.manual_seed(0)
    m = _model()
    assert m.regulariser(1) == 0
    m.end_task(0)
    assert m.regulariser(1) == 0  # outputs unchanged since they were stored
    with torch.no_grad():
        m.net.heads[0].weight.add_(0.1)
    reg = m.regulariser(1)
    assert reg > 0
    reg.backward()
    assert m.net.heads[0].weight.grad.abs().sum() > 0
    assert m.mu.grad is None or torch.all(m.mu.grad == 0)  # earlier embeddings stay fixed


def test_radius_schedule_and_bad_task():
    m = _model()
    torch.testing.assert_close(m.radius(1).sum(), torch.tensor(1.0))
    assert HyperInterval.schedule(0, 100, 1.0) == (1.0, 0.0)
    assert HyperInterval.schedule(50, 100, 1.0) == (0.75, 1.0)
    with pytest.raises(IndexError, match="task"):
        m.radius(3)


def test_two_tasks_learned_and_first_kept(one_thread):
    torch.manual_seed(0)
    tasks = split_digits(0)[:2]
    m = HyperInterval((64, 32, 2), n_tasks=2, embedding_dim=16, hidden=(32, 32), eps=1.0)
    g = torch.Generator().manual_seed(0)
    m.fit_task(tasks[0][0], tasks[0][1], 0, steps=80, generator=g)
    first = accuracy(m, tasks[0][2], tasks[0][3], 0)
    mu0 = m.mu[0].detach().clone()
    m.fit_task(tasks[1][0], tasks[1][1], 1, steps=80, generator=g)
    assert torch.equal(m.mu[0], mu0)
    assert first >= 0.95
    assert accuracy(m, tasks[1][2], tasks[1][3], 1) >= 0.9
    assert accuracy(m, tasks[0][2], tasks[0][3], 0) >= first - 0.05


def test_intersection_of_hand_made_boxes():
    # Boxes [0, 2] x [0, 4] and [1, 3] x [3, 5]: intersection [1, 2] x [3, 4].
    mu = torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    r = torch.tensor([[1.0, 2.0], [1.0, 1.0]])
    centre, radius = HyperInterval.intersection(mu, r)
    torch.testing.assert_close(centre, torch.tensor([1.5, 3.5]))
    torch.testing.assert_close(radius, torch.tensor([0.5, 0.5]))
    # One box: its own centre and radius.
    centre, radius = HyperInterval.intersection(mu[:1], r[:1])
    torch.testing.assert_close(centre, mu[0])
    torch.testing.assert_close(radius, r[0])
    # Touching boxes ([0, 2] and [2, 4]) intersect in a point.
    centre, radius = HyperInterval.intersection(torch.tensor([[1.0], [3.0]]), torch.ones(2, 1))
    torch.testing.assert_close(centre, torch.tensor([2.0]))
    torch.testing.assert_close(radius, torch.tensor([0.0]))


def test_intersection_empty_or_bad_shape_raises():
    # Second dimension: [0, 1] and [2, 3] are disjoint.
    mu = torch.tensor([[0.0, 0.5], [0.0, 2.5]])
    r = torch.full((2, 2), 0.5)
    with pytest.raises(ValueError, match=r"empty intersection \(dimensions \[1\]"):
        HyperInterval.intersection(mu, r)
    with pytest.raises(ValueError, match="mu and r"):
        HyperInterval.intersection(mu[0], r[0])
    with pytest.raises(ValueError, match="mu and r"):
        HyperInterval.intersection(mu, r[:1])


def test_universal_embedding_needs_finished_tasks_and_intersection():
    torch.manual_seed(0)
    m = _model()
    with pytest.raises(ValueError, match="finished task"):
        m.universal_embedding()
    with torch.no_grad():
        m.mu.copy_(torch.tensor([0.0, 5.0, 0.0]).unsqueeze(1).expand_as(m.mu))
    m.end_task(0)
    torch.testing.assert_close(m.universal_embedding(), m.mu[0].detach())
    m.end_task(1)  # task 1's box is 5 away, radii sum to eps = 1: disjoint
    with pytest.raises(ValueError, match="empty intersection"):
        m.universal_embedding()
    with pytest.raises(ValueError, match="empty intersection"):
        m.predict(torch.rand(3, 64))
    with pytest.raises(ValueError, match="gamma"):
        HyperInterval((64, 2), n_tasks=2, gamma=-1.0)


def test_universal_penalty():
    torch.manual_seed(0)
    m = HyperInterval((64, 16, 2), n_tasks=2, embedding_dim=8, hidden=(16,), eps=1.0, universal=True)
    assert m.universal_penalty(1) == 0  # no earlier task
    m.end_task(0)
    r1 = m.radius(1).detach()
    with torch.no_grad():
        m.mu[1] = m.mu[0] + 0.4 * r1  # earlier centre within the inner half of the box: no penalty
    assert m.universal_penalty(1) == 0
    with torch.no_grad():
        m.mu[1] = m.mu[0] + r1
    pen = m.universal_penalty(1)
    torch.testing.assert_close(pen, ((r1 / 2) ** 2).sum())
    pen.backward()
    assert torch.all(m.mu.grad[1] > 0) and torch.all(m.mu.grad[0] == 0)  # pulls task 1 back, task 0 fixed
    # Off by default: the loss does not include it.
    x, y = torch.rand(10, 64), torch.randint(0, 2, (10,))
    m.zero_grad()
    with_term = m.loss(x, y, 1, 1.0, 1.0)
    m.universal = False
    torch.testing.assert_close(with_term - m.loss(x, y, 1, 1.0, 1.0), m.gamma * pen.detach())


def test_universal_training_keeps_embedding_in_every_box(one_thread):
    torch.manual_seed(0)
    tasks = split_digits(0)[:3]
    m = HyperInterval((64, 32, 2), n_tasks=3, embedding_dim=16, hidden=(32, 32), eps=1.0, universal=True)
    g = torch.Generator().manual_seed(0)
    for t, (xtr, ytr, _, _) in enumerate(tasks):
        m.fit_task(xtr, ytr, t, steps=60, generator=g)
    z = m.universal_embedding()
    for t in range(3):
        lo, hi = m.mu[t] - m.radius(t), m.mu[t] + m.radius(t)
        assert torch.all(lo <= z) and torch.all(z <= hi)
    # The universal network is used for every task; it is a trained network, not chance, on the first task.
    assert accuracy(m, tasks[0][2], tasks[0][3], None) >= 0.8
    assert torch.equal(m.predict(tasks[0][2]), m.net(tasks[0][2], z)[0].argmax(-1))

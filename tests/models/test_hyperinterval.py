"""HyperInterval: the loss terms, the regulariser, and a tiny continual run on two Split Digits tasks."""

import pytest
import torch

from fastlayers.examples.hyperinterval import TASKS, accuracy, split_digits
from fastlayers.models import HyperInterval


@pytest.fixture
def one_thread():
    # Tiny layers: on a busy 2-core machine parallel regions cost far more than they save.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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

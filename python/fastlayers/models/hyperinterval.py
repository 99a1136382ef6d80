"""HyperInterval (2024): continual learning with a hypernetwork fed interval task embeddings.

Each task t owns an embedding interval: centre mu_t, radius r_t = eps * softmax(rho_t). IntervalHyperNetwork
propagates it through the hypernetwork and the generated target MLP (interval arithmetic, fused kernels), giving
logit bounds. The loss mixes the mid-point cross-entropy with the worst case inside the interval (lower logit for
the true class, upper for the others): kappa * CE(mid) + (1 - kappa) * CE(worst); kappa decays and eps ramps up
during a task (see ``schedule``). After a task, the hypernetwork's output for its embedding centre is stored; later
tasks add beta * the squared distance of the current outputs for earlier embeddings to the stored ones.

Universal embedding (``universal=True``): each task's box [mu_t - r_t, mu_t + r_t] (r_t at the full eps) is kept
overlapping the earlier ones, so that after training one embedding, the centre of the intersection of all boxes,
serves every task (one generated network for all tasks). A new task's centre starts at the centre c of the
intersection of the earlier boxes, and the loss adds gamma * sum_d relu(|mu_t - c| - r_t / 2)_d^2: c stays inside
the inner half of the new box, so the running intersection never becomes empty (see ``universal_penalty``).
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.hyper import IntervalHyperNetwork


class HyperInterval(nn.Module):
    """Args: layer_sizes (target MLP, input first, output = classes per task), n_tasks, embedding_dim, hidden
    (hypernetwork trunk), eps (final total embedding radius), beta (output regulariser weight), universal (keep
    the task boxes intersecting, for ``universal_embedding``), gamma (weight of the intersection term)."""

    def __init__(self, layer_sizes, n_tasks: int, embedding_dim: int = 24, hidden=(75, 75), eps: float = 1.0,
                 beta: float = 0.01, universal: bool = False, gamma: float = 10.0):
        super().__init__()
        if n_tasks < 1:
            raise ValueError(f"n_tasks must be positive, got {n_tasks}")
        if gamma < 0:
            raise ValueError(f"gamma must be non-negative, got {gamma}")
        self.universal, self.gamma = bool(universal), float(gamma)
        self.net = IntervalHyperNetwork(layer_sizes, embedding_dim, hidden)
        self.mu = nn.Parameter(torch.randn(n_tasks, embedding_dim) * 0.5)
        self.rho = nn.Parameter(torch.zeros(n_tasks, embedding_dim))
        self.eps, self.beta, self.n_tasks = float(eps), float(beta), n_tasks
        n_params = self.net.generate(self.mu[0]).numel()
        self.register_buffer("targets", torch.zeros(n_tasks, n_params))
        self.register_buffer("done", torch.zeros(n_tasks, dtype=torch.bool))

    def _task(self, task):
        if not 0 <= task < self.n_tasks:
            raise IndexError(f"task must be in [0, {self.n_tasks}), got {task}")
        return task

    def radius(self, task: int, eps=None) -> torch.Tensor:
        return (self.eps if eps is None else eps) * torch.softmax(self.rho[self._task(task)], dim=0)

    def forward(self, x: torch.Tensor, task: int, eps=None):
        """x [N, in]; returns (logits centre, logits radius), each [N, classes], for task's embedding interval."""
        return self.net(x, self.mu[self._task(task)], self.radius(task, eps))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task=None) -> torch.Tensor:
        """x [N, in] -> class indices [N], from task's embedding centre (radius 0), or with task=None from the
        universal embedding (the same generated network for every task)."""
        z = self.universal_embedding() if task is None else self.mu[self._task(task)]
        return self.net(x, z)[0].argmax(-1)

    @staticmethod
    def intersection(mu: torch.Tensor, r: torch.Tensor):
        """Intersection of the boxes [mu_t - r_t, mu_t + r_t]; mu, r [T, e] (T >= 1) -> (centre [e], radius [e]).
        Raises ValueError if it is empty (some dimension has max lower bound > min upper bound)."""
        if mu.dim() != 2 or mu.shape != r.shape or mu.shape[0] == 0:
            raise ValueError(f"mu and r must both be [T, e] with T >= 1, got {tuple(mu.shape)} and {tuple(r.shape)}")
        lo, hi = (mu - r).max(0).values, (mu + r).min(0).values
        if bool((lo > hi).any()):
            dims = torch.nonzero(lo > hi).squeeze(1).tolist()
            raise ValueError(f"the task intervals (mu, r) have an empty intersection (dimensions {dims[:8]}"
                             f"{'...' if len(dims) > 8 else ''})")
        return (lo + hi) / 2, (hi - lo) / 2

    def _boxes(self, tasks):
        mu = self.mu[tasks].detach()
        r = torch.stack([self.radius(t) for t in tasks]).detach()
        return mu, r

    @torch.no_grad()
    def universal_embedding(self, tasks=None) -> torch.Tensor:
        """Centre [e] of the intersection of the finished tasks' boxes (radius at the full eps), or of ``tasks``
        (a list of task ids). Raises ValueError if no task is finished or the boxes do not intersect (train with
        universal=True to keep them intersecting)."""
        if tasks is None:
            tasks = [t for t in range(self.n_tasks) if bool(self.done[t])]
            if not tasks:
                raise ValueError("universal_embedding needs at least one finished task (fit_task/end_task)")
        tasks = [self._task(t) for t in tasks]
        return self.intersection(*self._boxes(tasks))[0]

    def universal_penalty(self, task: int) -> torch.Tensor:
        """sum_d relu(|mu_t - c| - r_t / 2)_d^2 with c the centre of the earlier finished tasks' intersection:
        zero while c lies in the inner half of task's box. The half margin (rather than touching boxes) keeps the
        intersection from shrinking to a point. Zero when no earlier task is finished."""
        prev = [t for t in range(task) if bool(self.done[t])]
        if not prev:
            return self.mu.new_zeros(())
        c = self.intersection(*self._boxes(prev))[0]
        gap = torch.relu((self.mu[task] - c).abs() - self.radius(task) / 2)
        return (gap ** 2).sum()

    def regulariser(self, task: int) -> torch.Tensor:
        """Mean squared distance of the hypernetwork's outputs for earlier tasks' (fixed) embeddings to the
        outputs stored when those tasks ended."""
        prev = [t for t in range(task) if bool(self.done[t])]
        if not prev:
            return self.mu.new_zeros(())
        gen = torch.stack([self.net.generate(self.mu[t].detach()) for t in prev])
        return ((gen - self.targets[prev]) ** 2).sum(-1).mean()

    def loss(self, x, y, task: int, kappa: float, eps: float) -> torch.Tensor:
        y_c, y_r = self(x, task, eps)
        true = F.one_hot(y, y_c.shape[-1]).bool()
        worst = torch.where(true, y_c - y_r, y_c + y_r)
        fit = kappa * F.cross_entropy(y_c, y) + (1 - kappa) * F.cross_entropy(worst, y)
        out = fit + self.beta * self.regulariser(task)
        if self.universal:
            out = out + self.gamma * self.universal_penalty(task)
        return out

    @staticmethod
    def schedule(step: int, steps: int, eps: float):
        """(kappa, eps) at a step of a task: eps ramps linearly over the first half, kappa decays 1 -> 0.5."""
        frac = step / max(1, steps)
        return 1.0 - 0.5 * frac, eps * min(1.0, 2 * frac)

    @torch.no_grad()
    def end_task(self, task: int) -> None:
        self.targets[self._task(task)] = self.net.generate(self.mu[task])
        self.done[task] = True

    def fit_task(self, x, y, task: int, steps: int = 300, lr: float = 1e-3, batch: int = 64, generator=None):
        """Trains on one task (the current embedding and the hypernetwork; earlier embeddings stay fixed), then
        stores its regulariser target. x [N, in], y [N] class indices. With universal=True the task's centre
        starts at the centre of the earlier tasks' intersection (the penalty alone, at Adam's step size, could not
        move it there in a few hundred steps)."""
        task = self._task(task)
        if self.universal:
            prev = [t for t in range(task) if bool(self.done[t])]
            if prev:
                with torch.no_grad():
                    self.mu[task] = self.universal_embedding(prev)
        opt = torch.optim.Adam([p for n, p in self.named_parameters() if n not in ("mu", "rho")] +
                               [self.mu, self.rho], lr=lr)
        for step in range(steps):
            idx = torch.randint(0, x.shape[0], (min(batch, x.shape[0]),), generator=generator)
            kappa, eps = self.schedule(step, steps, self.eps)
            opt.zero_grad()
            self.loss(x[idx], y[idx], task, kappa, eps).backward()
            # Only the current task's embedding moves.
            keep = torch.arange(self.n_tasks) != task
            self.mu.grad[keep] = 0
            self.rho.grad[keep] = 0
            opt.step()
        self.end_task(task)

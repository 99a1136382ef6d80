"""HyperInterval on Split Digits: ``python -m fastlayers.examples.hyperinterval [--steps N] [--seed S] [--universal]``.

scikit-learn's bundled 8x8 digits (1797 images, nothing downloaded) split into 5 tasks of 2 classes
((0, 1), (2, 3), ...), task-incremental: the task id selects the embedding at test time. After each task the
script prints the test accuracy on every task seen so far, then the final average and the first task's drop.
With ``--universal`` the task intervals are kept intersecting during training, and the script also prints every
task's accuracy with the single universal embedding (the centre of the intersection; no task id needed to pick
the weights, though the 2-way head still answers "first or second class of the task").
"""

import argparse

import torch

from fastlayers._optional import require
from fastlayers.models import HyperInterval

TASKS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


def split_digits(seed: int = 0, test_fraction: float = 0.3):
    """[(x_train, y_train, x_test, y_test)] per task; x in [0, 1], [N, 64] float32; y in {0, 1}."""
    load_digits = require("sklearn.datasets", "fastlayers.examples.hyperinterval").load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(seed)
    out = []
    for a, b in TASKS:
        idx = torch.nonzero((y == a) | (y == b)).squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_test = int(test_fraction * idx.numel())
        test, train = idx[:n_test], idx[n_test:]
        out.append((x[train], (y[train] == b).long(), x[test], (y[test] == b).long()))
    return out


def accuracy(model, x, y, task):
    """task None: the universal embedding."""
    return (model.predict(x, task) == y).float().mean().item()


def run(steps: int = 200, seed: int = 0, verbose: bool = True, universal: bool = False):
    """Trains task by task; returns the accuracy matrix acc[i][t] (after task i, on task t). With universal, returns
    (acc, universal accuracy per task after the last task)."""
    torch.manual_seed(seed)
    tasks = split_digits(seed)
    model = HyperInterval((64, 50, 2), n_tasks=len(tasks), embedding_dim=24, hidden=(50, 50), eps=1.0, beta=0.01,
                          universal=universal)
    g = torch.Generator().manual_seed(seed)
    acc = []
    for i, (xtr, ytr, _, _) in enumerate(tasks):
        model.fit_task(xtr, ytr, i, steps=steps, generator=g)
        acc.append([accuracy(model, xt, yt, t) for t, (_, _, xt, yt) in enumerate(tasks[: i + 1])])
        if verbose:
            print(f"after task {i + 1} {TASKS[i]}: " + " ".join(f"{100 * a:.1f}" for a in acc[-1]))
    if verbose:
        final = sum(acc[-1]) / len(acc[-1])
        print(f"final average accuracy: {100 * final:.2f}%; first task: {100 * acc[0][0]:.1f} -> "
              f"{100 * acc[-1][0]:.1f} ({100 * (acc[0][0] - acc[-1][0]):+.1f} points lost)")
    if not universal:
        return acc
    uni = [accuracy(model, xt, yt, None) for _, _, xt, yt in tasks]
    if verbose:
        print("universal embedding: " + " ".join(f"{100 * a:.1f}" for a in uni) +
              f"; average {100 * sum(uni) / len(uni):.2f}%")
    return acc, uni


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="training steps per task (batch 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--universal", action="store_true",
                    help="keep the task intervals intersecting and also report accuracy with the universal embedding")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: the layers are tiny, and on a busy 2-core machine each "
                         "parallel region's synchronisation cost 60x the work)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run(args.steps, args.seed, universal=args.universal)


if __name__ == "__main__":
    main()

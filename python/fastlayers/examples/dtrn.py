"""DTRN on a small synthetic multi-task set: ``python -m fastlayers.examples.dtrn [--steps N]``.

Prints each task's test accuracy before and after training (see fastlayers.models.dtrn.synthetic_multitask).
"""

import argparse

import torch
import torch.nn.functional as F

from fastlayers.models import DTRN
from fastlayers.models.dtrn import synthetic_multitask


def run(steps: int = 300, seed: int = 0, verbose: bool = True):
    """Trains DTRN on 2 synthetic tasks; returns the per-task test accuracies after training."""
    torch.manual_seed(seed)
    fields, seqs, labels = synthetic_multitask(2400, n_tasks=2, seed=seed)
    te = slice(2000, None)  # the first 2000 rows train
    model = DTRN([10, 10, 10], n_items=50, n_behaviours=2, n_tasks=2, dim=16, heads=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def acc():
        with torch.no_grad():
            return ((model(fields[te], seqs[te]) > 0).float() == labels[te]).float().mean(0).tolist()

    before = acc()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, 2000, (128,), generator=g)
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(fields[idx], seqs[idx]), labels[idx]).backward()
        opt.step()
    after = acc()
    if verbose:
        for t, (a, b) in enumerate(zip(before, after)):
            print(f"task {t}: test accuracy {100 * a:.1f}% -> {100 * b:.1f}%")
    return after


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: tiny layers)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run(args.steps, args.seed)


if __name__ == "__main__":
    main()

"""Train NAT (fastlayers.models.NAT on fastlayers.NCache) for temporal link prediction on a real stream.

    python -m fastlayers.data.fetch collegemsg      # once: SNAP CollegeMsg into the data root
    python -m fastlayers.examples.nat [--root DIR | --data FILE]

Chronological 70/15/15 split, 10% of the later nodes masked from training (inductive setting), one random
negative per positive, BCE, Adam. Early stopping on validation AP; the best weights are then replayed over the
whole stream (train -> val -> test) for the final table: AP and AUC over the whole split (scikit-learn) and the
reference's per-batch mean AP, transductive and inductive, plus seconds per training epoch. ``--budget`` caps the
training wall time (default 240 s: the development machine is a shared 2-core CPU).
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .._optional import require
from ..data import chronological_split, load_jodie_csv, load_snap_temporal
from ..data.root import require as require_data
from ..models import NAT


def _skm():
    # Looked up at first use: --help and argument errors work without scikit-learn.
    return require("sklearn.metrics", "fastlayers.examples.nat")


def _batches(idx: torch.Tensor, size: int):
    for i in range(0, idx.numel(), size):
        yield idx[i:i + size]


def _negatives(n: int, num_nodes: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, num_nodes, (n,), generator=gen)


def run_stream(model, data, idx, batch, neg_gen, train=False, opt=None, desc="", show=True):
    """Stream the edges idx through the model in batches; returns (pos logits, neg logits, batch ids) as numpy."""
    model.train(train)
    pos_all, neg_all, bid = [], [], []
    feat = data.edge_feat
    bar = tqdm(list(_batches(idx, batch)), desc=desc, leave=False, disable=not show, unit="batch")
    for i, b in enumerate(bar):
        neg = _negatives(b.numel(), data.num_nodes, neg_gen)
        ef = None if feat is None else feat[b]
        with torch.set_grad_enabled(train):
            pos, negl = model(data.src[b], data.dst[b], neg, data.t[b], data.eid[b], ef)
            if train:
                loss = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + \
                    F.binary_cross_entropy_with_logits(negl, torch.zeros_like(negl))
                opt.zero_grad()
                loss.backward()
                opt.step()
                model.detach_state()
                bar.set_postfix(loss=f"{loss.item():.4f}")
        pos_all.append(pos.detach().numpy())
        neg_all.append(negl.detach().numpy())
        bid.append(np.full(b.numel(), i))
    if not train:
        model.detach_state()
    return np.concatenate(pos_all), np.concatenate(neg_all), np.concatenate(bid)


def metrics(pos, neg, bid, keep=None) -> dict:
    """Global AP/AUC over all pairs, and the reference's mean of per-batch AP (on the kept positives)."""
    if keep is not None:
        pos, neg, bid = pos[keep], neg[keep], bid[keep]
    if pos.size == 0:
        return {"ap": float("nan"), "auc": float("nan"), "ap_batch_mean": float("nan"),
                "auc_batch_mean": float("nan"), "n": 0}
    y = np.concatenate([np.ones_like(pos), np.zeros_like(neg)])
    s = np.concatenate([pos, neg])
    skm = _skm()
    ap_b, auc_b = [], []
    for b in np.unique(bid):
        m = bid == b
        yb, sb = np.r_[np.ones(m.sum()), np.zeros(m.sum())], np.r_[pos[m], neg[m]]
        ap_b.append(skm.average_precision_score(yb, sb))
        auc_b.append(skm.roc_auc_score(yb, sb))
    return {"ap": skm.average_precision_score(y, s), "auc": skm.roc_auc_score(y, s), "ap_batch_mean": float(np.mean(ap_b)),
            "auc_batch_mean": float(np.mean(auc_b)), "n": int(pos.size)}


def evaluate_split(model, data, split, batch, seed, show):
    """Replay train (no gradient), then val and test, from an empty state; metrics per period."""
    model.reset_state()
    gen = torch.Generator().manual_seed(seed + 1)
    run_stream(model, data, split.train, batch, gen, desc="replay train", show=show)
    out = {}
    for name, idx, new in (("val", split.val, split.val_new), ("test", split.test, split.test_new)):
        pos, neg, bid = run_stream(model, data, idx, batch, gen, desc=name, show=show)
        keep = np.isin(idx.numpy(), new.numpy())
        out[name] = {"transductive": metrics(pos, neg, bid), "inductive": metrics(pos, neg, bid, keep)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help="data root holding temporal/collegemsg.txt (default: "
                    "$FASTLAYERS_DATA or ~/.cache/fastlayers/data)")
    ap.add_argument("--data", default=None, help="a SNAP 'src dst time' list (.txt) or JODIE/TGN ml_*.csv to use "
                    "instead of ROOT/temporal/collegemsg.txt")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--patience", type=int, default=3, help="epochs without a better val AP before stopping")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3, help="NAT uses 1e-4; 1e-3 converges within the budget")
    ap.add_argument("--budget", type=float, default=240.0, help="seconds of training; no epoch starts after it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 16])
    ap.add_argument("--replace-prob", type=float, default=0.9)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: batches of 100 edges gain nothing from more on a shared CPU)")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args) -> int:
    torch.manual_seed(args.seed)
    show = not args.quiet
    if args.data is None:
        args.data = require_data(args.root, "temporal/collegemsg.txt", "collegemsg")
    elif not os.path.isfile(args.data):
        raise FileNotFoundError(f"--data {args.data}: no such file (omit --data to read temporal/collegemsg.txt "
                                f"under --root; `python -m fastlayers.data.fetch collegemsg` gets it)")

    data = load_jodie_csv(args.data) if args.data.endswith(".csv") else load_snap_temporal(args.data)
    split = chronological_split(data, seed=args.seed)
    print(f"{args.data}: {len(data)} edges, {data.num_nodes} nodes; train {split.train.numel()}, val "
          f"{split.val.numel()} ({split.val_new.numel()} inductive), test {split.test.numel()} "
          f"({split.test_new.numel()} inductive); {split.masked.numel()} nodes masked from training")
    edge_dim = 0 if data.edge_feat is None else data.edge_feat.shape[1]
    model = NAT(data.num_nodes, edge_dim=edge_dim, sizes=tuple(args.sizes), replace_prob=args.replace_prob,
                seed=args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    best_ap, best_state, best_epoch, bad, epoch_times = -1.0, None, -1, 0, []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        if time.perf_counter() - start > args.budget:
            print(f"time budget of {args.budget:.0f} s reached after {epoch} epochs")
            break
        model.reset_state()
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        t0 = time.perf_counter()
        run_stream(model, data, split.train, args.batch, gen, train=True, opt=opt, desc=f"epoch {epoch}",
                   show=show)
        epoch_times.append(time.perf_counter() - t0)
        # Validation continues the stream from the state the training epoch built.
        pos, neg, bid = run_stream(model, data, split.val, args.batch, torch.Generator().manual_seed(7),
                                   desc="val", show=show)
        val = metrics(pos, neg, bid)
        improved = val["ap"] > best_ap
        tqdm.write(f"epoch {epoch}: {epoch_times[-1]:.1f} s, val AP {val['ap']:.4f} AUC {val['auc']:.4f}"
                   + (" *" if improved else ""))
        if improved:
            best_ap, best_epoch, bad = val["ap"], epoch, 0
            best_state = copy.deepcopy({k: v for k, v in model.state_dict().items() if not k.startswith("cache.")
                                        and k not in ("memory", "last_seen")})
        else:
            bad += 1
            if bad >= args.patience:
                tqdm.write(f"early stop: no better val AP for {args.patience} epochs")
                break
    model.load_state_dict(best_state, strict=False)
    res = evaluate_split(model, data, split, args.batch, args.seed, show)
    print(f"\nNAT on {args.data} (best epoch {best_epoch}, {np.mean(epoch_times):.1f} s per training epoch, "
          f"{len(epoch_times)} epochs, {time.perf_counter() - start:.0f} s in all)")
    print("| split | setting | AP | AUC | per-batch mean AP | per-batch mean AUC | positives |")
    print("|---|---|---|---|---|---|---|")
    for name in ("val", "test"):
        for setting in ("transductive", "inductive"):
            m = res[name][setting]
            print(f"| {name} | {setting} | {m['ap']:.4f} | {m['auc']:.4f} | {m['ap_batch_mean']:.4f} | "
                  f"{m['auc_batch_mean']:.4f} | {m['n']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

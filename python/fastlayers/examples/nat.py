"""Train NAT (fastlayers.models.NAT on fastlayers.NCache) for temporal link prediction on a real stream.

    python -m fastlayers.data.fetch collegemsg      # once: SNAP CollegeMsg into the data root
    python -m fastlayers.examples.nat [--root DIR | --data FILE]
    torchrun --nproc_per_node 2 -m fastlayers.examples.nat --distributed [...]   # data-parallel (gloo)

Chronological 70/15/15 split, 10% of the later nodes masked from training (inductive setting), one random
negative per positive, BCE, Adam. Early stopping on validation AP; the best weights are then replayed over the
whole stream (train -> val -> test) for the final table: AP and AUC over the whole split (scikit-learn) and the
reference's per-batch mean AP, transductive and inductive, plus seconds per training epoch. ``--budget`` caps the
training wall time (default 240 s: the development machine is a shared 2-core CPU).

``--distributed`` (under torchrun): every rank reads the stream, takes a contiguous slice of each batch (the
global batch is the slices in rank order) and its negatives, the N-cache is sharded over the ranks and the
self states replicated (see fastlayers.models.NAT), the model is wrapped in DDP, and each rank's loss is scaled
so that the averaged gradient is the single-process one. The same seed gives the same batches and negatives as
one process; metrics are computed on every rank from the gathered logits, and rank 0 prints.
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


class _Single:
    """One process: the whole batch is this process's slice."""
    rank, world = 0, 1

    def part(self, b):
        return b

    def gather(self, per_batch):
        return per_batch

    def agree(self, flag: bool) -> bool:
        return flag


class _DataParallel(_Single):
    """torchrun ranks: a contiguous slice of every batch per rank, results gathered in rank order."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def part(self, b):
        return torch.tensor_split(b, self.world)[self.rank]

    def gather(self, per_batch):
        got = [None] * self.world
        self.dist.all_gather_object(got, per_batch)
        return [np.concatenate([g[i] for g in got]) for i in range(len(per_batch))]

    def agree(self, flag: bool) -> bool:
        # Rank 0 decides (e.g. the wall-clock budget): ranks that stopped at different epochs would hang.
        box = [flag]
        self.dist.broadcast_object_list(box, src=0)
        return bool(box[0])


def run_stream(model, data, idx, batch, neg_gen, train=False, opt=None, desc="", show=True, dp=None):
    """Stream the edges idx through the model in batches; returns (pos logits, neg logits, batch ids) as numpy,
    over the whole batches (gathered from every rank when data-parallel)."""
    dp = dp or _Single()
    net = getattr(model, "module", model)  # the NAT under DDP
    model.train(train)
    pos_all, neg_all, bid = [], [], []
    feat = data.edge_feat
    bar = tqdm(list(_batches(idx, batch)), desc=desc, leave=False, disable=not show, unit="batch")
    for i, whole in enumerate(bar):
        neg = dp.part(_negatives(whole.numel(), data.num_nodes, neg_gen))  # drawn for the whole batch
        b = dp.part(whole)
        ef = None if feat is None else feat[b]
        with torch.set_grad_enabled(train):
            pos, negl = model(data.src[b], data.dst[b], neg, data.t[b], data.eid[b], ef)
            if train:
                # Sums over this rank's slice / the whole batch, times the ranks DDP averages over: the mean
                # loss of one process on the whole batch.
                scale = dp.world / whole.numel()
                loss = scale * (F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="sum") +
                                F.binary_cross_entropy_with_logits(negl, torch.zeros_like(negl), reduction="sum"))
                opt.zero_grad()
                loss.backward()
                opt.step()
                net.detach_state()
                bar.set_postfix(loss=f"{loss.item() / dp.world:.4f}")
        pos_all.append(pos.detach().numpy())
        neg_all.append(negl.detach().numpy())
        bid.append(np.full(b.numel(), i))
    if not train:
        net.detach_state()
    pos_all, neg_all, bid = (dp.gather(x) for x in (pos_all, neg_all, bid))
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


def evaluate_split(model, data, split, batch, seed, show, dp=None):
    """Replay train (no gradient), then val and test, from an empty state; metrics per period."""
    getattr(model, "module", model).reset_state()
    gen = torch.Generator().manual_seed(seed + 1)
    run_stream(model, data, split.train, batch, gen, desc="replay train", show=show, dp=dp)
    out = {}
    for name, idx, new in (("val", split.val, split.val_new), ("test", split.test, split.test_new)):
        pos, neg, bid = run_stream(model, data, idx, batch, gen, desc=name, show=show, dp=dp)
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
    ap.add_argument("--distributed", action="store_true",
                    help="data-parallel under torchrun (gloo): a slice of each batch per rank, the N-cache sharded")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    dp = None
    try:
        if args.distributed:
            dp = _start_distributed()
        return _run(args, dp or _Single())
    finally:
        torch.set_num_threads(threads)
        if dp is not None:
            dp.dist.destroy_process_group()


def _start_distributed() -> _DataParallel:
    import torch.distributed as dist

    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise SystemExit(f"--distributed runs under torchrun (missing {', '.join(missing)} in the environment): "
                         "torchrun --nproc_per_node 2 -m fastlayers.examples.nat --distributed ...")
    dist.init_process_group("gloo")
    return _DataParallel()


def _run(args, dp) -> int:
    torch.manual_seed(args.seed)
    show = not args.quiet and dp.rank == 0
    say = print if dp.rank == 0 else (lambda *a, **k: None)
    write = tqdm.write if dp.rank == 0 else (lambda *a, **k: None)
    if args.data is None:
        args.data = require_data(args.root, "temporal/collegemsg.txt", "collegemsg")
    elif not os.path.isfile(args.data):
        raise FileNotFoundError(f"--data {args.data}: no such file (omit --data to read temporal/collegemsg.txt "
                                f"under --root; `python -m fastlayers.data.fetch collegemsg` gets it)")

    data = load_jodie_csv(args.data) if args.data.endswith(".csv") else load_snap_temporal(args.data)
    split = chronological_split(data, seed=args.seed)
    say(f"{args.data}: {len(data)} edges, {data.num_nodes} nodes; train {split.train.numel()}, val "
          f"{split.val.numel()} ({split.val_new.numel()} inductive), test {split.test.numel()} "
          f"({split.test_new.numel()} inductive); {split.masked.numel()} nodes masked from training")
    edge_dim = 0 if data.edge_feat is None else data.edge_feat.shape[1]
    group = None if dp.world == 1 else dp.dist.group.WORLD
    net = NAT(data.num_nodes, edge_dim=edge_dim, sizes=tuple(args.sizes), replace_prob=args.replace_prob,
              seed=args.seed, process_group=group)
    model = net
    if group is not None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        say(f"data-parallel on {dp.world} ranks: a slice of each batch per rank, N-cache sharded")
        # The first batch of a stream has no queued state update, so the GRUs get no gradient then (the model
        # itself tells DDP to leave its state buffers alone).
        model = DDP(net, find_unused_parameters=True)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    best_ap, best_state, best_epoch, bad, epoch_times = -1.0, None, -1, 0, []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        if dp.agree(time.perf_counter() - start > args.budget):
            say(f"time budget of {args.budget:.0f} s reached after {epoch} epochs")
            break
        net.reset_state()
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        t0 = time.perf_counter()
        run_stream(model, data, split.train, args.batch, gen, train=True, opt=opt, desc=f"epoch {epoch}",
                   show=show, dp=dp)
        epoch_times.append(time.perf_counter() - t0)
        # Validation continues the stream from the state the training epoch built.
        pos, neg, bid = run_stream(model, data, split.val, args.batch, torch.Generator().manual_seed(7),
                                   desc="val", show=show, dp=dp)
        val = metrics(pos, neg, bid)
        improved = val["ap"] > best_ap
        write(f"epoch {epoch}: {epoch_times[-1]:.1f} s, val AP {val['ap']:.4f} AUC {val['auc']:.4f}"
                   + (" *" if improved else ""))
        if improved:
            best_ap, best_epoch, bad = val["ap"], epoch, 0
            best_state = copy.deepcopy({k: v for k, v in net.state_dict().items() if not k.startswith("cache.")
                                        and k not in ("memory", "last_seen")})
        else:
            bad += 1
            if bad >= args.patience:
                write(f"early stop: no better val AP for {args.patience} epochs")
                break
    net.load_state_dict(best_state, strict=False)
    res = evaluate_split(model, data, split, args.batch, args.seed, show, dp=dp)
    ranks = "" if dp.world == 1 else f", {dp.world} ranks"
    say(f"\nNAT on {args.data} (best epoch {best_epoch}, {np.mean(epoch_times):.1f} s per training epoch, "
        f"{len(epoch_times)} epochs, {time.perf_counter() - start:.0f} s in all{ranks})")
    say("| split | setting | AP | AUC | per-batch mean AP | per-batch mean AUC | positives |")
    say("|---|---|---|---|---|---|---|")
    for name in ("val", "test"):
        for setting in ("transductive", "inductive"):
            m = res[name][setting]
            say(f"| {name} | {setting} | {m['ap']:.4f} | {m['auc']:.4f} | {m['ap_batch_mean']:.4f} | "
                  f"{m['auc_batch_mean']:.4f} | {m['n']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

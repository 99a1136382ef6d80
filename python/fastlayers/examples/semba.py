"""Train SEMBA (fastlayers.models.SEMBA), its no-balance ablation, or a static SGCN on a signed edge stream.

    python -m fastlayers.examples.semba --data ../shared/data/signed/bitcoin_otc.csv --task sign --model semba

Tasks: ``sign`` (sign of each new edge: AUC, binary F1 of the positive class, F1 of the negative class, macro F1),
``link`` (edge vs one sampled non-edge per event: AUC, AP, binary F1), ``signlink`` (positive / negative / no
edge, one non-edge per event: one-vs-rest macro AUC, macro F1) and ``weight`` (regression on the rating itself:
RMSE, Pearson). Models: ``semba`` (two memories, balance routing), ``noba`` (one memory, no routing), ``sgcn``
(two fastlayers.nn.SignedConv layers on the training graph, spectral input features).

Protocol (SEMBA's): chronological 70/15/15 split; the temporal models stream the training period each epoch from
an empty state and continue into validation with the memory the epoch built; early stopping on the validation
metric; the best weights replay train -> val -> test for the final table (test: all edges, transductive = both
endpoints seen in training, inductive = both unseen). The classification losses weight the classes by inverse
frequency in training (the negative sign is ~10% of Bitcoin OTC), for every model alike. ``--budget`` caps the
training wall time (no epoch starts after it; the development machine is a shared 2-core CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .._optional import require as require_module
from ..data import load_bitcoin, sample_non_edges, signed_temporal_split
from ..data.root import require as require_file
from ..graph import Graph
from ..models import SEMBA, SGCN
from ..models.semba import spectral_features

TASKS = ("sign", "link", "signlink", "weight")
MODELS = ("semba", "noba", "sgcn")
SELECT = {"sign": "auc", "link": "auc", "signlink": "auc_macro", "weight": "neg_rmse"}


def _skm():
    # Looked up at first use: --help and argument errors work without scikit-learn.
    return require_module("sklearn.metrics", "fastlayers.examples.semba")


def class_weights(data, idx, task) -> torch.Tensor | None:
    """Inverse-frequency class weights over the training events (None for link and weight)."""
    pos = float((data.rating[idx] > 0).sum())
    neg = float(idx.numel()) - pos
    if task == "sign":
        c = torch.tensor([neg, pos])
    elif task == "signlink":
        c = torch.tensor([pos, neg, float(idx.numel())])  # one non-edge per event
    else:
        return None
    c = c.clamp_min(1.0)
    return c.sum() / (c.numel() * c)


def targets(task, rating, out, out_neg):
    """(model outputs for the loss, int/float targets) of one batch, events first then their non-edges."""
    if task == "sign":
        return out, (rating > 0).long()
    if task == "weight":
        return out, rating.to(out.dtype)
    B = rating.numel()
    if task == "link":
        return torch.cat([out, out_neg]), torch.cat([torch.ones(B), torch.zeros(B)])
    y = torch.cat([torch.where(rating > 0, 0, 1), torch.full((B,), 2)])
    return torch.cat([out, out_neg]), y


def loss_of(task, out, y, weights, max_rating):
    if task == "link":
        return F.binary_cross_entropy_with_logits(out, y)
    if task == "weight":
        return F.mse_loss(out / max_rating, y / max_rating)
    return F.cross_entropy(out, y, weight=weights)


def scores_of(task, out):
    """Numpy scores for the metrics: P(positive sign) / link logit / [P, 3] probabilities / predicted rating."""
    with torch.no_grad():
        if task == "sign":
            return torch.softmax(out, -1)[:, 1].numpy()
        if task == "signlink":
            return torch.softmax(out, -1).numpy()
        return out.numpy()


def task_metrics(task, y, s) -> dict:
    """The paper's metrics of one task on targets y and scores s (NaN where a class is missing)."""
    n = len(y)
    if n == 0:
        return {"n": 0}
    skm = _skm()
    out = {"n": n}
    if task == "weight":
        out["rmse"] = float(np.sqrt(np.mean((s - y) ** 2)))
        out["pearson"] = float(np.corrcoef(s, y)[0, 1]) if n > 1 and s.std() > 0 and y.std() > 0 else float("nan")
        out["neg_rmse"] = -out["rmse"]
        return out
    if task == "signlink":
        pred = s.argmax(1)
        out["f1_macro"] = float(skm.f1_score(y, pred, average="macro", labels=[0, 1, 2], zero_division=0))
        ok = len(np.unique(y)) == 3
        out["auc_macro"] = float(skm.roc_auc_score(y, s, multi_class="ovr", average="macro")) if ok else float("nan")
        return out
    pred = (s >= 0.5).astype(int) if task == "sign" else (s > 0).astype(int)
    both = len(np.unique(y)) == 2
    out["auc"] = float(skm.roc_auc_score(y, s)) if both else float("nan")
    out["f1_bin"] = float(skm.f1_score(y, pred, zero_division=0))
    if task == "sign":
        out["f1_neg"] = float(skm.f1_score(y, pred, pos_label=0, zero_division=0))
        out["f1_macro"] = float(skm.f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0))
    else:
        out["ap"] = float(skm.average_precision_score(y, s)) if both else float("nan")
    return out


class Collector:
    """Targets, scores and the edge id of every scored row (a non-edge row carries its event's id)."""

    def __init__(self, task):
        self.task, self.y, self.s, self.eid = task, [], [], []

    def add(self, out, y, eids):
        self.y.append(y.numpy())
        self.s.append(scores_of(self.task, out))
        self.eid.append(eids.numpy())

    def metrics(self, keep=None) -> dict:
        if not self.y:
            return {"n": 0}
        y, s, e = np.concatenate(self.y), np.concatenate(self.s), np.concatenate(self.eid)
        if keep is not None:
            m = np.isin(e, keep.numpy())
            y, s = y[m], s[m]
        return task_metrics(self.task, y, s)


def _rows_eids(task, b):
    return torch.cat([b, b]) if task in ("link", "signlink") else b


def stream(model, data, idx, task, batch, gen, weights, train=False, opt=None, desc="", show=True):
    """Stream the events idx (time order) through a temporal model; returns a Collector."""
    model.train(train)
    col = Collector(task)
    bar = tqdm([idx[i:i + batch] for i in range(0, idx.numel(), batch)], desc=desc, leave=False,
               disable=not show, unit="batch")
    for b in bar:
        src, dst = data.edge_index[0, b], data.edge_index[1, b]
        rating, t = data.rating[b], data.time[b]
        neg = sample_non_edges(src, data.num_nodes, data.edge_index, gen) if task in ("link", "signlink") else None
        with torch.set_grad_enabled(train):
            out, out_neg = model(src, dst, rating, t, neg, task)
            out, y = targets(task, rating, out, out_neg)
            if train:
                loss = loss_of(task, out, y, weights, model.max_rating)
                opt.zero_grad()
                loss.backward()
                opt.step()
                model.detach_state()
                bar.set_postfix(loss=f"{loss.item():.4f}")
        col.add(out.detach(), y, _rows_eids(task, b))
    if not train:
        model.detach_state()
    return col


def sgcn_pass(model, x, graphs, data, idx, task, batch, gen, weights, train=False, opt=None, desc="", show=True):
    """One pass of the static SGCN over the events idx (shuffled minibatches when training)."""
    model.train(train)
    col = Collector(task)
    if train:
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
    z = None
    with torch.set_grad_enabled(False):
        if not train:
            z = model.embed(x, *graphs)
    bar = tqdm([idx[i:i + batch] for i in range(0, idx.numel(), batch)], desc=desc, leave=False,
               disable=not show, unit="batch")
    for b in bar:
        src, dst, rating = data.edge_index[0, b], data.edge_index[1, b], data.rating[b]
        neg = sample_non_edges(src, data.num_nodes, data.edge_index, gen) if task in ("link", "signlink") else None
        with torch.set_grad_enabled(train):
            zz = model.embed(x, *graphs) if train else z
            out = model.decode(task, zz[src], zz[dst])
            out_neg = None if neg is None else model.decode(task, zz[src], zz[neg])
            out, y = targets(task, rating, out, out_neg)
            if train:
                loss = loss_of(task, out, y, weights, model.max_rating)
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.set_postfix(loss=f"{loss.item():.4f}")
        col.add(out.detach(), y, _rows_eids(task, b))
    return col


def median_node_gap(data, idx) -> float:
    """Median gap in seconds between consecutive events of the same node in the events idx (the time unit)."""
    node = torch.stack([data.edge_index[0, idx], data.edge_index[1, idx]], 1).reshape(-1).numpy()
    t = data.time[idx].repeat_interleave(2).numpy()
    order = np.lexsort((t, node))
    node, t = node[order], t[order]
    gaps = np.diff(t)[np.diff(node) == 0]
    gaps = gaps[gaps > 0]
    return float(np.median(gaps)) if gaps.size else 1.0


def build(args, data, split):
    if args.model == "sgcn":
        tr = split.train
        ei = data.edge_index[:, tr]
        pos, neg = ei[:, data.rating[tr] > 0], ei[:, data.rating[tr] < 0]
        x = spectral_features(pos, neg, data.num_nodes, dim=args.feat_dim, seed=args.seed)
        # Ratings are directed, but a static SGCN gains from reading both directions (PyG's SignedGCN takes the
        # edge_index as given; here each rated pair passes messages both ways).
        graphs = tuple(Graph.from_edge_index(torch.cat([e, e.flip(0)], 1), num_nodes=data.num_nodes)
                       for e in (pos, neg))
        return SGCN(args.feat_dim, hidden=args.embed_dim // 2), (x, graphs)
    gap = median_node_gap(data, split.train)
    model = SEMBA(data.num_nodes, memory_dim=args.memory_dim, embed_dim=args.embed_dim,
                  neighbours=args.neighbours, balance=args.model == "semba", time_scale=gap)
    return model, None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="SNAP signed CSV src,dst,rating,time (default: --root's "
                                                 "signed/bitcoin_otc.csv)")
    ap.add_argument("--root", default=None, help="data folder (default fastlayers.data.root.default_root())")
    ap.add_argument("--task", choices=TASKS, default="sign")
    ap.add_argument("--model", choices=MODELS, default="semba")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=5, help="epochs without a better validation metric")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--budget", type=float, default=180.0, help="seconds of training; no epoch starts after it")
    ap.add_argument("--memory-dim", type=int, default=32)
    ap.add_argument("--embed-dim", type=int, default=64)
    ap.add_argument("--feat-dim", type=int, default=32, help="SGCN spectral feature size")
    ap.add_argument("--neighbours", type=int, default=10, help="K recent neighbours attended over")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the final metrics here")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: batches of 200 events gain little from more on a shared CPU)")
    args = ap.parse_args(argv)
    for name in ("epochs", "batch"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args) -> int:
    torch.manual_seed(args.seed)
    show = not args.quiet
    path = args.data or require_file(args.root, "signed/bitcoin_otc.csv", "bitcoin_otc")
    data = load_bitcoin(path)
    split = signed_temporal_split(data)
    print(f"{path}: {data.edge_index.size(1)} edges, {data.num_nodes} nodes, "
          f"{float((data.rating < 0).float().mean()):.1%} negative; train {split.train.numel()}, val "
          f"{split.val.numel()}, test {split.test.numel()} (transductive {split.test_transductive.numel()}, "
          f"inductive {split.test_inductive.numel()})")
    model, static = build(args, data, split)
    weights = class_weights(data, split.train, args.task)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    key = SELECT[args.task]
    state_keys = set(getattr(model, "state_keys", lambda: ())())
    best, best_state, best_epoch, bad, epoch_times = -math.inf, None, -1, 0, []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        if time.perf_counter() - start > args.budget:
            print(f"time budget of {args.budget:.0f} s reached after {epoch} epochs")
            break
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        t0 = time.perf_counter()
        if static is None:
            model.reset_state()
            stream(model, data, split.train, args.task, args.batch, gen, weights, train=True, opt=opt,
                   desc=f"epoch {epoch}", show=show)
            epoch_times.append(time.perf_counter() - t0)
            # Validation continues the stream from the memory the training epoch built.
            val = stream(model, data, split.val, args.task, args.batch, torch.Generator().manual_seed(7),
                         weights, desc="val", show=show).metrics()
        else:
            x, graphs = static
            sgcn_pass(model, x, graphs, data, split.train, args.task, args.batch, gen, weights, train=True,
                      opt=opt, desc=f"epoch {epoch}", show=show)
            epoch_times.append(time.perf_counter() - t0)
            val = sgcn_pass(model, x, graphs, data, split.val, args.task, args.batch,
                            torch.Generator().manual_seed(7), weights, desc="val", show=show).metrics()
        improved = val[key] > best
        tqdm.write(f"epoch {epoch}: {epoch_times[-1]:.1f} s, val " +
                   " ".join(f"{k} {v:.4f}" for k, v in val.items() if k not in ("n", "neg_rmse")) +
                   (" *" if improved else ""))
        if improved:
            best, best_epoch, bad = val[key], epoch, 0
            best_state = copy.deepcopy({k: v for k, v in model.state_dict().items() if k not in state_keys})
        else:
            bad += 1
            if bad >= args.patience:
                tqdm.write(f"early stop: no better val {key} for {args.patience} epochs")
                break
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    gen = torch.Generator().manual_seed(args.seed + 1)
    if static is None:
        model.reset_state()
        stream(model, data, split.train, args.task, args.batch, gen, weights, desc="replay train", show=show)
        val = stream(model, data, split.val, args.task, args.batch, gen, weights, desc="val", show=show)
        test = stream(model, data, split.test, args.task, args.batch, gen, weights, desc="test", show=show)
    else:
        x, graphs = static
        val = sgcn_pass(model, x, graphs, data, split.val, args.task, args.batch, gen, weights, show=show)
        test = sgcn_pass(model, x, graphs, data, split.test, args.task, args.batch, gen, weights, show=show)
    res = {"val": val.metrics(), "test": test.metrics(),
           "test_transductive": test.metrics(split.test_transductive),
           "test_inductive": test.metrics(split.test_inductive)}
    sec = float(np.mean(epoch_times)) if epoch_times else float("nan")
    print(f"\n{args.model} on {path}, task {args.task} (best epoch {best_epoch}, {sec:.2f} s per training epoch, "
          f"{len(epoch_times)} epochs, {time.perf_counter() - start:.0f} s in all)")
    names = [k for k in res["test"] if k not in ("n", "neg_rmse")]
    print("| split | " + " | ".join(names) + " | rows |")
    print("|---|" + "---|" * (len(names) + 1))
    for split_name, m in res.items():
        print(f"| {split_name} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in names) + f" | {m['n']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "task": args.task, "best_epoch": best_epoch, "epochs": len(epoch_times),
                       "seconds_per_epoch": sec, "budget": args.budget, "seed": args.seed, "results": res}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

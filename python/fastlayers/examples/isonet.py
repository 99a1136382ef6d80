"""Train IsoNet++ (node or edge variant) or IsoNet on a subgraph-matching dataset and report test MAP / HITS@20.

    python -m fastlayers.data.fetch isonet          # once: the IsoNet++ splits into the data root
    python -m fastlayers.examples.isonet --dataset aids --variant node|edge [--model isonet] [--budget-min 30]

Each epoch draws, for every training query, up to --pairs-per-query positive and --negatives-per-query negative
corpus graphs; batches of --batch pairs are trained with the pairwise hinge (margin 0.5) between every positive
and negative pair of the batch (Adam, lr 1e-3 and weight decay 5e-4 by default, as published). Early stopping on
validation MAP (patience in epochs; the best model is saved to --out at every gain); the best checkpoint is
scored on the full test split (every query against all 800 corpus graphs). --extra-queries adds generated
training queries (not part of the published training; see extra_queries).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import time

import numpy as np
import torch
from tqdm import tqdm

from fastlayers.data import (
    SubgraphSplit,
    generate_pairs,
    hits_at_k,
    load_subgraph_split,
    make_batch,
    mean_average_precision,
)
from fastlayers.data.fetch import ISONET_DATASETS
from fastlayers.data.root import default_root, require
from fastlayers.data.subgraph import subgraph_split_files
from fastlayers.models import IsoNet, IsoNetPP


def split_folder(root: str | None, dataset: str) -> str:
    """The folder holding ``splits/`` for ``root`` (the data root; default ``default_root()``): ``root/subgraph``,
    or ``root`` itself when it holds ``splits/`` directly (how --root was given before the data root existed).
    Any dataset name whose split files are there is accepted. A missing split file raises FileNotFoundError naming
    it, and the fetch command for the published datasets (fastlayers.data.fetch.ISONET_DATASETS)."""
    root = default_root() if root is None else root
    if not os.path.isdir(os.path.join(root, "subgraph")) and os.path.isdir(os.path.join(root, "splits")):
        base, prefix = root, ""
    else:
        base, prefix = os.path.join(root, "subgraph"), "subgraph/"
    for s in ("train", "val", "test"):
        for path in subgraph_split_files(base, dataset, s):
            if dataset in ISONET_DATASETS:  # one `fetch isonet` gets these
                require(root, prefix + os.path.relpath(path, base), "isonet")
            elif not os.path.isfile(path):
                raise FileNotFoundError(f"{path} does not exist: --dataset {dataset} reads the JSON files "
                                        f"splits/{dataset}240k_corpus_subgraphs.json and "
                                        f"splits/{{train,val,test}}/{{split}}_{dataset}240k_{{query_subgraphs,"
                                        f"rel_nx_is_subgraph_iso}}.json under {base} (see "
                                        f"fastlayers.data.load_subgraph_split)")
    return base


def pairwise_hinge(scores, labels, margin=0.5):
    """Mean over (positive, negative) pairs of the batch of ReLU(margin - s_pos + s_neg)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if pos.numel() == 0 or neg.numel() == 0:
        return scores.sum() * 0
    return torch.relu(margin - pos[:, None] + neg[None, :]).mean()


def epoch_pairs(split, per_query, rng, neg_per_query=None):
    out = []
    neg_per_query = per_query if neg_per_query is None else neg_per_query
    for q, (p, n) in enumerate(zip(split.pos, split.neg)):
        out += [(q, c, 1) for c in rng.sample(p, min(per_query, len(p)))]
        out += [(q, c, 0) for c in rng.sample(n, min(neg_per_query, len(n)))]
    rng.shuffle(out)
    return out


def extra_queries(train, held_out, num, cache, seed=0):
    """``num`` generated training queries (fastlayers.data.generate_pairs on the corpus): 7-15 nodes, 9-29%
    positives like the benchmark's train queries, none isomorphic to a train, validation or test query (so no
    held-out query's labels are trained on). Cached as JSON at ``cache``; a cache with enough queries is reused.
    Returns a SubgraphSplit over the same corpus."""
    if cache and os.path.exists(cache):
        with open(cache) as f:
            doc = json.load(f)
        if len(doc["queries"]) >= num:
            qs = [(q["num_nodes"], np.asarray(q["edges"], dtype=np.int64).reshape(-1, 2)) for q in doc["queries"]]
            pos = doc["pos"][:num]
            neg = [sorted(set(range(len(train.corpus))) - set(p)) for p in pos]
            return SubgraphSplit(qs[:num], train.corpus, pos, neg)
    extra = generate_pairs(train.corpus, num, min_nodes=7, max_nodes=15, seed=seed, pos_fraction=(0.09, 0.29),
                           exclude=held_out, progress=True)
    if cache:
        with open(cache, "w") as f:
            # The negatives are the rest of the corpus: only the positives are stored.
            json.dump({"queries": [{"num_nodes": n, "edges": e.tolist()} for n, e in extra.queries],
                       "pos": extra.pos}, f)
    return extra


@torch.no_grad()
def evaluate(model, split, batch, neg_per_query=None, rng=None, desc="eval"):
    """(MAP, HITS@20) ranking each query's corpus graphs (all, or its positives and neg_per_query negatives)."""
    model.eval()
    triples = []
    for q, (p, n) in enumerate(zip(split.pos, split.neg)):
        negs = n if neg_per_query is None else rng.sample(n, min(neg_per_query, len(n)))
        triples += [(q, c, 1) for c in p] + [(q, c, 0) for c in negs]
    scores = np.empty(len(triples))
    for i in tqdm(range(0, len(triples), batch), desc=desc, leave=False):
        chunk = triples[i : i + batch]
        scores[i : i + len(chunk)] = model(make_batch(split.queries, split.corpus, [(q, c) for q, c, _ in chunk])).numpy()
    per_q_s = [[] for _ in split.queries]
    per_q_y = [[] for _ in split.queries]
    for (q, _, y), s in zip(triples, scores):
        per_q_s[q].append(s)
        per_q_y[q].append(y)
    model.train()
    return mean_average_precision(per_q_s, per_q_y), hits_at_k(per_q_s, per_q_y, 20)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="aids", help="aids, mutag, ptc_fm, ptc_fr, ptc_mm (published), or any "
                    "name whose split files (same JSON layout) are under ROOT/subgraph/splits")
    ap.add_argument("--variant", default="node", choices=["node", "edge"])
    ap.add_argument("--model", default="isonetpp", choices=["isonetpp", "isonet"])
    ap.add_argument("--root", default=None, help="data root holding subgraph/splits/ (default: $FASTLAYERS_DATA or "
                    "~/.cache/fastlayers/data; `python -m fastlayers.data.fetch isonet` fills it)")
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--budget-min", type=float, default=30.0, help="stop training after this many minutes")
    ap.add_argument("--patience", type=int, default=20, help="epochs without a val MAP gain before stopping")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--pairs-per-query", type=int, default=16, help="positives drawn per query and epoch")
    ap.add_argument("--negatives-per-query", type=int, default=80,
                    help="negatives drawn per query and epoch (5x the positives, as in the benchmark's ~17%% "
                         "positives)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=5e-4, help="Adam's L2 weight decay (published: 5e-4)")
    ap.add_argument("--init", default=None, help="state_dict to start from (e.g. an earlier --out)")
    ap.add_argument("--eval-only", action="store_true", help="score --init on the validation and test splits")
    ap.add_argument("--val-negatives", type=int, default=400,
                    help="negatives sampled per val query for early stopping (0: all corpus graphs)")
    ap.add_argument("--extra-queries", type=int, default=0,
                    help="add this many generated training queries (see extra_queries; not in published training)")
    ap.add_argument("--extra-cache", default=None, help="JSON cache of the generated queries")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="optional path for the best state_dict (written at every "
                    "validation improvement)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    base = split_folder(args.root, args.dataset)
    train, val, test = (load_subgraph_split(base, args.dataset, s) for s in ("train", "val", "test"))
    model = IsoNetPP(variant=args.variant) if args.model == "isonetpp" else IsoNet()
    if args.init:
        model.load_state_dict(torch.load(args.init, weights_only=True))
    if args.eval_only:
        if not args.init:
            ap.error("--eval-only needs --init")
        vmap, vhits = evaluate(model, val, 512, desc="val")
        tmap, thits = evaluate(model, test, 512, desc="test")
        print(f"{args.init}: val MAP {vmap:.4f}, HITS@20 {vhits:.4f}; test MAP {tmap:.4f}, HITS@20 {thits:.4f} "
              f"(all corpus graphs per query)")
        return tmap, thits
    if args.extra_queries:
        extra = extra_queries(train, train.queries + val.queries + test.queries, args.extra_queries,
                              args.extra_cache, args.seed)
        train = SubgraphSplit(train.queries + extra.queries, train.corpus, train.pos + extra.pos,
                              train.neg + extra.neg)
        tqdm.write(f"training on {len(train.queries)} queries ({len(extra.queries)} generated)")
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    best, best_state, bad, epoch_times = -1.0, None, 0, []
    start = time.time()
    bar = tqdm(range(args.epochs), desc=f"{args.model} {args.dataset}")
    for epoch in bar:
        t0 = time.time()
        pairs = epoch_pairs(train, args.pairs_per_query, rng, args.negatives_per_query)
        losses = []
        for i in tqdm(range(0, len(pairs), args.batch), desc=f"epoch {epoch}", leave=False):
            chunk = pairs[i : i + args.batch]
            b = make_batch(train.queries, train.corpus, [(q, c) for q, c, _ in chunk])
            labels = torch.tensor([y for _, _, y in chunk])
            loss = pairwise_hinge(model(b), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        epoch_times.append(time.time() - t0)
        vmap, vhits = evaluate(model, val, 512, args.val_negatives or None, random.Random(1), desc="val")
        bar.set_postfix(loss=f"{np.mean(losses):.4f}", val_map=f"{vmap:.4f}", s_per_epoch=f"{epoch_times[-1]:.1f}")
        tqdm.write(f"epoch {epoch}: loss {np.mean(losses):.4f} val MAP {vmap:.4f} HITS@20 {vhits:.4f} "
                   f"({epoch_times[-1]:.1f} s)")
        if vmap > best:
            best, best_state, bad = vmap, copy.deepcopy(model.state_dict()), 0
            if args.out:  # saved at every improvement, so a stopped run keeps its best model
                torch.save(best_state, args.out)
        else:
            bad += 1
        if bad >= args.patience:
            tqdm.write(f"early stop: no val MAP gain in {args.patience} epochs")
            break
        if (time.time() - start) / 60 > args.budget_min:
            tqdm.write(f"training budget of {args.budget_min} min reached")
            break
    model.load_state_dict(best_state)  # --out already holds it (saved at every gain)
    tmap, thits = evaluate(model, test, 512, desc="test")
    name = f"{args.model} ({args.variant})" if args.model == "isonetpp" else args.model
    print(f"{name} on {args.dataset}: best val MAP {best:.4f}; test MAP {tmap:.4f}, "
          f"HITS@20 {thits:.4f}; {np.mean(epoch_times):.1f} s/epoch over {len(epoch_times)} epochs, "
          f"{(time.time() - start) / 60:.1f} min, {torch.get_num_threads()} threads")
    return tmap, thits


if __name__ == "__main__":
    main()

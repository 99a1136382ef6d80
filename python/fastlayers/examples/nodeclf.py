"""Node classification on heterophilous graphs: NSD, HEI (GCN / LINKX / MLP backbone), GCN, LINKX, MLP.

    python -m fastlayers.examples.nodeclf --model nsd --variant diag --dataset texas --root ../shared/data/nodeclf
    python -m fastlayers.examples.nodeclf --model hei --backbone linkx --dataset film
    python -m fastlayers.examples.nodeclf --model nsd --dataset film --bench-epochs 20   # speed vs the peer

``--root`` is any folder holding Geom-GCN dataset folders or heterophilous-graphs npz files (or their parent);
``--dataset`` names a folder or file there. Every standard split is trained (Adam, early stopping on validation
accuracy with --patience, the best-validation model's test accuracy kept) and the mean +- std test accuracy,
seconds per epoch and the test accuracy on the low- and high-homophily halves of the test nodes (split at the
median of each test node's true local homophily) are printed. The graph is used undirected, without self loops
and duplicate edges. Defaults are the NSD code's defaults; the hyperparameters behind benchmarks/results/nodeclf.md
are listed there.

``--bench-epochs N`` times N training steps of the model against the same model on plain torch_scatter ops
(PyG-style gather -> per-edge messages -> scatter_add, as in PyG's MessagePassing), same weights, alternating
in one process, and exits.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fastlayers.data import load_node_dataset
from fastlayers.data.root import default_root, require
from fastlayers.models import HEI, NSD
from fastlayers.models.hei import GCN, MLP, local_homophily
from fastlayers.models.nsd import SheafLaplacian, simple_undirected
from fastlayers.nn import LINKX


def check_split(y: torch.Tensor, train: torch.Tensor, val: torch.Tensor, test: torch.Tensor) -> None:
    """Masks must be bool [N], pairwise disjoint, and cover every labelled node (label >= 0)."""
    n = y.size(0)
    for name, m in (("train_mask", train), ("val_mask", val), ("test_mask", test)):
        if m.dtype != torch.bool or m.shape != (n,):
            raise ValueError(f"{name} must be bool [N] = [{n}], got {m.dtype} {tuple(m.shape)}")
    if (train & val).any() or (train & test).any() or (val & test).any():
        raise ValueError("train_mask, val_mask and test_mask overlap")
    uncovered = (y >= 0) & ~(train | val | test)
    if uncovered.any():
        raise ValueError(f"{int(uncovered.sum())} labelled nodes are in no split mask (first: node "
                         f"{int(uncovered.nonzero()[0])})")


class _ScatterLaplacian(SheafLaplacian):
    """The same operator the PyG way: per-edge messages off_e h[u] materialised [E, D, C], then scatter_add."""

    def __call__(self, h):
        import torch_scatter

        src, dst = self.graph.edge_index
        h = self._node(self.norm, h)
        hs = h.index_select(0, src)
        msg = self.off.unsqueeze(-1) * hs if self.off.dim() == 2 else torch.bmm(self.off, hs)
        out = torch_scatter.scatter(msg, dst, 0, dim_size=h.size(0), reduce="sum") + self._node(self.deg, h)
        return self._node(self.norm, out)


def _torch_scatter(src, index, dim, n, reduce):
    import torch_scatter

    return torch_scatter.scatter(src, index, dim, dim_size=n, reduce=reduce)


class PyGStyleNSD(NSD):
    """NSD with every graph reduction on torch_scatter (the peer of the benchmark; same parameters)."""

    _scatter = staticmethod(_torch_scatter)
    _laplacian_type = _ScatterLaplacian


def build_model(args, num_nodes: int, in_channels: int, num_classes: int, impl: str = "fastlayers"):
    if args.model == "nsd" or (args.model == "hei" and args.backbone == "nsd"):
        cls = PyGStyleNSD if impl == "pyg" else NSD
        net = cls(in_channels, num_classes, args.variant, d=args.d, hidden=args.hidden, layers=args.layers,
                  dropout=args.dropout, input_dropout=args.input_dropout, add_lp=args.add_lp, add_hp=args.add_hp,
                  edge_weights=not args.no_edge_weights, second_linear=args.second_linear,
                  sparse_learner=args.sparse_learner, linear=args.linear_sheaf)
    else:
        kind = args.backbone if args.model == "hei" else args.model
        if kind == "gcn":
            net = GCN(in_channels, args.hidden, num_classes, layers=args.layers, dropout=args.dropout)
        elif kind == "linkx":
            net = LINKX(num_nodes, in_channels, args.hidden, num_classes, num_layers=args.layers,
                        dropout=args.dropout)
        else:
            net = MLP(in_channels, args.hidden, num_classes, layers=args.layers, dropout=args.dropout)
    if args.model == "hei":
        return HEI(net, num_envs=args.num_envs, penalty_weight=args.penalty_weight)
    return net


def optimisers(args, model):
    if isinstance(model, HEI):
        return [torch.optim.Adam(model.classifier_parameters(), lr=args.lr, weight_decay=args.weight_decay),
                torch.optim.Adam(model.env_parameters(), lr=args.env_lr)]
    if isinstance(model, NSD) and args.sheaf_decay is not None:
        sheaf = {id(p) for p in model.sheaf_parameters()}
        rest = [p for p in model.parameters() if id(p) not in sheaf]
        return [torch.optim.Adam([{"params": rest, "weight_decay": args.weight_decay},
                                  {"params": model.sheaf_parameters(), "weight_decay": args.sheaf_decay}],
                                 lr=args.lr)]
    return [torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)]


def train_step(model, opts, x, g, y, train, hei_features=None):
    model.train()
    for o in opts:
        o.zero_grad()
    if isinstance(model, HEI):
        out = model.losses(x, g, y, train, hei_features)
        (out["classifier"] + out["environment"]).backward()
        # The environment network maximises the penalty: its loss is minus the penalty.
        loss = out["erm"]
    else:
        loss = F.cross_entropy(model(x, g)[train], y[train])
        loss.backward()
    for o in opts:
        o.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate(model, x, g, y, masks):
    model.eval()
    logits = model(x, g)
    pred = logits.argmax(1)
    accs = [float((pred[m] == y[m]).float().mean()) if m.any() else float("nan") for m in masks]
    val_loss = float(F.cross_entropy(logits[masks[1]], y[masks[1]])) if masks[1].any() else float("nan")
    return accs, val_loss, pred


def homophily_halves(test: torch.Tensor, hom: torch.Tensor):
    """(low, high) bool masks: the test nodes with a neighbour, ranked by local homophily (ties by node id) and cut
    in two at the median rank."""
    idx = test.nonzero().flatten()
    idx = idx[~torch.isnan(hom[idx])]
    order = idx[torch.sort(hom[idx], stable=True).indices]
    low = torch.zeros_like(test)
    high = torch.zeros_like(test)
    low[order[: order.numel() // 2]] = True
    high[order[order.numel() // 2:]] = True
    return low, high


def run_split(args, data, g, split, hom, hei_features):
    x, y = data.x, data.y
    train, val, test = (m[:, split] if m.dim() == 2 else m for m in (data.train_mask, data.val_mask, data.test_mask))
    check_split(y, train, val, test)
    torch.manual_seed(args.seed + split)
    model = build_model(args, x.size(0), x.size(1), data.num_classes)
    opts = optimisers(args, model)
    best, best_state, bad = None, None, 0
    step_times = []
    bar = tqdm(range(args.epochs), desc=f"split {split}", leave=False, disable=args.quiet)
    for epoch in bar:
        t0 = time.perf_counter()
        train_step(model, opts, x, g, y, train, hei_features)
        step_times.append(time.perf_counter() - t0)
        (tr, va, te), val_loss, _ = evaluate(model, x, g, y, (train, val, test))
        key = (va, -val_loss) if args.stop == "acc" else (-val_loss, va)
        if best is None or key > best:
            best, bad, best_state = key, 0, copy.deepcopy(model.state_dict())
            best_epoch = epoch
        else:
            bad += 1
        bar.set_postfix(train=f"{tr:.3f}", val=f"{va:.3f}", best_epoch=best_epoch)
        if bad >= args.patience:
            break
    model.load_state_dict(best_state)
    (tr, va, te), _, pred = evaluate(model, x, g, y, (train, val, test))
    low, high = homophily_halves(test, hom)
    acc = lambda m: float((pred[m] == y[m]).float().mean()) if m.any() else float("nan")
    return {"split": split, "train": tr, "val": va, "test": te, "test_low_hom": acc(low), "test_high_hom": acc(high),
            "epochs": epoch + 1, "best_epoch": best_epoch, "sec_per_step": statistics.median(step_times)}


def bench(args, data, g):
    """Seconds per training step, fastlayers vs the torch_scatter peer, same weights, alternating rounds."""
    x, y = data.x, data.y
    train = data.train_mask[:, 0] if data.train_mask.dim() == 2 else data.train_mask
    torch.manual_seed(args.seed)
    ours = build_model(args, x.size(0), x.size(1), data.num_classes)
    peer = build_model(args, x.size(0), x.size(1), data.num_classes, impl="pyg")
    peer.load_state_dict(ours.state_dict())
    ours.eval()
    peer.eval()
    with torch.no_grad():
        diff = float((ours(x, g) - peer(x, g)).abs().max())
    models = {"fastlayers": ours, "torch_scatter": peer}
    opts = {k: optimisers(args, m) for k, m in models.items()}
    for k, m in models.items():  # warm-up: caches, allocator
        for _ in range(2):
            train_step(m, opts[k], x, g, y, train)
    times = {k: [] for k in models}
    rounds = max(1, args.bench_epochs // 5)
    for _ in tqdm(range(rounds), desc="bench rounds", disable=args.quiet):
        for k, m in models.items():
            t0 = time.perf_counter()
            for _ in range(5):
                train_step(m, opts[k], x, g, y, train)
            times[k].append((time.perf_counter() - t0) / 5)
    res = {k: statistics.median(v) for k, v in times.items()}
    res.update(max_abs_logit_diff_at_init=diff, threads=torch.get_num_threads(), nodes=x.size(0),
               edges=g.num_edges, speedup=res["torch_scatter"] / res["fastlayers"])
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["nsd", "hei", "gcn", "linkx", "mlp"], default="nsd")
    p.add_argument("--variant", choices=["diag", "orthogonal", "general"], default="diag")
    p.add_argument("--backbone", choices=["gcn", "linkx", "mlp", "nsd"], default="gcn", help="HEI's backbone")
    p.add_argument("--dataset", required=True, help="a Geom-GCN folder or heterophilous-graphs npz name under --root")
    p.add_argument("--root", default=None, help="data folder (default: fastlayers.data.root.default_root())")
    p.add_argument("--splits", type=int, default=10, help="train the first this many splits")
    p.add_argument("--epochs", type=int, default=1500)
    p.add_argument("--patience", type=int, default=200)
    p.add_argument("--stop", choices=["acc", "loss"], default="acc", help="early-stopping criterion (validation)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--sheaf-decay", type=float, default=None, help="NSD: weight decay of the sheaf learners")
    p.add_argument("--hidden", type=int, default=20, help="NSD: channels per stalk dimension; others: width")
    p.add_argument("--d", type=int, default=2)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--input-dropout", type=float, default=0.0)
    p.add_argument("--add-lp", action="store_true")
    p.add_argument("--add-hp", action="store_true")
    p.add_argument("--second-linear", action="store_true")
    p.add_argument("--sparse-learner", action="store_true")
    p.add_argument("--linear-sheaf", action="store_true", help="NSD: one Laplacian for all steps")
    p.add_argument("--no-edge-weights", action="store_true", help="NSD orthogonal: no learned edge weights")
    p.add_argument("--num-envs", type=int, default=2, help="HEI: inferred environments")
    p.add_argument("--penalty-weight", type=float, default=1.0, help="HEI: IRMv1 penalty weight")
    p.add_argument("--env-lr", type=float, default=0.01, help="HEI: environment network learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--bench-epochs", type=int, default=0, help="time this many steps against the peer, then exit")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.root if args.root is not None else default_root()
    try:
        data = load_node_dataset(root, args.dataset)
    except FileNotFoundError:
        # Under a data root the datasets sit in nodeclf/: say how to fetch one there when it is missing.
        require(root, os.path.join("nodeclf", args.dataset), args.dataset)
        raise
    if data.x.dim() != 2 or data.y.shape != (data.x.size(0),):
        raise ValueError(f"features must be [N, F] and labels [N], got {tuple(data.x.shape)}, {tuple(data.y.shape)}")
    g = simple_undirected(data.graph)
    if args.bench_epochs:
        res = bench(args, data, g)
        print(json.dumps(res, indent=1))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "bench": res}, f, indent=1)
        return res
    hom = local_homophily(data.y, g)
    hei_features = build_model(args, *data.x.shape, data.num_classes).pattern_features(data.x, g) \
        if args.model == "hei" else None
    num_splits = data.train_mask.size(1) if data.train_mask.dim() == 2 else 1
    results = []
    for s in tqdm(range(min(args.splits, num_splits)), desc=f"{args.model} {args.dataset}", disable=args.quiet):
        r = run_split(args, data, g, s, hom, hei_features)
        results.append(r)
        tqdm.write(f"split {s}: test {100 * r['test']:.2f}  low-hom {100 * r['test_low_hom']:.2f}  high-hom "
                   f"{100 * r['test_high_hom']:.2f}  ({r['epochs']} epochs, best {r['best_epoch']}, "
                   f"{1e3 * r['sec_per_step']:.1f} ms/step)")

    def ms(k):  # an empty homophily half (tiny test sets) gives NaN: left out, NaN only when all are
        v = [100 * r[k] for r in results if r[k] == r[k]]
        if not v:
            return float("nan"), float("nan")
        return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)

    summary = {k: ms(k) for k in ("test", "test_low_hom", "test_high_hom", "val")}
    summary["sec_per_step"] = statistics.median(r["sec_per_step"] for r in results)
    name = args.model + (f"-{args.variant}" if args.model == "nsd" else f"-{args.backbone}" if args.model == "hei"
                         else "")
    print(f"{name} on {args.dataset}: test {summary['test'][0]:.2f} +- {summary['test'][1]:.2f} over "
          f"{len(results)} splits; low-hom half {summary['test_low_hom'][0]:.2f}, high-hom half "
          f"{summary['test_high_hom'][0]:.2f}; {summary['sec_per_step']:.4f} s per training step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "splits": results, "summary": summary}, f, indent=1)
    return summary


if __name__ == "__main__":
    main()

"""SEMBA: one training epoch (sign task, Bitcoin OTC) of fastlayers.models.SEMBA vs the published code's approach,
on the same batches, side by side in one process.

The peer is written here, faithful in cost to the published SEMBA training loop (claws-lab/semba), not copied:
- four message stores (source/destination side x positive/negative edges) kept as Python dicts node -> tensors
  of that node's last raw messages, written by a Python loop over the batch's nodes;
- every batch recomputes the memories of all N nodes: for each of the four (store, memory) routes and both edge
  signs it gathers the stored messages of every node with a Python loop over all N nodes, builds the messages,
  averages them per node with a scatter, and runs both GRUs over all N rows;
- the embedding is graph attention for all N nodes over the whole edge history seen so far (keys from the
  source memory, the rating and the time gap), with a scatter softmax per target node;
- after the loss, the batch updates the memories of its nodes again (training mode) and is appended to the
  history and the stores.
Its balance routing is the correct one (not the published store mix-up): that changes no cost.

Both run one torch thread, the same widths (memory 32 per sign, time 16, embedding 64, 2 heads), the same
batches (200 events in time order), Adam, class-weighted cross-entropy. Each epoch starts from an empty state, so
every timed batch meets state it has not seen (the stream itself is the pool of fresh inputs).

    python benchmarks/bench_semba.py [--data PATH] [--repeats 2] [--batches N]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))

from fastlayers.data import load_bitcoin, signed_temporal_split
from fastlayers.data.root import require
from fastlayers.examples.semba import class_weights, median_node_gap
from fastlayers.models import SEMBA
from fastlayers.models.semba import TimeEncoder


class PublishedStyleSEMBA(nn.Module):
    """Per-node Python message stores, all-node memory recomputation and full-history attention (see above)."""

    def __init__(self, num_nodes, memory_dim=32, time_dim=16, embed_dim=64, heads=2, time_scale=1.0, R=10.0):
        super().__init__()
        self.n, self.d, self.h, self.e, self.R = num_nodes, memory_dim, heads, embed_dim, R
        self.time_enc = TimeEncoder(time_dim, time_scale)
        msg = 2 * memory_dim + 1 + time_dim
        self.gru_pos, self.gru_neg = nn.GRUCell(msg, memory_dim), nn.GRUCell(msg, memory_dim)
        M = 2 * memory_dim
        self.att_q = nn.Linear(M, embed_dim)
        self.att_k = nn.Linear(M + 1 + time_dim, embed_dim)
        self.att_v = nn.Linear(M + 1 + time_dim, embed_dim)
        self.merge = nn.Sequential(nn.Linear(embed_dim + M, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim))
        self.head = nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 2))
        self.reset_state()

    def reset_state(self):
        n, d = self.n, self.d
        self.mem_pos, self.mem_neg = torch.zeros(n, d), torch.zeros(n, d)
        self.last = torch.zeros(n, dtype=torch.float64)
        e = torch.zeros(0, dtype=torch.int64)
        empty = (e, e, torch.zeros(0, dtype=torch.float64), torch.zeros(0))
        # stores[(side, sign)][node] = (node ids, partner ids, times, ratings) of the node's last batch
        self.stores = {(side, sign): {i: empty for i in range(n)} for side in "sd" for sign in "+-"}
        self.h_src, self.h_dst = e, e
        self.h_t, self.h_r = torch.zeros(0, dtype=torch.float64), torch.zeros(0)

    def _gather(self, store, nodes):
        data = [store[i] for i in nodes]  # one dict lookup per node, as the published message helper does
        return [torch.cat(x) for x in zip(*data)]

    def _messages(self, mem_a, mem_b, src, dst, t, r):
        enc = self.time_enc(t - self.last[src])
        return torch.cat([mem_a[src], mem_b[dst], r.abs().unsqueeze(1) / self.R, enc], 1)

    def _updated(self, nodes_list):
        """New (pos, neg) memories of all N nodes from the stores of the nodes in nodes_list."""
        pos_msgs, pos_idx, neg_msgs, neg_idx = [], [], [], []
        for side in "sd":
            for sign in "+-":
                src, dst, t, r = self._gather(self.stores[(side, sign)], nodes_list)
                friend = self.mem_pos if sign == "+" else self.mem_neg
                enemy = self.mem_neg if sign == "+" else self.mem_pos
                pos_msgs.append(self._messages(self.mem_pos, friend, src, dst, t, r))
                pos_idx.append(src)
                src, dst, t, r = self._gather(self.stores[(side, sign)], nodes_list)
                neg_msgs.append(self._messages(self.mem_neg, enemy, src, dst, t, r))
                neg_idx.append(src)
        out = []
        for msgs, idx, mem, gru in ((pos_msgs, pos_idx, self.mem_pos, self.gru_pos),
                                    (neg_msgs, neg_idx, self.mem_neg, self.gru_neg)):
            m, i = torch.cat(msgs), torch.cat(idx)
            s = torch.zeros(self.n, m.size(1)).index_add_(0, i, m)
            c = torch.zeros(self.n).index_add_(0, i, torch.ones(i.numel())).clamp_min(1)
            out.append(gru(s / c.unsqueeze(1), mem))
        return out

    def _embed(self, mem):
        """Attention of all N nodes over every edge seen so far (both directions)."""
        src = torch.cat([self.h_src, self.h_dst])
        dst = torch.cat([self.h_dst, self.h_src])
        t = self.h_t.repeat(2)
        r = self.h_r.repeat(2)
        H, c = self.h, self.e // self.h
        q = self.att_q(mem).view(-1, H, c)
        if src.numel() == 0:
            out = torch.zeros(self.n, self.e)
        else:
            feat = torch.cat([mem[src], (r / self.R).unsqueeze(1), self.time_enc(self.last[dst] - t)], 1)
            k, v = self.att_k(feat).view(-1, H, c), self.att_v(feat).view(-1, H, c)
            score = (q[dst] * k).sum(-1) / math.sqrt(c)
            mx = torch.full((self.n, H), -math.inf).scatter_reduce(0, dst.unsqueeze(1).expand(-1, H), score, "amax")
            w = torch.exp(score - mx[dst])
            den = torch.zeros(self.n, H).index_add_(0, dst, w)
            w = w / den[dst]
            out = torch.zeros(self.n, H, c).index_add_(0, dst, w.unsqueeze(-1) * v).view(self.n, self.e)
        return self.merge(torch.cat([out, mem], 1))

    def _store(self, store, a, b, t, r):
        node, perm = a.sort()
        node, count = node.unique_consecutive(return_counts=True)
        for i, idx in zip(node.tolist(), perm.split(count.tolist())):
            store[i] = (a[idx], b[idx], t[idx], r[idx])

    def step(self, src, dst, rating, t, opt, weights):
        all_nodes = list(range(self.n))
        mem_pos, mem_neg = self._updated(all_nodes)
        z = self._embed(torch.cat([mem_pos, mem_neg], 1))
        out = self.head(torch.cat([z[src], z[dst]], 1))
        loss = F.cross_entropy(out, (rating > 0).long(), weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            batch_nodes = torch.cat([src, dst]).unique().tolist()
            self.mem_pos, self.mem_neg = (m.detach() for m in self._updated(batch_nodes))
            p = rating > 0
            for side, a, b in (("s", src, dst), ("d", dst, src)):
                self._store(self.stores[(side, "+")], a[p], b[p], t[p], rating[p].float())
                self._store(self.stores[(side, "-")], a[~p], b[~p], t[~p], rating[~p].float())
            self.last.scatter_reduce_(0, torch.cat([src, dst]), t.repeat(2), "amax", include_self=True)
            self.h_src, self.h_dst = torch.cat([self.h_src, src]), torch.cat([self.h_dst, dst])
            self.h_t, self.h_r = torch.cat([self.h_t, t]), torch.cat([self.h_r, rating.float()])
        return loss


def epoch_fastlayers(model, opt, data, batches, weights):
    model.train()
    model.reset_state()
    for b in batches:
        src, dst = data.edge_index[0, b], data.edge_index[1, b]
        out, _ = model(src, dst, data.rating[b], data.time[b], None, "sign")
        loss = F.cross_entropy(out, (data.rating[b] > 0).long(), weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.detach_state()


def epoch_peer(model, opt, data, batches, weights):
    model.reset_state()
    for b in batches:
        model.step(data.edge_index[0, b], data.edge_index[1, b], data.rating[b], data.time[b], opt, weights)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--root", default=None)
    ap.add_argument("--repeats", type=int, default=2, help="epochs timed per implementation (median reported)")
    ap.add_argument("--batches", type=int, default=0, help="time only the first N batches (0: the whole epoch)")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = args.data or require(args.root, "signed/bitcoin_otc.csv", "bitcoin_otc")
    data = load_bitcoin(path)
    split = signed_temporal_split(data)
    idx = split.train
    batches = [idx[i:i + args.batch] for i in range(0, idx.numel(), args.batch)]
    if args.batches:
        batches = batches[:args.batches]
    weights = class_weights(data, idx, "sign")
    gap = median_node_gap(data, idx)
    ours = SEMBA(data.num_nodes, memory_dim=32, time_dim=16, embed_dim=64, neighbours=10, heads=2, time_scale=gap)
    peer = PublishedStyleSEMBA(data.num_nodes, 32, 16, 64, 2, time_scale=gap)
    opt_o = torch.optim.Adam(ours.parameters(), 1e-3)
    opt_p = torch.optim.Adam(peer.parameters(), 1e-3)
    # Warm-up: allocator and first-call costs out of the timed epochs.
    epoch_fastlayers(ours, opt_o, data, batches[:5], weights)
    epoch_peer(peer, opt_p, data, batches[:5], weights)
    t_ours, t_peer = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        epoch_fastlayers(ours, opt_o, data, batches, weights)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        epoch_peer(peer, opt_p, data, batches, weights)
        t_peer.append(time.perf_counter() - t0)
        print(f"epoch: fastlayers {t_ours[-1]:.2f} s, published-style peer {t_peer[-1]:.2f} s", flush=True)
    a, b = statistics.median(t_ours), statistics.median(t_peer)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"\n{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s); "
          f"{len(batches)} batches of {args.batch} training events, {args.repeats} timed epochs each")
    print("| implementation | s per training epoch (median) | all epochs |")
    print("|---|---|---|")
    print(f"| fastlayers SEMBA | {a:.2f} | {', '.join(f'{x:.2f}' for x in t_ours)} |")
    print(f"| published approach (peer) | {b:.2f} | {', '.join(f'{x:.2f}' for x in t_peer)} |")
    print(f"speed-up: {b / a:.1f}x")


if __name__ == "__main__":
    main()

"""Subgraph-matching pairs: the IsoNet/IsoNet++ benchmark splits (JSON), a generator of new labelled pairs, and
padded pair batches for fastlayers.models.

A graph is ``(num_nodes, edges)`` with edges an int64 array [E, 2], each undirected edge once, nodes 0..n-1.
A split holds the query graphs, the shared corpus and the relation {query: (positive ids, negative ids)}, where
positive means the query is node-induced subgraph-isomorphic to the corpus graph.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random

import numpy as np
import torch

DATASETS = ("aids", "mutag", "ptc_fm", "ptc_fr", "ptc_mm")
SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class SubgraphSplit:
    """queries / corpus: lists of (num_nodes, edges [E, 2] int64); pos / neg: per query, lists of corpus ids."""

    queries: list
    corpus: list
    pos: list
    neg: list

    def pairs(self):
        """All (query id, corpus id, label) triples, label 1 for a subgraph."""
        out = []
        for q, (p, n) in enumerate(zip(self.pos, self.neg)):
            out += [(q, c, 1) for c in p] + [(q, c, 0) for c in n]
        return out


def _graphs(doc):
    out = []
    for g in doc["graphs"]:
        e = np.asarray(g["edges"], dtype=np.int64).reshape(-1, 2)
        n = int(g["num_nodes"])
        if e.size and (e.min() < 0 or e.max() >= n):
            raise ValueError(f"edge endpoint out of range 0..{n - 1} in {doc.get('source_file')}")
        out.append((n, e))
    return out


def load_subgraph_split(root: str, dataset: str = "aids", split: str = "train") -> SubgraphSplit:
    """Reads ``root/splits/{split}/{split}_{dataset}240k_*.json`` and the shared corpus
    ``root/splits/{dataset}240k_corpus_subgraphs.json`` (root: the folder holding ``splits``, e.g.
    ``../shared/data/subgraph``)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    base = os.path.join(root, "splits")
    with open(os.path.join(base, f"{dataset}240k_corpus_subgraphs.json")) as f:
        corpus = _graphs(json.load(f))
    with open(os.path.join(base, split, f"{split}_{dataset}240k_query_subgraphs.json")) as f:
        queries = _graphs(json.load(f))
    with open(os.path.join(base, split, f"{split}_{dataset}240k_rel_nx_is_subgraph_iso.json")) as f:
        rel = json.load(f)["relations"]
    pos, neg = [[] for _ in queries], [[] for _ in queries]
    for r in rel:
        pos[r["query"]] = list(r["pos"])
        neg[r["query"]] = list(r["neg"])
    return SubgraphSplit(queries, corpus, pos, neg)


def _nx(g):
    import networkx as nx

    n, e = g
    G = nx.Graph()
    G.add_nodes_from(range(n))
    G.add_edges_from(map(tuple, e.tolist()))
    return G


def is_subgraph(query, corpus_graph) -> bool:
    """Node-induced subgraph isomorphism (networkx VF2), the label of the benchmark."""
    from networkx.algorithms import isomorphism

    return isomorphism.GraphMatcher(_nx(corpus_graph), _nx(query)).subgraph_is_isomorphic()


def generate_pairs(corpus: list, num_queries: int, min_nodes: int = 6, max_nodes: int = 15, seed: int = 0,
                   pos_fraction: tuple | None = None, exclude: list | None = None, max_tries: int | None = None,
                   progress: bool = False) -> SubgraphSplit:
    """New labelled pairs from any graphs: each query is a connected node-induced subgraph grown by BFS from a
    random node of a random corpus graph (so at least one positive exists), then labelled against every corpus
    graph with :func:`is_subgraph`.

    pos_fraction: optional (lo, hi); keep only queries whose fraction of positive corpus graphs lies in [lo, hi]
        (the benchmark's queries were chosen that way: AIDS train queries hold 9-28% positives).
    exclude: optional list of graphs; a query isomorphic to one of them, or to an earlier generated query, is
        dropped (to keep generated training queries disjoint from validation and test queries).
    max_tries: stop after this many candidate queries even if fewer than num_queries were kept (default
        50 * num_queries); progress: show a tqdm bar. Returns the kept queries (possibly fewer than asked)."""
    if not corpus:
        raise ValueError("corpus must hold at least one graph")
    if not 1 <= min_nodes <= max_nodes:
        raise ValueError(f"need 1 <= min_nodes <= max_nodes, got {min_nodes}, {max_nodes}")
    if pos_fraction is not None and not (len(pos_fraction) == 2 and 0 <= pos_fraction[0] <= pos_fraction[1] <= 1):
        raise ValueError(f"pos_fraction must be (lo, hi) with 0 <= lo <= hi <= 1, got {pos_fraction}")
    import networkx as nx
    from tqdm import tqdm

    rng = random.Random(seed)
    seen = {}  # WL hash -> graphs, for the isomorphism filter
    for g in exclude or ():
        G = _nx(g)
        seen.setdefault(nx.weisfeiler_lehman_graph_hash(G), []).append(G)
    max_tries = 50 * num_queries if max_tries is None else max_tries
    queries, pos, neg = [], [], []
    bar = tqdm(total=num_queries, desc="generate queries", disable=not progress)
    tries = 0
    while len(queries) < num_queries and tries < max_tries:
        tries += 1
        q = _grow_query(corpus, rng, min_nodes, max_nodes)
        if q is None:
            continue
        if pos_fraction is not None and len(corpus) > 4 * _SCREEN:
            # Screen on a random sample first: a candidate clearly outside the range (by three binomial standard
            # deviations of the sample, at most 0.15) is dropped before the full labelling.
            sample = rng.sample(range(len(corpus)), _SCREEN)
            f = sum(is_subgraph(q, corpus[i]) for i in sample) / _SCREEN
            if f + 0.15 < pos_fraction[0] or f - 0.15 > pos_fraction[1]:
                continue
        labels = [is_subgraph(q, c) for c in corpus]
        frac = sum(labels) / len(corpus)
        if pos_fraction is not None and not pos_fraction[0] <= frac <= pos_fraction[1]:
            continue
        if exclude is not None:
            G = _nx(q)
            h = nx.weisfeiler_lehman_graph_hash(G)
            if any(nx.is_isomorphic(G, H) for H in seen.get(h, ())):
                continue
            seen.setdefault(h, []).append(G)
        queries.append(q)
        pos.append([i for i, y in enumerate(labels) if y])
        neg.append([i for i, y in enumerate(labels) if not y])
        bar.update()
    bar.close()
    return SubgraphSplit(queries, list(corpus), pos, neg)


_SCREEN = 100  # corpus graphs labelled to screen a candidate against pos_fraction


def _grow_query(corpus, rng, min_nodes, max_nodes):
    """A connected node-induced subgraph of a random corpus graph, grown by BFS (None when it stays too small)."""
    n, e = corpus[rng.randrange(len(corpus))]
    adj = [[] for _ in range(n)]
    for u, v in e.tolist():
        adj[u].append(v)
        adj[v].append(u)
    want = rng.randint(min_nodes, max_nodes)
    order = [rng.randrange(n)]
    seen = set(order)
    for u in order:
        nb = adj[u][:]
        rng.shuffle(nb)
        for v in nb:
            if v not in seen and len(order) < want:
                seen.add(v)
                order.append(v)
    if len(order) < min_nodes:
        return None
    index = {u: i for i, u in enumerate(order)}
    sub = [(index[u], index[v]) for u, v in e.tolist() if u in index and v in index]
    return len(order), np.asarray(sub, dtype=np.int64).reshape(-1, 2)


@dataclasses.dataclass
class PairBatch:
    """B padded pairs. Node ids are flat: node u of pair b is b * max_nodes + u (padding nodes isolated).

    q_edges / c_edges: int64 [2, E] directed both ways; q_mask / c_mask: bool [B, max_nodes];
    q_edge_pairs / c_edge_pairs: int64 [B, max_edges, 2] endpoints (flat ids) of each undirected edge, with
    q_edge_mask / c_edge_mask bool [B, max_edges] (for edge-level models)."""

    q_edges: torch.Tensor
    c_edges: torch.Tensor
    q_mask: torch.Tensor
    c_mask: torch.Tensor
    q_edge_pairs: torch.Tensor
    c_edge_pairs: torch.Tensor
    q_edge_mask: torch.Tensor
    c_edge_mask: torch.Tensor
    max_nodes: int

    def to(self, device):
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device)
                                            for f in dataclasses.fields(self) if f.name != "max_nodes"})


def _side(graphs, max_nodes, max_edges):
    b = len(graphs)
    mask = torch.zeros(b, max_nodes, dtype=torch.bool)
    pairs = torch.zeros(b, max_edges, 2, dtype=torch.int64)
    emask = torch.zeros(b, max_edges, dtype=torch.bool)
    edges = []
    for k, (n, e) in enumerate(graphs):
        if n > max_nodes or len(e) > max_edges:
            raise ValueError(f"graph with {n} nodes / {len(e)} edges exceeds max_nodes={max_nodes} / "
                             f"max_edges={max_edges}")
        mask[k, :n] = True
        et = torch.from_numpy(e) + k * max_nodes
        pairs[k, : len(e)] = et
        emask[k, : len(e)] = True
        edges.append(torch.cat([et, et.flip(1)]).t())
    edge_index = torch.cat(edges, 1) if edges else torch.zeros(2, 0, dtype=torch.int64)
    return edge_index, mask, pairs, emask


def make_batch(queries, corpus, pairs, max_nodes: int = 20, max_edges: int = 24) -> PairBatch:
    """Pads the (query id, corpus id) pairs into a :class:`PairBatch`."""
    qe, qm, qp, qem = _side([queries[q] for q, c in pairs], max_nodes, max_edges)
    ce, cm, cp, cem = _side([corpus[c] for q, c in pairs], max_nodes, max_edges)
    return PairBatch(qe, ce, qm, cm, qp, cp, qem, cem, max_nodes)

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

from .._optional import require

# The three splits of the IsoNet/IsoNet++ benchmark. load_subgraph_split reads any dataset and split name whose
# files are present: these names only document the benchmark's layout.
SPLITS = ("train", "val", "test")

LAYOUT = ("{base}/{dataset}240k_corpus_subgraphs.json (the corpus), "
          "{base}/{split}/{split}_{dataset}240k_query_subgraphs.json (the queries) and "
          "{base}/{split}/{split}_{dataset}240k_rel_nx_is_subgraph_iso.json (the relation)")
_GRAPHS_DOC = '{"graphs": [{"num_nodes": n, "edges": [[u, v], ...]}, ...]} with 0 <= u, v < n'
_RELATION_DOC = '{"relations": [{"query": q, "pos": [corpus ids], "neg": [corpus ids]}, ...]}'


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


def _read_json(path, key, expected):
    """The list under ``key`` of the JSON object in ``path``; ValueError naming the path and the expected layout."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); expected {expected}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise ValueError(f"{path}: no {key!r} list at the top level; expected {expected}")  # noqa: TRY004 - bad file content
    return doc[key]


def _graphs(path):
    out = []
    for i, g in enumerate(_read_json(path, "graphs", _GRAPHS_DOC)):
        try:
            n = g["num_nodes"]
            if isinstance(n, bool) or not isinstance(n, int):
                raise TypeError
            if n < 0:
                raise ValueError
            e = np.asarray(g["edges"], dtype=np.int64)
            if e.size and (e.ndim != 2 or e.shape[1] != 2):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: graph {i} is malformed; expected {_GRAPHS_DOC}") from None
        e = e.reshape(-1, 2)
        if e.size and (e.min() < 0 or e.max() >= n):
            raise ValueError(f"{path}: graph {i}: edge endpoint out of range 0..{n - 1}")
        out.append((n, e))
    return out


def _relation(path, num_queries, num_corpus):
    pos, neg = [[] for _ in range(num_queries)], [[] for _ in range(num_queries)]
    for r in _read_json(path, "relations", _RELATION_DOC):
        try:
            q, p, n = r["query"], [int(c) for c in r["pos"]], [int(c) for c in r["neg"]]
            if isinstance(q, bool) or not isinstance(q, int):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: malformed relation {r!r:.80}; expected {_RELATION_DOC}") from None
        if not 0 <= q < num_queries:
            raise ValueError(f"{path}: query id {q} out of range 0..{num_queries - 1} (the query file holds "
                             f"{num_queries} graphs)")
        if any(not 0 <= c < num_corpus for c in p + n):
            raise ValueError(f"{path}: query {q}: corpus id out of range 0..{num_corpus - 1} (the corpus holds "
                             f"{num_corpus} graphs)")
        pos[q], neg[q] = p, n
    return pos, neg


def _name(what, v):
    if not isinstance(v, str) or not v or v in (".", "..") or "/" in v or os.sep in v:
        raise ValueError(f"{what} must be a file-name part (no path separator), got {v!r}")


def subgraph_split_files(root: str, dataset: str, split: str) -> tuple[str, str, str]:
    """The (corpus, queries, relation) paths :func:`load_subgraph_split` reads: under ``root/splits``, or under
    ``root`` itself when it is the ``splits`` folder (holds the corpus file and no ``splits`` folder)."""
    _name("dataset", dataset)
    _name("split", split)
    base = os.path.join(root, "splits")
    if not os.path.isdir(base) and os.path.isfile(os.path.join(root, f"{dataset}240k_corpus_subgraphs.json")):
        base = root
    return (os.path.join(base, f"{dataset}240k_corpus_subgraphs.json"),
            os.path.join(base, split, f"{split}_{dataset}240k_query_subgraphs.json"),
            os.path.join(base, split, f"{split}_{dataset}240k_rel_nx_is_subgraph_iso.json"))


def load_subgraph_split(root: str, dataset: str = "aids", split: str = "train") -> SubgraphSplit:
    """Reads one split of a subgraph-matching dataset in the IsoNet/IsoNet++ JSON layout: the shared corpus
    ``root/splits/{dataset}240k_corpus_subgraphs.json``, the queries
    ``root/splits/{split}/{split}_{dataset}240k_query_subgraphs.json`` and the relation
    ``root/splits/{split}/{split}_{dataset}240k_rel_nx_is_subgraph_iso.json``.

    Any dataset and split name whose files are present is read (aids, mutag, ptc_fm, ... as published, or a split
    of your own in the same layout). ``root`` is the folder holding ``splits`` (e.g. ``../shared/data/subgraph``)
    or the ``splits`` folder itself.

    Raises:
        FileNotFoundError: a file is missing (the message names it and the expected layout).
        ValueError: a name with a path separator, or a malformed file (invalid JSON, a graph without
            num_nodes/edges, an edge endpoint, query id or corpus id out of range); the message names the file.
    """
    files = subgraph_split_files(root, dataset, split)
    missing = [p for p in files if not os.path.isfile(p)]
    if missing:
        base = os.path.dirname(files[0])
        raise FileNotFoundError(
            f"subgraph dataset {dataset!r}, split {split!r}: missing {', '.join(missing)}; expected "
            + LAYOUT.format(base=base, dataset=dataset, split=split))
    corpus_path, query_path, relation_path = files
    corpus = _graphs(corpus_path)
    queries = _graphs(query_path)
    pos, neg = _relation(relation_path, len(queries), len(corpus))
    return SubgraphSplit(queries, corpus, pos, neg)


def _nx(g):
    nx = require("networkx", "fastlayers.data.is_subgraph / generate_pairs")

    n, e = g
    G = nx.Graph()
    G.add_nodes_from(range(n))
    G.add_edges_from(map(tuple, e.tolist()))
    return G


def is_subgraph(query, corpus_graph) -> bool:
    """Node-induced subgraph isomorphism (networkx VF2), the label of the benchmark."""
    isomorphism = require("networkx.algorithms.isomorphism", "fastlayers.data.is_subgraph")
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
    from tqdm import tqdm

    nx = require("networkx", "fastlayers.data.generate_pairs")
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

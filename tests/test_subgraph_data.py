"""fastlayers.data: subgraph-pair loader, pair generator, padded batches, and the MAP / HITS@k metrics."""

import json
import os

import numpy as np
import pytest
from fastlayers.data import (
    generate_pairs,
    hits_at_k,
    is_subgraph,
    load_subgraph_split,
    make_batch,
    mean_average_precision,
)

from .conftest import SHARED_DATA, needs

ROOT = os.path.join(SHARED_DATA, "subgraph")
needs_data = pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, "splits")), reason="../shared/data absent")


def _g(n, edges):
    return n, np.asarray(edges, dtype=np.int64).reshape(-1, 2)


def _ring(n):
    return _g(n, [(i, (i + 1) % n) for i in range(n)])


@needs_data
@pytest.mark.parametrize("split, nq", [("train", 180), ("val", 45), ("test", 75)])
def test_load_aids_splits(split, nq):
    s = load_subgraph_split(ROOT, "aids", split)
    assert len(s.queries) == nq and len(s.corpus) == 800
    for p, n in zip(s.pos, s.neg):
        assert sorted(p + n) == list(range(800))
    assert all(17 <= n <= 20 for n, _ in s.corpus) and all(n <= 15 for n, _ in s.queries)


@needs_data
@needs("networkx")
def test_labels_are_node_induced_subgraph_isomorphism():
    s = load_subgraph_split(ROOT, "aids", "test")
    rng = np.random.default_rng(0)
    for q in rng.choice(len(s.queries), 3, replace=False):
        for c in s.pos[q][:2]:
            assert is_subgraph(s.queries[q], s.corpus[c])
        for c in s.neg[q][:2]:
            assert not is_subgraph(s.queries[q], s.corpus[c])


@needs("networkx")
def test_is_subgraph_is_node_induced():
    path3 = _g(3, [(0, 1), (1, 2)])
    assert is_subgraph(path3, _ring(5))
    assert not is_subgraph(path3, _g(3, [(0, 1), (1, 2), (0, 2)]))  # monomorphic only: induced needs no 0-2 edge


@needs("networkx")
def test_generate_pairs_labels_every_corpus_graph():
    corpus = [_ring(8), _g(6, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 2)]), _g(4, [(0, 1), (0, 2), (0, 3)])]
    s = generate_pairs(corpus, num_queries=5, min_nodes=3, max_nodes=5, seed=3)
    assert len(s.queries) == 5
    for q, p, n in zip(s.queries, s.pos, s.neg):
        assert sorted(p + n) == [0, 1, 2] and len(p) >= 1
        assert 3 <= q[0] <= 5
        for c in range(3):
            assert (c in p) == is_subgraph(q, corpus[c])


@needs("networkx")
def test_generate_pairs_filters():
    import networkx as nx
    from fastlayers.data.subgraph import _nx

    corpus = [_ring(8), _g(6, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 2)]), _g(4, [(0, 1), (0, 2), (0, 3)])]
    # Only queries found in exactly one or two of the three corpus graphs.
    s = generate_pairs(corpus, num_queries=4, min_nodes=3, max_nodes=5, seed=1, pos_fraction=(0.3, 0.7))
    assert s.queries and all(1 <= len(p) <= 2 for p in s.pos)
    # No query isomorphic to an excluded graph or to another generated one.
    path3 = _g(3, [(0, 1), (1, 2)])
    s = generate_pairs(corpus, num_queries=6, min_nodes=3, max_nodes=4, seed=2, exclude=[path3], max_tries=300)
    graphs = [_nx(q) for q in s.queries]
    assert graphs and not any(nx.is_isomorphic(g, _nx(path3)) for g in graphs)
    assert not any(nx.is_isomorphic(a, b) for i, a in enumerate(graphs) for b in graphs[i + 1:])
    # max_tries bounds the work when too few candidates pass.
    s = generate_pairs(corpus, num_queries=50, min_nodes=3, max_nodes=3, seed=0, pos_fraction=(1.0, 1.0),
                       max_tries=40)
    assert len(s.queries) < 50


def _write_split(root, dataset, split, corpus, queries, relations):
    """A split in the IsoNet++ JSON layout of ../shared/data/subgraph (see its README)."""
    folder = root / "splits" / split
    folder.mkdir(parents=True, exist_ok=True)

    def graphs(gs, kind, split):
        return {"dataset": f"{dataset}240k", "split": split, "kind": kind, "source_file": None,
                "num_graphs": len(gs), "graphs": [{"num_nodes": n, "edges": e} for n, e in gs]}

    (root / "splits" / f"{dataset}240k_corpus_subgraphs.json").write_text(json.dumps(graphs(corpus, "corpus", None)))
    (folder / f"{split}_{dataset}240k_query_subgraphs.json").write_text(json.dumps(graphs(queries, "query", split)))
    (folder / f"{split}_{dataset}240k_rel_nx_is_subgraph_iso.json").write_text(json.dumps(
        {"dataset": f"{dataset}240k", "split": split, "kind": "relation", "source_file": None,
         "num_queries": len(queries), "num_corpus_graphs": len(corpus), "relations": relations}))


_CORPUS = [(4, [[0, 1], [1, 2], [2, 3], [3, 0]]), (3, [[0, 1], [1, 2], [0, 2]]), (3, [[0, 1], [1, 2]])]
_QUERIES = [(3, [[0, 1], [1, 2]]), (2, [[0, 1]])]
_RELATIONS = [{"query": 0, "pos": [0, 2], "neg": [1]}, {"query": 1, "pos": [0, 1, 2], "neg": []}]


def test_any_dataset_name_in_the_layout_loads(tmp_path):
    # Not one of the published five: a PTC_MR split in the same JSON layout reads like any other.
    _write_split(tmp_path, "ptc_mr", "train", _CORPUS, _QUERIES, _RELATIONS)
    s = load_subgraph_split(str(tmp_path), "ptc_mr", "train")
    assert [n for n, _ in s.corpus] == [4, 3, 3] and [n for n, _ in s.queries] == [3, 2]
    assert s.corpus[1][1].tolist() == [[0, 1], [1, 2], [0, 2]] and s.queries[1][1].dtype == np.int64
    assert s.pos == [[0, 2], [0, 1, 2]] and s.neg == [[1], []]
    # The splits folder itself works as root, and any split name whose files exist is read.
    assert load_subgraph_split(str(tmp_path / "splits"), "ptc_mr", "train").pos == s.pos
    _write_split(tmp_path, "ptc_mr", "fold3", _CORPUS, _QUERIES[:1], _RELATIONS[:1])
    assert len(load_subgraph_split(str(tmp_path), "ptc_mr", "fold3").queries) == 1


def test_missing_files_name_the_path_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cora240k_corpus_subgraphs\.json.*expected .*"
                                                r"train_cora240k_query_subgraphs\.json \(the queries\)"):
        load_subgraph_split(str(tmp_path), "cora")
    _write_split(tmp_path, "ptc_mr", "train", _CORPUS, _QUERIES, _RELATIONS)
    with pytest.raises(FileNotFoundError, match=r"missing .*dev/dev_ptc_mr240k_query_subgraphs\.json"):
        load_subgraph_split(str(tmp_path), "ptc_mr", "dev")
    for bad in ("../aids", "", None):
        with pytest.raises(ValueError, match="dataset must be a file-name part"):
            load_subgraph_split(str(tmp_path), bad)


@pytest.mark.parametrize("which, content, match", [
    ("corpus", "{not json", r"corpus_subgraphs\.json: not valid JSON"),
    ("corpus", json.dumps({"graphs": {"num_nodes": 3}}), r"corpus_subgraphs\.json: no 'graphs' list"),
    ("corpus", json.dumps([1, 2]), r"no 'graphs' list at the top level; expected \{\"graphs\""),
    ("query", json.dumps({"graphs": [{"edges": [[0, 1]]}]}), r"query_subgraphs\.json: graph 0 is malformed"),
    ("query", json.dumps({"graphs": [{"num_nodes": 3, "edges": [[0, 1, 2]]}]}), r"graph 0 is malformed"),
    ("query", json.dumps({"graphs": [{"num_nodes": 2, "edges": [[0, 1]]}, {"num_nodes": 2, "edges": [[0, 5]]}]}),
     r"query_subgraphs\.json: graph 1: edge endpoint out of range 0\.\.1"),
    ("relation", json.dumps({"relations": [{"query": 0, "pos": [0]}]}), r"rel_nx_is_subgraph_iso\.json: malformed"),
    ("relation", json.dumps({"relations": [{"query": 7, "pos": [], "neg": []}]}), r"query id 7 out of range 0\.\.1"),
    ("relation", json.dumps({"relations": [{"query": 0, "pos": [3], "neg": []}]}), r"corpus id out of range 0\.\.2"),
])
def test_malformed_files_raise_naming_the_file(tmp_path, which, content, match):
    _write_split(tmp_path, "ptc_mr", "test", _CORPUS, _QUERIES, _RELATIONS)
    path = {"corpus": tmp_path / "splits" / "ptc_mr240k_corpus_subgraphs.json",
            "query": tmp_path / "splits" / "test" / "test_ptc_mr240k_query_subgraphs.json",
            "relation": tmp_path / "splits" / "test" / "test_ptc_mr240k_rel_nx_is_subgraph_iso.json"}[which]
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_subgraph_split(str(tmp_path), "ptc_mr", "test")


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_nodes"):
        generate_pairs([_ring(5)], 1, min_nodes=4, max_nodes=3)
    with pytest.raises(ValueError, match="pos_fraction"):
        generate_pairs([_ring(5)], 1, pos_fraction=(0.5, 0.2))
    with pytest.raises(ValueError, match="exceeds max_nodes"):
        make_batch([_ring(25)], [_ring(5)], [(0, 0)])


def test_make_batch_layout():
    queries = [_g(3, [(0, 1), (1, 2)]), _g(2, [(0, 1)])]
    corpus = [_ring(4)]
    b = make_batch(queries, corpus, [(0, 0), (1, 0)], max_nodes=5, max_edges=6)
    assert b.q_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    # Flat ids: pair 1's nodes start at 5; every edge appears in both directions.
    assert sorted(map(tuple, b.q_edges.t().tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1), (5, 6), (6, 5)]
    assert b.c_edges.shape == (2, 16)
    assert b.q_edge_mask.sum(1).tolist() == [2, 1] and b.c_edge_mask.sum(1).tolist() == [4, 4]
    assert b.q_edge_pairs[1, 0].tolist() == [5, 6]


@needs("sklearn")
def test_mean_average_precision():
    from sklearn.metrics import average_precision_score

    scores = [np.array([3.0, 2.0, 1.0]), np.array([0.1, 0.9, 0.5, 0.2])]
    labels = [np.array([0, 1, 1]), np.array([1, 0, 0, 1])]
    # query 1: positives at ranks 2 and 3 -> (1/2 + 2/3) / 2
    want = np.mean([(1 / 2 + 2 / 3) / 2, average_precision_score(labels[1], scores[1])])
    assert mean_average_precision(scores, labels) == pytest.approx(want)
    assert mean_average_precision([np.array([1.0, 0.0])], [np.array([1, 0])]) == 1.0
    with pytest.raises(ValueError, match="same queries"):
        mean_average_precision(scores, labels[:1])


def test_hits_at_k():
    s = np.arange(30, dtype=float)[::-1]  # 29, 28, ..., 0
    y = np.zeros(30, dtype=int)
    y[[0, 10, 25]] = 1  # positives at scores 29, 19, 4
    # The 2nd highest negative scores 27: only the first positive beats it.
    assert hits_at_k([s], [y], k=2) == pytest.approx(1 / 3)
    # The 20th negative scores 8: two positives beat it.
    assert hits_at_k([s], [y], k=20) == pytest.approx(2 / 3)
    assert hits_at_k([s[:5]], [y[:5]], k=20) == 1.0


@needs_data
@needs("networkx")
def test_committed_extra_training_queries_are_disjoint_and_labelled():
    # benchmarks/results/isonet/aids-extra-queries.json trained the reported IsoNet++ model: no query may be
    # isomorphic to a validation or test query, and its labels must be node-induced subgraph isomorphism.
    import random

    import networkx as nx
    from fastlayers.data.subgraph import _nx
    from fastlayers.examples.isonet import extra_queries

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results", "isonet", "aids-extra-queries.json")
    train = load_subgraph_split(ROOT, "aids", "train")
    extra = extra_queries(train, [], 170, path)
    assert len(extra.queries) == 170
    held = {}
    for split in ("val", "test"):
        for q in load_subgraph_split(ROOT, "aids", split).queries:
            G = _nx(q)
            held.setdefault(nx.weisfeiler_lehman_graph_hash(G), []).append(G)
    for q in extra.queries:
        G = _nx(q)
        assert not any(nx.is_isomorphic(G, H) for H in held.get(nx.weisfeiler_lehman_graph_hash(G), ()))
    rng = random.Random(0)
    for _ in range(40):
        k = rng.randrange(170)
        c = rng.randrange(800)
        assert is_subgraph(extra.queries[k], train.corpus[c]) == (c in extra.pos[k])


def test_isonet_example_takes_any_dataset_in_the_layout(tmp_path):
    from fastlayers.examples.isonet import split_folder

    with pytest.raises(FileNotFoundError, match=r"ptc_mr240k_corpus_subgraphs\.json does not exist: --dataset "
                                                r"ptc_mr reads the JSON files"):
        split_folder(str(tmp_path), "ptc_mr")
    for s in ("train", "val", "test"):
        _write_split(tmp_path / "subgraph", "ptc_mr", s, _CORPUS, _QUERIES, _RELATIONS)
    base = split_folder(str(tmp_path), "ptc_mr")
    assert base == str(tmp_path / "subgraph") and load_subgraph_split(base, "ptc_mr", "val").neg == [[1], []]

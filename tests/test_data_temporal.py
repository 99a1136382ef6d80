"""Temporal stream loaders and splits (fastlayers.data)."""

import os

import numpy as np
import pytest
import torch
from fastlayers.data import chronological_split, load_jodie_csv, load_snap_temporal

from .conftest import SHARED_DATA

COLLEGEMSG = os.path.join(SHARED_DATA, "temporal", "collegemsg.txt")


def test_snap_sorts_renumbers_and_skips_header(tmp_path):
    p = tmp_path / "g.txt"
    p.write_text("src dst time\n# comment\n10 30 500\n30 20 100\n\n20 10 100\n")
    d = load_snap_temporal(str(p))
    assert d.num_nodes == 3 and d.node_ids.tolist() == [10, 20, 30]
    assert d.t.dtype == torch.float64 and d.t.tolist() == [100.0, 100.0, 500.0]
    # Stable: the two edges at t=100 keep file order (30->20, then 20->10).
    assert d.node_ids[d.src].tolist() == [30, 20, 10] and d.node_ids[d.dst].tolist() == [20, 10, 30]
    assert d.eid.tolist() == [0, 1, 2]


def test_snap_bad_line(tmp_path):
    p = tmp_path / "g.txt"
    p.write_text("1 2 5\n3 4\n")
    with pytest.raises(ValueError, match=":2:"):
        load_snap_temporal(str(p))
    p.write_text("1 2 5\n3 x 7\n")
    with pytest.raises(ValueError, match=":2:"):
        load_snap_temporal(str(p))
    p.write_text("1 2 -5\n")
    with pytest.raises(ValueError, match="times"):
        load_snap_temporal(str(p))


def test_jodie_csv_with_padded_features(tmp_path):
    p = tmp_path / "ml_toy.csv"
    p.write_text(",u,i,ts,label,idx\n0,1,5,3.0,0,1\n1,2,6,1.0,1,2\n2,1,6,2.0,0,3\n")
    feats = np.arange(4 * 2, dtype=np.float32).reshape(4, 2)  # row 0 is TGN's padding
    np.save(tmp_path / "ml_toy.npy", feats)
    d = load_jodie_csv(str(p))
    assert d.t.tolist() == [1.0, 2.0, 3.0]
    assert d.node_ids[d.src].tolist() == [2, 1, 1] and d.node_ids[d.dst].tolist() == [6, 6, 5]
    assert d.label.tolist() == [1, 0, 0]
    assert d.edge_feat.tolist() == [feats[2].tolist(), feats[3].tolist(), feats[1].tolist()]
    np.save(tmp_path / "ml_toy.npy", feats[:2])
    with pytest.raises(ValueError, match="edge features"):
        load_jodie_csv(str(p))
    q = tmp_path / "bad.csv"
    q.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="columns"):
        load_jodie_csv(str(q))


def _toy_stream(tmp_path, n=60, e=2000, seed=0):
    rng = np.random.default_rng(seed)
    rows = np.c_[rng.integers(0, n, e), rng.integers(0, n, e), np.sort(rng.integers(0, 10**6, e))]
    p = tmp_path / "toy.txt"
    np.savetxt(p, rows, fmt="%d")
    return load_snap_temporal(str(p))


def test_chronological_split_and_inductive_mask(tmp_path):
    d = _toy_stream(tmp_path)
    s = chronological_split(d, mask_frac=0.1, seed=1)
    E = len(d)
    assert abs(s.val.numel() - 0.15 * E) < 0.02 * E and abs(s.test.numel() - 0.15 * E) < 0.02 * E
    assert d.t[s.train].max() <= d.t[s.val].min() and d.t[s.val].max() <= d.t[s.test].min()
    assert s.masked.numel() > 0
    masked = set(s.masked.tolist())
    train_nodes = set(d.src[s.train].tolist()) | set(d.dst[s.train].tolist())
    assert not masked & train_nodes
    for new, period in ((s.val_new, s.val), (s.test_new, s.test)):
        assert set(new.tolist()) <= set(period.tolist())
        for i in new.tolist():
            assert int(d.src[i]) not in train_nodes or int(d.dst[i]) not in train_nodes
        rest = sorted(set(period.tolist()) - set(new.tolist()))
        assert all(int(d.src[i]) in train_nodes and int(d.dst[i]) in train_nodes for i in rest)


@pytest.mark.skipif(not os.path.exists(COLLEGEMSG), reason="../shared/data not present")
def test_collegemsg_counts():
    d = load_snap_temporal(COLLEGEMSG)
    assert len(d) == 59835 and d.num_nodes == 1899
    assert torch.all(d.t[1:] >= d.t[:-1])

"""fastlayers.data loaders: generated files (always) and the shared datasets (where present)."""

import os

import numpy as np
import pytest
import torch
from fastlayers import data
from fastlayers.nn import GCNConv

from .conftest import SHARED_DATA, needs

NODECLF = os.path.join(SHARED_DATA, "nodeclf")
needs_shared = pytest.mark.skipif(not os.path.isdir(NODECLF), reason="../shared/data not present")


def _write_geom_gcn(folder, name, n=6, splits=2):
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    feats = rng.integers(0, 2, (n, 4))
    labels = rng.integers(0, 3, n)
    with open(os.path.join(folder, "out1_node_feature_label.txt"), "w") as f:
        f.write("node_id\tfeature\tlabel\n")
        f.writelines(f"{i}\t{','.join(map(str, feats[i]))}\t{labels[i]}\n"
                     for i in reversed(range(n)))  # any row order
    edges = [(0, 1), (1, 2), (2, 2), (5, 0)]
    with open(os.path.join(folder, "out1_graph_edges.txt"), "w") as f:
        f.write("node_id\tnode_id\n" + "".join(f"{a}\t{b}\n" for a, b in edges))
    for s in range(splits):
        m = np.zeros(n, dtype=np.uint8 if s else bool)
        m[s] = 1
        np.savez(os.path.join(folder, f"{name}_split_0.6_0.2_{s}.npz"), train_mask=m, val_mask=m, test_mask=m)
    return feats, labels, edges


def test_geom_gcn_generated(tmp_path):
    feats, labels, edges = _write_geom_gcn(str(tmp_path / "toy"), "toy")
    d = data.load_geom_gcn(str(tmp_path), "toy")
    assert torch.equal(d.x, torch.tensor(feats, dtype=torch.float32))
    assert torch.equal(d.y, torch.tensor(labels))
    assert d.edge_index.t().tolist() == [list(e) for e in edges]
    assert d.graph.num_nodes == 6 and d.train_mask.shape == (6, 2) and d.train_mask.dtype == torch.bool
    assert d.train_mask[:, 1].nonzero().flatten().tolist() == [1]
    one = data.load_geom_gcn(str(tmp_path / "toy"), split=1)
    assert one.val_mask.shape == (6,) and one.val_mask[1]
    with pytest.raises(ValueError, match="split"):
        data.load_geom_gcn(str(tmp_path / "toy"), split=2)
    with pytest.raises(FileNotFoundError):
        data.load_geom_gcn(str(tmp_path), "missing")


def test_bitcoin_generated(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text("10,3,5,1289241911.72836\n3,7,-2,1289241941.5\n7,10,1,1289243140.25\n")
    b = data.load_bitcoin(str(p))
    assert b.node_ids.tolist() == [3, 7, 10] and b.edge_index.tolist() == [[2, 0, 1], [0, 1, 2]]
    assert b.sign.tolist() == [1, -1, 1] and b.time.dtype == torch.float64 and b.time[0] == 1289241911.72836
    pos, neg = b.split()
    assert pos.num_edges == 2 and neg.num_edges == 1 and pos.num_nodes == neg.num_nodes == 3


@needs_shared
@pytest.mark.parametrize("name, n, e", [("texas", 183, 325), ("wisconsin", 251, 515)])
def test_geom_gcn_shared(name, n, e):
    d = data.load_geom_gcn(NODECLF, name)
    assert d.x.shape == (n, 1703) and d.edge_index.shape == (2, e) and d.num_classes == 5
    assert d.train_mask.shape == (n, 10)
    for s in range(10):  # the standard splits are disjoint
        assert not (d.train_mask[:, s] & d.test_mask[:, s]).any()
    # 16 self-loop rows (../shared/data/README.md)
    assert int((d.edge_index[0] == d.edge_index[1]).sum()) == 16


@needs_shared
def test_cora_and_bitcoin_shared():
    c = data.load_planetoid_npz(os.path.join(NODECLF, "cora", "cora.npz"))
    assert c.x.shape == (2708, 1433) and c.graph.num_edges == 10556 and c.num_classes == 7
    assert int(c.train_mask.sum()) == 140 and int(c.test_mask.sum()) == 1000
    b = data.load_bitcoin(os.path.join(SHARED_DATA, "signed", "bitcoin_otc.csv"))
    assert b.num_nodes == 5881 and b.edge_index.size(1) == 35592 and int((b.sign > 0).sum()) == 32029


@needs_shared
def test_gcn_trains_on_cora():
    # An end-to-end check of the ops under a real training loop: Kipf & Welling's 2-layer GCN reaches ~80% test
    # accuracy; a broken gradient would leave it near chance (~15-30%).
    torch.manual_seed(0)
    c = data.load_planetoid_npz(os.path.join(NODECLF, "cora", "cora.npz"))
    x = c.x / c.x.sum(1, keepdim=True).clamp(min=1)
    l1, l2 = GCNConv(1433, 16), GCNConv(16, 7)
    opt = torch.optim.Adam([*l1.parameters(), *l2.parameters()], lr=0.02, weight_decay=5e-4)
    for _ in range(40):
        opt.zero_grad()
        h = torch.relu(l1(torch.nn.functional.dropout(x, 0.5), c.graph))
        out = l2(torch.nn.functional.dropout(h, 0.5), c.graph)
        torch.nn.functional.cross_entropy(out[c.train_mask], c.y[c.train_mask]).backward()
        opt.step()
    with torch.no_grad():
        pred = l2(torch.relu(l1(x, c.graph)), c.graph).argmax(1)
    acc = (pred[c.test_mask] == c.y[c.test_mask]).float().mean()
    assert acc > 0.7, acc


@needs_shared
@needs("torch_geometric")
def test_signed_conv_on_bitcoin_matches_pyg():
    import torch_geometric.nn as pyg
    from fastlayers.nn import SignedConv

    b = data.load_bitcoin(os.path.join(SHARED_DATA, "signed", "bitcoin_otc.csv"))
    gp, gn = b.split()
    x = torch.randn(b.num_nodes, 8, dtype=torch.float64)
    for first, xin in ((True, x), (False, torch.cat([x, x.flip(1)], 1))):
        peer = pyg.SignedConv(8, 4, first_aggr=first).double()
        ours = SignedConv(8, 4, first_aggr=first).double()
        ours.load_state_dict(peer.state_dict())
        pos, neg = gp.edge_index, gn.edge_index
        torch.testing.assert_close(ours(xin, gp, gn), peer(xin, pos, neg), rtol=1e-10, atol=1e-10)

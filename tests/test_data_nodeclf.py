"""Node-classification loaders: Film's index-list features, heterophilous-graphs npz, dataset lookup, and the
nodeclf example end to end on generated files (the shared datasets are checked where present)."""

import os

import numpy as np
import pytest
import torch
from fastlayers import data
from fastlayers.examples import nodeclf

from .conftest import SHARED_DATA, needs

NODECLF = os.path.join(SHARED_DATA, "nodeclf")
needs_shared = pytest.mark.skipif(not os.path.isdir(NODECLF), reason="../shared/data not present")


def _write_film_like(folder, n=7, width_in_header=5, splits=2):
    """Geom-GCN files in Film's form: each feature row lists active indices, up to width_in_header (inclusive)."""
    os.makedirs(folder)
    rng = np.random.default_rng(1)
    active = [sorted(rng.choice(width_in_header + 1, size=rng.integers(1, 4), replace=False).tolist())
              for _ in range(n)]
    active[0] = [width_in_header]  # the largest index appears, as in Film (931 with a header of 931)
    labels = rng.integers(0, 3, n)
    with open(os.path.join(folder, "out1_node_feature_label.txt"), "w") as f:
        f.write(f"node_id\tfeature(feature_amount:{width_in_header})\tlabel\n")
        f.writelines(f"{i}\t{','.join(map(str, active[i]))}\t{labels[i]}\n" for i in rng.permutation(n))
    with open(os.path.join(folder, "out1_graph_edges.txt"), "w") as f:
        f.write("node_id\tnode_id\n0\t1\n1\t2\n2\t2\n")
    name = os.path.basename(folder)
    for s in range(splits):
        perm = rng.permutation(n)
        masks = {k: np.isin(np.arange(n), perm[a:b]).astype(np.uint8)
                 for k, (a, b) in {"train_mask": (0, 3), "val_mask": (3, 5), "test_mask": (5, n)}.items()}
        np.savez(os.path.join(folder, f"{name}_split_0.6_0.2_{s}.npz"), **masks)
    return active, labels


def _write_npz(path, n=8, f=4, splits=3, **override):
    rng = np.random.default_rng(2)
    arrays = dict(node_features=rng.random((n, f)).astype(np.float32), node_labels=rng.integers(0, 2, n),
                  edges=np.stack([np.arange(n - 1), np.arange(1, n)], 1),
                  train_masks=np.zeros((splits, n), bool), val_masks=np.zeros((splits, n), bool),
                  test_masks=np.zeros((splits, n), bool))
    for s in range(splits):
        arrays["train_masks"][s, s] = True
        arrays["val_masks"][s, s + 1] = True
        arrays["test_masks"][s, s + 2:] = True
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez_compressed(path, **arrays)
    return arrays


def test_film_index_rows(tmp_path):
    active, labels = _write_film_like(str(tmp_path / "filmish"))
    d = data.load_geom_gcn(str(tmp_path), "filmish")
    assert d.x.shape == (7, 6)  # header says 5, index 5 appears: 6 columns
    want = torch.zeros(7, 6)
    for i, a in enumerate(active):
        want[i, a] = 1
    assert torch.equal(d.x, want)
    assert torch.equal(d.y, torch.tensor(labels))
    assert d.train_mask.shape == (7, 2) and d.train_mask.dtype == torch.bool
    assert d.edge_index.tolist() == [[0, 1, 2], [1, 2, 2]]


def test_dense_rows_of_different_lengths_are_rejected(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "out1_node_feature_label.txt").write_text("node_id\tfeature\tlabel\n0\t0,1\t0\n1\t1\t1\n")
    (folder / "out1_graph_edges.txt").write_text("node_id\tnode_id\n0\t1\n")
    with pytest.raises(ValueError, match="different lengths"):
        data.load_geom_gcn(str(folder))
    (folder / "out1_node_feature_label.txt").write_text("node_id\tfeature(feature_amount:3)\tlabel\n0\t0,x\t0\n")
    with pytest.raises(ValueError, match="feature indices"):
        data.load_geom_gcn(str(folder))


def test_heterophilous_npz(tmp_path):
    arrays = _write_npz(tmp_path / "toy.npz")
    d = data.load_heterophilous_npz(str(tmp_path / "toy.npz"))
    assert torch.equal(d.x, torch.from_numpy(arrays["node_features"]))
    assert torch.equal(d.y, torch.from_numpy(arrays["node_labels"]))
    assert torch.equal(d.edge_index, torch.from_numpy(arrays["edges"].T.copy()))
    assert d.train_mask.shape == (8, 3)
    assert torch.equal(d.test_mask[:, 1], torch.from_numpy(arrays["test_masks"][1]))
    d1 = data.load_heterophilous_npz(str(tmp_path / "toy.npz"), split=1)
    assert torch.equal(d1.val_mask, torch.from_numpy(arrays["val_masks"][1]))
    with pytest.raises(ValueError, match="split"):
        data.load_heterophilous_npz(str(tmp_path / "toy.npz"), split=3)
    with pytest.raises(FileNotFoundError, match="path"):
        data.load_heterophilous_npz(str(tmp_path / "nope.npz"))
    _write_npz(tmp_path / "nolabels.npz", node_labels=None)
    with pytest.raises(ValueError, match="node_labels"):
        data.load_heterophilous_npz(str(tmp_path / "nolabels.npz"))
    _write_npz(tmp_path / "range.npz", edges=np.array([[0, 8]]))
    with pytest.raises(ValueError, match="edge node ids"):
        data.load_heterophilous_npz(str(tmp_path / "range.npz"))


def test_find_node_dataset(tmp_path):
    _write_film_like(str(tmp_path / "geom" / "filmish"))
    os.makedirs(tmp_path / "nodeclf" / "heterophilous")
    _write_npz(tmp_path / "nodeclf" / "heterophilous" / "toy.npz")
    assert data.find_node_dataset(str(tmp_path), "filmish") == str(tmp_path / "geom" / "filmish")
    assert data.find_node_dataset(str(tmp_path), "toy").endswith(os.path.join("heterophilous", "toy.npz"))
    assert data.find_node_dataset(str(tmp_path / "nodeclf"), "toy.npz").endswith("toy.npz")
    assert data.load_node_dataset(str(tmp_path), "toy", split=0).train_mask.shape == (8,)
    with pytest.raises(FileNotFoundError, match="missing"):
        data.find_node_dataset(str(tmp_path), "missing")
    with pytest.raises(ValueError, match="name"):
        data.find_node_dataset(str(tmp_path), "")


def test_split_check():
    y = torch.tensor([0, 1, 1, -1])
    t = torch.tensor([True, False, False, False])
    v = torch.tensor([False, True, False, False])
    s = torch.tensor([False, False, True, False])
    nodeclf.check_split(y, t, v, s)  # node 3 is unlabelled: no split needs it
    with pytest.raises(ValueError, match="overlap"):
        nodeclf.check_split(y, t, v | t, s)
    with pytest.raises(ValueError, match="no split mask"):
        nodeclf.check_split(y, t, v, torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="test_mask"):
        nodeclf.check_split(y, t, v, s.float())


@pytest.mark.parametrize("argv", [["--model", "nsd", "--variant", "general", "--d", "2"],
                                  ["--model", "hei", "--backbone", "linkx"], ["--model", "gcn"]])
def test_example_runs_end_to_end(tmp_path, argv, one_thread):
    _write_film_like(str(tmp_path / "filmish"), n=12)
    out = nodeclf.main(argv + ["--dataset", "filmish", "--root", str(tmp_path), "--epochs", "3", "--hidden", "4",
                               "--quiet", "--json", str(tmp_path / "r.json")])
    assert 0.0 <= out["test"][0] <= 100.0 and os.path.exists(tmp_path / "r.json")


@needs_shared
def test_shared_film():
    d = data.load_geom_gcn(os.path.join(NODECLF, "film"))
    assert d.x.shape == (7600, 932) and d.edge_index.shape == (2, 33391)
    assert set(d.x.unique().tolist()) == {0.0, 1.0} and d.num_classes == 5
    assert d.train_mask.sum(0).tolist() == [3648] * 10 and d.test_mask.sum(0).tolist() == [1520] * 10
    # The first data row of the file: node 4873 has features 521, 92, 111, 77, 770 and label 3.
    assert d.x[4873].nonzero().flatten().tolist() == [77, 92, 111, 521, 770] and int(d.y[4873]) == 3


@needs_shared
@pytest.mark.parametrize("name,n,e", [("chameleon", 2277, 31371), ("squirrel_filtered", 2223, 46998)])
def test_shared_heterophilous(name, n, e):
    d = data.load_node_dataset(NODECLF, name)
    assert d.x.size(0) == n and d.edge_index.size(1) == e and d.train_mask.shape == (n, 10)
    cover = d.train_mask.int() + d.val_mask.int() + d.test_mask.int()
    assert bool((cover == 1).all())


def test_example_names_the_fetch_command_for_a_missing_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="fastlayers.data.fetch"):
        nodeclf.main(["--dataset", "nosuch", "--root", str(tmp_path), "--quiet"])


@needs("torch_scatter")
@pytest.mark.parametrize("variant", ["diag", "orthogonal", "general"])
def test_benchmark_peer_is_the_same_model(variant, one_thread):
    """The torch_scatter NSD the example times against computes the same function and gradients (float64)."""
    torch.manual_seed(0)
    ei = torch.randint(0, 12, (2, 40))
    x = torch.randn(12, 5, dtype=torch.float64)
    ours = nodeclf.NSD(5, 3, variant, d=3, hidden=4, layers=2, add_lp=True).double()
    peer = nodeclf.PyGStyleNSD(5, 3, variant, d=3, hidden=4, layers=2, add_lp=True).double()
    peer.load_state_dict(ours.state_dict())
    a, b = ours(x, ei), peer(x, ei)
    torch.testing.assert_close(a, b)
    go = torch.randn_like(a)
    for ga, gb in zip(torch.autograd.grad(a, list(ours.parameters()), go),
                      torch.autograd.grad(b, list(peer.parameters()), go)):
        torch.testing.assert_close(ga, gb)

"""fastlayers.models.SEMBA / SGCN and fastlayers.data.signed: tiny graphs (the Bitcoin OTC runs are
examples/semba.py)."""

import json
import math
import os

import numpy as np
import pytest
import torch
from fastlayers.data import (
    SignedEdges,
    check_signed_edges,
    load_bitcoin,
    sample_non_edges,
    signed_temporal_split,
)
from fastlayers.examples import semba as semba_example
from fastlayers.models import SEMBA, SGCN
from fastlayers.models.semba import spectral_features

BITCOIN = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "signed", "bitcoin_otc.csv")


def _model(n=6, d=3, balance=True, k=3, **kw):
    torch.manual_seed(0)
    m = SEMBA(n, memory_dim=d, time_dim=4, embed_dim=8, neighbours=k, heads=2, balance=balance,
              time_scale=100.0, **kw).double()
    with torch.no_grad():
        m.memory.copy_(torch.randn(n, 2 * d, dtype=torch.float64))
        m.last_update.copy_(torch.rand(n, dtype=torch.float64) * 500)
        m.seen.copy_(torch.tensor([i % 3 != 2 for i in range(n)]))
    return m


def _gru(x, h, cell):
    """GRUCell by its equations, float64."""
    wi, wh, bi, bh = cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh
    gi, gh = x @ wi.T + bi, h @ wh.T + bh
    H = h.numel()
    r = torch.sigmoid(gi[:H] + gh[:H])
    z = torch.sigmoid(gi[H:2 * H] + gh[H:2 * H])
    n = torch.tanh(gi[2 * H:] + r * gh[2 * H:])
    return (1 - z) * n + z * h


def _reference_rows(m, src, dst, rating, t):
    """Per-node loop over the events, the four balance routes written out by hand (or the one-memory message)."""
    d, R = m.d, m.max_rating
    mem = m.memory.clone()
    w, b = m.time_enc.lin.weight[:, 0], m.time_enc.lin.bias
    msgs = {}
    for i in range(src.numel()):
        for u, v in ((int(src[i]), int(dst[i])), (int(dst[i]), int(src[i]))):
            r = float(rating[i])
            dt = float(t[i] - m.last_update[u]) if bool(m.seen[u]) else 0.0
            enc = torch.cos(w * math.log1p(max(dt, 0.0) / m.time_enc.scale) + b)
            su_p, su_n, sv_p, sv_n = mem[u, :d], mem[u, d:], mem[v, :d], mem[v, d:]
            a = torch.tensor([abs(r) / R], dtype=torch.float64)
            if not m.balance:
                msg = (torch.cat([mem[u], mem[v], torch.tensor([r / R], dtype=torch.float64), enc]),)
            elif r > 0:  # friend of a friend -> friend; enemy of a friend -> enemy
                msg = (torch.cat([su_p, sv_p, a, enc]), torch.cat([su_n, sv_n, a, enc]))
            else:  # enemy of an enemy -> friend; friend of an enemy -> enemy
                msg = (torch.cat([su_p, sv_n, a, enc]), torch.cat([su_n, sv_p, a, enc]))
            msgs.setdefault(u, []).append(msg)
    rows = {}
    for u, ms in sorted(msgs.items()):
        if not m.balance:
            rows[u] = _gru(torch.stack([x[0] for x in ms]).mean(0), mem[u], m.gru)
        else:
            p = _gru(torch.stack([x[0] for x in ms]).mean(0), mem[u, :d], m.gru_pos)
            q = _gru(torch.stack([x[1] for x in ms]).mean(0), mem[u, d:], m.gru_neg)
            rows[u] = torch.cat([p, q])
    return rows


@pytest.mark.parametrize("balance", [True, False])
def test_memory_update_matches_hand_written_routes(balance):
    m = _model(balance=balance)
    # Node 1 gets a positive and a negative edge in one batch (two messages averaged); 0 and 3 mixed signs too.
    src = torch.tensor([0, 2, 3, 0, 4])
    dst = torch.tensor([1, 1, 4, 3, 5])
    rating = torch.tensor([3, -5, -1, 2, 10])
    t = torch.tensor([600.0, 610.0, 620.0, 630.0, 640.0], dtype=torch.float64)
    with torch.no_grad():
        uniq, rows = m.updated_rows(m.memory, src, dst, rating, t)
        ref = _reference_rows(m, src, dst, rating, t)
    assert uniq.tolist() == sorted(ref)
    torch.testing.assert_close(rows, torch.stack([ref[u] for u in uniq.tolist()]), rtol=1e-12, atol=1e-12)


def test_routes_swap_with_the_sign():
    """The same event with the opposite sign feeds the partner's other memory into each of u's memories."""
    m = _model()
    d = m.d
    node, partner = torch.tensor([0]), torch.tensor([1])
    dt = torch.zeros(1, dtype=torch.float64)
    plus = m.messages(m.memory, node, partner, torch.tensor([4]), dt)[0]
    minus = m.messages(m.memory, node, partner, torch.tensor([-4]), dt)[0]
    w = plus.numel() // 2
    s1 = m.memory[1]
    torch.testing.assert_close(plus[d:2 * d], s1[:d])  # + edge: friends <- friend's friends
    torch.testing.assert_close(plus[w + d:w + 2 * d], s1[d:])  # + edge: enemies <- friend's enemies
    torch.testing.assert_close(minus[d:2 * d], s1[d:])  # - edge: friends <- enemy's enemies
    torch.testing.assert_close(minus[w + d:w + 2 * d], s1[:d])  # - edge: enemies <- enemy's friends
    # The magnitude |r| is the same for both signs: the sign only routes.
    assert plus[2 * d] == minus[2 * d] == 0.4


def _batch(gen, n, b, t0):
    src = torch.randint(0, n, (b,), generator=gen)
    dst = (src + torch.randint(1, n, (b,), generator=gen)) % n
    rating = torch.randint(1, 11, (b,), generator=gen) * torch.where(torch.rand(b, generator=gen) < 0.3, -1, 1)
    t = t0 + torch.arange(b, dtype=torch.float64)
    return src, dst, rating, t


def test_only_touched_nodes_change_and_predictions_see_only_the_past():
    m = _model(n=12).eval()
    gen = torch.Generator().manual_seed(1)
    src, dst, rating, t = _batch(gen, 12, 4, 1000.0)
    with torch.no_grad():
        before = m.memory.clone()
        out1, _ = m(src, dst, rating, t)
        torch.testing.assert_close(m.memory, before, rtol=0, atol=0)  # queued, not applied yet
        # The outputs of a batch do not depend on its own ratings (they enter the state afterwards).
        m2 = _model(n=12).eval()
        out2, _ = m2(src, dst, -rating, t)
        torch.testing.assert_close(out1, out2, rtol=0, atol=0)
        m(src[:1], dst[:1], rating[:1], t[-1:] + 1)  # flushes the first batch
    touched = torch.zeros(12, dtype=torch.bool)
    touched[src] = True
    touched[dst] = True
    assert torch.equal(m.memory[~touched], before[~touched])
    assert (m.memory[touched] != before[touched]).all(dim=1).all()
    for u in touched.nonzero().flatten().tolist():
        last = t[(src == u) | (dst == u)].max()
        assert m.last_update[u] == last and bool(m.seen[u])


def test_neighbour_buffer_keeps_the_last_k():
    m = _model(n=8, k=3)
    m.reset_state()
    gen = torch.Generator().manual_seed(2)
    hist = {u: [] for u in range(8)}
    t0 = 0.0
    for _ in range(4):
        src, dst, rating, t = _batch(gen, 8, 7, t0)
        t0 += 100
        with torch.no_grad():
            m(src, dst, rating, t)
        for s, d_, r, tt in zip(src.tolist(), dst.tolist(), rating.tolist(), t.tolist()):
            hist[s].append((d_, r, tt))
            hist[d_].append((s, r, tt))
    with torch.no_grad():
        m._flush()
    for u in range(8):
        want = sorted(hist[u][-3:])
        got = sorted((int(v), int(r), float(tt)) for v, r, tt in zip(m.nbr[u], m.nbr_r[u], m.nbr_t[u]) if v >= 0)
        assert got == want, u
        assert int(m.nbr_count[u]) == len(hist[u])


@pytest.mark.parametrize("task,shape", [("sign", (2,)), ("link", ()), ("signlink", (3,)), ("weight", ())])
def test_gradients_reach_every_trained_part(task, shape):
    torch.manual_seed(0)
    m = SEMBA(20, memory_dim=4, time_dim=4, embed_dim=8, neighbours=4, time_scale=10.0)
    gen = torch.Generator().manual_seed(3)
    for i in range(3):
        src, dst, rating, t = _batch(gen, 20, 10, 100.0 * i)
        neg = torch.randint(0, 20, (10,), generator=gen)
        out, out_neg = m(src, dst, rating, t, neg, task)
        assert out.shape == (10,) + shape and out_neg.shape == (10,) + shape and torch.isfinite(out).all()
        m.zero_grad()
        (out.square().sum() + out_neg.square().sum()).backward()
        m.detach_state()
    names = ["gru_pos.weight_ih", "gru_neg.weight_ih", "gru_neg.weight_hh", "att_q.weight", "att_k.weight",
             "att_v.weight", "merge.0.weight", f"heads_out.{task}.0.weight", "time_enc.lin.weight"]
    params = dict(m.named_parameters())
    for name in names:
        g = params[name].grad
        assert g is not None and g.abs().sum() > 0, name


def test_gradcheck_memory_update_and_embedding():
    m = _model(n=5, d=2, k=2)
    src, dst = torch.tensor([0, 1, 3]), torch.tensor([1, 2, 0])
    rating, t = torch.tensor([2, -3, -7]), torch.tensor([700.0, 800.0, 900.0], dtype=torch.float64)
    mem = m.memory.clone().requires_grad_()
    torch.autograd.gradcheck(lambda x: m.updated_rows(x, src, dst, rating, t)[1], (mem,))
    with torch.no_grad():
        m(src, dst, rating, t)
        m._flush()
    nodes, tq = torch.tensor([0, 1, 4]), torch.full((3,), 1000.0, dtype=torch.float64)
    assert (m.nbr[4] < 0).all()  # node 4 has no neighbour: its attention output is zero, still differentiable
    torch.autograd.gradcheck(lambda x: m.embed(nodes, tq, x), (mem,))


def test_empty_batch_and_bad_input():
    m = _model(n=6)
    e = torch.zeros(0, dtype=torch.int64)
    out, out_neg = m(e, e, e, torch.zeros(0, dtype=torch.float64), e, "signlink")
    assert out.shape == (0, 3) and out_neg.shape == (0, 3)
    s, d = torch.tensor([0, 1]), torch.tensor([2, 3])
    t = torch.tensor([1000.0, 1001.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="rating"):
        m(s, d, torch.tensor([0, 1]), t)
    with pytest.raises(ValueError, match="rating"):
        m(s, d, torch.tensor([11, 1]), t)
    with pytest.raises(ValueError, match="self loop"):
        m(s, torch.tensor([0, 3]), torch.tensor([1, 1]), t)
    with pytest.raises(IndexError, match="dst"):
        m(s, torch.tensor([2, 6]), torch.tensor([1, 1]), t)
    with pytest.raises(IndexError, match="neg"):
        m(s, d, torch.tensor([1, 1]), t, torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="t must be float64"):
        m(s, d, torch.tensor([1, 1]), t.float())
    with pytest.raises(TypeError, match="src"):
        m(s.int(), d, torch.tensor([1, 1]), t)
    with pytest.raises(ValueError, match="non-decreasing"):
        m(s, d, torch.tensor([1, 1]), t.flip(0))
    with pytest.raises(ValueError, match="task"):
        m(s, d, torch.tensor([1, 1]), t, task="rank")
    m(s, d, torch.tensor([1, 1]), t)
    with pytest.raises(ValueError, match="before the previous batch"):
        m(s, d, torch.tensor([1, 1]), t - 10)
    with pytest.raises(ValueError, match="divisible"):
        SEMBA(4, embed_dim=10, heads=3)
    with pytest.raises(ValueError, match="time_scale"):
        SEMBA(4, time_scale=0.0)
    with pytest.raises(ValueError, match="neighbours"):
        SEMBA(4, neighbours=0)


def _signed(src, dst, rating, time, n=None):
    n = n or int(max(max(src), max(dst))) + 1
    return SignedEdges(torch.tensor([src, dst]), torch.tensor(rating), torch.where(torch.tensor(rating) > 0, 1, -1),
                       torch.tensor(time, dtype=torch.float64), torch.arange(n))


def test_signed_split_protocol_and_checks():
    # 10 events out of time order; nodes 6, 7, 8 never appear in training.
    src = [0, 1, 2, 0, 3, 1, 4, 6, 2, 6]
    dst = [1, 2, 3, 2, 4, 5, 5, 7, 8, 8]
    time = [5, 1, 2, 3, 4, 0, 6, 9, 7, 8]
    sp = signed_temporal_split(_signed(src, dst, [1, -2, 3, 4, -5, 6, 7, 8, -9, 10], time), val=0.2, test=0.2)
    order = np.argsort(time, kind="stable")
    assert sp.train.tolist() == order[:6].tolist()
    assert sp.val.tolist() == order[6:8].tolist() and sp.test.tolist() == order[8:].tolist()
    # val: t=6 (4->5, both seen), t=7 (2->8, one seen: in neither set); test: t=8 (6->8), t=9 (6->7), both unseen
    assert sp.val_transductive.tolist() == [6] and sp.val_inductive.tolist() == []
    assert sp.test_transductive.tolist() == [] and sp.test_inductive.tolist() == [9, 7]
    with pytest.raises(ValueError, match="nonzero"):
        check_signed_edges(_signed([0, 1], [1, 2], [1, 0], [0, 1]))
    with pytest.raises(ValueError, match="nonzero"):
        check_signed_edges(_signed([0, 1], [1, 2], [1, -11], [0, 1]))
    with pytest.raises(ValueError, match="self loop"):
        signed_temporal_split(_signed([0, 1], [1, 1], [1, 2], [0, 1]))
    with pytest.raises(IndexError, match="edge_index"):
        check_signed_edges(_signed([0, 5], [1, 2], [1, 2], [0, 1], n=3))
    with pytest.raises(ValueError, match="val and test"):
        signed_temporal_split(_signed([0], [1], [1], [0]), val=0.6, test=0.5)


def test_sample_non_edges_avoids_edges():
    gen = torch.Generator().manual_seed(0)
    ei = torch.tensor([[0, 0, 0, 1, 2], [1, 2, 3, 2, 4]])
    src = torch.zeros(200, dtype=torch.int64)
    out = sample_non_edges(src, 6, ei, gen)
    assert set(out.tolist()) <= {4, 5} and set(out.tolist()) == {4, 5}
    with pytest.raises(ValueError, match="num_nodes"):
        sample_non_edges(src, 1, ei, gen)


def test_sgcn_baseline_shapes_and_gradients():
    torch.manual_seed(0)
    pos = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    neg = torch.tensor([[0, 4], [3, 5]])
    x = spectral_features(pos, neg, 7, dim=4)
    assert x.shape == (7, 4) and (x[6] == 0).all() and x[:6].abs().sum() > 0
    m = SGCN(4, hidden=4)
    z = m.embed(x, pos, neg)
    assert z.shape == (7, 8)
    out = m.decode("signlink", z[pos[0]], z[pos[1]])
    assert out.shape == (4, 3)
    out.sum().backward()
    assert m.convs[0].lin_pos_l.weight.grad.abs().sum() > 0


def test_example_runs_every_model_and_task(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n, E = 40, 400
    src = rng.integers(1, n + 1, E)
    dst = (src + rng.integers(1, n, E) - 1) % n + 1
    rating = rng.integers(1, 11, E) * np.where(rng.random(E) < 0.2, -1, 1)
    t = 1.3e9 + np.sort(rng.random(E)) * 1e7
    path = tmp_path / "signed.csv"
    np.savetxt(path, np.c_[src, dst, rating, t], delimiter=",", fmt=["%d", "%d", "%d", "%.5f"])
    for model in ("semba", "noba", "sgcn"):
        for task in ("sign", "link", "signlink", "weight"):
            out = tmp_path / f"{model}-{task}.json"
            args = ["--data", str(path), "--task", task, "--model", model, "--epochs", "2", "--batch", "50",
                    "--memory-dim", "4", "--embed-dim", "8", "--feat-dim", "4", "--quiet", "--json", str(out)]
            assert semba_example.main(args) == 0
            res = json.loads(out.read_text())["results"]
            key = {"sign": "auc", "link": "auc", "signlink": "auc_macro", "weight": "rmse"}[task]
            assert math.isfinite(res["test"][key]) and res["test"]["n"] > 0, (model, task)
    assert "| test |" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="bitcoin_otc"):
        semba_example.main(["--root", str(tmp_path / "nothing"), "--epochs", "1"])


@pytest.mark.skipif(not os.path.exists(BITCOIN), reason="../shared/data not present")
def test_bitcoin_otc_split_counts():
    data = load_bitcoin(BITCOIN)
    sp = signed_temporal_split(data)
    assert data.num_nodes == 5881 and data.edge_index.size(1) == 35592
    assert sp.train.numel() + sp.val.numel() + sp.test.numel() == 35592
    assert torch.all(data.time[sp.train].max() <= data.time[sp.val].min())
    assert torch.all(data.time[sp.val].max() <= data.time[sp.test].min())
    assert sp.test_inductive.numel() > 0 and sp.test_transductive.numel() > 0

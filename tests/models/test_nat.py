"""fastlayers.models.NAT: tiny streams only (the CollegeMsg run is examples/nat.py)."""

import numpy as np
import torch
from fastlayers.examples import nat as nat_example
from fastlayers.models import NAT


def _batch(n, b, t, gen, offset=0):
    src = torch.randint(0, n, (b,), generator=gen)
    dst = torch.randint(0, n, (b,), generator=gen)
    neg = torch.randint(0, n, (b,), generator=gen)
    return src, dst, neg, torch.full((b,), float(t), dtype=torch.float64), torch.arange(offset, offset + b)


def test_forward_shapes_and_gradients():
    gen = torch.Generator().manual_seed(0)
    m = NAT(30, sizes=(8, 4), self_dim=8, hidden=16)
    for i in range(3):
        src, dst, neg, t, eid = _batch(30, 20, i + 1, gen, 20 * i)
        pos, negl = m(src, dst, neg, t, eid)
        assert pos.shape == (20,) and negl.shape == (20,) and torch.isfinite(pos).all()
        loss = pos.sum() - negl.sum()
        m.zero_grad()
        loss.backward()
        m.detach_state()
    # After a few batches every trained part gets a gradient (the self-state GRU through the queued update).
    for name in ("self_gru.weight_ih", "value_gru.weight_ih", "scorer.0.weight", "pair_enc.0.weight", "code_emb.weight",
                 "time_enc.lin.weight"):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name
    assert (m.cache.keys >= 0).any() and m.memory.abs().sum() > 0


def test_live_slot_values_equal_the_stored_ones_and_carry_gradient():
    gen = torch.Generator().manual_seed(3)
    m = NAT(20, sizes=(8, 4), self_dim=8, hidden=16)
    for i in range(2):
        src, dst, neg, t, eid = _batch(20, 15, i + 1, gen, 15 * i)
        m(src, dst, neg, t, eid)
    memory = m._flush()  # applies the queued batch: its slot values are live
    flat, vals = m._live_values
    assert flat.numel() > 0 and vals.requires_grad
    # The live copies are the values the cache stored, at the slots they say.
    torch.testing.assert_close(m.cache.values.view(-1, m.cache.value_dim)[flat], vals.detach())
    u, v = src[:10], dst[:10]
    pf = m.cache.pair_features(u, v)
    feats = m._live_feats(pf, u, v)
    torch.testing.assert_close(feats.detach(), pf.feats, rtol=0, atol=0)
    feats.sum().backward()
    g = m.value_gru.weight_ih.grad
    assert g is not None and g.abs().sum() > 0
    del memory


def test_predictions_only_see_earlier_batches():
    gen = torch.Generator().manual_seed(1)
    m = NAT(25, sizes=(8, 4), self_dim=8, hidden=16).eval()
    first = _batch(25, 30, 1, gen)
    src, dst, neg, t, eid = _batch(25, 10, 2, gen, 30)
    outs = []
    for other_dst in (dst, (dst + 7) % 25):
        m.reset_state()
        with torch.no_grad():
            m(*first)
            outs.append(m(src, other_dst, neg, t, eid))
    # The negatives (src, neg) do not depend on the batch's own positives: no leakage from the batch itself.
    assert torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(outs[0][0], outs[1][0])


def test_reset_replays_identically():
    gen = torch.Generator().manual_seed(2)
    batches = [_batch(20, 15, i + 1, gen, 15 * i) for i in range(4)]
    m = NAT(20, sizes=(4, 2), self_dim=8, hidden=8).eval()
    runs = []
    for _ in range(2):
        m.reset_state()
        with torch.no_grad():
            runs.append([m(*b)[0] for b in batches])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_example_runs_on_a_tiny_stream(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n, e = 40, 1500
    # Repeated pairs make the stream learnable: most edges reuse one of a few partners.
    src = rng.integers(0, n, e)
    dst = (src + rng.choice([1, 2, 3], e)) % n
    rows = np.c_[src + 100, dst + 100, np.sort(rng.integers(10**9, 10**9 + 10**6, e))]
    p = tmp_path / "toy.txt"
    np.savetxt(p, rows, fmt="%d")
    assert nat_example.main(["--data", str(p), "--epochs", "2", "--quiet", "--batch", "50"]) == 0
    out = capsys.readouterr().out
    assert "| test | transductive |" in out and "| val | inductive |" in out
    ap = float(out.split("| test | transductive | ")[1].split(" |")[0])
    assert ap > 0.6  # a learnable stream: clearly above chance (0.5)

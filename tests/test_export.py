"""torch.export on the CPU: ECA, a GCN layer, NAT's scorer and IsoNet++ export, and the exported programs equal
eager on fresh inputs.

What is exported as a constant (and why): the GCN's graph (building a Graph from an edge_index validates ids and
removes self loops, both data-dependent; a transductive GCN runs on one graph anyway) and NAT's N-cache tables
(state that the update mutates in place between batches; the scorer reads them, so the exported scorer is the
model's scorer at that cache state). IsoNet++ takes its batch's edges and masks as inputs (the graphs are built
inside, num_nodes given).
"""

import fastlayers
import numpy as np
import torch
from fastlayers.data import make_batch
from fastlayers.models import NAT, IsoNetPP
from fastlayers.nn import ECA, GCNConv
from torch import nn

from .models.test_isonet import _graphs


def _export(module, args):
    return torch.export.export(module, args).module()


def test_export_eca():
    m = ECA(channels=16).eval()
    ep = _export(m, (torch.randn(2, 16, 5, 5),))
    for _ in range(2):
        x = torch.randn(2, 16, 5, 5)
        torch.testing.assert_close(ep(x), m(x))


class _OnGraph(nn.Module):
    def __init__(self, conv, graph):
        super().__init__()
        self.conv, self.graph = conv, graph

    def forward(self, x):
        return self.conv(x, self.graph)


def test_export_gcn():
    g = fastlayers.Graph.from_edge_index(torch.randint(0, 12, (2, 40)), 12)
    m = _OnGraph(GCNConv(8, 4), g)
    m(torch.randn(12, 8))  # builds the graph-with-self-loops once (Graph.derived), as before torch.compile
    ep = _export(m, (torch.randn(12, 8),))
    x = torch.randn(12, 8)
    torch.testing.assert_close(ep(x), m(x))


class _Scorer(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, u, v, memory):
        return self.model.score(u, v, None, memory)


def test_export_nat_scorer():
    model = NAT(20, sizes=(4, 2), value_dim=3, self_dim=8, time_dim=4, code_dim=4, hidden=8)
    src, dst = torch.randint(0, 20, (16,)), torch.randint(0, 20, (16,))
    t, eid = torch.arange(16, dtype=torch.float64), torch.arange(16)
    model(src, dst, dst.flip(0), t, eid)
    model(src, dst, dst.flip(0), t + 16, eid + 16)
    with torch.no_grad():
        memory = model._flush().detach()
        model._live_values = None
        s = _Scorer(model)
        ep = _export(s, (torch.randint(0, 20, (5,)), torch.randint(0, 20, (5,)), memory))
        for _ in range(2):
            u, v = torch.randint(0, 20, (5,)), torch.randint(0, 20, (5,))
            torch.testing.assert_close(ep(u, v, memory), s(u, v, memory))


def _batch(rng, num_q_edges=None, num_c_edges=None):
    b = make_batch(_graphs(rng, 4, 3, 6), _graphs(rng, 4, 7, 9), [(i, i) for i in range(4)], max_nodes=10,
                   max_edges=14)

    def fit(e, n):  # the exported program has the edge counts it was traced with: pad (repeat) or cut
        if n is None:
            return e
        return torch.cat([e, e[:, :1].expand(2, max(0, n - e.shape[1]))], 1)[:, :n]

    return fit(b.q_edges, num_q_edges), fit(b.c_edges, num_c_edges), b.q_mask, b.c_mask, b


class _IsoNet(nn.Module):
    def __init__(self, model, template):
        super().__init__()
        self.model, self.template = model, template

    def forward(self, q_edges, c_edges, q_mask, c_mask):
        import dataclasses

        return self.model(dataclasses.replace(self.template, q_edges=q_edges, c_edges=c_edges, q_mask=q_mask,
                                              c_mask=c_mask))


def test_export_isonetpp():
    rng = np.random.default_rng(0)
    qe, ce, qm, cm, b = _batch(rng)
    m = _IsoNet(IsoNetPP("node", rounds=2, layers=2), b).eval()
    with torch.no_grad():
        ep = _export(m, (qe, ce, qm, cm))
        for _ in range(2):
            args = _batch(rng, qe.shape[1], ce.shape[1])[:4]
            torch.testing.assert_close(ep(*args), m(*args))

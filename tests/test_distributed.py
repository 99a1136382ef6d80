"""torch.distributed: the sharded N-cache against a single-process NCache, and DDP / FSDP2 gradients against
single-process training, in spawned gloo processes on the CPU.

Spawning costs several seconds per process on a small machine, so each world size is spawned once (a module
fixture) and runs every check in turn; each test below then reads its check's outcome on every rank. A check
never stops between collectives on one rank only: mismatches are collected and asserted after its last
collective, so one failure cannot desynchronise the ranks for the next check. Every join has a deadline.
"""

import copy
import datetime
import json
import multiprocessing
import os
import socket
import tempfile
import time
import traceback

import pytest
import torch

JOIN_TIMEOUT_S = 300  # the whole spawn, all checks (compiling takes most); a hang fails the tests, not CI
PG_TIMEOUT_S = 60


# ---- spawning ---------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(suite: str, rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    import fastlayers  # noqa: F401
    import torch.distributed as dist

    results = {}
    path = os.path.join(out_dir, f"rank{rank}.json")

    def save():
        with open(path + ".tmp", "w") as f:
            json.dump(results, f)
        os.replace(path + ".tmp", path)

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
    for name, check in SUITES[suite]:
        try:
            check(rank, world)
            results[name] = "ok"
        except Exception:  # noqa: BLE001  (reported to the test)
            results[name] = traceback.format_exc()
        save()
    save()
    if suite == "dead":
        os._exit(0)  # no clean shutdown: that is the point
    dist.destroy_process_group()


def _spawn(suite: str, world: int) -> dict:
    """Runs SUITES[suite] on `world` gloo ranks; returns {check: {rank: "ok" or traceback}}."""
    ctx = multiprocessing.get_context("spawn")
    out_dir = tempfile.mkdtemp(prefix="fl-dist-")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(suite, r, world, port, out_dir), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    out = {name: {} for name, _ in SUITES[suite]}
    for r in range(world):
        try:
            with open(os.path.join(out_dir, f"rank{r}.json")) as f:
                got = json.load(f)
        except FileNotFoundError:
            got = {}
        why = "hung (killed at the deadline)" if r in hung else f"exit code {procs[r].exitcode}"
        for name, per_rank in out.items():
            per_rank[r] = got.get(name, f"no result: {why}")
    return out


def _assert_ok(results: dict, name: str) -> None:
    bad = {r: msg for r, msg in results[name].items() if msg != "ok"}
    assert not bad, "\n".join(f"--- rank {r}:\n{msg}" for r, msg in bad.items())


# ---- sharded N-cache ------------------------------------------------------------------------------------------


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Integer view of a tensor, so equality is bit for bit (0.0 vs -0.0, NaN payloads)."""
    return t.contiguous().view({8: torch.int64, 4: torch.int32, 1: torch.uint8}[t.element_size()])


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(_bits(a), _bits(b))


def _global_batch(g: torch.Generator, n: int, B: int, t0: float, D: int, world: int):
    """A batch with the hard cases: few nodes (full tables, replacements), self-loops, repeated pairs, equal
    times, repeated edge ids, exact duplicate edges with different values (ties broken by batch position); cut
    at random points (empty slices included) into one slice per rank."""
    src = torch.randint(0, n, (B,), generator=g)
    dst = torch.randint(0, n, (B,), generator=g)
    dst[:3] = src[:3]  # self-loops
    src[B // 2:B // 2 + 3], dst[B // 2:B // 2 + 3] = src[1], dst[1]  # a repeated pair
    t = t0 + torch.sort(torch.randint(0, 6, (B,), generator=g)).values.to(torch.float64)
    eid = torch.randint(0, 3 * B, (B,), generator=g)
    eid[B // 3:B // 3 + 4] = eid[B // 3]
    values = torch.randn(B, D, generator=g)
    cuts = torch.sort(torch.randint(0, B + 1, (world - 1,), generator=g)).values.tolist()
    bounds = [0] + cuts + [B]
    # Exact duplicates (same nodes, edge id and time) with different values, inside a slice and across each
    # cut: only the batch position decides which value is kept, so the ranks must agree on global positions.
    for c in [B // 4] + cuts:
        if 0 < c < B:
            src[c], dst[c], eid[c], t[c] = src[c - 1], dst[c - 1], eid[c - 1], t[c - 1]
    return src, dst, t, eid, values, bounds


_CONFIGS = [  # (num_nodes, sizes, value_dim, replace_prob, seed)
    (29, (4, 3), 3, 0.6, 5),
    (17, (3, 2, 2), 2, 0.5, 11),  # hop 3 copies hop 2: two deeper hops
    (13, (5,), 2, 1.0, 3),  # hop 1 only: no second exchange
]


def _check_ncache_equal(rank: int, world: int, batches: int = 6, B: int = 40) -> None:
    import fastlayers
    import torch.distributed as dist

    problems = []
    for ci, (n, sizes, D, p, seed) in enumerate(_CONFIGS):
        single = fastlayers.NCache(n, sizes, D, p, seed)
        shard = fastlayers.NCache(n, sizes, D, p, seed, process_group=dist.group.WORLD)
        assert type(shard).__name__ == "ShardedNCache" and isinstance(shard, fastlayers.NCache)
        assert shard.keys.shape[0] == len(range(rank, n, world)), "rows held by this rank"
        g = torch.Generator().manual_seed(100 + ci)  # the global batches: the same on every rank
        gq = torch.Generator().manual_seed(1000 * rank + ci)  # this rank's own requests
        t0 = 0.0
        for k in range(batches):
            src, dst, t, eid, values, bd = _global_batch(g, n, B, t0, D, world)
            t0 = float(t[-1])
            a, b = bd[rank], bd[rank + 1]
            mode = k % 3  # all with values / none / only some ranks (the others mean zeros)
            mine = values[a:b] if mode == 0 or (mode == 2 and rank % 2 == 0) else None
            glob = values.clone() if mode != 1 else None
            if mode == 2:
                for q in range(world):
                    if q % 2:
                        glob[bd[q]:bd[q + 1]] = 0
            single.update(src, dst, t, eid, glob)
            shard.update(src[a:b], dst[a:b], t[a:b], eid[a:b], mine)
            for name in ("keys", "eids", "times", "values", "last_time"):
                want = getattr(single, name)[rank::world] if name != "last_time" else single.last_time
                if not _same(getattr(shard, name), want):
                    problems.append(f"config {ci} batch {k}: {name} differs from the single-process cache")
            # Each rank asks for its own nodes (repeats, and nodes of every owner); one rank asks for none.
            q = torch.randint(0, n, (0 if rank == world - 1 and k == 1 else 7 + rank,), generator=gq)
            got, want = shard.lookup(q), single.lookup(q)
            for name, x, y in zip(got._fields, got, want):
                if not _same(x, y):
                    problems.append(f"config {ci} batch {k}: lookup {name} differs")
            u = torch.randint(0, n, (5 + 2 * rank,), generator=gq)
            v = torch.randint(0, n, (5 + 2 * rank,), generator=gq)
            v[0] = u[0]
            got, want = shard.pair_features(u, v), single.pair_features(u, v)
            for name, x, y in zip(got._fields, got, want):
                if not _same(x, y):
                    problems.append(f"config {ci} batch {k}: pair_features {name} differs")
            full = int((single.keys >= 0).sum())
            if k == batches - 1 and full < n * (1 + sum(sizes)) // 3:
                problems.append(f"config {ci}: the cache is too empty to test replacement ({full} entries)")
        # An all-empty global batch, then empty requests: no-ops with correctly shaped answers.
        e = torch.empty(0, dtype=torch.int64)
        shard.update(e, e, e.double(), e)
        got = shard.lookup(e)
        if got.keys.shape != (0, 1 + sum(sizes)) or got.values.shape != (0, 1 + sum(sizes), D):
            problems.append(f"config {ci}: empty lookup shapes {got.keys.shape}, {got.values.shape}")
        pf = shard.pair_features(e, e)
        if pf.counts.shape != (0, 1 + len(sizes), 1 + len(sizes)):
            problems.append(f"config {ci}: empty pair_features counts shape {pf.counts.shape}")
    assert not problems, "\n".join(problems[:20])


def _expect(exc_type, match, fn, problems, what):
    import re

    try:
        fn()
    except exc_type as e:
        if not re.search(match, str(e)):
            problems.append(f"{what}: {exc_type.__name__} without {match!r}: {e}")
        return
    except Exception as e:  # noqa: BLE001
        problems.append(f"{what}: {type(e).__name__} instead of {exc_type.__name__}: {e}")
        return
    problems.append(f"{what}: no error")


def _check_ncache_errors(rank: int, world: int) -> None:
    import fastlayers
    import torch.distributed as dist

    WORLD = dist.group.WORLD
    problems = []
    # Construction: ranks that disagree on the configuration fail on every rank, naming the field.
    _expect(ValueError, r"disagree on num_nodes", lambda: fastlayers.NCache(20 + rank, (4, 2), process_group=WORLD),
            problems, "num_nodes mismatch")
    _expect(ValueError, r"disagree on seed", lambda: fastlayers.NCache(20, (4, 2), seed=rank, process_group=WORLD),
            problems, "seed mismatch")
    _expect(ValueError, r"disagree on sizes\[1\]",
            lambda: fastlayers.NCache(20, (4, 2 + rank), process_group=WORLD), problems, "sizes mismatch")
    _expect(ValueError, r"disagree on replace_prob",
            lambda: fastlayers.NCache(20, (4, 2), replace_prob=0.5 + 0.1 * rank, process_group=WORLD), problems,
            "replace_prob mismatch")
    # A bad argument on one rank only: every rank raises, with that rank's message.
    _expect(TypeError, r"rank 1: sizes",
            lambda: fastlayers.NCache(20, (4, 2) if rank != 1 else "4,2", process_group=WORLD), problems,
            "bad sizes on rank 1")
    _expect(TypeError, r"process_group must be", lambda: fastlayers.NCache(20, process_group="world"), problems,
            "process_group type")

    n, D = 20, 2
    single = fastlayers.NCache(n, (4, 2), D, 0.7, 1)
    shard = fastlayers.NCache(n, (4, 2), D, 0.7, 1, process_group=WORLD)
    g = torch.Generator().manual_seed(7)
    src, dst, t, eid, values, _ = _global_batch(g, n, 24, 10.0, D, world)
    per = 24 // world
    a, b = rank * per, (rank + 1) * per
    m = per * world
    single.update(src[:m], dst[:m], t[:m], eid[:m], values[:m])
    shard.update(src[a:b], dst[a:b], t[a:b], eid[a:b], values[a:b])

    later = t[a:b] + 100  # a valid next slice

    def bad_update(change):
        """change: {rank: {argument: value}}, the arguments that differ from a valid next slice."""
        args = dict(src=src[a:b], dst=dst[a:b], t=later, eid=eid[a:b], values=values[a:b])
        args.update(change.get(rank, {}))
        shard.update(**args)

    backwards = later.flip(0).contiguous()
    backwards[0] += 1  # strictly decreasing somewhere even with equal times
    _expect(ValueError, r"rank 1: .*non-decreasing", lambda: bad_update({1: {"t": backwards}}), problems,
            "times backwards within rank 1's slice")
    # Each slice in order, but rank 0's slice ends after rank 1's starts: the global batch goes backwards.
    swapped = later + (50.0 if rank == 0 else 0.0)
    _expect(ValueError, r"rank 1's slice starts at", lambda: bad_update({0: {"t": swapped}, 1: {"t": later}}),
            problems, "times backwards across slices")
    _expect(ValueError, r"older than the cache's latest time", lambda: bad_update({r: {"t": t[a:b] - 5}
                                                                                    for r in range(world)}),
            problems, "batch older than the cache")
    _expect(IndexError, r"rank 0: .*src has ids out of range", lambda: bad_update({0: {"src": src[a:b] + n,
                                                                                          "t": later}}),
            problems, "src out of range on rank 0")
    _expect(TypeError, r"rank 1: t must be float64", lambda: bad_update({1: {"t": later.float()}}), problems,
            "float32 times on rank 1")
    _expect(ValueError, r"rank 1: values must be", lambda: bad_update({1: {"t": later, "values": values[:1]}}),
            problems, "values shape on rank 1")
    q = torch.arange(5) + (n if rank == world - 1 else 0)
    _expect(IndexError, rf"rank {world - 1}: .*nodes has ids out of range", lambda: shard.lookup(q), problems,
            "lookup out of range")
    u = torch.arange(3)
    _expect(ValueError, r"rank 0: v has 2 entries",
            lambda: shard.pair_features(u, u[:2] if rank == 0 else u), problems, "pair_features lengths")
    # None of the failed calls changed any shard, and the cache still works.
    for name in ("keys", "eids", "times", "values", "last_time"):
        want = getattr(single, name)[rank::world] if name != "last_time" else single.last_time
        if not _same(getattr(shard, name), want):
            problems.append(f"{name} changed by a failed call")
    single.update(src[:m], dst[:m], t[:m] + 100, eid[:m], values[:m])
    shard.update(src[a:b], dst[a:b], later, eid[a:b], values[a:b])
    if not _same(shard.keys, single.keys[rank::world]) or not _same(shard.values, single.values[rank::world]):
        problems.append("update after the errors differs from the single-process cache")
    assert not problems, "\n".join(problems)


def _check_dead_rank(rank: int, world: int) -> None:
    """The last rank exits without calling update: the others get an error naming the method, not a hang."""
    import fastlayers
    import torch.distributed as dist

    shard = fastlayers.NCache(10, (2, 2), 2, process_group=dist.group.WORLD)
    dist.barrier()
    if rank == world - 1:
        return  # and the process exits (see _worker)
    e = torch.tensor([1, 2])
    start = time.monotonic()
    try:
        shard.update(e, e.flip(0), e.double(), e)
    except RuntimeError as err:
        assert "NCache.update" in str(err), str(err)
        assert time.monotonic() - start < PG_TIMEOUT_S + 10
        return
    raise AssertionError("update returned although a rank had died")


# ---- DDP / FSDP2: gradients equal single-process training on the global batch ----------------------------------


def _graph_batch(g, world):
    """One small random graph per rank; the global batch is their disjoint union."""
    graphs = []
    for _ in range(world):
        n = 9
        ei = torch.randint(0, n, (2, 30), generator=g)
        graphs.append((torch.randn(n, 5, generator=g, dtype=torch.float64), ei))
    x = torch.cat([x for x, _ in graphs])
    ei = torch.cat([e + 9 * q for q, (_, e) in enumerate(graphs)], 1)
    return graphs, (x, ei)


class _AlignScore(torch.nn.Module):
    """A learned projection, Sinkhorn transport and hinge score: the align family's ops under one module."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, hq, hc):
        import fastlayers

        q, c = self.proj(hq), self.proj(hc)
        P = fastlayers.ops.sinkhorn(q @ c.transpose(1, 2), tau=0.5, num_iters=5)
        return fastlayers.ops.align_score(q, c, P)


def _families(g, world):
    """(name, module factory, per-rank inputs, global inputs, loss) per family; loss means over the batch."""
    import fastlayers

    nn = fastlayers.nn
    out = []
    graphs, glob = _graph_batch(g, world)
    # Per node mean over equal-sized graphs: the DDP average of per-rank means is the global mean.
    out.append(("gcn", lambda: nn.GCNConv(5, 3), graphs, glob, lambda y: (y ** 2).mean()))
    out.append(("sage", lambda: nn.SAGEConv(5, 3), graphs, glob, lambda y: (y ** 2).mean()))
    xs = [torch.randn(2, 6, 4, 4, generator=g, dtype=torch.float64) for _ in range(world)]
    out.append(("eca", lambda: nn.ECA(kernel_size=3), [(x,) for x in xs], (torch.cat(xs),),
                lambda y: (y ** 2).mean()))
    hx = [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(world)]
    hz = [torch.randn(3, 2, generator=g, dtype=torch.float64) for _ in range(world)]
    out.append(("hyper", lambda: nn.HyperLinear(4, 3, 2, hidden=(5,)), list(zip(hx, hz)),
                (torch.cat(hx), torch.cat(hz)), lambda y: (y ** 2).mean()))
    aq = [torch.randn(2, 3, 4, generator=g, dtype=torch.float64) for _ in range(world)]
    ac = [torch.randn(2, 4, 4, generator=g, dtype=torch.float64) for _ in range(world)]
    out.append(("align", _AlignScore, list(zip(aq, ac)), (torch.cat(aq), torch.cat(ac)), lambda y: y.mean()))
    return out


def _one_step(model, inputs, loss_fn):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    loss_fn(model(*inputs)).backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    opt.step()
    return grads


def _check_ddp(rank: int, world: int) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    problems = []
    g = torch.Generator().manual_seed(3)
    for name, make, per_rank, glob, loss_fn in _families(g, world):
        torch.manual_seed(0)  # the same initial weights on every rank and in the single-process copy
        model = make().double()
        single = copy.deepcopy(model)
        ddp = DDP(model)
        grads = _one_step(ddp, per_rank[rank], loss_fn)
        want = _one_step(single, glob, loss_fn)
        for (pn, _), a, b in zip(model.named_parameters(), grads, want):
            if not torch.allclose(a, b, rtol=1e-11, atol=1e-13):
                problems.append(f"{name}: grad of {pn} differs by {(a - b).abs().max().item():.3g}")
        for (pn, p), q in zip(model.named_parameters(), single.parameters()):
            if not torch.allclose(p, q, rtol=1e-11, atol=1e-13):
                problems.append(f"{name}: {pn} after one step differs")
        if all(float(b.abs().max()) == 0 for b in want):
            problems.append(f"{name}: all gradients are zero (the check would not see a difference)")
    assert not problems, "\n".join(problems)



def _check_ddp_compiled(rank: int, world: int) -> None:
    """torch.compile over DDP-wrapped fastlayers modules: Dynamo traces the custom ops and their autograd
    formulas inside DDP (graph split at bucket boundaries); gradients equal one process on the global batch.
    aot_eager keeps the check to seconds; Inductor (C++ codegen) runs for one family where a compiler exists."""
    import shutil

    from torch.nn.parallel import DistributedDataParallel as DDP

    problems = []
    g = torch.Generator().manual_seed(5)
    inductor = shutil.which(os.environ.get("CXX", "g++")) is not None
    for name, make, per_rank, glob, loss_fn in _families(g, world):
        if name not in ("gcn", "eca", "hyper"):
            continue
        torch.manual_seed(0)
        model = make().double()
        single = copy.deepcopy(model)
        backend = "inductor" if name == "gcn" and inductor else "aot_eager"
        torch._dynamo.reset()
        compiled = torch.compile(DDP(model), backend=backend, fullgraph=False)
        grads = _one_step(compiled, per_rank[rank], loss_fn)
        want = _one_step(single, glob, loss_fn)
        for (pn, _), a, b in zip(model.named_parameters(), grads, want):
            if not torch.allclose(a, b, rtol=1e-10, atol=1e-12):
                problems.append(f"compiled ({backend}) {name}: grad of {pn} differs by {(a - b).abs().max():.3g}")
    assert not problems, "\n".join(problems)


def _check_fsdp2(rank: int, world: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    problems = []
    g = torch.Generator().manual_seed(4)
    mesh = init_device_mesh("cpu", (world,))
    for name, make, per_rank, glob, loss_fn in _families(g, world):
        if name not in ("gcn", "hyper"):
            continue
        torch.manual_seed(0)
        model = make().double()
        single = copy.deepcopy(model)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss_fn(model(*per_rank[rank])).backward()  # FSDP2 reduce-scatters the mean of the ranks' gradients
        grads = {pn: p.grad.full_tensor() for pn, p in model.named_parameters()}
        opt.step()
        want = _one_step(single, glob, loss_fn)
        for (pn, p), b, q in zip(model.named_parameters(), want, single.parameters()):
            if not torch.allclose(grads[pn], b, rtol=1e-11, atol=1e-13):
                problems.append(f"fsdp2 {name}: grad of {pn} differs")
            if not torch.allclose(p.full_tensor(), q, rtol=1e-11, atol=1e-13):
                problems.append(f"fsdp2 {name}: {pn} after one step differs")
    assert not problems, "\n".join(problems)



def _check_nat_ddp(rank: int, world: int, batches: int = 4, B: int = 24) -> None:
    """NAT data-parallel (sharded N-cache, replicated self states, DDP) against one process on the global
    batches: logits of each rank's slice, gradients and weights after every step, and the cache shards."""
    import torch.distributed as dist
    from fastlayers.models import NAT
    from torch.nn.parallel import DistributedDataParallel as DDP

    problems = []
    n, edge_dim = 23, 2
    torch.manual_seed(0)
    model = NAT(n, edge_dim=edge_dim, sizes=(4, 3), hidden=16, self_dim=8, replace_prob=0.7, seed=5,
                process_group=dist.group.WORLD)
    torch.manual_seed(0)
    single = NAT(n, edge_dim=edge_dim, sizes=(4, 3), hidden=16, self_dim=8, replace_prob=0.7, seed=5)
    single.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("cache.")},
                           strict=False)
    ddp = DDP(model, find_unused_parameters=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt1 = torch.optim.SGD(single.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(9)
    t0 = 0.0
    for step in range(batches):
        src = torch.randint(0, n, (B,), generator=g)
        dst = torch.randint(0, n, (B,), generator=g)
        neg = torch.randint(0, n, (B,), generator=g)
        t = t0 + torch.sort(torch.rand(B, generator=g, dtype=torch.float64) * 10).values
        t0 = float(t[-1])
        eid = torch.arange(step * B, (step + 1) * B)
        feat = torch.randn(B, edge_dim, generator=g)
        cuts = [0] + sorted(torch.randint(0, B + 1, (world - 1,), generator=g).tolist()) + [B]
        lo, hi = cuts[rank], cuts[rank + 1]

        def loss(pos, negl, scale):
            return scale * (torch.nn.functional.binary_cross_entropy_with_logits(
                pos, torch.ones_like(pos), reduction="sum") + torch.nn.functional.binary_cross_entropy_with_logits(
                negl, torch.zeros_like(negl), reduction="sum"))

        opt1.zero_grad()
        pos1, neg1 = single(src, dst, neg, t, eid, feat)
        loss(pos1, neg1, 1.0 / B).backward()
        opt1.step()
        single.detach_state()
        opt.zero_grad()
        pos, negl = ddp(src[lo:hi], dst[lo:hi], neg[lo:hi], t[lo:hi], eid[lo:hi], feat[lo:hi])
        loss(pos, negl, world / B).backward()  # DDP averages over ranks: the sum / B of one process
        grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
        opt.step()
        model.detach_state()
        for a, b, what in ((pos, pos1[lo:hi], "pos"), (negl, neg1[lo:hi], "neg")):
            if not torch.allclose(a, b, rtol=1e-5, atol=1e-6):
                problems.append(f"step {step}: {what} logits differ by {(a - b).abs().max().item():.3g}")
        for k, p in single.named_parameters():
            if p.grad is None:
                continue
            if k not in grads or not torch.allclose(grads[k], p.grad, rtol=1e-4, atol=1e-6):
                problems.append(f"step {step}: grad of {k} differs")
        mine = dict(model.named_parameters())
        for k, p in single.named_parameters():
            if not torch.allclose(mine[k], p, rtol=1e-5, atol=1e-6):
                problems.append(f"step {step}: {k} after the step differs")
    nodes = torch.arange(rank, n, world)
    want = single.cache.lookup(nodes)
    for name in ("keys", "eids", "times"):
        if not torch.equal(getattr(model.cache, name), getattr(want, name)):
            problems.append(f"cache shard {name} differs from the single-process rows")
    if not torch.allclose(model.cache.values, want.values, rtol=1e-5, atol=1e-6):
        problems.append("cache shard values differ from the single-process rows")
    if int((want.keys >= 0).sum()) == 0:
        problems.append("the cache stayed empty: the check would not see a difference")
    assert not problems, "\n".join(problems)


SUITES = {
    "two": [("ncache_equal", _check_ncache_equal), ("ncache_errors", _check_ncache_errors),
            ("ddp", _check_ddp), ("fsdp2", _check_fsdp2), ("nat_ddp", _check_nat_ddp),
            ("ddp_compiled", _check_ddp_compiled)],
    "four": [("ncache_equal", lambda r, w: _check_ncache_equal(r, w, batches=4, B=48))],
    "dead": [("dead_rank", _check_dead_rank)],
}


# ---- tests ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_ranks():
    return _spawn("two", 2)


def test_sharded_ncache_equals_single_process_2_ranks(two_ranks):
    """update / lookup / pair_features on 2 ranks: every shard, lookup and pair feature bit for bit equal to a
    single-process NCache fed the global batch (three table layouts, mixed edge values, empty slices)."""
    _assert_ok(two_ranks, "ncache_equal")


def test_sharded_ncache_equals_single_process_4_ranks():
    _assert_ok(_spawn("four", 4), "ncache_equal")


def test_sharded_ncache_bad_input_raises_on_every_rank(two_ranks):
    """Config mismatch, bad arguments on one rank, times backwards (within and across slices, older than the
    cache), ids out of range: the same exception on every rank, and the shards unchanged."""
    _assert_ok(two_ranks, "ncache_errors")


def test_ddp_gradients_equal_single_process(two_ranks):
    """DDP over GCNConv, SAGEConv, ECA, HyperLinear and Sinkhorn + align_score: float64 gradients and weights
    after one SGD step equal to one process training on the global batch."""
    _assert_ok(two_ranks, "ddp")


def test_compiled_ddp_gradients_equal_single_process(two_ranks):
    """torch.compile(DDP(module)) over GCNConv (Inductor where a C++ compiler exists), ECA and HyperLinear
    (aot_eager): gradients equal one process on the global batch."""
    _assert_ok(two_ranks, "ddp_compiled")


def test_fsdp2_gradients_equal_single_process(two_ranks):
    """FSDP2 (fully_shard on a CPU mesh over gloo) over GCNConv and HyperLinear, as for DDP."""
    _assert_ok(two_ranks, "fsdp2")


def test_nat_data_parallel_equals_single_process(two_ranks):
    """NAT with the sharded cache under DDP on 2 ranks (uneven slices): each rank's logits, the gradients and the
    weights after every SGD step, and the cache shards equal one process training on the global batches."""
    _assert_ok(two_ranks, "nat_ddp")


def test_dead_rank_raises_instead_of_hanging():
    _assert_ok(_spawn("dead", 2), "dead_rank")


# ---- examples.nat --distributed under torchrun ---------------------------------------------------------------


def _toy_stream(path):
    import numpy as np

    rng = np.random.default_rng(0)
    n, e = 40, 1500
    src = rng.integers(0, n, e)
    dst = (src + rng.choice([1, 2, 3], e)) % n  # repeated partners: a learnable stream
    rows = np.c_[src + 100, dst + 100, np.sort(rng.integers(10**9, 10**9 + 10**6, e))]
    np.savetxt(path, rows, fmt="%d")


def _table(out: str) -> dict:
    rows = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if len(parts) == 7 and parts[0] in ("val", "test"):
            rows[(parts[0], parts[1])] = float(parts[2])
    return rows


def test_nat_example_distributed_matches_one_process(tmp_path):
    """torchrun --nproc_per_node 2 -m fastlayers.examples.nat --distributed: same batches and negatives as one
    process, so the AP table equals the single-process one up to float summation order."""
    import subprocess
    import sys

    data = tmp_path / "toy.txt"
    _toy_stream(data)
    args = ["-m", "fastlayers.examples.nat", "--data", str(data), "--epochs", "2", "--quiet", "--batch", "50"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=JOIN_TIMEOUT_S, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(_free_port()), *args, "--distributed"], capture_output=True, text=True,
                         timeout=JOIN_TIMEOUT_S, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 ranks" in two.stdout and two.stdout.count("| test | transductive |") == 1  # rank 0 prints alone
    a, b = _table(one.stdout), _table(two.stdout)
    assert len(a) == 4 and a.keys() == b.keys()
    for k in a:
        assert abs(a[k] - b[k]) < 2e-3, (k, a[k], b[k])


def test_nat_example_distributed_outside_torchrun_says_how():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    r = subprocess.run([sys.executable, "-m", "fastlayers.examples.nat", "--distributed", "--data", "x.txt"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode != 0 and "torchrun --nproc_per_node" in r.stderr

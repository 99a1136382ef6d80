"""The sharded N-cache: per-batch time and bytes exchanged per rank, at 1, 2 and 4 gloo ranks on this machine.

    python benchmarks/bench_distributed.py [--nodes 1000000] [--batch 2000] [--ranks 1 2 4] [--out FILE]

One NAT step's cache work per batch, as in bench_ncache.py: update with the batch's B edges, then
pair_features for its B positive and B negative pairs. With W ranks every rank passes B / W edges and 2B / W
pairs (its slice), so a row is the time per *global* batch. The state is warmed first (8 edges per node, with the
single-process kernels, in this process); each rank then takes its rows (node n on rank n % W) from shared
memory, so every world size starts from the same state. Timed batches are fresh random edges at later times.

Rows: the single-process NCache (C++ kernels, the baseline), then the sharded cache at each W. Times are the
median over the timed batches of the slowest rank; bytes are the mean per rank per batch, sent to other ranks
(payloads, counts and the metadata all_gather; the copy a rank routes to itself is not counted), for update and
pair_features separately. The machine's core count bounds what W > 1 can show: on 2 cores, 4 ranks share them
(set in the printout), so W = 4 measures the exchange's cost and volume, not a speed-up.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import time

import torch
import torch.multiprocessing as mp

SIZES = (32, 16)
D = 4
WARM_EDGES_PER_NODE = 8


def _batch(B, n, gen):
    src = torch.randint(0, n, (B,), generator=gen)
    dst = torch.randint(0, n, (B,), generator=gen)
    neg = torch.randint(0, n, (B,), generator=gen)
    eid = torch.randint(0, 1 << 40, (B,), generator=gen)
    return src, dst, neg, eid, torch.randn(B, D, generator=gen)


def _warm(n, B):
    import fastlayers

    cache = fastlayers.NCache(n, SIZES, D)
    gen = torch.Generator().manual_seed(0)
    warm = max(1, WARM_EDGES_PER_NODE * n // B)
    for i in range(warm):
        src, dst, _, eid, v = _batch(B, n, gen)
        cache.update(src, dst, torch.full((B,), float(i), dtype=torch.float64), eid, v)
    return cache, float(warm)


def _time_single(cache, clock, n, B, batches):
    gen = torch.Generator().manual_seed(1)
    times = []
    for i in range(batches):
        src, dst, neg, eid, v = _batch(B, n, gen)
        t = torch.full((B,), clock + 1 + i, dtype=torch.float64)
        start = time.perf_counter()
        cache.update(src, dst, t, eid, v)
        cache.pair_features(torch.cat([src, src]), torch.cat([dst, neg]))
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _rank(rank, world, port, tables, clock, n, B, batches, out):
    torch.set_num_threads(1)
    import fastlayers
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    cache = fastlayers.NCache(n, SIZES, D, process_group=dist.group.WORLD)
    with torch.no_grad():
        for name, full in tables.items():
            getattr(cache, name).copy_(full[rank::world] if name != "last_time" else full)
    gen = torch.Generator().manual_seed(1)  # the same global batches at every world size
    lo, hi = rank * B // world, (rank + 1) * B // world
    rows = []
    for i in range(batches):
        src, dst, neg, eid, v = _batch(B, n, gen)
        t = torch.full((B,), clock + 1 + i, dtype=torch.float64)
        s, d, ng = src[lo:hi], dst[lo:hi], neg[lo:hi]
        dist.barrier()
        start = time.perf_counter()
        cache.update(s, d, t[lo:hi], eid[lo:hi], v[lo:hi])
        mid = time.perf_counter()
        up = dict(cache.last_exchange)
        cache.pair_features(torch.cat([s, s]), torch.cat([d, ng]))
        end = time.perf_counter()
        rows.append([end - start, mid - start, end - mid, up["sent"], up["received"],
                     cache.last_exchange["sent"], cache.last_exchange["received"]])
    gathered = [None] * world
    dist.all_gather_object(gathered, rows)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--batches", type=int, default=15, help="timed batches (the first is dropped as warm-up)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    n, B = args.nodes, args.batch
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cache, clock = _warm(n, B)
    print(f"warmed {n} nodes with {int(clock) * B} edges in {time.perf_counter() - t0:.0f} s; "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}, gloo")
    tables = {name: getattr(cache, name).share_memory_() for name in ("keys", "eids", "times", "values",
                                                                      "last_time")}
    # The single-process rows are timed last: they advance the shared tables the ranks copy from.
    table_bytes = sum(t.numel() * t.element_size() for t in tables.values())
    results = []
    print(f"\nB={B} edges + {2 * B} pairs per global batch, {n} nodes, sizes {SIZES}, D={D}; "
          f"tables {table_bytes / 2**30:.2f} GiB in all\n")
    print("| ranks | ms / batch (slowest rank, median) | update ms | pair_features ms | update KiB sent / rank "
          "| pair_features KiB sent / rank | tables / rank |")
    print("|---|---|---|---|---|---|---|")
    for world in args.ranks:
        out = f"/tmp/bench_distributed_{os.getpid()}_{world}.json"
        # Each rank copies its rows from the warmed tables (shared memory), not the whole 2 GB.
        mp.spawn(_rank, args=(world, _free_port(), tables, clock, n, B, args.batches, out), nprocs=world)
        with open(out) as f:
            per_rank = json.load(f)
        os.remove(out)
        steps = list(zip(*per_rank))[1:]  # per batch: one row per rank; batch 0 dropped (warm-up)
        total = statistics.median(max(r[0] for r in step) for step in steps)
        upd = statistics.median(max(r[1] for r in step) for step in steps)
        pf = statistics.median(max(r[2] for r in step) for step in steps)
        up_sent = statistics.mean(r[3] for step in steps for r in step)
        pf_sent = statistics.mean(r[5] for step in steps for r in step)
        per_table = table_bytes / world / 2**30
        print(f"| {world} (gloo) | {total * 1e3:.1f} | {upd * 1e3:.1f} | {pf * 1e3:.1f} | {up_sent / 1024:.0f} | "
              f"{pf_sent / 1024:.0f} | {per_table:.2f} GiB |")
        results.append({"ranks": world, "ms": total * 1e3, "update_ms": upd * 1e3, "pair_features_ms": pf * 1e3,
                        "update_bytes_sent_per_rank": up_sent, "pair_features_bytes_sent_per_rank": pf_sent,
                        "update_bytes_received_per_rank": statistics.mean(r[4] for step in steps for r in step),
                        "pair_features_bytes_received_per_rank": statistics.mean(r[6] for step in steps
                                                                                 for r in step),
                        "table_gib_per_rank": per_table})
    single = _time_single(cache, clock, n, B, args.batches)
    print(f"| 1 process, NCache kernels | {single * 1e3:.1f} | | | 0 | 0 | {table_bytes / 2**30:.2f} GiB |")
    results.append({"ranks": "single process (kernels)", "ms": single * 1e3})
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"nodes": n, "batch": B, "sizes": SIZES, "value_dim": D, "cpu_cores": os.cpu_count(),
                       "torch": torch.__version__, "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()

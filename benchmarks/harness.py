"""Side-by-side timing of fastlayers ops and their peers, in one process, on fresh random inputs.

A bench_<family>.py module defines ``specs(device, quick)`` (a list of cheap case descriptions) and
``build(spec, device)`` (returns a :class:`Case`), so only one case's tensors live at a time. Each case times the
fastlayers callable and the peer callable with torch.utils.benchmark (median of blocked_autorange), and reports
the speed-up, the achieved GB/s against the case's minimal byte count, and that figure as a fraction of this
machine's copy bandwidth measured in the same run.

Fresh inputs: a user never runs a layer twice on one batch, so a case does not time one input again and again
(it would sit in the caches and flatter the kernel). A case gives ``make_inputs(i)``, the i-th input tuple, and
``input_bytes``; the harness builds a pool of distinct inputs, together at least twice the last-level cache (the
CPU's L3, the GPU's L2) and at least two, outside the timed region, and every timed call takes the next input of
the pool in turn, so each call finds its input evicted by the ones in between. Both sides get the same pool.
State an op mutates (the N-cache) is brought to steady state by the case itself before timing, and each timed
call moves it on (new edges at later times), never back.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import itertools
import json
import math
import os
import platform
from collections.abc import Callable

import torch
from torch.utils import benchmark

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclasses.dataclass
class Case:
    name: str  # what is timed, e.g. "forward, channels_last"
    shape: str  # the problem size as a user would say it
    ours: Callable[..., object]  # ours(*make_inputs(i)); ours() when make_inputs is None
    peer: Callable[..., object]
    peer_name: str
    min_bytes: int  # bytes any implementation must move (read inputs once, write outputs once)
    extra: dict = dataclasses.field(default_factory=dict)  # e.g. peak memory figures
    make_inputs: Callable[[int], tuple] | None = None  # the i-th fresh input tuple (see the module doc)
    input_bytes: int = 0  # bytes of one input tuple: sizes the pool


POOL_CACHE_FACTOR = 2  # the pool holds at least this many last-level caches of inputs
POOL_MAX = 64
POOL_MAX_BYTES = {"cpu": 3 << 30, "cuda": 16 << 30}


def last_level_cache_bytes(device: str) -> int:
    """The GPU's L2, or the largest CPU cache sysfs reports for cpu0 (32 MiB where sysfs says nothing)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).L2_cache_size
    best = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        best = max(best, int(text.rstrip("KMG")) * unit)
    return best or 32 << 20


def pool_size(input_bytes: int, device: str) -> int:
    """How many distinct inputs a case rotates through: together >= POOL_CACHE_FACTOR x the last-level cache."""
    want = math.ceil(POOL_CACHE_FACTOR * last_level_cache_bytes(device) / max(input_bytes, 1))
    cap = POOL_MAX_BYTES["cuda" if device.startswith("cuda") else "cpu"] // max(input_bytes, 1)
    return int(max(2, min(want, POOL_MAX, max(cap, 2))))


def rotating(fn: Callable[..., object], pool: list) -> Callable[[], object]:
    """fn over the pool's inputs in turn: each call gets the next input tuple."""
    it = itertools.cycle(pool)
    return lambda: fn(*next(it))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_median(fn: Callable[[], object], device: str, min_run_time: float) -> float:
    """Median seconds per call (blocked_autorange), after one warm-up call."""
    fn()
    _sync(device)
    # Timer runs at one thread unless told otherwise: time at the process's thread count, as reported.
    t = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    t = t.blocked_autorange(min_run_time=min_run_time)
    return t.median


def copy_bandwidth(device: str, nbytes: int = 256 << 20) -> float:
    """GB/s of a copy between two tensors already touched (bytes read + bytes written per second)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src).zero_()
    t = time_median(lambda: dst.copy_(src), device, 0.5)
    return 2 * nbytes / t / 1e9


def machine(device: str) -> dict:
    info = {
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "processor": _cpu_name(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_cases(family: str, module, device: str, quick: bool, min_run_time: float, progress) -> dict:
    bw = copy_bandwidth(device)
    rows = []
    for spec in module.specs(device, quick):
        case = module.build(spec, device)
        progress.set_postfix_str(f"{family}: {case.name} {case.shape}"[:60])
        if case.make_inputs is not None:
            pool = [case.make_inputs(i) for i in range(pool_size(case.input_bytes, device))]
            ours, peer = rotating(case.ours, pool), rotating(case.peer, pool)
            fresh = {"inputs": len(pool), "input_MiB": case.input_bytes / 2**20}
        else:  # a case whose every call is fresh by construction (e.g. it builds its own batch), or a whole model
            ours, peer, fresh = case.ours, case.peer, {}
        t_ours = time_median(ours, device, min_run_time)
        t_peer = time_median(peer, device, min_run_time)
        gbps = case.min_bytes / t_ours / 1e9
        # extra "<unit>/call" counts become throughputs "<unit>/s" (ours) and "peer <unit>/s".
        rates = {}
        for k, v in case.extra.items():
            if k.endswith("/call"):
                rates[k[:-5] + "/s"] = v / t_ours
                rates["peer " + k[:-5] + "/s"] = v / t_peer
        rows.append({
            **rates,
            "case": case.name,
            "shape": case.shape,
            "fastlayers_ms": t_ours * 1e3,
            "peer": case.peer_name,
            "peer_ms": t_peer * 1e3,
            "speedup": t_peer / t_ours,
            "gbps": gbps,
            "copy_bw_fraction": gbps / bw,
            **fresh,
            **{k: v for k, v in case.extra.items() if not k.endswith("/call")},
        })
        progress.update(1)
        del case, ours, peer
        pool = None
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return {
        "family": family,
        "machine": machine(device),
        "copy_bandwidth_gbps": bw,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
    }


def device_tag(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def write_json(result: dict, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{device_tag(result['machine']['device'])}-{result['family']}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return path


def _load_all(out_dir: str) -> list[dict]:
    results = []
    for name in sorted(os.listdir(out_dir)):
        if name.endswith(".json"):
            with open(os.path.join(out_dir, name)) as f:
                res = json.load(f)
            # Other benchmarks (bench_distributed.py) keep their own JSON beside these: only family results here.
            if {"family", "machine", "rows"} <= res.keys():
                results.append(res)
    return results


def markdown_table(result: dict) -> str:
    extra_keys = sorted({k for r in result["rows"] for k in r} - {
        "case", "shape", "fastlayers_ms", "peer", "peer_ms", "speedup", "gbps", "copy_bw_fraction"})
    head = ["case", "shape", "fastlayers ms", "peer", "peer ms", "speed-up", "GB/s", "of copy BW", *extra_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [r["case"], r["shape"], f"{r['fastlayers_ms']:.3f}", r["peer"], f"{r['peer_ms']:.3f}",
                 f"{r['speedup']:.2f}x", f"{r['gbps']:.1f}", f"{100 * r['copy_bw_fraction']:.0f}%"]
        cells += [_fmt(r.get(k, "")) for k in extra_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def write_report(out_dir: str) -> str:
    """REPORT.md over every result JSON in out_dir, and one speed-up plot per device."""
    results = _load_all(out_dir)
    parts = ["# fastlayers benchmark report", "",
             "Generated by `benchmarks/run.py` from the JSON files beside this report. Times are medians of",
             "torch.utils.benchmark blocked_autorange; speed-up = peer time / fastlayers time; GB/s counts the",
             "minimal bytes of the op; 'of copy BW' divides that by a tensor copy measured in the same run.", ""]
    for res in results:
        m = res["machine"]
        where = m.get("gpu") or f"{m['processor']}, {m['threads']} threads"
        parts += [f"## {res['family']} on {device_tag(m['device'])} ({where})", "",
                  f"torch {m['torch']}, copy bandwidth {res['copy_bandwidth_gbps']:.1f} GB/s, {res['date']}", "",
                  *([f"Note: {res['note']}", ""] if res.get("note") else []), markdown_table(res), ""]
    path = os.path.join(out_dir, "REPORT.md")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    for tag in sorted({device_tag(r["machine"]["device"]) for r in results}):
        _plot([r for r in results if device_tag(r["machine"]["device"]) == tag], os.path.join(out_dir, f"{tag}-speedups.png"))
    return path


def _plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    for res in results:
        for r in res["rows"]:
            labels.append(f"{res['family']}: {r['case']} {r['shape']} vs {r['peer']}")
            values.append(r["speedup"])
    if not values:
        return
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(values) + 1.2))
    y = range(len(values))
    ax.barh(list(y), values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over the peer (log scale; > 1 is faster)")
    m = results[0]["machine"]
    ax.set_title(f"fastlayers vs peers on {m.get('gpu') or m['processor']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

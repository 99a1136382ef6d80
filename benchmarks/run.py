"""Run the fastlayers benchmarks: ``python benchmarks/run.py [family ...] [--device cpu|cuda] [--quick]``.

Discovers benchmarks/bench_<family>.py, times every case side by side with its peer, and writes
results/<device>-<family>.json, results/REPORT.md and results/<device>-speedups.png.
"""

import argparse
import glob
import importlib
import os
import subprocess
import sys

import torch
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness


def families() -> list[str]:
    return sorted(os.path.basename(p)[len("bench_"):-3] for p in glob.glob(os.path.join(HERE, "bench_*.py")))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("families", nargs="*", help=f"default: all of {families()}")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="smaller shapes and shorter timing (a smoke run)")
    ap.add_argument("--out", default=None, help="default results/ (results/quick/ with --quick)")
    ap.add_argument("--min-run-time", type=float, default=None, help="seconds per measurement (default 1, quick 0.1)")
    args = ap.parse_args(argv)
    chosen = args.families or families()
    unknown = sorted(set(chosen) - set(families()))
    if unknown:
        ap.error(f"unknown families {unknown}; known: {families()}")
    args.out = args.out or os.path.join(HERE, "results", "quick" if args.quick else "")
    min_run_time = args.min_run_time or (0.1 if args.quick else 1.0)

    if len(chosen) > 1:
        return _each_in_own_process(chosen, argv if argv is not None else sys.argv[1:], args.out)
    family = chosen[0]
    mod = importlib.import_module(f"bench_{family}")
    with tqdm(total=len(mod.specs(args.device, args.quick)), desc=family, unit="case") as progress:
        result = harness.run_cases(family, mod, args.device, args.quick, min_run_time, progress)
    path = harness.write_json(result, args.out)
    print(f"\n{family} on {args.device} (copy bandwidth {result['copy_bandwidth_gbps']:.1f} GB/s) -> {path}")
    print(harness.markdown_table(result))
    report = harness.write_report(args.out)
    print(f"\nreport: {report}", flush=True)
    return 0


def _each_in_own_process(chosen, argv, out_dir) -> int:
    """One process per family: process-wide state one family sets (allocator settings, thread pools, the
    fastlayers output pool) cannot leak into another family's figures, and one failure does not stop the rest."""
    flags = [a for a in argv if a not in chosen]
    failed = []
    for family in chosen:
        print(f"\n=== {family}", flush=True)
        if subprocess.run([sys.executable, os.path.abspath(__file__), family, *flags]).returncode != 0:
            failed.append(family)
    print(f"\nreport: {harness.write_report(out_dir)}")
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fuzz the fastlayers ops: hypothesis-generated valid and broken inputs, run in child processes.

    python -m fuzz.run [--family mp,ncache,align,eca,hyper] [--cases 10000] [--seed 0] [--report PATH]

For each family a worker process runs the cases one after another and logs a 'begin' line before each call and an
'end' line (the outcome) after it. A worker that dies (segfault, abort, a sanitizer's report) or stops making
progress is recorded as a crash or hang of the case it had begun, and a fresh worker carries on with a new seed, so
one crash neither ends the run nor hides the cases after it. Workers run with glibc's malloc checking
(libc_malloc_debug, MALLOC_CHECK_=3) and MALLOC_PERTURB_ so heap corruption and reads of uninitialised memory
surface; under `make asan` the sanitizers do the same job more thoroughly.

Outcomes per case are defined in fuzz/common.py. Exit status 1 if any case crashed, hung, gave a wrong result,
refused valid input or accepted invalid input.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

from fuzz.common import CRASH, FAILURES, HANG, OUTCOMES

FAMILIES = ("mp", "ncache", "align", "eca", "hyper")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(family: str, n: int, seed: int, log_path: str) -> None:
    import importlib

    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    from fuzz.common import judge

    strategy = importlib.import_module(f"fuzz.cases_{family}").cases()
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - open for the whole run, closed at its end
    count = [0]

    @hseed(seed)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate], derandomize=False,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(strategy)
    def body(case):
        i = count[0]
        count[0] += 1
        log.write(json.dumps({"begin": i, "op": case.op, "what": case.what}) + "\n")
        outcome, detail = judge(case)
        log.write(json.dumps({"end": i, "op": case.op, "what": case.what, "outcome": outcome,
                              "detail": detail}) + "\n")

    body()
    log.write(json.dumps({"done": count[0]}) + "\n")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")  # cases are tiny: threads add only start-up noise
    if env.get("FUZZ_NO_MALLOC_CHECK") == "1":
        return env
    env.setdefault("MALLOC_PERTURB_", "165")
    debug = "/usr/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"
    if "LD_PRELOAD" not in env and os.path.exists(debug):
        env["LD_PRELOAD"] = debug
        env["MALLOC_CHECK_"] = "3"
    return env


def run_family(family: str, n: int, seed: int, case_timeout: float, progress=None) -> dict:
    """Runs n cases of one family; returns {"counts": {op: Counter}, "failures": [...], "seconds": s}."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures = []
    done, attempt, t0 = 0, 0, time.time()
    while done < n:
        with tempfile.NamedTemporaryFile("w+", suffix=".jsonl", delete=False) as tmp:
            log_path = tmp.name
        err_path = log_path + ".err"
        cmd = [sys.executable, "-m", "fuzz.run", "--worker", family, str(n - done),
               str(seed + 7919 * attempt), log_path]
        with open(err_path, "w") as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=err, stderr=subprocess.STDOUT)
            last_size, last_change, hung = -1, time.time(), False
            log, ended, partial = open(log_path), 0, ""  # noqa: SIM115 - tailed while the worker runs, closed after
            while proc.poll() is None:
                time.sleep(0.2)
                size = os.path.getsize(log_path)
                if size != last_size:
                    last_size, last_change = size, time.time()
                    if progress:  # only what was written since the last look; a line may be half written
                        *lines, partial = (partial + log.read()).split("\n")
                        ended += sum(1 for line in lines if line.startswith('{"end"'))
                        progress(family, done + ended, n)
                elif time.time() - last_change > case_timeout:
                    proc.kill()
                    proc.wait()
                    hung = True
            log.close()
        with open(log_path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        open_case = None
        finished = False
        for r in records:
            if "begin" in r:
                open_case = r
            elif "end" in r:
                counts[r["op"]][r["outcome"]] += 1
                if r["outcome"] in FAILURES:
                    failures.append(r)
                open_case = None
                done += 1
            elif "done" in r:
                finished = True
        with open(err_path) as f:
            tail = f.read()[-3000:]
        if open_case is not None:
            outcome = HANG if hung else CRASH
            counts[open_case["op"]][outcome] += 1
            failures.append({**open_case, "outcome": outcome, "detail": f"rc={proc.returncode}\n{tail}"})
            done += 1
        elif finished and proc.returncode == 0:
            if done < n and not records[:-1]:
                break  # hypothesis generated nothing more
        else:
            raise RuntimeError(f"fuzz worker for {family} failed outside any case (rc={proc.returncode}):\n{tail}")
        os.unlink(log_path)
        os.unlink(err_path)
        attempt += 1
    return {"counts": counts, "failures": failures, "seconds": time.time() - t0}


def report(results: dict, seed: int) -> str:
    lines = [("| family | op | cases | correct | raised | raised, argument not named | wrong | refused valid | "
              "accepted invalid | other exception | crashes | hangs | case bugs |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for family, res in results.items():
        for op in sorted(res["counts"]):
            c = res["counts"][op]
            lines.append(f"| {family} | {op} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES) + " |")
    text = "\n".join(lines) + "\n\n"
    for family, res in results.items():
        n = sum(sum(c.values()) for c in res["counts"].values())
        text += f"- {family}: {n} cases in {res['seconds']:.0f} s (seed {seed}), {len(res['failures'])} failures\n"
    fails = [(f, r) for f, res in results.items() for r in res["failures"]]
    if fails:
        text += "\nFailures (first 40):\n\n"
        for family, r in fails[:40]:
            detail = r.get("detail", "").replace("\n", " ")[:400]
            text += f"- {family} {r['op']} [{r['what']}]: {r['outcome']}: {detail}\n"
    return text


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--worker"]:
        _worker(argv[1], int(argv[2]), int(argv[3]), argv[4])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default=",".join(FAMILIES))
    p.add_argument("--cases", type=int, default=10000, help="cases per family")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case-timeout", type=float, default=120.0, help="seconds without progress that count as a hang")
    p.add_argument("--report", help="write the markdown table here")
    args = p.parse_args(argv)
    families = [f for f in args.family.split(",") if f]
    for f in families:
        if f not in FAMILIES:
            p.error(f"unknown family {f!r} (known: {', '.join(FAMILIES)})")
    results = {}
    tty = sys.stderr.isatty()

    def progress(family, k, n):
        print(f"\r{family}: {k}/{n} cases", end="", file=sys.stderr, flush=True)

    for f in families:
        results[f] = run_family(f, args.cases, args.seed, args.case_timeout, progress if tty else None)
        res = results[f]
        n = sum(sum(c.values()) for c in res["counts"].values())
        print(f"{chr(13) if tty else ''}{f}: {n} cases, {len(res['failures'])} failures, {res['seconds']:.0f} s",
              file=sys.stderr, flush=True)
    text = report(results, args.seed)
    print(text)
    if args.report:
        with open(args.report, "w") as fh:
            fh.write(text)
    return 1 if any(r["failures"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

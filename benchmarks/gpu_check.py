"""GPU readiness without a GPU: compile every GPU kernel for sm_80 and sm_90 and read its resource report.

Triton: every launcher in fastlayers.kernels is called over a sweep of shapes, dtypes and flags chosen so that each
block configuration the launcher can pick is reached (the launchers clamp each block to a power of two in a fixed
range; the sweep's sizes cross every step of each range). The launches are intercepted: instead of running, each
kernel is compiled ahead of time (``JITFunction.run(..., warmup=True)``) with Triton's own argument
specialisation, for a stand-in driver whose target is the architecture under check. ptxas then reports registers,
spills and stack of the PTX; Triton's metadata gives shared memory and num_warps.

CUDA C++: each csrc/**/*.cu is compiled by nvcc for the same architectures with ``-Xptxas -v`` (flags as
setup.py's) and the per-kernel report is parsed.

Fails (exit 1) on a compile error, a spill or Triton stack frame over SPILL_TOLERANCE bytes per thread (smaller
ones are listed in the report), or shared memory over the architecture's per-block limit. ``make gpu-check`` runs it; CI runs it.

Usage: python benchmarks/gpu_check.py [--arch 80,90] [--skip-cuda] [--skip-triton] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Per-block shared-memory limit (opt-in maximum) and registers per multiprocessor, by compute capability.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
REGS_PER_SM = 65536
MAX_THREADS_PER_SM = 2048


# ---- Triton ----------------------------------------------------------------------------------------------------


class _AOTDriver:
    """Stands in for Triton's CUDA driver so kernels compile for `arch` on a machine without a GPU. The device id is
    the arch, which keeps each arch's compiled kernels in their own cache."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.arch

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")


def _vary(base: dict, values: dict) -> list[dict]:
    """The base point, each parameter through each of its values with the rest at base, and every parameter at its
    largest value together (the resource worst case)."""
    points = [dict(base)]
    for k, vs in values.items():
        points += [{**base, k: v} for v in vs if v != base[k]]
    points.append({**base, **{k: max(vs) for k, vs in values.items()}})
    return points


def _sweeps():
    """(family, label, thunk) for every launcher call of the sweep. Thunks take no arguments and call a launcher
    with small CPU tensors whose sizes put each block parameter on each value the launcher can pick: every value
    of every parameter in float32, the smallest and largest configurations in the other dtypes."""
    import torch
    from fastlayers.kernels import align, eca, hyper

    f32, others = torch.float32, [torch.float64, torch.bfloat16, torch.float16]
    out = []

    def add(family, points, fn):
        for pt in points:
            out.append((family, " ".join(f"{k}={v}" for k, v in pt.items()), lambda pt=pt: fn(**pt)))

    # ECA: (BC, BS) follow (C, S) and the layout, HP follows k. The (C, S) points cross every block value.
    def eca_call(c, s, k, cl, circular, dtype):
        x = torch.randn(2, s, c, dtype=dtype).transpose(1, 2) if cl else torch.randn(2, c, s, dtype=dtype)
        w = torch.randn(k, dtype=dtype)
        y, p, g = eca.eca_fwd(x, w, circular)
        eca.eca_bwd(y, x, w, p, g, circular)

    cs = [(1, 1), (3, 2), (6, 5), (13, 9), (40, 17), (70, 33), (300, 100), (1100, 400), (300, 1000), (64, 3136),
          (16, 12544), (20, 70000)]
    pts = [dict(c=c, s=s, k=5, cl=cl, circular=circ, dtype=f32) for c, s in cs for cl in (False, True)
           for circ in (False, True)]
    pts += [dict(c=300, s=100, k=k, cl=False, circular=circ, dtype=f32) for k in (3, 9, 17) for circ in (False, True)]
    pts += [dict(c=c, s=s, k=5, cl=cl, circular=True, dtype=dt) for dt in others for c, s in ((6, 5), (300, 100),
            (64, 3136)) for cl in (False, True)]
    add("eca", pts, eca_call)

    # Hyper: T == 1 takes the outer kernels, T > 1 the tile kernels; every block is a power of two in [16, 64]
    # picked from one of B, T, I, O, h.
    def hyper_call(b, t, i, o, h, dtype):
        x, phi = torch.randn(b, t, i, dtype=dtype), torch.randn(b, h, dtype=dtype)
        w, w0, b0 = torch.randn(o * i + o, h, dtype=dtype), torch.randn(o, i, dtype=dtype), torch.randn(o, dtype=dtype)
        y = hyper.hyper_linear_fwd(x, phi, w, w0, b0)
        hyper.hyper_linear_bwd(y, x, phi, w, w0, True, True)
        wa = torch.randn(o * i, h, dtype=dtype)
        for w0a in (w0, None):
            ya = hyper.hyper_abs_linear_fwd(x, phi, wa, w0a)
            hyper.hyper_abs_linear_bwd(ya, x, phi, wa, w0a)

    sizes = [1, 17, 33, 65]
    for t in (1, 17):
        base = dict(b=17, t=t, i=17, o=17, h=17, dtype=f32)
        add("hyper", _vary(base, dict(b=sizes, t=[t] if t == 1 else [2, 17, 33, 65], i=sizes, o=sizes, h=sizes)),
            hyper_call)
        for dt in others:
            add("hyper", [dict(base, dtype=dt), dict(b=65, t=t if t == 1 else 65, i=65, o=65, h=65, dtype=dt)],
                hyper_call)

    # Align: Sinkhorn tiles are next_power_of_2(N), (M) in [2, 64]; transport tiles are N, M, D in [16, 64].
    def sinkhorn_call(n, m, reference, dtype):
        x = torch.randn(2, n, m, dtype=dtype)
        rm, cm = torch.ones(2, n, dtype=torch.bool), torch.ones(2, m, dtype=torch.bool)
        P, rl, cl = align.sinkhorn_fwd(x, rm, cm, 0.1, 3, reference)
        align.sinkhorn_bwd(P, x, rm, cm, rl, cl, 0.1, reference)

    def transport_call(n, m, d, dtype):
        P = torch.rand(2, n, m, dtype=dtype)
        hq, hc = torch.randn(2, n, d, dtype=dtype), torch.randn(2, m, d, dtype=dtype)
        s = align.align_score_fwd(hq, hc, P)
        align.align_score_bwd(s, hq, hc, P)
        qp, cp = align.partner_fwd(P, hq, hc)
        align.partner_bwd(qp, cp, P, hq, hc)

    sides = [1, 3, 5, 9, 17, 33, 64]
    for dt in [f32, *others]:
        for ref in (False, True):
            pts = _vary(dict(n=9, m=9, reference=ref, dtype=dt), dict(n=sides, m=sides)) if dt == f32 else \
                [dict(n=9, m=9, reference=ref, dtype=dt), dict(n=64, m=64, reference=ref, dtype=dt)]
            add("align", pts, sinkhorn_call)
        pts = _vary(dict(n=9, m=9, d=9, dtype=dt), dict(n=[9, 17, 64], m=[9, 17, 64], d=[1, 9, 17, 64])) \
            if dt == f32 else [dict(n=9, m=9, d=9, dtype=dt), dict(n=64, m=64, d=64, dtype=dt)]
        add("align", pts, transport_call)
    return out


def _jit_functions():
    import triton
    from fastlayers.kernels import align, eca, hyper

    for mod in (align, eca, hyper):
        for name, obj in vars(mod).items():
            if isinstance(obj, triton.runtime.jit.JITFunction):
                yield mod.__name__.rsplit(".", 1)[1], name, obj


def compile_triton(arch, progress=True, families=None):
    """Compile every kernel configuration the sweeps reach for one arch. Returns (rows, errors): one row per
    (family, kernel, config) with ptxas's registers, spills and stack and Triton's shared memory and num_warps;
    errors lists (family, label, arch, message)."""
    from triton import knobs
    from triton.runtime import driver

    reports, errors = {}, []
    funcs = list(_jit_functions())
    originals = {id(fn): fn.run for _, _, fn in funcs}

    def interceptor(family, name, fn):
        orig = originals[id(fn)]

        def run(*args, grid, warmup, **kwargs):
            # Triton prints ptxas's -v report when it compiles (dump_ptxas_log); a kernel it found in its cache
            # prints nothing and gets its report from a separate ptxas run below.
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                ck = orig(*args, grid=grid, warmup=True, **kwargs)
            key = (family, name, arch, _config(fn, args, kwargs))
            if key not in reports:
                reports[key] = (ck, buf.getvalue())
            return ck

        return run

    sweeps = [sw for sw in _sweeps() if families is None or sw[0] in families]
    old_dump = knobs.nvidia.dump_ptxas_log
    try:
        knobs.nvidia.dump_ptxas_log = True
        for family, name, fn in funcs:
            fn.run = interceptor(family, name, fn)
        driver.set_active(_AOTDriver(arch))
        t0 = time.time()
        for i, (family, label, call) in enumerate(sweeps):
            try:
                call()
            except Exception as e:  # noqa: BLE001 - a compile error: report it with the input that reached it
                errors.append((family, label, arch, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))
            if progress and (i % 20 == 0 or i == len(sweeps) - 1):
                print(f"  sm_{arch}: {i + 1}/{len(sweeps)} launcher calls, {len(reports)} kernel configs, "
                      f"{time.time() - t0:.0f} s", flush=True)
    finally:
        knobs.nvidia.dump_ptxas_log = old_dump
        for _, _, fn in funcs:
            fn.__dict__.pop("run", None)
        if _has_default_driver():
            driver.reset_active()
    rows = []
    for (family, name, a, cfg), (ck, log) in sorted(reports.items(), key=lambda kv: kv[0]):
        rep = _parse_ptxas(log) if "registers" in log else ptxas_report(ck.asm["ptx"], _ptxas(a))
        md = ck.metadata
        rows.append({"family": family, "kernel": name, "arch": a, "config": cfg, "num_warps": md.num_warps,
                     "num_stages": md.num_stages, "smem": md.shared, **rep,
                     "occupancy": occupancy(rep["regs"], md.num_warps, md.shared, a)})
    return rows, errors


def _has_default_driver():
    try:
        from triton.runtime import driver

        driver.default  # noqa: B018 - raises where no GPU driver is active
        return True
    except Exception:  # noqa: BLE001 - whatever the driver probe raises means no GPU driver here
        return False


def _config(fn, args, kwargs) -> str:
    """The constexpr arguments and dtypes of a launch: what distinguishes one compiled configuration."""
    import torch

    parts = []
    first_ptr = _first_ptr(fn)
    for p, a in zip(fn.params, args):
        if p.is_constexpr:
            parts.append(f"{p.name}={_short(a)}")
        elif isinstance(a, torch.Tensor) and p.num == first_ptr:
            parts.append(str(a.dtype).replace("torch.", ""))
    for k, v in sorted(kwargs.items()):
        parts.append(f"{k}={_short(v)}")
    return " ".join(parts)


def _first_ptr(fn) -> int:
    return next(p.num for p in fn.params if p.name.endswith("_ptr"))


def _short(v) -> str:
    s = str(v)
    return s.replace("triton.language.", "").replace("fp", "f")


_PTXAS_RE = {
    "regs": re.compile(r"Used (\d+) registers"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
    "spill_st": re.compile(r"(\d+) bytes spill stores"),
    "spill_ld": re.compile(r"(\d+) bytes spill loads"),
    "smem": re.compile(r"(\d+) bytes smem"),
}


def _ptxas(arch: int) -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(arch).path


def _parse_ptxas(text: str) -> dict:
    return {k: int(m.group(1)) if (m := rx.search(text)) else 0 for k, rx in _PTXAS_RE.items()}


def ptxas_report(ptx: str, ptxas: str) -> dict:
    """Registers, stack frame and spills of one PTX module, from ptxas -v with Triton's own flags."""
    arch = re.search(r"\.target\s+(sm_\w+)", ptx).group(1)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={arch}", src, "-o",
                            os.path.join(d, "k.o")], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ptxas failed: {r.stderr[-500:]}")
    return _parse_ptxas(r.stderr)


def occupancy(regs: int, num_warps: int, smem: int, arch: int) -> float:
    """Resident warps per SM over the maximum, limited by registers, shared memory and the 32-block cap."""
    threads = 32 * num_warps
    regs_per_warp = ((max(regs, 1) * 32 + 255) // 256) * 256  # allocated per warp in 256-register units
    by_regs = REGS_PER_SM // (regs_per_warp * num_warps)
    by_smem = (SMEM_LIMIT[arch] + 1024) // (smem + 1024) if smem else 32  # 1 KB reserved per block
    blocks = max(0, min(by_regs, by_smem, 32, MAX_THREADS_PER_SM // threads))
    return blocks * threads / MAX_THREADS_PER_SM


# ---- CUDA C++ ------------------------------------------------------------------------------------------------


def _nvcc_command(src: str, archs, obj: str) -> list[str]:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, include_paths

    cuda_home = os.environ.get("CUDA_HOME") or ("/usr/local/cuda" if os.path.exists("/usr/local/cuda/bin/nvcc")
                                                 else CUDA_HOME)
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    incs = [os.path.join(ROOT, "csrc"), *include_paths(device_type="cuda")]
    for site in sys.path:
        inc = os.path.join(site, "nvidia", "cu13", "include")
        if os.path.isdir(inc):
            incs.append(inc)
            break
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    std = "-std=c++20" if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 10) else "-std=c++17"
    cmd = [nvcc, "-c", src, "-o", obj, std, "-O3", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas", "-v",
           "-DFASTLAYERS_WITH_CUDA", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-DTORCH_EXTENSION_NAME=_C_aten",
           "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
           "-D__CUDA_NO_HALF2_OPERATORS__", "--compiler-options", "-fPIC"]
    for a in archs:
        cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    for i in incs:
        cmd += ["-I", i]
    return cmd


_ENTRY_RE = re.compile(r"Compiling entry function '(\S+)' for 'sm_(\d+)\w*'")


def parse_nvcc_report(text: str) -> list[dict]:
    """Per (kernel, arch): registers, stack frame, spills and static shared memory from -Xptxas -v output."""
    rows, cur = [], None
    for line in text.splitlines():
        m = _ENTRY_RE.search(line)
        if m:
            cur = {"kernel": m.group(1), "arch": int(m.group(2)), "regs": 0, "stack": 0, "spill_st": 0,
                   "spill_ld": 0, "smem": 0}
            rows.append(cur)
            continue
        if cur is None:
            continue
        for k, rx in _PTXAS_RE.items():
            if (mm := rx.search(line)):
                cur[k] = int(mm.group(1))
    return rows


def _demangle(names: list[str]) -> list[str]:
    if not shutil.which("c++filt"):
        return names
    r = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    out = r.stdout.splitlines()
    return out if len(out) == len(names) else names


def _short_cuda_name(name: str) -> str:
    # "void fastlayers::(anonymous namespace)::spmm_kernel<float, 2>(...)" -> "spmm_kernel<float, 2>"
    name = name.replace("(anonymous namespace)::", "").split("(", 1)[0].replace("void ", "")
    return name.replace("fastlayers::", "").replace("c10::", "")


def compile_cuda(archs, jobs):
    srcs = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.cu"), recursive=True))
    rows, errors = [], []
    with tempfile.TemporaryDirectory() as d:
        def one(src):
            obj = os.path.join(d, os.path.basename(src) + ".o")
            t0 = time.time()
            r = subprocess.run(_nvcc_command(src, archs, obj), capture_output=True, text=True)
            return src, r, time.time() - t0

        with concurrent.futures.ThreadPoolExecutor(jobs) as ex:
            for src, r, dt in ex.map(one, srcs):
                rel = os.path.relpath(src, ROOT)
                print(f"  {rel}: nvcc {'ok' if r.returncode == 0 else 'FAILED'} ({dt:.0f} s)", flush=True)
                if r.returncode != 0:
                    errors.append((rel, r.stderr[-2000:]))
                    continue
                found = parse_nvcc_report(r.stderr)
                for row, name in zip(found, _demangle([f["kernel"] for f in found])):
                    row.update(file=rel, kernel=_short_cuda_name(name))
                    row["occupancy"] = occupancy(row["regs"], 8, row["smem"], row["arch"])
                    rows.append(row)
    return rows, errors


# ---- report ----------------------------------------------------------------------------------------------------


# A few words spilled where ptxas settles at 128 registers (its choice for 8-warp blocks) are L1-resident and cost
# less than the occupancy those registers buy: reported, not failed. Anything larger fails.
SPILL_TOLERANCE = 64


def problems(row: dict, triton: bool) -> list[str]:
    out = []
    if max(row["spill_st"], row["spill_ld"]) > SPILL_TOLERANCE:
        out.append(f"spills {row['spill_st']} B stores / {row['spill_ld']} B loads")
    if triton and row["stack"] > SPILL_TOLERANCE:
        out.append(f"{row['stack']} B stack frame (local memory)")
    if row["smem"] > SMEM_LIMIT[row["arch"]]:
        out.append(f"shared memory {row['smem']} B over the sm_{row['arch']} limit {SMEM_LIMIT[row['arch']]} B")
    return out


def _summarise_triton(rows):
    """One line per (family, kernel, arch): config count and the worst registers/smem/occupancy."""
    groups = {}
    for r in rows:
        groups.setdefault((r["family"], r["kernel"], r["arch"]), []).append(r)
    lines = [("| family | kernel | arch | configs | num_warps | max regs | max smem B | spills | stack B | "
              "min occupancy |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for (fam, k, a), rs in sorted(groups.items()):
        warps = sorted({r["num_warps"] for r in rs})
        lines.append(f"| {fam} | {k} | sm_{a} | {len(rs)} | {','.join(map(str, warps))} | "
                     f"{max(r['regs'] for r in rs)} | {max(r['smem'] for r in rs)} | "
                     f"{max(r['spill_st'] + r['spill_ld'] for r in rs)} | {max(r['stack'] for r in rs)} | "
                     f"{min(r['occupancy'] for r in rs):.2f} |")
    return lines


def _cuda_table(rows):
    lines = ["| file | kernel | arch | regs | smem B | stack B | spills B | occupancy (256 thr) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["file"], r["kernel"], r["arch"])):
        lines.append(f"| {r['file']} | `{r['kernel']}` | sm_{r['arch']} | {r['regs']} | {r['smem']} | {r['stack']} | "
                     f"{r['spill_st'] + r['spill_ld']} | {r['occupancy']:.2f} |")
    return lines


def _triton_all_archs(archs, families=None):
    """One worker process per arch, side by side (each compile is single-threaded). Returns (rows, errors)."""
    rows, errors = [], []
    with tempfile.TemporaryDirectory() as d:
        procs = []
        for a in archs:
            path = os.path.join(d, f"sm_{a}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--triton-worker", str(a), path]
            if families:
                cmd += ["--family", ",".join(families)]
            procs.append((a, path, subprocess.Popen(cmd)))
        for a, path, proc in procs:
            if proc.wait() != 0 or not os.path.exists(path):
                errors.append(("all", "worker", a, f"the sm_{a} Triton worker failed (exit {proc.returncode})"))
                continue
            with open(path) as f:
                got = json.load(f)
            rows += got["rows"]
            errors += [tuple(e) for e in got["errors"]]
    return rows, errors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="80,90", help="compute capabilities, comma separated (default 80,90)")
    ap.add_argument("--skip-cuda", action="store_true", help="only the Triton kernels")
    ap.add_argument("--skip-triton", action="store_true", help="only the CUDA C++ kernels")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "gpu-check.md"),
                    help="markdown report (default benchmarks/results/gpu-check.md)")
    ap.add_argument("--family", default=None, help="Triton families to check, comma separated (default all)")
    ap.add_argument("--triton-worker", nargs=2, metavar=("ARCH", "JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    families = args.family.split(",") if args.family else None
    if args.triton_worker:
        rows, errors = compile_triton(int(args.triton_worker[0]), families=families)
        with open(args.triton_worker[1], "w") as f:
            json.dump({"rows": rows, "errors": errors}, f)
        return 0
    archs = [int(a) for a in args.arch.split(",")]
    report = ["# GPU kernel resource report", "",
              (f"Generated by `make gpu-check` (benchmarks/gpu_check.py) for {', '.join(f'sm_{a}' for a in archs)} on a "
               "machine without a GPU. Fails on a compile error, a spill or Triton stack frame over "
               f"{SPILL_TOLERANCE} B a thread, or shared memory over the per-block limit. 'spills' and 'stack B' are "
               "per thread, the worst configuration of each kernel."), ""]
    failures = []
    t0 = time.time()
    if not args.skip_triton:
        import triton

        print(f"Triton {triton.__version__}: compiling every launcher configuration", flush=True)
        rows, errors = _triton_all_archs(archs, families)
        failures += [f"triton {f}: {label} on sm_{a}: {msg}" for f, label, a, msg in errors]
        for r in rows:
            failures += [f"triton {r['family']}.{r['kernel']} sm_{r['arch']} [{r['config']}]: {p}"
                         for p in problems(r, triton=True)]
        report += [f"## Triton kernels (Triton {triton.__version__})", "",
                   (f"{len(rows)} compiled configurations from {len(_sweeps())} launcher calls per arch. Occupancy: "
                    "resident warps per SM over 64, from registers, shared memory and warps per block; the worst "
                    "configuration of each kernel is shown."), "", *_summarise_triton(rows), ""]
    if not args.skip_cuda:
        print("CUDA C++: nvcc -Xptxas -v per source", flush=True)
        crows, cerrors = compile_cuda(archs, args.jobs)
        failures += [f"nvcc {src}: {msg}" for src, msg in cerrors]
        for r in crows:
            failures += [f"cuda {r['file']} {r['kernel']} sm_{r['arch']}: {p}" for p in problems(r, triton=False)]
        report += ["## CUDA C++ kernels", "", "Occupancy assumes 256-thread blocks.", "", *_cuda_table(crows), ""]
    report += ["## Problems", "", *(f"- {f}" for f in failures or ["none"]), ""]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(report))
    print("\n".join(report))
    print(f"report: {args.out} ({time.time() - t0:.0f} s)")
    if failures:
        print(f"gpu-check FAILED: {len(failures)} problem(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

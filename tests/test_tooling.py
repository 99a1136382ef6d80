"""The command line and the benchmark harness (run on a tiny case, not timed for speed)."""

import json
import os
import subprocess
import sys
import types

import fastlayers
import torch
from fastlayers.__main__ import info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import harness


def test_info_reports_build_and_ops():
    d = info()
    assert d["fastlayers"] == fastlayers.__version__
    assert d["torch"] == torch.__version__
    assert isinstance(d["compiled CUDA kernels"], bool)
    assert {"eca_fwd", "eca_bwd"} <= set(d["ops"])


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "fastlayers", "info"], capture_output=True, text=True, check=True)
    assert "eca_fwd" in out.stdout and "torch" in out.stdout


def test_harness_writes_json_report_and_plot(tmp_path):
    x = torch.randn(1000)

    def build(spec, device):
        return harness.Case(name=f"double {spec}", shape="1000", ours=lambda: x * 2, peer=lambda: x + x,
                            peer_name="x + x", min_bytes=8000, extra={"note": "tiny"})

    mod = types.SimpleNamespace(specs=lambda device, quick: ["a", "b"], build=build)

    class _Bar:
        def set_postfix_str(self, s):
            pass

        def update(self, n):
            self.n = getattr(self, "n", 0) + n

    bar = _Bar()
    result = harness.run_cases("toy", mod, "cpu", True, 0.01, bar)
    assert bar.n == 2 and len(result["rows"]) == 2
    row = result["rows"][0]
    assert row["fastlayers_ms"] > 0 and row["peer_ms"] > 0
    assert abs(row["speedup"] - row["peer_ms"] / row["fastlayers_ms"]) < 1e-9
    assert abs(row["copy_bw_fraction"] - row["gbps"] / result["copy_bandwidth_gbps"]) < 1e-9
    path = harness.write_json(result, str(tmp_path))
    assert os.path.basename(path) == "cpu-toy.json"
    with open(path) as f:
        assert json.load(f)["family"] == "toy"
    report = harness.write_report(str(tmp_path))
    with open(report) as f:
        text = f.read()
    assert "## toy on cpu" in text and "double a" in text and "tiny" in text
    assert os.path.getsize(tmp_path / "cpu-speedups.png") > 0

"""A missing optional package gives one ImportError that names the pip extra providing it."""

import sys

import pytest
import torch

from fastlayers._optional import require


def test_require_returns_the_module():
    assert require("numpy", "x").__name__ == "numpy"


@pytest.mark.parametrize("module, extra", [("sklearn.metrics", "examples"), ("timm.layers", "timm"),
                                           ("torch_geometric", "pyg")])
def test_missing_package_names_its_extra(monkeypatch, module, extra):
    top = module.split(".")[0]
    if module != top:
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, top, None)  # None in sys.modules: importing it raises
    with pytest.raises(ImportError, match=rf"needs .* not installed: pip install 'fastlayers\[{extra}\]'"):
        require(module, "the caller")


def test_metrics_and_convert_timm_name_the_extra(monkeypatch):
    from fastlayers.data.metrics import mean_average_precision
    from fastlayers.nn import convert_timm

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.delitem(sys.modules, "sklearn.metrics", raising=False)
    with pytest.raises(ImportError, match=r"fastlayers.data.mean_average_precision needs scikit-learn"):
        mean_average_precision([[0.1, 0.9]], [[0, 1]])
    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.delitem(sys.modules, "timm.layers", raising=False)
    with pytest.raises(ImportError, match=r"convert_timm needs timm.*fastlayers\[timm\]"):
        convert_timm(torch.nn.Linear(2, 2))


def test_nat_example_imports_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.delitem(sys.modules, "sklearn.metrics", raising=False)
    monkeypatch.delitem(sys.modules, "fastlayers.examples.nat", raising=False)
    import fastlayers.examples.nat as nat  # the metrics are looked up at first use

    with pytest.raises(ImportError, match=r"fastlayers.examples.nat needs scikit-learn"):
        nat._skm()

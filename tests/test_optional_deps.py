"""A missing optional package gives one ImportError that names the pip extra providing it."""

import ast
import pathlib
import re
import sys

import pytest
import torch
from fastlayers._optional import require

from .conftest import OPTIONAL_TEST_DEPS, has, importorskip, needs


def test_require_returns_the_module():
    assert require("numpy", "x").__name__ == "numpy"


@pytest.mark.parametrize("module, extra", [("sklearn.metrics", "examples"), ("timm.layers", "timm"),
                                           ("torch_geometric", "pyg"), ("networkx", "examples")])
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
    from fastlayers.examples import nat  # the metrics are looked up at first use

    with pytest.raises(ImportError, match=r"fastlayers.examples.nat needs scikit-learn"):
        nat._skm()


# ---- optional test dependencies: one way to import them (tests/conftest.py) ----------------------------------

_TESTS = pathlib.Path(__file__).parent
_REPO = _TESTS.parent


def test_needs_and_importorskip_skip_naming_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "ot", None)  # POT "missing"
    assert not has("ot")
    mark = needs("ot").mark
    assert mark.args == (True,) and mark.kwargs["reason"] == ("needs POT (optional; pip install -r "
                                                               "requirements-dev.txt)")
    with pytest.raises(pytest.skip.Exception, match=r"needs POT \(optional"):
        importorskip("ot.batch")
    assert needs("hypothesis").mark.kwargs["reason"].startswith("needs hypothesis")
    with pytest.raises(ValueError, match="not an optional test dependency"):
        needs("scipy")


def _guards(node):
    """The optional modules a decorator list guards with needs("...")."""
    out = set()
    for d in getattr(node, "decorator_list", ()):
        if (isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id == "needs" and d.args
                and isinstance(d.args[0], ast.Constant)):
            out.add(d.args[0].value.split(".")[0])
    return out


def _violations(path):
    tree = ast.parse(path.read_text(), str(path))
    module_level = set()  # importorskip("x") at module level guards the whole file
    for stmt in tree.body:
        call = stmt.value if isinstance(stmt, (ast.Expr, ast.Assign)) else None
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "importorskip"
                and call.args and isinstance(call.args[0], ast.Constant)):
            module_level.add(call.args[0].value.split(".")[0])
    bad = []

    def visit(node, guarded, in_function):
        for child in ast.iter_child_nodes(node):
            g = guarded | _guards(child)
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in child.names] if isinstance(child, ast.Import) else [child.module or ""]
                for name in names:
                    top = name.split(".")[0]
                    if top in OPTIONAL_TEST_DEPS and top not in module_level and (not in_function or top not in g):
                        bad.append(f"{path.relative_to(_REPO)}:{child.lineno}: import {name} "
                                   f"{'not guarded by @needs' if in_function else 'at module level'}")
            if isinstance(child, ast.Call) and getattr(child.func, "attr", None) == "importorskip":
                bad.append(f"{path.relative_to(_REPO)}:{child.lineno}: pytest.importorskip (use conftest's "
                           f"importorskip or @needs)")
            visit(child, g, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, set(), False)
    return bad


def test_optional_test_dependencies_are_imported_one_way():
    # A file needing one throughout calls conftest's importorskip at module level; otherwise the test carries
    # @needs("x") and imports x inside. No bare top-level import, no try/except ImportError, no raw
    # pytest.importorskip: every skip names the package the same way.
    bad = []
    for path in sorted(_TESTS.rglob("*.py")):
        if path.name != "conftest.py":
            bad += _violations(path)
    assert not bad, "\n".join(bad)


def test_the_check_catches_unguarded_imports(tmp_path):
    f = _TESTS / "_probe_unguarded.py"
    try:
        f.write_text("import timm\n\n\ndef test_a():\n    import networkx\n\n\n@needs('sklearn')\n"
                     "def test_b():\n    import sklearn.metrics\n    import hypothesis\n")
        assert [b.split(": ", 1)[1] for b in _violations(f)] == [
            "import timm at module level", "import networkx not guarded by @needs",
            "import hypothesis not guarded by @needs"]
    finally:
        f.unlink()


def test_dev_requirements_pin_every_optional_test_dependency():
    reqs = (_REPO / "requirements-dev.txt").read_text().lower()
    pinned = {re.split(r"[=<>\s]", ln.strip())[0].replace("_", "-") for ln in reqs.splitlines()
              if ln.strip() and not ln.startswith("#")}
    dev = re.search(r"^dev = \[(.*?)\]", (_REPO / "pyproject.toml").read_text(), re.MULTILINE | re.DOTALL).group(1)
    extra = {n.lower().replace("_", "-") for n in re.findall(r'"([^"]+)"', dev)}
    for package in OPTIONAL_TEST_DEPS.values():
        p = package.lower()
        # torch-scatter is built from source by the Makefile (against this torch), not installed from a pin
        assert p in pinned or p == "torch-scatter", f"requirements-dev.txt does not pin {package}"
        assert p in extra or p == "torch-scatter", f"the dev extra in pyproject.toml does not list {package}"

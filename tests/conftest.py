import importlib
import os
import shutil
import sys

import pytest
import torch

# Triton kernels run through the interpreter on CPU tensors where there is no GPU. Must be set before triton is
# imported (fastlayers imports it when registering the CUDA kernels).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastlayers

if os.environ.get("FASTLAYERS_TEST_INSTALLED") == "1":
    # make wheel-test: the suite must exercise the installed wheel, not a source tree on sys.path.
    _src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert os.sep + "site-packages" + os.sep in fastlayers.__file__ and not fastlayers.__file__.startswith(_src), \
        f"testing {fastlayers.__file__}, not the installed wheel"
    print(f"testing the installed fastlayers {fastlayers.__version__} at {os.path.dirname(fastlayers.__file__)}",
          file=sys.stderr)

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")

# Optional test dependencies: peers the tests cross-check against and test tools. requirements-dev.txt pins each
# and the dev extra lists each; a machine without one (the GPU check machine, a user's venv) skips what needs it.
# Every test imports them one way (tests/test_optional_deps.py checks it):
#   - a file that needs one throughout: ``ts = importorskip("torch_scatter")`` at module level;
#   - a test that needs one: ``@needs("timm")`` on the test, and the import inside the test
#     (hypothesis too: ``@given`` goes on an inner function the test calls).
OPTIONAL_TEST_DEPS = {  # import name -> pip package
    "torch_scatter": "torch-scatter",
    "torch_geometric": "torch-geometric",
    "timm": "timm",
    "ot": "POT",
    "networkx": "networkx",
    "sklearn": "scikit-learn",
    "hypothesis": "hypothesis",
}


def _skip_reason(module: str) -> str:
    top = module.split(".")[0]
    if top not in OPTIONAL_TEST_DEPS:
        raise ValueError(f"{top} is not an optional test dependency (add it to OPTIONAL_TEST_DEPS)")
    return f"needs {OPTIONAL_TEST_DEPS[top]} (optional; pip install -r requirements-dev.txt)"


def has(module: str) -> bool:
    """Whether the optional test dependency ``module`` imports."""
    _skip_reason(module)
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def needs(module: str):
    """Marks a test that needs the optional test dependency ``module``: skipped, with the package named, where it
    does not import."""
    return pytest.mark.skipif(not has(module), reason=_skip_reason(module))


def importorskip(module: str):
    """The optional test dependency ``module``, or skip the calling module (at module level) or test."""
    return pytest.importorskip(module, reason=_skip_reason(module))


def pytest_report_header(config):
    info = fastlayers._C.cpu_isa_info()
    forced = f"forced by FASTLAYERS_CPU_ISA={info['requested']}" if info["requested"] else "the best supported"
    return f"fastlayers CPU kernels: {info['isa']} ({forced}; this CPU supports {', '.join(info['supported'])})"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.name.startswith("test_triton_"):
            item.add_marker(pytest.mark.triton)
    if not shutil.which(os.environ.get("CXX") or "c++"):
        no_cc = pytest.mark.skip(reason="torch.compile's inductor needs a C++ compiler on the CPU and none is "
                                 "reachable (torch's requirement, not fastlayers')")
        for item in items:
            if "compiler" in item.keywords:
                item.add_marker(no_cc)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (benchmarks/device_check.sh runs these)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny models: on a busy 2-core machine parallel regions cost far more than they save."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN so a kernel that skips writing an element is caught."""
    return t.fill_(float("nan"))


# The Triton launchers are tested on the GPU where there is one, else through the interpreter on CPU tensors.
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _to_cpu(out):
    if isinstance(out, (tuple, list)):
        return type(out)(_to_cpu(t) for t in out)
    return out.cpu() if isinstance(out, torch.Tensor) else out


class _OnTritonDevice:
    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        fn = getattr(self._module, name)

        def call(*args):
            moved = [a.to(TRITON_DEVICE) if isinstance(a, torch.Tensor) else a for a in args]
            return _to_cpu(fn(*moved))

        return call


def triton_launchers(family: str):
    """fastlayers.kernels.<family>, its launchers taking CPU tensors, running on TRITON_DEVICE and returning CPU
    tensors, so one test compares them with the CPU reference on either machine."""
    import importlib

    return _OnTritonDevice(importlib.import_module(f"fastlayers.kernels.{family}"))


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(autouse=True)
def _poison_outputs():
    """Every CPU output a fastlayers kernel allocates starts as NaN bytes, so an unwritten element fails a test."""
    fastlayers.cpu_cache._set_poison(True)
    try:
        import fastlayers.kernels._alloc as triton_alloc
    except ImportError:
        triton_alloc = None
    if triton_alloc is not None:
        triton_alloc.POISON = True
    yield
    fastlayers.cpu_cache._set_poison(False)
    if triton_alloc is not None:
        triton_alloc.POISON = False

import os

import pytest
import torch

# Triton kernels run through the interpreter on CPU tensors where there is no GPU. Must be set before triton is
# imported (fastlayers imports it when registering the CUDA kernels).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastlayers  # noqa: E402,F401

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def pytest_collection_modifyitems(config, items):
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


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(autouse=True)
def _poison_outputs():
    """Every CPU output a fastlayers kernel allocates starts as NaN bytes, so an unwritten element fails a test."""
    fastlayers._C.set_poison(True)
    try:
        import fastlayers.kernels._alloc as triton_alloc
    except ImportError:
        triton_alloc = None
    if triton_alloc is not None:
        triton_alloc.POISON = True
    yield
    fastlayers._C.set_poison(False)
    if triton_alloc is not None:
        triton_alloc.POISON = False

"""The CI slice of the fuzz suite (fuzz/run.py; `make fuzz` runs >= 10,000 cases per family): a few hundred
hypothesis-generated cases per family, fixed seed, valid inputs checked against the float64 reference and broken
ones required to raise a clean exception naming the argument, in a child process so that a crash is a failure of
this test rather than the end of pytest."""

import os

import pytest

from .conftest import importorskip

importorskip("hypothesis")  # the fuzz case generators draw through hypothesis

from fuzz.common import RAISED_VAGUE
from fuzz.run import FAMILIES, report, run_family

CASES = int(os.environ.get("FASTLAYERS_FUZZ_SLICE", "300"))


@pytest.mark.parametrize("family", FAMILIES)
def test_fuzz_slice(family):
    res = run_family(family, CASES, seed=0, case_timeout=120)
    ran = sum(sum(c.values()) for c in res["counts"].values())
    assert ran >= CASES, f"only {ran} of {CASES} cases ran"
    assert not res["failures"], report({family: res}, 0)
    # Every op of the family was reached, and broken inputs were refused with messages that name the argument.
    vague = sum(c[RAISED_VAGUE] for c in res["counts"].values())
    assert vague == 0, report({family: res}, 0)

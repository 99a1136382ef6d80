"""What a fuzz case is, and how its outcome is judged.

A case generator (``fuzz/cases_<family>.py``) draws, through hypothesis, one call of a public function or a raw
``torch.ops.fastlayers`` op: either valid input (then the result must match the float64 plain-PyTorch reference)
or input broken in one named way (then the call must raise a Python exception whose message names the argument).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import hypothesis.strategies as st
import torch

# What a rejection may raise: torch's TORCH_CHECK is RuntimeError (or one of its subclasses), Python-side checks
# raise ValueError / TypeError / IndexError.
CLEAN_ERRORS = (ValueError, TypeError, IndexError, RuntimeError, NotImplementedError)

# Outcomes. The first three are fine; the others are failures that `make fuzz` and the CI slice count.
CORRECT = "correct"          # valid input, matches the reference
RAISED = "raised"            # invalid input, clean exception that names the argument
RAISED_VAGUE = "raised_vague"  # invalid input, clean exception that does not name the argument (reported)
WRONG = "wrong"              # valid input, result differs from the reference
REFUSED_VALID = "refused_valid"  # valid input, raised
ACCEPTED_INVALID = "accepted_invalid"  # invalid input, returned without a word
CRASH = "crash"              # the process died (signal, abort, sanitizer report)
HANG = "hang"                # no progress within the case time limit
ODD_ERROR = "odd_error"      # an exception outside CLEAN_ERRORS (AttributeError, AssertionError, ...)
GENERATOR_ERROR = "generator error"
CASE_BUG = "case_bug"        # the reference refused a case generated as valid: a bug of the generator
OUTCOMES = (CORRECT, RAISED, RAISED_VAGUE, WRONG, REFUSED_VALID, ACCEPTED_INVALID, ODD_ERROR, CRASH, HANG, CASE_BUG)
FAILURES = (WRONG, REFUSED_VALID, ACCEPTED_INVALID, ODD_ERROR, CRASH, HANG, CASE_BUG)


@dataclasses.dataclass
class Case:
    op: str                                  # e.g. "spmm" (public) or "raw.spmm_fwd"
    what: str                                # "valid" or the defect, e.g. "col past N"
    run: Callable[[], object]                # the call under test
    ref: Callable[[], object] | None = None  # valid cases: the float64 reference result
    arg: str | None = None                   # invalid cases: the argument the message must name
    rtol: float = 1e-9
    atol: float = 1e-9

    @property
    def valid(self) -> bool:
        return self.what == "valid"


def _flatten(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in _flatten(item)]
    if x is None:
        return []
    return [torch.as_tensor(x)]


def matches(got, want, rtol, atol) -> str | None:
    """None when got equals want (NaN where want is NaN), else why not."""
    g, w = _flatten(got), _flatten(want)
    if len(g) != len(w):
        return f"{len(g)} outputs, reference has {len(w)}"
    for i, (a, b) in enumerate(zip(g, w)):
        if tuple(a.shape) != tuple(b.shape):
            return f"output {i} shape {tuple(a.shape)}, reference {tuple(b.shape)}"
        if a.dtype.is_floating_point or b.dtype.is_floating_point:
            a64, b64 = a.detach().double(), b.detach().double()
            if not torch.allclose(a64, b64, rtol=rtol, atol=atol, equal_nan=True):
                bad = ~torch.isclose(a64, b64, rtol=rtol, atol=atol, equal_nan=True)
                k = int(bad.flatten().nonzero()[0])
                return f"output {i} differs at flat {k}: {a64.flatten()[k].item()} vs {b64.flatten()[k].item()}"
        elif not torch.equal(a, b):
            return f"output {i} (integer) differs"
    return None


def judge(case: Case) -> tuple[str, str]:
    """Runs the case in this process; returns (outcome, detail)."""
    if case.what == GENERATOR_ERROR:
        return CASE_BUG, case.arg
    try:
        got = case.run()
    except CLEAN_ERRORS as e:
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        if case.valid:
            return REFUSED_VALID, msg
        if case.arg is None or case.arg.lower() in str(e).lower():
            return RAISED, msg
        return RAISED_VAGUE, msg
    except Exception as e:  # noqa: BLE001 - any other exception is a finding, not a harness failure
        return ODD_ERROR, f"{type(e).__name__}: {e}"[:300]
    if not case.valid:
        return ACCEPTED_INVALID, "returned without an error"
    try:
        want = case.ref()
    except Exception as e:  # noqa: BLE001
        return CASE_BUG, f"reference raised {type(e).__name__}: {e}"[:300]
    why = matches(got, want, case.rtol, case.atol)
    return (CORRECT, "") if why is None else (WRONG, why)


def pick(draw, options):
    """One of options, uniformly: hypothesis' own sampled_from leans on the first options while generating."""
    options = list(options)
    return random.Random(draw(st.integers(0, 2**63 - 1))).choice(options)


def draw_int(draw, lo, hi):
    """An int in [lo, hi], uniformly (hypothesis' integers lean on the bounds)."""
    return random.Random(draw(st.integers(0, 2**63 - 1))).randint(lo, hi)


def kinds_strategy(kinds):
    """A strategy drawing one case from a uniformly chosen generator of kinds. A generator that raises is recorded
    as a case bug (the run goes on) rather than ending the worker."""

    @st.composite
    def one(draw):
        kind = kinds[draw_int(draw, 0, len(kinds) - 1)]
        try:
            return kind(draw)
        except Exception as e:
            if type(e).__module__.startswith("hypothesis"):
                raise
            err = f"generator {kind.__name__} raised {type(e).__name__}: {e}"

            def bug():
                raise AssertionError(err)
            return Case(kind.__name__, GENERATOR_ERROR, bug, arg=err)
    return one()


def torch_gen(draw) -> torch.Generator:
    """A torch generator seeded by hypothesis: tensor contents come from it, structure from hypothesis' draws."""
    return torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))


def grads(fn, inputs, g):
    """Forward value and the gradients of a random projection of it, for the given inputs."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(int(g.initial_seed()) + 1),
                    dtype=out.dtype)
    if not out.requires_grad:  # e.g. an empty input that a reference returns untouched: no gradient to take
        return (out.detach(),) + tuple(torch.zeros_like(i) for i in inputs)
    grads_ = torch.autograd.grad((out * w).sum(), inputs, allow_unused=True)
    return (out.detach(),) + tuple(x if x is not None else torch.zeros_like(i) for x, i in zip(grads_, inputs))

"""Which implementation runs for an input: the one place every fastlayers op asks.

Each op declares its backends in preference order -- C++ CPU, CUDA C++, Triton, the plain-PyTorch reference --
with the devices, dtypes and size limits each accepts and whether it is available in this build and import
(CUDA C++ only in a wheel built with CUDA; Triton only when triton imports and its ops registered). An op's
public function calls :func:`choose` with its inputs and runs the backend named; :func:`explain` gives the same
decision with, for every backend refused, the reason. An input no backend accepts raises :class:`NoBackendError`
naming the op and every backend's reason. :func:`use_reference` forces the references (tests, the eager paths
of the models); :func:`backend_table` is what ``python -m fastlayers info`` prints.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator

import torch

CPP = "C++ CPU"
CUDA_CPP = "CUDA C++"
TRITON = "Triton"
REFERENCE = "reference"

F32_64 = (torch.float32, torch.float64)
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ANY = None  # dtypes not checked here (index, id and state tensors: each op validates them itself)

FORCED = "forced by use_reference()"

_force_reference: contextvars.ContextVar[bool] = contextvars.ContextVar("fastlayers_use_reference", default=False)


class NoBackendError(Exception):
    """No backend of an op accepts the input (device, dtype or size). The concrete exception also derives from
    TypeError (a dtype no backend takes), ValueError (a size) or RuntimeError (a device this build lacks), so
    existing ``except`` clauses keep working. ``reasons`` maps each backend to why it refused."""

    def __init__(self, message: str, op: str, reasons: dict[str, str]):
        super().__init__(message)
        self.op, self.reasons = op, reasons


class NoBackendTypeError(NoBackendError, TypeError):
    pass


class NoBackendValueError(NoBackendError, ValueError):
    pass


class NoBackendDeviceError(NoBackendError, RuntimeError):
    pass


def _dname(dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclasses.dataclass(frozen=True)
class Backend:
    """One implementation of an op.

    name: CPP, CUDA_CPP, TRITON or REFERENCE. devices: device types it runs on (None: every device).
    dtypes: device type -> accepted dtypes of the op's main floating input ("*" for other devices; ANY: not
    checked). max_side: the largest size along the op's limited dims (Triton tiles), None for no limit.
    available: returns None when the backend is present in this build/import, else why not. refuse: extra
    per-device refusal (returns a reason or None), e.g. the reference refusing CUDA tensors in a CPU-only wheel.
    """

    name: str
    devices: tuple[str, ...] | None
    dtypes: dict | None = None
    max_side: int | None = None
    limit_name: str = ""
    available: Callable[[], str | None] = lambda: None
    refuse: Callable[[str], str | None] | None = None

    def reason(self, device: str, dtype, side) -> str | None:
        """Why this backend does not run an input on device (type) with dtype and largest limited size side;
        None when it runs it."""
        if self.devices is not None and device not in self.devices:
            return f"device {device}: runs on {', '.join(self.devices)} only"
        why = self.available()
        if why:
            return why
        if self.refuse is not None:
            why = self.refuse(device)
            if why:
                return why
        if self.dtypes is not None and dtype is not None:
            ok = self.dtypes.get(device, self.dtypes.get("*"))
            if ok is not None and dtype not in ok:
                if dtype in FLOATS and device == "cpu":
                    return f"dtype {_dname(dtype)} needs CUDA (CPU: {', '.join(map(_dname, ok))})"
                return f"dtype {_dname(dtype)} not supported on {device} ({', '.join(map(_dname, ok))})"
        if self.max_side is not None and side is not None and side > self.max_side:
            return f"side {side} > {self.max_side} ({self.limit_name or self.name + ' tile limit'})"
        return None


@dataclasses.dataclass
class OpSpec:
    """An op's backends in preference order, the torch.ops.fastlayers ops it runs (for the table and the tests
    that every registered op is declared), and the argument its dtype is read from (named in errors)."""

    name: str
    backends: list[Backend]
    registered: tuple[str, ...] = ()
    arg: str = "x"


_OPS: dict[str, OpSpec] = {}
_UNAVAILABLE: dict[str, str] = {}  # backend key "family:name" -> reason (Triton before its ops register)


def declare(op: str, backends: list[Backend], registered=(), arg: str = "x") -> OpSpec:
    """Declares (or replaces) op's backends. registered: the torch.ops.fastlayers ops the backends call."""
    spec = _OPS[op] = OpSpec(op, list(backends), tuple(registered), arg)
    _decide.cache_clear()
    return spec


def add_registered(op: str, *names: str) -> None:
    """Records more torch.ops.fastlayers ops run by op's backends (the Triton ops, registered later)."""
    spec = _OPS[op]
    spec.registered = spec.registered + tuple(n for n in names if n not in spec.registered)


def set_available(key: str, reason: str | None) -> None:
    """Marks a backend group (e.g. "triton") available (reason None) or not, with why."""
    if reason is None:
        _UNAVAILABLE.pop(key, None)
    else:
        _UNAVAILABLE[key] = reason
    _decide.cache_clear()


def availability(key: str, default: str) -> Callable[[], str | None]:
    """An ``available`` callable reading the group key set by :func:`set_available` (default: its reason until
    the group reports in)."""
    _UNAVAILABLE.setdefault(key, default)
    return lambda: _UNAVAILABLE.get(key)


def declared_ops() -> dict[str, OpSpec]:
    """Every declared op, by name."""
    return dict(_OPS)


# ---- use_reference ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def use_reference() -> Iterator[None]:
    """Run every fastlayers op on its plain-PyTorch reference inside the block.

    Re-entrant, restored on exit (also on an exception), and local to the thread or asyncio task that entered it
    (a contextvar). Selection happens when an op is called, so functions compiled with torch.compile keep the
    choice made when they were traced. Example::

        with fastlayers.ops.use_reference():
            y_eager = model(x)   # the same model, on the references
    """
    token = _force_reference.set(True)
    try:
        yield
    finally:
        _force_reference.reset(token)


def reference_forced() -> bool:
    """Whether the caller is inside :func:`use_reference`."""
    return _force_reference.get()


# ---- selection -------------------------------------------------------------------------------------------------


def _spec(op: str) -> OpSpec:
    try:
        return _OPS[op]
    except KeyError:
        raise KeyError(f"fastlayers op {op!r} declares no backends (fastlayers.ops._backend.declare)") from None


def _explain(op: str, device: str, dtype, side, forced: bool):
    refused: dict[str, str] = {}
    winner = None
    for b in _spec(op).backends:
        if forced and b.name != REFERENCE:
            refused[b.name] = "off: " + FORCED
            continue
        why = b.reason(device, dtype, side)
        if why is None and winner is None:
            winner = b.name
        elif why is None:
            refused[b.name] = f"{winner} is preferred"
        else:
            refused[b.name] = why
    return winner, refused


@torch.compiler.assume_constant_result
def _decide_traced(op: str, device: str, dtype, side, forced: bool):
    return _decide(op, device, dtype, side, forced)


@functools.lru_cache(maxsize=4096)
def _decide(op: str, device: str, dtype, side, forced: bool):
    return _explain(op, device, dtype, side, forced)[0]


def _side(side):
    if side is None:
        return None
    if isinstance(side, (tuple, list, torch.Size)):
        side = max((int(s) for s in side), default=0)
    return int(side)


def explain(op: str, device, dtype=None, side=None) -> tuple[str | None, dict[str, str]]:
    """(backend that runs, {backend refused: reason}) for op on device (a torch.device or type string), dtype of
    its main input and side, the largest of its size-limited dims (an int or a sequence)."""
    device = device.type if isinstance(device, torch.device) else str(device)
    return _explain(op, device, dtype, _side(side), reference_forced())


def _error(op: str, device: str, dtype, side, refused: dict[str, str]) -> NoBackendError:
    spec = _spec(op)
    listing = "; ".join(f"{name}: {why}" for name, why in refused.items())
    ref = refused.get(REFERENCE, "")
    if ref.startswith("dtype"):
        accepted = sorted({_dname(d) for b in spec.backends if b.dtypes
                           for d in (b.dtypes.get(device, b.dtypes.get("*")) or ())
                           if b.reason(device, d, side) is None}, key=lambda s: ("float" not in s, s))
        msg = (f"fastlayers.{op}: {spec.arg} must have a floating dtype some backend accepts on {device} "
               f"({', '.join(accepted) or 'none'}), got {_dname(dtype)}. Backends: {listing}")
        return NoBackendTypeError(msg, op, refused)
    msg = f"fastlayers.{op}: no backend runs this input (device {device}, dtype {_dname(dtype)}). Backends: {listing}"
    if ref.startswith("side"):
        return NoBackendValueError(msg, op, refused)
    return NoBackendDeviceError(msg, op, refused)


def _forced_while_tracing() -> bool:
    return _force_reference.get()


if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < (2, 14):
    # torch 2.13's dynamo cannot trace ContextVar.get (2.14's can): read the flag once at trace time instead.
    _forced_while_tracing = torch._dynamo.assume_constant_result(_forced_while_tracing)


def choose(op: str, t: torch.Tensor, side=None, dtype=None) -> str:
    """The backend (CPP, CUDA_CPP, TRITON or REFERENCE) that runs op for main input t (its device and dtype, or
    dtype if given) and side (the largest size-limited dim). Raises NoBackendError when none accepts it."""
    device = t.device.type
    dtype = t.dtype if dtype is None else dtype
    side = _side(side)
    if torch.compiler.is_compiling():
        forced = _forced_while_tracing()
        name = _decide_traced(op, device, dtype, side, forced)
    else:
        forced = _force_reference.get()
        name = _decide(op, device, dtype, side, forced)
    if name is None:
        raise _error(op, device, dtype, side, _explain(op, device, dtype, side, forced)[1])
    return name


# ---- declarations ----------------------------------------------------------------------------------------------


def _cuda_built() -> bool:
    from .. import _C

    return bool(_C.build_info()["cuda"])


def _cuda_not_built() -> str | None:
    if not _cuda_built():
        return "device cuda not built into this wheel (install the CUDA wheel)"
    return _aten_missing()


def _aten_missing() -> str | None:
    """Why the kernels in fastlayers._C_aten (hyper and align on the CPU, every CUDA kernel) cannot run here."""
    from .._compat import aten_error

    why = aten_error()
    return None if why is None else "fastlayers._C_aten is not loaded: " + why


def _reference_refuses_without_aten(device: str) -> str | None:
    # Where _C_aten cannot load (another torch), its families raise rather than run the reference silently slowly.
    why = _aten_missing()
    return ("refused: the C++ kernels are missing (" + why + ")") if why else _reference_refuses_cuda_without_wheel(
        device)


def _reference_refuses_cuda_without_wheel(device: str) -> str | None:
    # A CUDA tensor in a CPU-only wheel raises rather than run the reference: silently slow is not what a user of
    # the GPU kernels installed fastlayers for (fastlayers._compat.require_cuda_kernels).
    if device == "cuda" and not _cuda_built():
        return "refused for CUDA tensors in a wheel without CUDA kernels (install the CUDA wheel)"
    return None


_TRITON_MISSING = "triton is not importable"


def _declare_all() -> None:
    cpp = Backend(CPP, ("cpu",), {"cpu": F32_64})
    cuda = Backend(CUDA_CPP, ("cuda",), {"cuda": FLOATS}, available=_cuda_not_built)
    strict_ref = Backend(REFERENCE, None, {"cpu": F32_64, "*": FLOATS}, refuse=_reference_refuses_cuda_without_wheel)
    for op, regs, arg in (
            ("scatter", ("scatter_fwd", "scatter_bwd"), "src"), ("segment", ("segment_fwd", "segment_bwd"), "src"),
            ("spmm", ("spmm_fwd", "spmm_arg_bwd"), "x"), ("sddmm", ("sddmm",), "a"),
            ("edge_softmax", ("edge_softmax_fwd", "edge_softmax_bwd"), "scores"),
            ("block_spmm", ("block_spmm_fwd", "block_spmm_bwd_blocks"), "x")):
        declare(op, [cpp, cuda, strict_ref], regs, arg)
    idx = dict(dtypes=ANY)
    declare("csr_index", [Backend(CPP, ("cpu",), **idx), Backend(CUDA_CPP, ("cuda",), available=_cuda_not_built, **idx),
                          Backend(REFERENCE, None, **idx)], ("csr_index",), "edge_index")
    for op in ("ncache_update", "ncache_lookup", "ncache_pair_features"):
        declare(op, [Backend(CPP, ("cpu",), **idx), Backend(CUDA_CPP, ("cuda",), available=_cuda_not_built, **idx),
                     Backend(REFERENCE, None, refuse=_reference_refuses_cuda_without_wheel, **idx)], (op,), "keys")
    # Whether a state's keys all sit at their hash slots (NCache's check before the CPU kernels' aligned shortcuts;
    # the CUDA kernels hash every probe, so nothing asks this of a CUDA table).
    declare("ncache_misplaced", [Backend(CPP, ("cpu",), **idx)], ("ncache_misplaced",), "keys")
    triton_avail = availability("triton:eca", _TRITON_MISSING)
    declare("eca", [cpp, Backend(TRITON, ("cuda",), {"cuda": FLOATS}, available=triton_avail),
                    Backend(REFERENCE, None, {"*": FLOATS})], ("eca_fwd", "eca_bwd"), "x")
    # hyper and align: C++ CPU kernels in _C_aten (ATen GEMMs), so they need the torch it was built for
    cpp, strict_ref = (dataclasses.replace(cpp, available=_aten_missing),
                       dataclasses.replace(strict_ref, refuse=_reference_refuses_without_aten))
    tri = Backend(TRITON, ("cuda",), {"cuda": FLOATS}, available=availability("triton:hyper", _TRITON_MISSING))
    declare("hyper_linear", [cpp, tri, strict_ref], ("hyper_linear_fwd", "hyper_linear_bwd"), "x")
    declare("interval_hyper_linear", [cpp, tri, strict_ref], ("hyper_abs_linear_fwd", "hyper_abs_linear_bwd"), "x_c")
    tri_tile = Backend(TRITON, ("cuda",), {"cuda": FLOATS}, max_side=64, limit_name="Triton tile limit: a pair on chip",
                       available=availability("triton:align", _TRITON_MISSING))
    declare("sinkhorn", [cpp, tri_tile, strict_ref], ("sinkhorn_fwd", "sinkhorn_bwd"), "logits")
    declare("align_score", [cpp, tri_tile, strict_ref], ("align_score_fwd", "align_score_bwd"), "P")
    declare("partner", [cpp, tri_tile, strict_ref], ("partner_fwd", "partner_bwd"), "P")
    declare("isonet_layer", [cpp, Backend(REFERENCE, None, {"cpu": F32_64, "*": FLOATS},
                                          refuse=_reference_refuses_without_aten)],
            ("isonet_layer_fwd", "isonet_layer_bwd"), "h")


_declare_all()


def triton_registered(family: str, ops: dict[str, tuple[str, ...]]) -> None:
    """Called where a family's Triton ops register: records them per public op and marks the family's Triton
    backend available."""
    for op, names in ops.items():
        add_registered(op, *names)
    set_available(f"triton:{family}", None)


# ---- the table -------------------------------------------------------------------------------------------------

_TABLE_DTYPE = {"cpu": torch.float32, "cuda": torch.float32}


def backend_table(devices=("cpu", "cuda")) -> list[dict]:
    """Per declared op and device: the backend that would run a float32 input of an unlimited size, and why each
    other backend does not. Rows: {"op", "device", "runs", "refused": {backend: reason}, "registered"}."""
    rows = []
    for op, spec in _OPS.items():
        for dev in devices:
            dtype = None if all(b.dtypes is None for b in spec.backends) else _TABLE_DTYPE.get(dev, torch.float32)
            winner, refused = explain(op, dev, dtype)
            rows.append({"op": op, "device": dev, "runs": winner or "nothing (raises)", "refused": refused,
                         "registered": spec.registered})
    return rows


def format_table(rows=None) -> str:
    """backend_table() as aligned text lines (what ``python -m fastlayers info`` prints)."""
    rows = backend_table() if rows is None else rows
    w_op = max((len(r["op"]) for r in rows), default=2)
    w_run = max((len(r["runs"]) for r in rows), default=4)
    lines = [f"{'op':<{w_op}}  {'device':<6}  {'runs':<{w_run}}  why not the others"]
    for r in rows:
        why = "; ".join(f"{k}: {v}" for k, v in r["refused"].items()) or "-"
        lines.append(f"{r['op']:<{w_op}}  {r['device']:<6}  {r['runs']:<{w_run}}  {why}")
    return "\n".join(lines)

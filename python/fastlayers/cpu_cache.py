"""The pool of large CPU outputs (see csrc/common/cpu_cache.h for why it exists).

fastlayers kernels allocate their CPU outputs of 1 MiB and more from a bounded pool of freed outputs, so a training
loop does not pay the page faults of fresh memory on every step. The bound is ``FASTLAYERS_CPU_CACHE_MB`` (default
1024) at import, or :func:`set_limit` at run time; 0 disables the pool. Each compiled library (``_C`` and, where
it loads, ``_C_aten``) holds its own pool under that bound; the functions here act on both and sum their counts.
"""

import sys

from . import _C


def _libraries():
    aten = sys.modules.get(__package__ + "._C_aten")
    return (_C,) if aten is None else (_C, aten)


def stats() -> dict:
    """{"cached_bytes": free bytes held, "limit_bytes": bound, "hits": reuses, "misses": fresh allocations}."""
    total = {"cached_bytes": 0, "hits": 0, "misses": 0}
    for lib in _libraries():
        s = lib.cpu_cache_stats()
        for k in total:
            total[k] += s[k]
        total["limit_bytes"] = s["limit_bytes"]  # the same bound in each
    return total


def set_limit(nbytes: int) -> None:
    """Bound the pool to ``nbytes`` (0 disables it); frees what exceeds the new bound."""
    if not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be a non-negative int, got {nbytes!r}")
    for lib in _libraries():
        lib.cpu_cache_set_limit(nbytes)


def empty() -> None:
    """Return every pooled block to the system (outputs still in use are not affected)."""
    for lib in _libraries():
        lib.cpu_cache_empty()


def _set_poison(on: bool) -> None:
    """Test aid: every CPU output of every kernel is filled with NaN bytes before the kernel writes it."""
    for lib in _libraries():
        lib.set_poison(bool(on))

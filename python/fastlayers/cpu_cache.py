"""The pool of large CPU outputs (see csrc/common/cpu_cache.h for why it exists).

fastlayers kernels allocate their CPU outputs of 1 MiB and more from a bounded pool of freed outputs, so a training
loop does not pay the page faults of fresh memory on every step. The bound is ``FASTLAYERS_CPU_CACHE_MB`` (default
1024) at import, or :func:`set_limit` at run time; 0 disables the pool.
"""

from . import _C


def stats() -> dict:
    """{"cached_bytes": free bytes held, "limit_bytes": bound, "hits": reuses, "misses": fresh allocations}."""
    return _C.cpu_cache_stats()


def set_limit(nbytes: int) -> None:
    """Bound the pool to ``nbytes`` (0 disables it); frees what exceeds the new bound."""
    if not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be a non-negative int, got {nbytes!r}")
    _C.cpu_cache_set_limit(nbytes)


def empty() -> None:
    """Return every pooled block to the system (outputs still in use are not affected)."""
    _C.cpu_cache_empty()

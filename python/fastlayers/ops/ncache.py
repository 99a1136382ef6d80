"""N-cache ops (NAT's per-node hashed neighbour dictionaries): update, lookup, pair_features.

Kernels: C++ on the CPU (csrc/ncache/ncache_cpu.cpp), CUDA C++ on the GPU (csrc/ncache/ncache_cuda.cu). This
module holds the public functions (argument checks at the boundary), the fake kernels and, for devices with no
kernel, the fallback to fastlayers.reference.ncache (exact mode: the same results). The tables are state, not
parameters: no op here is differentiable.
"""

from __future__ import annotations

import functools

import torch

from ..reference import ncache as _ref

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


@functools.lru_cache(maxsize=None)
def _has_kernel(op: str, device_type: str) -> bool:
    # The dispatcher query costs several microseconds, a fifth of a small batch's update: kernels are all
    # registered when fastlayers is imported, so the answer per device type is fixed.
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"fastlayers::{op}", key)


def _ids(name: str, x, device: torch.device, length: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must have an integer dtype (int64 preferred), got {x.dtype}")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but the cache is on {device}")
    if length is not None and x.numel() != length:
        raise ValueError(f"{name} has {x.numel()} entries, expected {length} (one per edge)")
    return x if x.dtype == torch.int64 else x.to(torch.int64)


def _times(t, device: torch.device, length: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"t must be float64 or an integer dtype (Unix times lose precision in {t.dtype})")
    if t.dtype != torch.float64 and t.dtype not in _INT_DTYPES:
        raise TypeError(f"t must be float64 or an integer dtype, got {t.dtype}")
    if t.dim() != 1 or t.numel() != length:
        raise ValueError(f"t must be [{length}] (one time per edge), got shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"t is on {t.device} but the cache is on {device}")
    return t if t.dtype == torch.float64 else t.to(torch.float64)


def _check_on_device(n: int, src, dst, t, last_time) -> None:
    """Range and time checks as tensor ops with one host sync (the CPU kernel does them in its own loop)."""
    flags = torch.stack([
        ((src < 0) | (src >= n)).any(), ((dst < 0) | (dst >= n)).any(),
        (~torch.isfinite(t) | (t < 0)).any(), (t[1:] < t[:-1]).any(), t[0] < last_time.reshape(()),
    ]).tolist()
    if flags[0]:
        raise IndexError(f"ncache.update: src has ids out of range [0, {n})")
    if flags[1]:
        raise IndexError(f"ncache.update: dst has ids out of range [0, {n})")
    if flags[2]:
        raise ValueError("ncache.update: t must be finite and >= 0")
    if flags[3]:
        raise ValueError("ncache.update: t must be non-decreasing within a batch")
    if flags[4]:
        raise ValueError(f"ncache.update: the batch starts at t = {float(t[0])}, older than the cache's latest "
                         f"time {float(last_time)} (reset() the cache to replay a stream)")


def _check_nodes_on_device(op: str, name: str, x: torch.Tensor, n: int) -> None:
    if x.numel() and bool(((x < 0) | (x >= n)).any()):
        raise IndexError(f"ncache.{op}: {name} has ids out of range [0, {n})")


def ncache_update(keys, eids, times, values, last_time, src, dst, t, eid, edge_values=None, sizes=(32, 16),
                  replace_prob: float = 0.9, seed: int = 0) -> None:
    """Insert a batch of temporal edges into the N-cache tables, in place (NAT's update).

    Args:
        keys, eids: [N, S] int64 tables (-1 = empty), S = 1 + sum(sizes); times [N, S] float64; values
            [N, S, D] float32; last_time [1] float64 (latest time inserted). All contiguous, on one device.
        src, dst: [B] node ids in [0, N). t: [B] float64 or integer times, finite, >= 0, non-decreasing and not
            older than last_time. eid: [B] edge ids. edge_values: [B, D] float32 or None (zeros): the value
            written with the edge into both endpoints' hop-0 and hop-1 entries.

    For x in {src, dst} with partner y: hop h >= 2 of y receives every non-empty hop h-1 entry of x as it was
    before the batch; hop 1 of x receives (y, eid, t); hop 0 of x receives (x, eid, t). A slot held by another
    key is overwritten with probability replace_prob (a counter-based draw); several candidates for one slot in
    one batch: latest time wins, then the largest edge id. Raises IndexError (ids out of range), ValueError
    (lengths, bad or backwards times), TypeError (dtypes). An empty batch is a no-op.
    """
    device = keys.device
    src = _ids("src", src, device)
    B = src.numel()
    dst = _ids("dst", dst, device, B)
    eid = _ids("eid", eid, device, B)
    t = _times(t, device, B)
    if edge_values is not None:
        if not isinstance(edge_values, torch.Tensor):
            raise TypeError(f"values must be a torch.Tensor or None, got {type(edge_values).__name__}")
        if edge_values.shape != (B, values.shape[2]):
            raise ValueError(f"values must be [{B}, {values.shape[2]}] (one vector per edge), got "
                             f"{tuple(edge_values.shape)}")
        if not edge_values.dtype.is_floating_point:
            raise TypeError(f"values must be floating, got {edge_values.dtype}")
        if edge_values.device != device:
            raise ValueError(f"values is on {edge_values.device} but the cache is on {device}")
        edge_values = edge_values.detach().to(torch.float32)
    if B == 0:
        return
    sizes = [int(m) for m in sizes]
    if device.type != "cpu":
        _check_on_device(keys.shape[0], src, dst, t, last_time)
    if _has_kernel("ncache_update", device.type):
        torch.ops.fastlayers.ncache_update(keys, eids, times, values, last_time, src, dst, t, eid, edge_values,
                                           sizes, float(replace_prob), int(seed))
        return
    _ref.ncache_update(keys, eids, times, values, src, dst, t, eid, edge_values, sizes, replace_prob, seed)
    last_time.fill_(torch.maximum(last_time.reshape(()), t[-1]))


def ncache_lookup(keys, eids, times, values, nodes):
    """Rows of the N-cache for nodes [B] (ids in [0, N)).

    Returns (keys [B, S] int64, eids [B, S] int64, times [B, S] float64, values [B, S, D] float32), columns in
    table order: hop 0 (1 slot), hop-1 slots, hop-2 slots; key -1 marks an empty slot.
    """
    nodes = _ids("nodes", nodes, keys.device)
    if keys.device.type != "cpu":
        _check_nodes_on_device("lookup", "nodes", nodes, keys.shape[0])
    if _has_kernel("ncache_lookup", keys.device.type):
        return torch.ops.fastlayers.ncache_lookup(keys, eids, times, values, nodes)
    return _ref.ncache_lookup(keys, eids, times, values, nodes)


def ncache_pair_features(keys, values, u, v, sizes=(32, 16), seed: int = 0):
    """Joint structural features of pairs (u[p], v[p]) from the N-cache.

    Returns (keys [P, K] int64, codes [P, K] int64, feats [P, K, D] float32, mask [P, K] bool,
    counts [P, H, H] int64), K = 2 * (1 + sum(sizes)), H = 1 + len(sizes). Per pair the distinct keys of the
    joint neighbourhood, in order of first appearance (u's row in table order, then v's), padded with key -1,
    code 0, zero feats and mask False. codes: bit h (hop h of u) and bit H + h (hop h of v) set for every
    hop the key is found in, e.g. 1 + 16 = u itself is a 1-hop neighbour of v (H = 3). feats: the entries'
    values summed over those places. counts[p, i, j]: keys present in hop i of u and hop j of v.
    """
    u = _ids("u", u, keys.device)
    v = _ids("v", v, keys.device, u.numel())
    sizes = [int(m) for m in sizes]
    if keys.device.type != "cpu":
        _check_nodes_on_device("pair_features", "u", u, keys.shape[0])
        _check_nodes_on_device("pair_features", "v", v, keys.shape[0])
    if _has_kernel("ncache_pair_features", keys.device.type):
        return torch.ops.fastlayers.ncache_pair_features(keys, values, u, v, sizes, int(seed))
    return _ref.ncache_pair_features(keys, values, u, v, sizes)


@torch.library.register_fake("fastlayers::ncache_update")
def _update_fake(keys, eids, times, values, last_time, src, dst, t, eid, edge_values, sizes, replace_prob, seed):
    return None


@torch.library.register_fake("fastlayers::ncache_lookup")
def _lookup_fake(keys, eids, times, values, nodes):
    b = nodes.shape[0]
    s = keys.shape[1]
    return (keys.new_empty((b, s)), eids.new_empty((b, s)), times.new_empty((b, s)),
            values.new_empty((b, s, values.shape[2])))


@torch.library.register_fake("fastlayers::ncache_pair_features")
def _pair_features_fake(keys, values, u, v, sizes, seed):
    p = u.shape[0]
    k = 2 * keys.shape[1]
    h = 1 + len(sizes)
    return (keys.new_empty((p, k)), keys.new_empty((p, k)), values.new_empty((p, k, values.shape[2])),
            keys.new_empty((p, k), dtype=torch.bool), keys.new_empty((p, h, h)))

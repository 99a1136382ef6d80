"""N-cache ops (NAT's per-node hashed neighbour dictionaries): update, lookup, pair_features.

Kernels: C++ on the CPU (csrc/ncache/ncache_cpu.cpp), CUDA C++ on the GPU (csrc/ncache/ncache_cuda.cu). This
module holds the public functions (argument checks at the boundary), the fake kernels and, for devices with no
kernel, the fallback to fastlayers.reference.ncache (exact mode: the same results). The tables are state, not
parameters: no op here is differentiable.
"""

from __future__ import annotations

import numbers

import torch

from .. import _compat
from ..reference import ncache as _ref
from . import _backend as B

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _has_kernel(op: str, keys: torch.Tensor) -> bool:
    # fastlayers.ops._backend's answer (cached per kind of device: well under a microsecond). A CUDA cache in a
    # build without CUDA kernels raises there.
    return B.choose(op, keys) != B.REFERENCE


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


def int_arg(name: str, v, lo: int | None = None, hi: int | None = None) -> int:
    """v as an int; bools, strings and floats are refused (an implicit int() would coerce them silently)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v >= hi):
        raise ValueError(f"{name} must be in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}),"
                         f" got {v}")
    return v


def sizes_arg(sizes) -> list[int]:
    """Slots per hop: 1 to 3 ints in [1, 2^31) (the kernels' slot arithmetic is 32-bit)."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, (tuple, list, torch.Size)):
        raise TypeError(f"sizes must be a tuple or list of 1 to 3 ints, got {type(sizes).__name__} {sizes!r}")
    if not 1 <= len(sizes) <= 3:
        raise ValueError(f"sizes must have 1 to 3 entries (hops 1 .. 3), got {tuple(sizes)!r}")
    return [int_arg(f"sizes[{i}]", m, 1, 1 << 31) for i, m in enumerate(sizes)]


def prob_arg(name: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(p).__name__} {p!r}")
    p = float(p)
    if not 0.0 <= p <= 1.0:  # also refuses NaN
        raise ValueError(f"{name} must be in [0, 1], got {p!r}")
    return p


def seed_arg(seed) -> int:
    # The op's schema takes an int64.
    return int_arg("seed", seed, -(1 << 63), 1 << 63)


_TABLES = {"keys": (torch.int64, 2), "eids": (torch.int64, 2), "times": (torch.float64, 2),
           "values": (torch.float32, 3)}


def _tables(op: str, dense: bool, **tables) -> dict:
    """Checks the tables against keys (dtype, shape, device). dense: the op writes them in place, so they must
    be contiguous already; otherwise a non-contiguous table (an expanded or transposed view, e.g. after
    load_state_dict(assign=True)) comes back as a contiguous copy."""
    keys = tables["keys"]
    for name, t in tables.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"ncache.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        dtype, dim = _TABLES[name]
        if t.dtype != dtype:
            raise TypeError(f"ncache.{op}: {name} must be {str(dtype).replace('torch.', '')}, got {t.dtype}")
        want = f"[N, S{', D' if dim == 3 else ''}]"
        if t.dim() != dim or (name != "keys" and tuple(t.shape[:2]) != tuple(keys.shape[:2])):
            raise ValueError(f"ncache.{op}: {name} must be an {want} table with keys' N, S = "
                             f"{tuple(keys.shape[:2])}, got shape {tuple(t.shape)}")
        if t.device != keys.device:
            raise ValueError(f"ncache.{op}: {name} is on {t.device} but keys is on {keys.device}")
        if not t.is_contiguous():
            if dense:
                raise ValueError(f"ncache.{op}: {name} must be contiguous (the tables are updated in place), got "
                                 f"strides {t.stride()} for shape {tuple(t.shape)}; call .contiguous() first")
            tables[name] = t.contiguous()
    return tables


def _check_columns(op: str, keys: torch.Tensor, sizes: list[int]) -> None:
    s = 1 + sum(sizes)
    if keys.shape[1] != s:
        raise ValueError(f"ncache.{op}: keys has {keys.shape[1]} columns but sizes {tuple(sizes)} imply "
                         f"S = 1 + sum(sizes) = {s}")


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
    sizes = sizes_arg(sizes)
    replace_prob = prob_arg("replace_prob", replace_prob)
    seed = seed_arg(seed)
    _tables("update", True, keys=keys, eids=eids, times=times, values=values)
    _check_columns("update", keys, sizes)
    if not (isinstance(last_time, torch.Tensor) and last_time.dtype == torch.float64 and last_time.numel() == 1
            and last_time.device == keys.device):
        raise ValueError("ncache.update: last_time must be a float64 tensor of one element on the cache's device, "
                         f"got {last_time!r}")
    device = keys.device
    src = _ids("src", src, device)
    B = src.numel()
    dst = _ids("dst", dst, device, B)
    eid = _ids("eid", eid, device, B)
    t = _times(t, device, B)
    if edge_values is not None:
        if not isinstance(edge_values, torch.Tensor):
            raise TypeError("edge values (values / edge_values) must be a torch.Tensor or None, got "
                            f"{type(edge_values).__name__}")
        if edge_values.shape != (B, values.shape[2]):
            raise ValueError(f"edge values (values / edge_values) must be [{B}, {values.shape[2]}] (one per edge), "
                             f"got {tuple(edge_values.shape)}")
        if not edge_values.dtype.is_floating_point:
            raise TypeError(f"edge values (values / edge_values) must be floating, got {edge_values.dtype}")
        if edge_values.device != device:
            raise ValueError(f"edge values (values / edge_values) are on {edge_values.device} but the cache is on "
                             f"{device}")
        edge_values = edge_values.detach().to(torch.float32)
    if B == 0:
        return
    if _has_kernel("ncache_update", keys):
        # The kernels check ids and times themselves (the CUDA one with a single host sync).
        torch.ops.fastlayers.ncache_update(keys, eids, times, values, last_time, src, dst, t, eid, edge_values,
                                           sizes, replace_prob, seed)
        return
    _compat.require_cuda_kernels(device, "NCache.update")
    _check_on_device(keys.shape[0], src, dst, t, last_time)
    _ref.ncache_update(keys, eids, times, values, src, dst, t, eid, edge_values, sizes, replace_prob, seed)
    last_time.fill_(torch.maximum(last_time.reshape(()), t[-1]))


def ncache_lookup(keys, eids, times, values, nodes):
    """Rows of the N-cache for nodes [B] (ids in [0, N)).

    Returns (keys [B, S] int64, eids [B, S] int64, times [B, S] float64, values [B, S, D] float32), columns in
    table order: hop 0 (1 slot), hop-1 slots, hop-2 slots; key -1 marks an empty slot.
    """
    tb = _tables("lookup", False, keys=keys, eids=eids, times=times, values=values)
    keys, eids, times, values = tb["keys"], tb["eids"], tb["times"], tb["values"]
    nodes = _ids("nodes", nodes, keys.device)
    if _has_kernel("ncache_lookup", keys):
        return torch.ops.fastlayers.ncache_lookup(keys, eids, times, values, nodes)
    _compat.require_cuda_kernels(keys.device, "NCache.lookup")
    _check_nodes_on_device("lookup", "nodes", nodes, keys.shape[0])
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
    sizes = sizes_arg(sizes)
    seed = seed_arg(seed)
    tb = _tables("pair_features", False, keys=keys, values=values)
    keys, values = tb["keys"], tb["values"]
    _check_columns("pair_features", keys, sizes)
    u = _ids("u", u, keys.device)
    v = _ids("v", v, keys.device, u.numel())
    if _has_kernel("ncache_pair_features", keys):
        return torch.ops.fastlayers.ncache_pair_features(keys, values, u, v, sizes, seed)
    _compat.require_cuda_kernels(keys.device, "NCache.pair_features")
    _check_nodes_on_device("pair_features", "u", u, keys.shape[0])
    _check_nodes_on_device("pair_features", "v", v, keys.shape[0])
    return _ref.ncache_pair_features(keys, values, u, v, sizes)


@torch.library.register_fake("fastlayers::ncache_update")
def _update_fake(keys, eids, times, values, last_time, src, dst, t, eid, edge_values, sizes, replace_prob, seed,
                 aligned=False):
    return None


@torch.library.register_fake("fastlayers::ncache_lookup")
def _lookup_fake(keys, eids, times, values, nodes):
    b = nodes.shape[0]
    s = keys.shape[1]
    return (keys.new_empty((b, s)), eids.new_empty((b, s)), times.new_empty((b, s)),
            values.new_empty((b, s, values.shape[2])))


@torch.library.register_fake("fastlayers::ncache_pair_features")
def _pair_features_fake(keys, values, u, v, sizes, seed, aligned=False):
    p = u.shape[0]
    k = 2 * keys.shape[1]
    h = 1 + len(sizes)
    return (keys.new_empty((p, k)), keys.new_empty((p, k)), values.new_empty((p, k, values.shape[2])),
            keys.new_empty((p, k), dtype=torch.bool), keys.new_empty((p, h, h)))

"""fastlayers.NCache: NAT's per-node hashed neighbourhood dictionaries (Luo & Li, LoG 2022) as plain tensors."""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch

from . import _C
from .ops import _backend
from .ops import ncache as _ops
from .reference.ncache import slot_of as _slot_of

_TABLE_DTYPES = {"keys": torch.int64, "eids": torch.int64, "times": torch.float64, "values": torch.float32,
                 "last_time": torch.float64}


class Lookup(NamedTuple):
    keys: torch.Tensor  # [B, S] int64, -1 = empty
    eids: torch.Tensor  # [B, S] int64
    times: torch.Tensor  # [B, S] float64
    values: torch.Tensor  # [B, S, D] float32


class PairFeatures(NamedTuple):
    keys: torch.Tensor  # [P, K] int64, -1 = padding
    codes: torch.Tensor  # [P, K] int64, 2H-bit hop code
    feats: torch.Tensor  # [P, K, D] float32, values summed per key
    mask: torch.Tensor  # [P, K] bool
    counts: torch.Tensor  # [P, H, H] int64 common-neighbour counts per hop pair


# The registered ops, resolved once (torch.ops attribute lookups cost microseconds per call).
_UPDATE_OP = torch.ops.fastlayers.ncache_update.default
_PAIR_OP = torch.ops.fastlayers.ncache_pair_features.default
_MISPLACED_OP = torch.ops.fastlayers.ncache_misplaced.default


class NCache(torch.nn.Module):
    """Per-node neighbour dictionaries: hop 0 (the node itself) plus one hashed table per entry of ``sizes``.

    State (buffers, so ``state_dict`` / ``load_state_dict`` / ``.to(device)`` work): ``keys`` and ``eids``
    [num_nodes, S] int64 (-1 = empty), ``times`` [num_nodes, S] float64, ``values`` [num_nodes, S, value_dim]
    float32, ``last_time`` [1] float64; S = 1 + sum(sizes) and hop h lives in columns ``offsets[h]:offsets[h+1]``
    (:meth:`hop` gives the views). A neighbour's slot in hop h is ``((mix64(key ^ mix(seed)) >> 32) * M_h) >> 32``
    (splitmix64, see csrc/common/ncache_hash.h) in every node's cache, which is what makes :meth:`pair_features`
    a probe instead of a set intersection.

    Args:
        num_nodes: node ids are 0 .. num_nodes - 1.
        sizes: slots per hop, hops 1 .. len(sizes) (1 to 3 entries; NAT uses (32, 16)).
        value_dim: length D of the vector stored with each entry.
        replace_prob: probability that an insert overwrites a slot held by another key (NAT's alpha).
        seed: seeds the slot hash and the counter-based replacement draws.
        device: where the tables live (CPU and CUDA have kernels; other devices run fastlayers.reference).
        huge_pages: back CPU tables of 8 MiB and more with transparent huge pages (Linux, madvise). Random rows
            of a large cache then stop missing the TLB: on the development machine a B=2000 batch on a 1M-node
            cache took 0.9 ms instead of 2.4 ms, for about 1 s more to build the cache.
        process_group: a torch.distributed ProcessGroup (or ``torch.distributed.group.WORLD``) to shard the rows
            over its ranks: node n on rank n % world_size. Returns a
            :class:`fastlayers.ncache_sharded.ShardedNCache`, whose methods are collectives, bit-identical to
            this class given the global batch (each rank's slice in rank order).
    """

    def __new__(cls, *args, process_group=None, **kwargs):
        # NCache(..., process_group=pg) builds the sharded cache; its __init__ then runs with the same arguments.
        if process_group is not None and cls is NCache:
            from .ncache_sharded import ShardedNCache

            return super().__new__(ShardedNCache)
        return super().__new__(cls)

    def __init__(self, num_nodes: int, sizes=(32, 16), value_dim: int = 4, replace_prob: float = 0.9,
                 seed: int = 0, device=None, huge_pages: bool = True, process_group=None):
        if process_group is not None:
            raise TypeError(f"{type(self).__name__} does not shard: build fastlayers.NCache(..., process_group=pg)")
        super().__init__()
        # Refused rather than coerced: NCache(True), sizes=(True, 4), seed="3" or replace_prob="0.5" are mistakes.
        num_nodes = _ops.int_arg("num_nodes", num_nodes, 0, 1 << 62)
        sizes = tuple(_ops.sizes_arg(sizes))
        value_dim = _ops.int_arg("value_dim", value_dim, 1, 1 << 31)
        replace_prob = _ops.prob_arg("replace_prob", replace_prob)
        seed = _ops.seed_arg(seed)
        if not isinstance(huge_pages, bool):
            raise TypeError(f"huge_pages must be a bool, got {type(huge_pages).__name__} {huge_pages!r}")
        self.num_nodes, self.sizes, self.value_dim = num_nodes, sizes, value_dim
        self.replace_prob, self.seed = replace_prob, seed
        self.huge_pages = huge_pages
        self.offsets = [0, 1]
        for m in sizes:
            self.offsets.append(self.offsets[-1] + m)
        s = self.offsets[-1]
        if num_nodes * s * max(value_dim * 4, 8) >= 1 << 62:
            raise ValueError(f"NCache tables of num_nodes x S x value_dim = {num_nodes} x {s} x {value_dim} are "
                             "too large to allocate")
        self.register_buffer("keys", torch.empty(num_nodes, s, dtype=torch.int64, device=device))
        self.register_buffer("eids", torch.empty(num_nodes, s, dtype=torch.int64, device=device))
        self.register_buffer("times", torch.empty(num_nodes, s, dtype=torch.float64, device=device))
        self.register_buffer("values", torch.empty(num_nodes, s, value_dim, dtype=torch.float32, device=device))
        self.register_buffer("last_time", torch.empty(1, dtype=torch.float64, device=device))
        # (weak ref to the keys table, its version counter, aligned?) as last known: see _aligned.
        self._aligned_state = None
        self._advise_huge_pages()
        self.reset()

    def _advise_huge_pages(self) -> None:
        # Rows are read and written at random: with 4 KiB pages a table of a million nodes misses the TLB on
        # nearly every row (measured 2x slower per batch until the OS promotes the pages on its own). Advised
        # before reset() first touches them, the tables (2 MiB and more: one page at least) are faulted in as 2 MiB
        # pages where the OS allows it.
        if not self.huge_pages:
            return
        for name in ("keys", "eids", "times", "values"):
            t = getattr(self, name)
            if t.device.type == "cpu" and t.numel() * t.element_size() >= 2 << 20:
                _C.advise_huge_pages(t.data_ptr(), t.numel() * t.element_size())

    @property
    def num_slots(self) -> int:
        """S = 1 + sum(sizes): columns of every table."""
        return self.offsets[-1]

    @property
    def num_hops(self) -> int:
        return len(self.offsets) - 1

    def reset(self) -> NCache:
        """Empty every dictionary (keys and eids -1, times 0, values 0) and forget the latest time."""
        self.keys.fill_(-1)
        self.eids.fill_(-1)
        self.times.zero_()
        self.values.zero_()
        self.last_time.zero_()
        self._vouch_aligned(self.keys)
        return self

    def _vouch_aligned(self, k: torch.Tensor) -> None:
        self._aligned_state = (weakref.ref(k), k._version, True)

    def _aligned(self, k: torch.Tensor) -> bool:
        """Whether every key of hops >= 1 in table k sits at its hash slot, so the CPU kernels may skip the hash
        (op argument ``aligned``). Every state written by reset() and update() is; a state this cache did not
        write (load_state_dict, a new tensor assigned, an in-place edit: each changes the tensor or its version
        counter) is checked once, a pass over the table. Writes that bypass the version counter (``.data``,
        ``.numpy()``) are not seen: edit the tables through the tensors themselves."""
        if type(k) is not torch.Tensor or torch.compiler.is_compiling():
            # Traced (torch.compile / torch.export): the graph keeps the hashed path, right for any state it runs on.
            return False
        st = self._aligned_state
        if st is not None and st[0]() is k and st[1] == k._version:
            return st[2]
        ok = k.device.type == "cpu" and _MISPLACED_OP(k, self.sizes, self.seed) == 0
        self._aligned_state = (weakref.ref(k), k._version, ok)
        return ok

    def hop(self, h: int) -> Lookup:
        """Views of hop h's tables: keys/eids/times [N, M_h], values [N, M_h, D]."""
        a, b = self.offsets[h], self.offsets[h + 1]
        return Lookup(self.keys[:, a:b], self.eids[:, a:b], self.times[:, a:b], self.values[:, a:b])

    def _dense(self) -> None:
        # load_state_dict(assign=True) (or a user assignment) can install views: expanded, transposed or sliced
        # tables. The kernels read and write dense rows, so such a buffer is replaced by a dense copy once, here.
        for name in _TABLE_DTYPES:
            t = getattr(self, name)
            if isinstance(t, torch.Tensor) and not t.is_contiguous():
                setattr(self, name, t.contiguous())

    def _cpu_tables(self, op: str):
        # The four tables when the C++ CPU kernel runs op on them (the backend module says so: their device, no
        # use_reference()) and they are dense, else None. Read from _buffers: Module.__getattr__ costs a
        # microsecond per name, a visible share of a small batch's call.
        b = self._buffers
        k, e, t, v = b["keys"], b["eids"], b["times"], b["values"]
        if (k.is_contiguous() and e.is_contiguous() and t.is_contiguous() and v.is_contiguous()
                and _backend.choose(op, k) == _backend.CPP):
            return k, e, t, v
        return None

    def update(self, src, dst, t, eid, values=None) -> None:
        """Insert a batch of positive edges (see :func:`fastlayers.ops.ncache_update` for the rule and errors).

        src, dst, eid: [B] integer; t: [B] float64 or integer, non-decreasing and not older than the latest
        time already inserted (ValueError otherwise: reset() to replay); values: [B, value_dim] or None.
        """
        # Fast path: arguments already in the kernel's dtypes go straight to the C++ op, which checks shapes,
        # devices, id ranges and times itself (the same exception types and messages as the Python checks) in
        # its own pass over the batch. The Python checks and conversions cost ~20 us per call, a tenth of a
        # NAT-sized batch. Anything else (other dtypes, views, other devices, values that need grad) takes the
        # general path below.
        tables = self._cpu_tables("ncache_update")
        if (tables is not None and isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor)
                and isinstance(eid, torch.Tensor) and isinstance(t, torch.Tensor) and src.dtype is torch.int64
                and dst.dtype is torch.int64 and eid.dtype is torch.int64 and t.dtype is torch.float64
                and (values is None or (isinstance(values, torch.Tensor) and values.dtype is torch.float32
                                        and not values.requires_grad))):
            try:
                aligned = self._aligned(tables[0])
                _UPDATE_OP(*tables, self._buffers["last_time"], src, dst, t, eid, values, self.sizes,
                           self.replace_prob, self.seed, aligned)
                if aligned:  # update keeps every key at its slot (whatever the version counter did)
                    self._vouch_aligned(tables[0])
                return
            except (TypeError, ValueError, IndexError):
                # The kernel checks everything before it writes, so nothing changed: the general path below
                # raises the error with the Python layer's message (or the kernel's, for ids and times).
                pass
        with torch.no_grad():
            self._update_checked(src, dst, t, eid, values)

    def _update_checked(self, src, dst, t, eid, values) -> None:
        self._dense()
        _ops.ncache_update(self.keys, self.eids, self.times, self.values, self.last_time, src, dst, t, eid,
                           values, self.sizes, self.replace_prob, self.seed)

    @torch.no_grad()
    def lookup(self, nodes) -> Lookup:
        """keys, eids, times and values of all hops for nodes [B]: [B, S] (values [B, S, D])."""
        self._dense()
        return Lookup(*_ops.ncache_lookup(self.keys, self.eids, self.times, self.values, nodes))

    def pair_features(self, u, v) -> PairFeatures:
        """Joint neighbourhood of pairs (u[p], v[p]): see :func:`fastlayers.ops.ncache_pair_features`."""
        tables = self._cpu_tables("ncache_pair_features")
        if (tables is not None and isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor)
                and u.dtype is torch.int64 and v.dtype is torch.int64):
            # Fast path as in update: the kernel checks shapes, devices and id ranges itself.
            try:
                return PairFeatures(*_PAIR_OP(tables[0], tables[3], u, v, self.sizes, self.seed,
                                              self._aligned(tables[0])))
            except (TypeError, ValueError, IndexError):
                pass  # read-only: the general path raises with the Python layer's message
        with torch.no_grad():
            return self._pair_features_checked(u, v)

    def _pair_features_checked(self, u, v) -> PairFeatures:
        self._dense()
        return PairFeatures(*_ops.ncache_pair_features(self.keys, self.values, u, v, self.sizes, self.seed))

    def column(self, keys: torch.Tensor, hop: int) -> torch.Tensor:
        """The table column where each key [n] would sit in hop ``hop`` of any node's cache (hop 0: column 0):
        ``offsets[hop] + slot``, int64 [n]. The hash is shared by every node, which is what makes a probe one
        read."""
        hop = _ops.int_arg("hop", hop, 0, self.num_hops - 1)
        keys = _ops._ids("keys", keys, self.keys.device)
        if hop == 0:
            return torch.zeros_like(keys)
        return self.offsets[hop] + _slot_of(keys, self.seed, self.sizes[hop - 1])

    def _probe_args(self, nodes, keys, hop):
        nodes = _ops._ids("nodes", nodes, self.keys.device)
        keys = _ops._ids("keys", keys, self.keys.device, nodes.numel())
        # Traced (torch.compile / torch.export): the range check needs the data; the gather below still raises.
        if nodes.numel() and not torch.compiler.is_compiling() and \
                bool(((nodes < 0) | (nodes >= self.num_nodes)).any()):
            raise IndexError(f"ncache.probe: nodes has ids out of range [0, {self.num_nodes})")
        return nodes, self.column(keys, hop)

    @torch.no_grad()
    def probe(self, nodes, keys, hop: int) -> Lookup:
        """The entry of hop ``hop`` of node ``nodes[i]``'s cache where ``keys[i]`` would sit: keys, eids, times
        [n] and values [n, D]. ``out.keys == keys`` says whether the node holds that key there now (the slot may
        be empty, -1, or held by another key). One read per request: NAT asks "did u meet v" and "what is the
        pair's count" this way without a lookup of whole rows."""
        self._dense()
        nodes, col = self._probe_args(nodes, keys, hop)
        return Lookup(self.keys[nodes, col], self.eids[nodes, col], self.times[nodes, col],
                      self.values[nodes, col])

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) casts every floating buffer; the kernels need the table dtypes (and a float16 cast
        # would destroy Unix times), so a dtype change is undone from the pre-cast tensors: only devices move.
        before = {name: getattr(self, name) for name in _TABLE_DTYPES}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = getattr(self, name)
            if new.dtype != old.dtype:
                setattr(self, name, old.to(device=new.device))
        self._advise_huge_pages()  # tables copied to the CPU are new memory
        return self

    def extra_repr(self) -> str:
        return (f"num_nodes={self.num_nodes}, sizes={self.sizes}, value_dim={self.value_dim}, "
                f"replace_prob={self.replace_prob}, seed={self.seed}")

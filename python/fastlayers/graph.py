"""fastlayers.Graph: an edge list validated once, with the CSR/CSC structures every message-passing op reuses."""

from __future__ import annotations

import os

import torch

_INDEX_DTYPES = (torch.int32, torch.int64)


def _csr(key: torch.Tensor, other: torch.Tensor, n: int):
    """Stable sort of the edges by ``key``: (rowptr [n+1], other endpoint per slot, slot -> caller edge id, counts)."""
    # Stable, so the edges of one row keep the caller's order: ties of max/min then go to the lowest edge id.
    from .ops import _backend

    if _backend.choose("csr_index", key) != _backend.REFERENCE:
        rowptr, perm = torch.ops.fastlayers.csr_index(key, n)  # a counting sort on the CPU: O(E + N)
    else:
        key_sorted, perm = torch.sort(key, stable=True)
        counts = torch.bincount(key_sorted, minlength=n) if key.numel() else key.new_zeros(n)
        rowptr = key.new_zeros(n + 1)
        torch.cumsum(counts, 0, out=rowptr[1:])
    return rowptr, other[perm], perm, rowptr[1:] - rowptr[:-1]


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def _too_many_nodes(num_nodes: int, inferred: bool):
    # Ids far apart (e.g. raw 64-bit ids) make num_nodes huge, and the CSR indexes are O(num_nodes): refused before
    # an allocation that would fail, or succeed on an overcommitting kernel and end in the OOM killer.
    raise ValueError(
        f"num_nodes = {num_nodes}{' (edge_index.max() + 1)' if inferred else ''} needs "
        f"{32 * (num_nodes + 1) / 2**30:.3g} GiB of CSR indexes, more than this machine holds; relabel the node ids "
        f"to 0..n-1 first, e.g. ids, edge_index = torch.unique(edge_index, return_inverse=True)") from None


class Graph:
    """A directed graph in PyG's convention (``edge_index[0]`` = source u, ``edge_index[1]`` = target v;
    messages flow u -> v), checked once and indexed for the fastlayers kernels.

    Build with :meth:`from_edge_index`. Attributes (all int64 on the graph's device, E = ``num_edges``,
    N = ``num_nodes``):

    - ``edge_index`` [2, E]: the caller's edges, in the caller's order (edge id = column).
    - ``rowptr`` [N+1], ``col`` [E], ``perm`` [E]: CSR of incoming edges, sorted by target (stably): the edges into
      v are slots ``rowptr[v]:rowptr[v+1]``, slot k comes from ``col[k]`` and is caller edge ``perm[k]``.
    - ``colptr`` [N+1], ``row`` [E], ``cperm`` [E]: the same for outgoing edges sorted by source (the CSC order,
      used by backward passes and by :meth:`reverse`).
    - ``in_degree``, ``out_degree`` [N].
    - ``edge_weight``: the optional [E] or [E, H] floating weights given at construction (caller order).
    """

    __slots__ = (
        "_derived",
        "col",
        "colptr",
        "cperm",
        "edge_index",
        "edge_weight",
        "in_degree",
        "num_nodes",
        "out_degree",
        "perm",
        "row",
        "rowptr",
    )

    def __init__(self, *, edge_index, num_nodes, rowptr, col, perm, colptr, row, cperm, in_degree, out_degree,
                 edge_weight=None, _trusted: bool = False):
        # Raw CSR from a caller is checked in full (O(E), a few syncs on CUDA): the kernels check the indices they
        # dereference, but a Graph that is consistent yet wrong (a perm that is no permutation, a col that does
        # not match edge_index) would give wrong numbers without an error. The internal paths (from_edge_index,
        # reverse, to, with_edge_weight) build consistent indexes and pass _trusted=True.
        if not _trusted:
            num_nodes = _check_raw_csr(edge_index, num_nodes, rowptr, col, perm, colptr, row, cperm, in_degree,
                                       out_degree)
            if edge_weight is not None:
                edge_weight = check_edge_weight(edge_weight, edge_index.size(1), edge_index.device)
        self.edge_index = edge_index
        self.num_nodes = int(num_nodes)
        self.rowptr, self.col, self.perm = rowptr, col, perm
        self.colptr, self.row, self.cperm = colptr, row, cperm
        self.in_degree, self.out_degree = in_degree, out_degree
        self.edge_weight = edge_weight
        # Graphs derived from this one (reversed, with self loops, ...), built on first use by the layers.
        self._derived = {}

    @classmethod
    def from_edge_index(cls, edge_index: torch.Tensor, num_nodes: int | None = None,
                        edge_weight: torch.Tensor | None = None) -> Graph:
        """Validate an edge list and build the CSR (by target) and CSC (by source) indexes.

        Args:
            edge_index: [2, E] int64 or int32 tensor, row 0 the source, row 1 the target of each edge. Self loops
                and duplicate edges are allowed (each counts as its own edge).
            num_nodes: N; default ``edge_index.max() + 1`` (0 for an empty edge list). Must exceed every id.
            edge_weight: optional [E] (or [E, H], one weight per head) float tensor on edge_index's device, in the
                caller's edge order; used by :func:`fastlayers.ops.spmm` when no weight is passed.

        Raises:
            TypeError: edge_index not an integer tensor of int32/int64, num_nodes not an int, edge_weight not floating.
            ValueError: wrong shapes, num_nodes negative or not above the largest id, devices differ.
            IndexError: a negative id.
        """
        if not isinstance(edge_index, torch.Tensor):
            raise TypeError(f"edge_index must be a torch.Tensor, got {type(edge_index).__name__}")
        if edge_index.dtype not in _INDEX_DTYPES:
            raise TypeError(f"edge_index must have dtype int64 or int32, got {edge_index.dtype}")
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
        ei = edge_index.to(torch.int64).contiguous()
        num_edges = ei.size(1)
        if num_edges and num_nodes is not None and torch.compiler.is_compiling():
            # Traced (torch.compile / torch.export) with num_nodes given: the range checks need the data; the CSR
            # build (csr_index) still refuses ids outside [0, num_nodes).
            hi = -1
        elif num_edges:
            lo, hi = int(ei.min()), int(ei.max())
            if lo < 0:
                raise IndexError(f"edge_index has a negative node id ({lo}); ids must be in [0, num_nodes)")
        else:
            hi = -1
        inferred = num_nodes is None
        if inferred:
            num_nodes = hi + 1
        else:
            num_nodes = _num_nodes(num_nodes)
        if hi >= num_nodes:
            raise ValueError(f"num_nodes ({num_nodes}) must be larger than the largest node id in edge_index ({hi})")
        if edge_weight is not None:
            edge_weight = check_edge_weight(edge_weight, num_edges, ei.device)
        src, dst = ei[0], ei[1]
        if 32 * (num_nodes + 1) > _physical_memory():
            _too_many_nodes(num_nodes, inferred)
        try:
            rowptr, col, perm, in_deg = _csr(dst, src, num_nodes)
            colptr, row, cperm, out_deg = _csr(src, dst, num_nodes)
        except (RuntimeError, MemoryError) as e:
            if "alloc" not in str(e).lower() and not isinstance(e, (MemoryError, torch.OutOfMemoryError)):
                raise
            _too_many_nodes(num_nodes, inferred)
        return cls(edge_index=ei, num_nodes=num_nodes, rowptr=rowptr, col=col, perm=perm, colptr=colptr, row=row,
                   cperm=cperm, in_degree=in_deg, out_degree=out_deg, edge_weight=edge_weight, _trusted=True)

    @property
    def num_edges(self) -> int:
        return self.edge_index.size(1)

    @property
    def device(self) -> torch.device:
        return self.edge_index.device

    def reverse(self) -> Graph:
        """The graph with every edge flipped (v -> u), same edge ids and weights; no sorting (swaps CSR and CSC)."""
        if "reverse" not in self._derived:
            self._derived["reverse"] = self._reversed()
            self._derived["reverse"]._derived["reverse"] = self
        return self._derived["reverse"]

    def _reversed(self) -> Graph:
        return Graph(edge_index=self.edge_index.flip(0), num_nodes=self.num_nodes, rowptr=self.colptr,
                     col=self.row, perm=self.cperm, colptr=self.rowptr, row=self.col, cperm=self.perm,
                     in_degree=self.out_degree, out_degree=self.in_degree, edge_weight=self.edge_weight,
                     _trusted=True)

    def to(self, device) -> Graph:
        """A copy on ``device`` (no re-validation, no re-sorting)."""
        d = torch.device(device)
        mv = self._fields()
        for k, v in mv.items():
            if isinstance(v, torch.Tensor):
                mv[k] = v.to(d)
        return Graph(**mv, _trusted=True)

    def with_edge_weight(self, edge_weight: torch.Tensor | None) -> Graph:
        """The same structure with other stored weights (validated; the indexes are shared, not copied)."""
        mv = self._fields()
        mv["edge_weight"] = None if edge_weight is None else check_edge_weight(edge_weight, self.num_edges, self.device)
        return Graph(**mv, _trusted=True)

    def derived(self, key, build):
        """A structure derived from this graph (e.g. with self loops), built by ``build(self)`` once and cached.

        Building sorts data-dependent sizes, which torch.compile(fullgraph=True) cannot trace: run a layer once
        eagerly on a Graph before compiling code that uses it (the compiled code then reuses the cache)."""
        if key not in self._derived:
            self._derived[key] = build(self)
        return self._derived[key]

    def _fields(self) -> dict:
        return {s: getattr(self, s) for s in self.__slots__ if s != "_derived"}

    def __repr__(self) -> str:
        w = "" if self.edge_weight is None else f", edge_weight={tuple(self.edge_weight.shape)}"
        return f"Graph(num_nodes={self.num_nodes}, num_edges={self.num_edges}, device={self.device}{w})"


def _num_nodes(num_nodes) -> int:
    """A node count: an int or a one-element integer tensor, >= 0. A bool is no count (torch.tensor(True) would
    silently mean 1 node)."""
    if isinstance(num_nodes, torch.Tensor) and num_nodes.numel() == 1 and not num_nodes.dtype.is_floating_point \
            and not num_nodes.dtype.is_complex and num_nodes.dtype != torch.bool:
        num_nodes = int(num_nodes)
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int):
        raise TypeError(f"num_nodes must be an int, got {type(num_nodes).__name__}")
    if num_nodes < 0:
        raise ValueError(f"num_nodes must be >= 0, got {num_nodes}")
    return num_nodes


def _check_index_tensor(name: str, t, length: int, device) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int64:
        raise TypeError(f"{name} must have dtype int64, got {t.dtype}")
    if t.dim() != 1 or t.numel() != length:
        raise ValueError(f"{name} must have shape [{length}], got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but edge_index is on {device}")
    return t


def _first_false(ok: torch.Tensor) -> int:
    return int(torch.nonzero(~ok)[0, 0])


def _check_ptr(name: str, ptr: torch.Tensor, n: int, e: int) -> None:
    """ptr[0] == 0, non-decreasing, ptr[-1] == E: the slots of row v are ptr[v]:ptr[v+1] inside [0, E)."""
    if int(ptr[0]) != 0:
        raise ValueError(f"{name}[0] must be 0, got {int(ptr[0])}")
    step = ptr[1:] >= ptr[:-1]
    if n and not bool(step.all()):
        i = _first_false(step)
        raise ValueError(f"{name} must be non-decreasing, got {name}[{i}] = {int(ptr[i])} > "
                         f"{name}[{i + 1}] = {int(ptr[i + 1])}")
    if int(ptr[-1]) != e:
        raise ValueError(f"{name}[-1] must equal the number of edges ({e}), got {int(ptr[-1])}")


def _check_ids(name: str, t: torch.Tensor, hi: int, what: str) -> None:
    if t.numel() == 0:
        return
    ok = (t >= 0) & (t < hi)
    if not bool(ok.all()):
        i = _first_false(ok)
        raise ValueError(f"{name}[{i}] = {int(t[i])} is out of range: expected {what} in [0, {hi})")


def _check_perm(name: str, perm: torch.Tensor, e: int) -> None:
    """perm must hold every edge id exactly once (a repeated id would leave another edge's output unwritten)."""
    _check_ids(name, perm, e, "an edge id")
    if not e:
        return
    counts = torch.bincount(perm, minlength=e)
    if not bool((counts == 1).all()):
        j = _first_false(counts == 1)
        raise ValueError(f"{name} must be a permutation of [0, {e}): edge id {j} appears {int(counts[j])} times")


def _check_raw_csr(edge_index, num_nodes, rowptr, col, perm, colptr, row, cperm, in_degree, out_degree) -> int:
    """Validates the raw CSR/CSC a caller hands to Graph(...) against edge_index; returns num_nodes as an int."""
    if not isinstance(edge_index, torch.Tensor):
        raise TypeError(f"edge_index must be a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.dtype != torch.int64:
        raise TypeError(f"edge_index must have dtype int64, got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
    num_nodes = _num_nodes(num_nodes)
    n, e, dev = num_nodes, edge_index.size(1), edge_index.device
    _check_ids("edge_index", edge_index.reshape(-1), n, "a node id")
    for ptr_name, ptr, idx_name, idx, perm_name, pm, deg_name, deg, this, other in (
            ("rowptr", rowptr, "col", col, "perm", perm, "in_degree", in_degree, 1, 0),
            ("colptr", colptr, "row", row, "cperm", cperm, "out_degree", out_degree, 0, 1)):
        _check_index_tensor(ptr_name, ptr, n + 1, dev)
        _check_ptr(ptr_name, ptr, n, e)
        _check_index_tensor(idx_name, idx, e, dev)
        _check_ids(idx_name, idx, n, "a node id")
        _check_index_tensor(perm_name, pm, e, dev)
        _check_perm(perm_name, pm, e)
        counts = ptr[1:] - ptr[:-1]
        _check_index_tensor(deg_name, deg, n, dev)
        if not bool((deg == counts).all()):
            v = _first_false(deg == counts)
            raise ValueError(f"{deg_name}[{v}] = {int(deg[v])} does not match {ptr_name} ({int(counts[v])} edges)")
        # Slot k of row v must be caller edge pm[k], with endpoint idx[k] at the other end and v at this one.
        ends = edge_index[:, pm]
        if not bool((ends[other] == idx).all()):
            k = _first_false(ends[other] == idx)
            raise ValueError(f"{idx_name}[{k}] = {int(idx[k])} does not match edge_index[{other}, {perm_name}[{k}]] "
                             f"= {int(ends[other, k])}")
        owner = torch.repeat_interleave(torch.arange(n, device=dev), counts)
        if not bool((ends[this] == owner).all()):
            k = _first_false(ends[this] == owner)
            raise ValueError(f"{perm_name}[{k}] = {int(pm[k])} is edge {int(ends[0, k])} -> {int(ends[1, k])} "
                             f"but slot {k} belongs to node {int(owner[k])} in {ptr_name}")
    return n


def check_edge_weight(edge_weight, num_edges: int, device: torch.device, name: str = "edge_weight") -> torch.Tensor:
    """Checks an [E] or [E, H] floating weight tensor on ``device``; returns it unchanged."""
    if not isinstance(edge_weight, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(edge_weight).__name__}")
    if not edge_weight.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype, got {edge_weight.dtype}")
    if edge_weight.dim() not in (1, 2) or edge_weight.size(0) != num_edges:
        raise ValueError(f"{name} must have shape [E] or [E, H] with E = {num_edges} edges, "
                         f"got {tuple(edge_weight.shape)}")
    if edge_weight.device != device:
        raise ValueError(f"{name} is on {edge_weight.device} but the graph is on {device}")
    return edge_weight


def as_graph(graph_or_edge_index, num_nodes: int | None = None, name: str = "edge_index") -> Graph:
    """A Graph from a Graph (returned as is) or a PyG-style edge_index (validated and indexed)."""
    if isinstance(graph_or_edge_index, Graph):
        if num_nodes is not None and num_nodes != graph_or_edge_index.num_nodes:
            raise ValueError(f"the graph has {graph_or_edge_index.num_nodes} nodes but x has {num_nodes} rows")
        return graph_or_edge_index
    if not isinstance(graph_or_edge_index, torch.Tensor):
        raise TypeError(f"{name} must be a fastlayers.Graph or an edge_index tensor, "
                        f"got {type(graph_or_edge_index).__name__}")
    return Graph.from_edge_index(graph_or_edge_index, num_nodes=num_nodes)

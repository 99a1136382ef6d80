"""DTRN (task-specific bottom representations, 2023), compact: multi-task prediction from feature fields and
behaviour sequences.

TIM: per task and behaviour type, a hypernetwork (fastlayers.nn.HyperNetwork) fed [task embedding, behaviour-type
embedding] generates the LayerNorm gain and bias of a conditional Transformer encoder layer (weights otherwise shared) that encodes that
behaviour sequence. TRM: per task, an SE-like gate over the feature-field embeddings re-weights them. Tasks are
stacked in the batch ([n_tasks * N, L, d]), so both are batched, group-indexed ops. One tower per task.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import HyperNetwork


class _ConditionalEncoder(nn.Module):
    """Pre-LN Transformer encoder layer whose two LayerNorms take per-row gain/bias ([R, d] each)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))

    @staticmethod
    def _ln(x, gain, bias):
        return F.layer_norm(x, x.shape[-1:]) * gain[:, None, :] + bias[:, None, :]

    def forward(self, x, g1, b1, g2, b2):
        h = self._ln(x, g1, b1)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ffn(self._ln(x, g2, b2))


def _rename_sequential_hyper(module, state_dict, prefix, *args):
    """Loads checkpoints saved when the TIM hypernetwork was an nn.Sequential (Linear, ReLU, Linear): the same
    numbers under HyperNetwork's names; the frozen LayerNorm templates keep their values."""
    renames = {f"{prefix}hyper.0.": f"{prefix}hyper.trunk.0.", f"{prefix}hyper.2.": f"{prefix}hyper.head."}
    old = [k for k in state_dict if any(k.startswith(o) for o in renames)]
    for k in old:
        o = next(o for o in renames if k.startswith(o))
        state_dict[renames[o] + k[len(o):]] = state_dict.pop(k)
    if old:
        for name, t in module.hyper.target.state_dict().items():
            state_dict.setdefault(f"{prefix}hyper.target.{name}", t)


class DTRN(nn.Module):
    """Args: field_cardinalities (ids per feature field), n_items (behaviour-sequence vocabulary), n_behaviours
    (behaviour types, one sequence each), n_tasks, dim d, heads, gate_reduction (SE bottleneck), hyper_hidden.

    forward(fields, seqs): fields [N, F] int64 ids, seqs [N, n_behaviours, L] int64 item ids (0 = padding, ignored
    in pooling). Returns logits [N, n_tasks].
    """

    def __init__(self, field_cardinalities, n_items: int, n_behaviours: int, n_tasks: int, dim: int = 16,
                 heads: int = 2, gate_reduction: int = 2, hyper_hidden: int = 32):
        super().__init__()
        n_fields = len(field_cardinalities)
        if n_fields < 1 or n_tasks < 1 or n_behaviours < 1 or dim % heads:
            raise ValueError("need at least one field, task and behaviour, and dim divisible by heads")
        self.n_tasks, self.n_beh, self.dim = n_tasks, n_behaviours, dim
        self.fields = nn.ModuleList(nn.Embedding(c, dim) for c in field_cardinalities)
        self.items = nn.Embedding(n_items, dim, padding_idx=0)
        self.task_emb = nn.Parameter(torch.randn(n_tasks, dim) * 0.1)
        self.beh_emb = nn.Parameter(torch.randn(n_behaviours, dim) * 0.1)
        # TIM hypernetwork: [task, behaviour] -> the parameters of the encoder's two LayerNorms (gain1, bias1,
        # gain2, bias2: 4d, in the target's parameter order), residual around (1, 0). The head starts at zero, so
        # every generated LayerNorm starts as the identity affine map. The target LayerNorms are only the template
        # of the generated parameters (HyperNetwork freezes them): the encoder applies the generated gains per row.
        norms = nn.ModuleDict({"norm1": nn.LayerNorm(dim), "norm2": nn.LayerNorm(dim)})
        self.hyper = HyperNetwork(norms, 2 * dim, hidden=(hyper_hidden,))
        nn.init.zeros_(self.hyper.head.weight)
        nn.init.zeros_(self.hyper.head.bias)
        self.register_load_state_dict_pre_hook(_rename_sequential_hyper)
        self.encoder = _ConditionalEncoder(dim, heads)
        # TRM: per-task SE gate over fields (task-indexed weights, applied as batched matmuls).
        r = max(1, n_fields // gate_reduction)
        self.gate1 = nn.Parameter(torch.randn(n_tasks, n_fields, r) / n_fields ** 0.5)
        self.gate2 = nn.Parameter(torch.randn(n_tasks, r, n_fields) / r ** 0.5)
        width = (n_fields + n_behaviours) * dim
        self.tower1 = nn.Parameter(torch.randn(n_tasks, width, dim) / width ** 0.5)
        self.tower2 = nn.Parameter(torch.randn(n_tasks, dim, 1) / dim ** 0.5)

    def layer_norm_params(self):
        """[n_tasks, n_behaviours, 4, d]: generated (gain1, bias1, gain2, bias2) per task and behaviour."""
        t = self.task_emb[:, None, :].expand(-1, self.n_beh, -1)
        b = self.beh_emb[None, :, :].expand(self.n_tasks, -1, -1)
        z = torch.cat([t, b], dim=-1).reshape(self.n_tasks * self.n_beh, 2 * self.dim)
        out = self.hyper.flat(z).view(self.n_tasks, self.n_beh, 4, self.dim)
        return out + torch.tensor([1.0, 0.0, 1.0, 0.0], device=out.device)[:, None]

    def forward(self, fields: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        n, n_t = fields.shape[0], self.n_tasks
        e = torch.stack([emb(fields[:, k]) for k, emb in enumerate(self.fields)], dim=1)  # [N, F, d]
        # TRM: squeeze (mean over d), excite per task, re-weight the fields: [T, N, F, d].
        s = e.mean(-1)  # [N, F]
        gate = torch.sigmoid(torch.relu(s @ self.gate1) @ self.gate2)  # [T, N, F]
        fe = gate[..., None] * e
        # TIM: every (task, behaviour) sequence encoded by the conditional layer, stacked as [T*N*B, L, d].
        length = seqs.shape[-1]
        x = self.items(seqs)[None].expand(n_t, -1, -1, -1, -1).reshape(-1, length, self.dim)
        p = self.layer_norm_params()[:, None].expand(-1, n, -1, -1, -1).reshape(-1, 4, self.dim)
        h = self.encoder(x, p[:, 0], p[:, 1], p[:, 2], p[:, 3])
        mask = (seqs != 0)[None].expand(n_t, -1, -1, -1).reshape(-1, length, 1).to(h.dtype)
        pooled = (h * mask).sum(1) / mask.sum(1).clamp_min(1)
        pooled = pooled.view(n_t, n, self.n_beh * self.dim)
        z = torch.cat([fe.flatten(2), pooled], dim=-1)  # [T, N, width]
        logits = torch.relu(z @ self.tower1) @ self.tower2  # [T, N, 1]
        return logits.squeeze(-1).t()


def synthetic_multitask(n: int = 2000, n_tasks: int = 2, seed: int = 0):
    """A small synthetic multi-task set: 3 fields, 2 behaviour sequences of length 6 over 50 items. Task t's label
    depends on field (t % 3) and on whether item group t appears in behaviour t % 2: learnable, and different per
    task. Returns (fields [n, 3], seqs [n, 2, 6], labels [n, n_tasks] float)."""
    g = torch.Generator().manual_seed(seed)
    fields = torch.randint(0, 10, (n, 3), generator=g)
    seqs = torch.randint(1, 50, (n, 2, 6), generator=g)
    seqs[torch.rand(n, 2, 6, generator=g) < 0.2] = 0
    labels = []
    for t in range(n_tasks):
        in_group = ((seqs[:, t % 2] % 5) == t).any(-1).float()
        score = (fields[:, t % 3] >= 5).float() + in_group - 1.0 + 0.3 * torch.randn(n, generator=g)
        labels.append((score > 0).float())
    return fields, seqs, torch.stack(labels, dim=1)

"""Hypernetwork modules: generate the parameters of a target layer or network from an embedding.

HyperNetwork generates every parameter of any target nn.Module (one weight set per embedding row); HyperLinear is
the fused layer (small trunk + fastlayers.ops.hyper_linear, no per-sample weights materialised);
IntervalHyperNetwork propagates an interval embedding through the trunk and a generated MLP (HyperInterval).
MIP (magnitude-invariant parametrisation) is an option of each: the input encoding and the residual output.
"""

import itertools
import math

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..ops import hyper_linear, interval_hyper_linear


def mip_encode(g: torch.Tensor) -> torch.Tensor:
    """MIP input encoding: each coordinate g in [0, 1] becomes (cos(pi g / 2), sin(pi g / 2)), so every encoded
    input has the same norm. [..., e] -> [..., 2e]."""
    a = g * (math.pi / 2)
    return torch.cat([torch.cos(a), torch.sin(a)], dim=-1)


def _mlp(sizes):
    layers = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


def _check_sizes(embedding_dim, hidden):
    if not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ValueError(f"embedding_dim must be a positive int, got {embedding_dim!r}")
    hidden = tuple(hidden)
    if not hidden or any((not isinstance(h, int)) or h < 1 for h in hidden):
        raise ValueError(f"hidden must be a non-empty sequence of positive ints, got {hidden!r}")
    return hidden


class HyperNetwork(nn.Module):
    """Generates all parameters of ``target`` from an embedding and applies it with torch.func.functional_call.

    Args:
        target: any nn.Module; only its parameter shapes are used (its own values seed MIP's residual).
        embedding_dim: e, the embedding width.
        hidden: trunk widths; the trunk is e -> hidden[0] -> ... -> hidden[-1] with ReLU.
        chunk_size: if given, the head emits the P parameters in chunks of this size, each chunk conditioned on a
            learned chunk embedding (a chunked hypernetwork: the head has chunk_size rows instead of P).
        mip: MIP options: the embedding is encoded with :func:`mip_encode` (inputs in [0, 1]) and the output is
            residual, theta = theta0 + H phi, theta0 learned and initialised to target's current parameters, the
            head initialised small.

    ``generate(z)``: z [e] -> dict of parameters shaped like target's; z [B, e] -> each with a leading B.
    ``forward(z, *inputs)``: z [e] applies one generated network to the inputs; z [B, e] applies network b to
    sample b of every input (vmap over the batch dim).
    """

    def __init__(self, target: nn.Module, embedding_dim: int, hidden=(64, 64), chunk_size=None, mip=False):
        super().__init__()
        hidden = _check_sizes(embedding_dim, hidden)
        self.target = target
        self._names = [n for n, _ in target.named_parameters()]
        self._shapes = [tuple(p.shape) for _, p in target.named_parameters()]
        self.num_params = sum(math.prod(s) for s in self._shapes)
        if self.num_params == 0:
            raise ValueError("target has no parameters to generate")
        self.mip = bool(mip)
        in_dim = 2 * embedding_dim if self.mip else embedding_dim
        if chunk_size is not None:
            if not isinstance(chunk_size, int) or chunk_size < 1:
                raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
            self.n_chunks = -(-self.num_params // chunk_size)
            self.chunk_embeddings = nn.Parameter(torch.randn(self.n_chunks, hidden[0]) * 0.1)
            in_dim += hidden[0]
        else:
            self.n_chunks = 1
            self.chunk_embeddings = None
        self.chunk_size = chunk_size
        self.trunk = _mlp((in_dim, *hidden))
        self.head = nn.Linear(hidden[-1], chunk_size or self.num_params)
        if self.mip:
            with torch.no_grad():
                self.head.weight.mul_(0.01)
                self.head.bias.zero_()
            flat = torch.cat([p.detach().reshape(-1) for p in target.parameters()])
            self.theta0 = nn.Parameter(flat.clone())
        else:
            self.theta0 = None
        # The target's own tensors are not trained: its parameters come from the hypernetwork.
        for p in self.target.parameters():
            p.requires_grad_(False)

    def flat(self, z: torch.Tensor) -> torch.Tensor:
        """The generated parameters as one vector: z [..., e] -> [..., P]."""
        if not isinstance(z, torch.Tensor) or z.dim() not in (1, 2):
            raise ValueError("z must be a tensor [e] or [B, e]")
        u = mip_encode(z) if self.mip else z
        if self.chunk_embeddings is None:
            theta = self.head(self.trunk(u))
        else:
            lead = u.shape[:-1]
            c = self.chunk_embeddings.expand(*lead, *self.chunk_embeddings.shape)
            inp = torch.cat([u.unsqueeze(-2).expand(*lead, self.n_chunks, u.shape[-1]), c], dim=-1)
            theta = self.head(self.trunk(inp)).flatten(-2)[..., : self.num_params]
        return theta + self.theta0 if self.theta0 is not None else theta

    def generate(self, z: torch.Tensor) -> dict:
        theta = self.flat(z)
        lead = theta.shape[:-1]
        out, off = {}, 0
        for name, shape in zip(self._names, self._shapes):
            n = math.prod(shape)
            out[name] = theta[..., off: off + n].reshape(*lead, *shape)
            off += n
        return out

    def forward(self, z: torch.Tensor, *inputs):
        params = self.generate(z)
        if z.dim() == 1:
            return functional_call(self.target, params, inputs)
        return vmap(lambda p, *xs: functional_call(self.target, p, tuple(x.unsqueeze(0) for x in xs)).squeeze(0))(
            params, *inputs)


class HyperLinear(nn.Module):
    """A linear layer whose weights are generated per sample from an embedding, fused (fastlayers.ops.hyper_linear).

    phi = trunk(z) [B, h]; W_b = reshape(head.weight[:O*I] phi_b + head.bias[:O*I], [O, I]) (+ base_weight);
    y_b = W_b x_b + generated bias (+ base_bias). The [B, O, I] weights are never materialised.

    Args: in_features I, out_features O, embedding_dim e, hidden (trunk widths, h = hidden[-1]), mip (MIP encoding
    of z, and residual output: base_weight/base_bias learned, initialised like nn.Linear, head initialised small).
    forward(x, z): x [B, I] or [B, T, I]; z [B, e], or [e] for one weight set shared by the batch (then the batch
    is treated as tokens of one sample, so the weights are generated once).
    """

    def __init__(self, in_features: int, out_features: int, embedding_dim: int, hidden=(64,), mip=False):
        super().__init__()
        hidden = _check_sizes(embedding_dim, hidden)
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be positive, got {in_features}, {out_features}")
        self.in_features, self.out_features, self.mip = in_features, out_features, bool(mip)
        self.trunk = _mlp((2 * embedding_dim if self.mip else embedding_dim, *hidden))
        h = hidden[-1]
        self.head = nn.Linear(h, out_features * in_features + out_features)
        # Scale so the generated W has nn.Linear's variance when phi's entries are O(1).
        bound = 1 / math.sqrt(in_features * h)
        nn.init.uniform_(self.head.weight, -bound, bound)
        nn.init.zeros_(self.head.bias)
        if self.mip:
            ref = nn.Linear(in_features, out_features)
            self.base_weight = nn.Parameter(ref.weight.detach().clone())
            self.base_bias = nn.Parameter(ref.bias.detach().clone())
            with torch.no_grad():
                self.head.weight.mul_(0.01)
        else:
            self.register_parameter("base_weight", None)
            self.register_parameter("base_bias", None)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        shared = z.dim() == 1
        phi = self.trunk(mip_encode(z) if self.mip else z)
        if shared:
            y = hyper_linear(x.reshape(1, -1, x.shape[-1]), phi.unsqueeze(0), self.head.weight, self.head.bias,
                             self.base_weight, self.base_bias)
            return y.reshape(*x.shape[:-1], self.out_features)
        return hyper_linear(x, phi, self.head.weight, self.head.bias, self.base_weight, self.base_bias)


def interval_linear_relu(mu, r, layer: nn.Linear, relu=True):
    """Interval through a linear layer (mu' = W mu + b, r' = |W| r), then through ReLU (monotone: the bounds map
    to the bounds). Returns (centre, radius)."""
    mu = layer(mu)
    r = r @ layer.weight.abs().t()
    if not relu:
        return mu, r
    lo, hi = torch.relu(mu - r), torch.relu(mu + r)
    return (hi + lo) / 2, (hi - lo) / 2


class IntervalHyperNetwork(nn.Module):
    """A hypernetwork generating an MLP target, with interval propagation (HyperInterval).

    The embedding interval (centre mu, radius r) goes through the trunk with interval arithmetic to (phi_c, phi_r);
    each target layer l has its own head [O_l*I_l + O_l, h] and is applied with
    fastlayers.ops.interval_hyper_linear, ReLU between layers. ``forward(x, mu, r)`` with x [N, I] and one
    embedding (mu, r of shape [e]) returns (logits centre, logits radius), each [N, out]; the N inputs act as
    tokens sharing one generated network. ``generate(mu)`` returns the flat generated centre parameters [P]
    (used by the output regulariser).

    Args: layer_sizes (target MLP widths, input first), embedding_dim, hidden (trunk widths).
    """

    def __init__(self, layer_sizes, embedding_dim: int, hidden=(64, 64)):
        super().__init__()
        hidden = _check_sizes(embedding_dim, hidden)
        layer_sizes = tuple(layer_sizes)
        if len(layer_sizes) < 2 or any(s < 1 for s in layer_sizes):
            raise ValueError(f"layer_sizes must list at least an input and an output width, got {layer_sizes}")
        self.layer_sizes = layer_sizes
        self.trunk = nn.ModuleList(nn.Linear(a, b) for a, b in zip((embedding_dim, *hidden[:-1]), hidden))
        h = hidden[-1]
        self.heads = nn.ModuleList()
        for i, o in itertools.pairwise(layer_sizes):
            head = nn.Linear(h, o * i + o)
            bound = math.sqrt(6 / (i * h))  # generated W with He-uniform variance for phi entries of O(1)
            nn.init.uniform_(head.weight, -bound / 2, bound / 2)
            nn.init.zeros_(head.bias)
            self.heads.append(head)

    def trunk_interval(self, mu, r):
        for layer in self.trunk:
            mu, r = interval_linear_relu(mu, r, layer)
        return mu, r

    def forward(self, x, mu, r=None):
        if r is None:
            r = torch.zeros_like(mu)
        phi_c, phi_r = self.trunk_interval(mu.unsqueeze(0), r.unsqueeze(0))
        x_c, x_r = x.unsqueeze(0), torch.zeros_like(x).unsqueeze(0)
        for k, head in enumerate(self.heads):
            x_c, x_r = interval_hyper_linear(x_c, x_r, phi_c, phi_r, head.weight, head.bias)
            if k < len(self.heads) - 1:
                lo, hi = torch.relu(x_c - x_r), torch.relu(x_c + x_r)
                x_c, x_r = (hi + lo) / 2, (hi - lo) / 2
        return x_c.squeeze(0), x_r.squeeze(0)

    def generate(self, mu):
        phi = mu
        for layer in self.trunk:
            phi = torch.relu(layer(phi))
        return torch.cat([head(phi) for head in self.heads], dim=-1)

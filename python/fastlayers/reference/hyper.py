"""Plain-PyTorch hypernetwork layers: materialise the per-sample weights, then apply them (the spec's formulas)."""

import torch


def hyper_linear(x, phi, weight, bias=None, base_weight=None, base_bias=None):
    """y_b = reshape(weight[:O*I] phi_b + bias[:O*I], [O, I]) (+ base_weight) x_b + weight[O*I:] phi_b
    + bias[O*I:] (+ base_bias).

    x: [B, I] or [B, T, I]; phi: [B, h]; weight: [O*I + O, h]; bias: [O*I + O]; base_weight: [O, I];
    base_bias: [O]. Returns [B, O] or [B, T, O]. Materialises the [B, O, I] weights (this is the slow peer).
    """
    squeeze = x.dim() == 2
    x3 = x.unsqueeze(1) if squeeze else x
    n_in = x3.shape[-1]
    n_out = weight.shape[0] // (n_in + 1)
    theta = phi @ weight.t()
    if bias is not None:
        theta = theta + bias
    w = theta[:, : n_out * n_in].reshape(theta.shape[0], n_out, n_in)  # not -1: ambiguous when I = 0
    if base_weight is not None:
        w = w + base_weight
    b = theta[:, n_out * n_in:]
    if base_bias is not None:
        b = b + base_bias
    y = torch.bmm(x3, w.transpose(1, 2)) + b.unsqueeze(1)
    return y.squeeze(1) if squeeze else y


def interval_linear(w_c, w_r, x_c, x_r, b_c=None, b_r=None):
    """Interval arithmetic of a linear layer (spec): y_c = W_c x_c (+ b_c), y_r = |W_c| x_r + W_r (|x_c| + x_r)
    (+ b_r). W_* [..., O, I] (batched over leading dims or shared), x_* [..., I]; returns (y_c, y_r) [..., O]."""
    y_c = (w_c @ x_c.unsqueeze(-1)).squeeze(-1)
    y_r = (w_c.abs() @ x_r.unsqueeze(-1) + w_r @ (x_c.abs() + x_r).unsqueeze(-1)).squeeze(-1)
    if b_c is not None:
        y_c = y_c + b_c
    if b_r is not None:
        y_r = y_r + b_r
    return y_c, y_r


def hyper_abs_linear(x, phi, weight, w0=None):
    """y[b, t] = |reshape(weight phi_b, [O, I]) + w0| x[b, t]; x [B, T, I], phi [B, h], weight [O*I, h]."""
    n_in = x.shape[-1]
    w = (phi @ weight.t()).reshape(x.shape[0], -1, n_in)
    if w0 is not None:
        w = w + w0
    return torch.bmm(x, w.abs().transpose(1, 2))


def interval_hyper_linear(x_c, x_r, phi_c, phi_r, weight, bias=None):
    """Materialising reference of fastlayers.ops.interval_hyper_linear: interval weights from the hypernetwork's
    last layer, then interval_linear per sample."""
    squeeze = x_c.dim() == 2
    xc = x_c.unsqueeze(1) if squeeze else x_c
    xr = x_r.unsqueeze(1) if squeeze else x_r
    n_in = xc.shape[-1]
    n_out = weight.shape[0] // (n_in + 1)
    theta_c = phi_c @ weight.t() + (bias if bias is not None else 0)
    theta_r = phi_r @ weight.abs().t()
    # Explicit batch, not -1: with I = 0 (no input features) the slices are empty and -1 is ambiguous.
    w_c = theta_c[:, : n_out * n_in].reshape(theta_c.shape[0], 1, n_out, n_in)
    w_r = theta_r[:, : n_out * n_in].reshape(theta_r.shape[0], 1, n_out, n_in)
    y_c, y_r = interval_linear(w_c, w_r, xc, xr, theta_c[:, None, n_out * n_in:], theta_r[:, None, n_out * n_in:])
    return (y_c.squeeze(1), y_r.squeeze(1)) if squeeze else (y_c, y_r)

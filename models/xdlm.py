"""XDLM's training side: the mask + uniform noising and the continuous-time NELBO.

XDLM (Balancing Understanding and Generation in Discrete Diffusion Models, 2026) noises a
token toward the stationary law pi(e) = k/N + (1 - k)[e = m] over all N classes (the mask m
included): with alpha_t = 1 - (1 - eps) t a token stays itself with probability alpha_t,
becomes a uniformly drawn class with probability k (1 - alpha_t), else the mask. k = 0 is
MDLM (absorbing), k = 1 is uniform noise (UDLM). The loss per token is the continuous-time
limit of KL(q(z_s | z_t, x) || p_theta(z_s | z_t)) / (alpha_s - alpha_t), times -alpha'(t):
`xdlm_token_loss` below, checked against that KL by finite differences in the tests.

The sampler's posterior lives with the decoding strategies (explorer/decoding/xdlm.py); this
module only trains.
"""

from __future__ import annotations

import math

import torch

EPS = 1e-3  # alpha(1) = EPS: the log-linear schedule of the reference never reaches alpha = 0


def alpha(t: torch.Tensor) -> torch.Tensor:
    """Log-linear schedule alpha_t = 1 - (1 - eps) t."""
    return 1.0 - (1.0 - EPS) * t


def noise(
    ids: torch.Tensor,
    t: torch.Tensor,
    k: float,
    mask_id: int,
    vocab_size: int,
    clean: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw z_t ~ q(z_t | x): keep w.p. alpha_t, a uniform class over all N w.p. k (1 - alpha_t), else mask.

    ids (B, L), t (B,); `clean` (B, L) marks prompt positions, which are never noised.
    """
    a = alpha(t)[:, None]  # (B, 1)
    u = torch.rand(ids.shape, generator=generator, device=ids.device)  # (B, L)
    uniform = torch.randint(0, vocab_size, ids.shape, generator=generator, device=ids.device)
    z = torch.where(u < a, ids, torch.where(u < a + k * (1 - a), uniform, torch.full_like(ids, mask_id)))
    return z if clean is None else torch.where(clean, ids, z)


def token_loss(probs: torch.Tensor, z: torch.Tensor, x: torch.Tensor, t: torch.Tensor, k: float, mask_id: int):
    """(1 - eps) h per token (B, L): XDLM's continuous-time NELBO integrand.

    probs (B, L, N) are the model's x0 probabilities with p(mask) = 0; z (B, L) the noisy
    input, x (B, L) the clean data, t (B,). With a = alpha_t, B = 1 - a, rho(z) = k + N(1 - k)[z = m],
    F(z) = aN[z = x] + B rho, Fh(z) = aN p(z) + B rho, R = k / (aN + Bk) if z = x else 1 / B:
    h = N([z = x] - p(z)) rho / (Fh F) - (R / a) log(F / Fh) + R log(Fx / Fhx) + (k B R / a) C,
    C = ((N-1)/N) log(Bk) + (1/N) log(aN + Bk) - mean_e log(aN p(e) + Bk). At k = 0 it is
    MDLM's -log p(x) / (1 - a) on masked positions and 0 elsewhere.
    """
    N = probs.shape[-1]
    a = alpha(t)[:, None]  # (B, 1)
    b = 1.0 - a
    at_x = (z == x).to(probs.dtype)  # (B, L)
    is_mask = (z == mask_id).to(probs.dtype)
    rho = k + N * (1 - k) * is_mask
    p_z = probs.gather(-1, z[..., None]).squeeze(-1)  # (B, L)
    p_x = probs.gather(-1, x[..., None]).squeeze(-1)
    f = a * N * at_x + b * rho
    fh = a * N * p_z + b * rho
    fx, fhx = a * N + b * k, a * N * p_x + b * k
    r = torch.where(at_x.bool(), k / (a * N + b * k), 1.0 / b)
    # The log ratios are 0 * log(...) where their weight vanishes (k = 0: r = 0 at z = x, and
    # fh = 0 when p(z) underflows); keep them finite there. Differences of clamped logs, not the
    # log of a ratio: f / tiny overflows to inf (0 * inf = nan) once f > max * tiny (~4 in float32).
    tiny = torch.finfo(probs.dtype).tiny

    def log(v: torch.Tensor) -> torch.Tensor:
        return torch.log(v.clamp_min(tiny))

    h = N * (at_x - p_z) * rho / (fh * f).clamp_min(tiny)
    h = h - (r / a) * (log(f) - log(fh)) * (r > 0)
    h = h + r * (log(fx) - log(fhx))
    if k > 0:
        c = (N - 1) / N * torch.log(b * k) + torch.log(a * N + b * k) / N  # (B, 1)
        c = c - torch.log(a[..., None] * N * probs + b[..., None] * k).mean(-1)  # (B, L)
        h = h + (k * b * r / a) * c
    return (1.0 - EPS) * h


def masked_probs(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Softmax with the mask logit at -inf first: the clean data never holds the mask (B, L, N)."""
    logits = logits.float().clone()
    logits[..., mask_id] = float("-inf")
    return logits.softmax(-1)


def stratified_times(batch: int, device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
    """t in [1e-3, 1], one stratum per sequence (low-discrepancy, as for the MDLM loss) (B,)."""
    u = torch.rand((), generator=generator, device=device)
    return ((u + torch.arange(batch, device=device) / batch) % 1.0).clamp_min(1e-3)


def xdlm_loss(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask_id: int,
    k: float,
    clean: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """XDLM NELBO per token of one batch: mean of (1 - eps) h over the noised (non-prompt) positions."""
    if not 0.0 <= k <= 1.0 or math.isnan(k):
        raise ValueError(f"k must be in [0, 1], got {k}")
    B = ids.shape[0]
    t = stratified_times(B, ids.device, generator)  # (B,)
    vocab_size = model.config.vocab_size
    z = noise(ids, t, k, mask_id, vocab_size, clean, generator)  # (B, L)
    probs = masked_probs(model(z), mask_id)  # (B, L, N)
    per_token = token_loss(probs, z, ids, t, k, mask_id)  # (B, L)
    weight = torch.ones_like(per_token) if clean is None else (~clean).to(per_token.dtype)
    return (per_token * weight).sum() / weight.sum().clamp_min(1.0)

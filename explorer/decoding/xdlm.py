"""XDLM's reverse step as pure tensor functions (mask + uniform noise; tokens may change again).

XDLM noises a token toward pi(e) = k/N + (1 - k)[e = m] over all N classes, mask m included,
with alpha_t = 1 - (1 - eps) t (eps = 1e-3). Given the model's x0 probabilities p (p(m) = 0),
the posterior q(z_s | z_t, x = p) of one position, s < t, b = (alpha_s - alpha_t) / alpha_s:

- z_t = m:  P(e != m) = (alpha_s - alpha_t) p(e) / beta_t + k b beta_s / (N beta_t);
            P(m) = (beta_s / beta_t)(1 - k b (N - 1) / N)
- z_t = j:  with D = alpha_t p(j) + beta_t k / N,
            P(e) = b (k/N)(alpha_s p(e) + beta_s k/N) / D, plus 1 - b (k/N) / D at e = j (stay),
            P(m) = b (k/N) beta_s (k/N + 1 - k) / D (re-mask)

One gather of p(z_t) per position: O(G x N), no N x N matrix. k = 0 is MDLM's ancestral
step (a visible token never changes); k = 1 is uniform noise. The tests check every row
against Bayes' rule on explicit transition matrices.
"""

from __future__ import annotations

import numpy as np
import torch

XDLM_EPS = 1e-3  # alpha(1) = eps, the reference's log-linear schedule
GRID_END = 1e-5  # the sampler's grid t_i = linspace(1, 1e-5, T + 1)


def alpha(t: float) -> float:
    """The log-linear schedule alpha_t = 1 - (1 - eps) t."""
    return 1.0 - (1.0 - XDLM_EPS) * t


def step_times(steps: int, j: int) -> tuple[float, float]:
    """(t, s) of step j of T = `steps` on t_i = linspace(1, 1e-5, T + 1); step T is the final
    noise removal from t_T = 1e-5 to s = 0 (alpha_s = 1: no mask is left after it)."""
    grid = torch.linspace(1.0, GRID_END, steps + 1, dtype=torch.float64)
    if j >= steps:
        return float(grid[steps]), 0.0
    return float(grid[j]), float(grid[j + 1])


def x0_probs(log_p: torch.Tensor, temperature: float, top_p: float, mask_id: int) -> torch.Tensor:
    """The model's x0 law per position (G, N) in float64, p(m) = 0: softmax(log p / T) (one-hot
    argmax at T = 0), then the nucleus of mass top_p (the smallest most-probable set), renormalised."""
    log_p = log_p.double()
    if temperature == 0:
        p = torch.zeros_like(log_p).scatter_(-1, log_p.argmax(-1, keepdim=True), 1.0)
    else:
        p = torch.softmax(log_p / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = p.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass strictly above each entry
        keep = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, order, before < top_p)
        p = torch.where(keep, p, 0.0)
        p = p / p.sum(-1, keepdim=True)
    p[..., mask_id] = 0.0
    return p


def posterior(p: torch.Tensor, z: torch.Tensor, mask_id: int, k: float, a_t: float, a_s: float) -> torch.Tensor:
    """Rows q(z_s | z_t = z, x = p) of shape (G, N), each summing to 1.

    p (G, N) float64 with p[:, m] = 0; z (G,) the current tokens. At k = 0 a visible token
    stays (the closed form is 0/0 there when p(z) underflows: carry it over explicitly)."""
    N = p.shape[-1]
    b_t, b_s = 1.0 - a_t, 1.0 - a_s
    b = (a_s - a_t) / a_s
    u = k / N  # the uniform share of one class
    # From the mask: unmask to e with the model's law, or stay masked.
    from_mask = (a_s - a_t) / b_t * p + k * b * b_s / (N * b_t)  # (G, N)
    from_mask[:, mask_id] = b_s / b_t * (1.0 - k * b * (N - 1) / N)
    # From a visible token j: switch to e (revise), stay, or go back to the mask.
    p_z = p.gather(-1, z[:, None])  # (G, 1)
    d = a_t * p_z + b_t * u  # (G, 1)
    safe_d = torch.where(d > 0, d, 1.0)
    from_token = b * u * (a_s * p + b_s * u) / safe_d  # (G, N)
    from_token[:, mask_id] = (b * u * b_s * (u + 1.0 - k) / safe_d).squeeze(-1)
    from_token = from_token.scatter_add(-1, z[:, None], 1.0 - b * u / safe_d)
    carry = torch.zeros_like(p).scatter_(-1, z[:, None], 1.0)  # k = 0 with p(z) = 0
    from_token = torch.where(d > 0, from_token, carry)
    return torch.where((z == mask_id)[:, None], from_mask, from_token)


def sample_rows(rows: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row (G,) by the Gumbel-max trick argmax(q / E), E ~ Exp(1), as the reference."""
    u = torch.rand(rows.shape, dtype=torch.float64, device=rows.device, generator=generator)
    exp_noise = -torch.log1p(-u)  # Exp(1); u in [0, 1) keeps it finite
    return (rows / exp_noise).argmax(-1)


def revision_allowance(unmasked_after: int, k: float) -> int:
    """Revisions a block may have made by the end of a step that leaves `unmasked_after` of its
    masks filled: floor(unmasked x k / (1 - k)), in float32 as LLaDA-XDLM's `generate_xdm`."""
    if k <= 0.0:
        return 0
    # numpy float32 on the host (a torch tensor here would count as a device read in the tests).
    return int(np.float32(unmasked_after) * np.float32(k) / np.float32(1 - k))

"""Losses, one per algorithm, named after the book's equations. Every algorithm in
``rlcore.algos`` and ``rlcore.llm`` calls these, so the code the book shows is the code that trains.

Sign convention: functions ending in ``_loss`` return a quantity to *minimise* (the negative
of the objective the book writes). ``reduce="none"`` returns per-element values so callers
can mask and aggregate (the language-model losses aggregate over tokens).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .kl import kl_k3


def _reduce(x: torch.Tensor, reduce: str) -> torch.Tensor:
    if reduce == "mean":
        return x.mean()
    if reduce == "sum":
        return x.sum()
    if reduce == "none":
        return x
    raise ValueError(f"reduce must be 'mean', 'sum' or 'none', got {reduce!r}")


# --------------------------------------------------------------------- DQN
def td_target(rewards, next_q_target: torch.Tensor, terminated, gamma: float) -> torch.Tensor:
    """DQN target ``y = r + gamma (1 - terminated) max_a' Q_target(s', a')`` (eq-dqn-target).

    ``next_q_target`` is ``[B, A]`` from the target network evaluated at the real next state
    (the final observation when truncated). Truncated transitions *do* bootstrap: only
    ``terminated`` zeroes the future.
    """
    rewards = torch.as_tensor(rewards, dtype=next_q_target.dtype)
    not_terminal = 1.0 - torch.as_tensor(terminated, dtype=next_q_target.dtype)
    return rewards + gamma * not_terminal * next_q_target.max(dim=-1).values


def dqn_loss(q_values: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor, kind: str = "huber",
             reduce: str = "mean") -> torch.Tensor:
    """Regression of ``Q(s, a)`` on the (fixed) TD target (eq-dqn-loss); Huber (smooth L1) or MSE."""
    q_sa = q_values.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    targets = targets.detach()
    if kind == "huber":
        per = F.smooth_l1_loss(q_sa, targets, reduction="none")
    elif kind == "mse":
        per = 0.5 * (q_sa - targets) ** 2
    else:
        raise ValueError(f"kind must be 'huber' or 'mse', got {kind!r}")
    return _reduce(per, reduce)


# --------------------------------------------------------------------- policy gradient
def reinforce_loss(logp: torch.Tensor, weights: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """Score-function (REINFORCE) loss ``-log pi(a|s) * weight`` (eq-reinforce).

    ``weights`` are returns-to-go, optionally minus a baseline (eq-reinforce-baseline); they
    are treated as constants. The gradient of the mean is the Monte Carlo policy gradient.
    """
    return _reduce(-logp * weights.detach(), reduce)


def importance_ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """Importance ratio ``rho(theta) = pi_theta(a|s) / pi_old(a|s)`` (eq-ppo-clip), computed in log space."""
    return torch.exp(logp - old_logp.detach())


def surrogate_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """Importance-sampled surrogate ``-rho(theta) A_hat`` (eq-surrogate-sample), TRPO's objective.

    At ``theta = theta_old`` its gradient equals the policy gradient ``-A_hat grad log pi``.
    """
    return _reduce(-importance_ratio(logp, old_logp) * advantages.detach(), reduce)


def clipped_surrogate_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                           clip_coef: float = 0.2, clip_coef_high: float | None = None,
                           reduce: str = "mean") -> torch.Tensor:
    """PPO's clipped objective, negated (eq-ppo-clip):

    ``-min(rho A_hat, clip(rho, 1 - eps_low, 1 + eps_high) A_hat)``,  ``rho = pi_theta / pi_old``.

    ``clip_coef`` is ``eps_low`` (and ``eps_high`` unless ``clip_coef_high`` is given, the
    asymmetric "clip-higher" of DAPO). The gradient is exactly zero where the clipped
    term is the smaller one (ratio outside the range in the direction the advantage pushes).
    """
    if clip_coef < 0 or (clip_coef_high is not None and clip_coef_high < 0):
        raise ValueError("clip coefficients must be >= 0")
    eps_high = clip_coef if clip_coef_high is None else clip_coef_high
    ratio = importance_ratio(logp, old_logp)
    advantages = advantages.detach()
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_coef, 1.0 + eps_high) * advantages
    return _reduce(-torch.min(unclipped, clipped), reduce)


def clip_fraction(logp: torch.Tensor, old_logp: torch.Tensor, clip_coef: float, clip_coef_high: float | None = None) -> torch.Tensor:
    """Share of samples whose ratio lies outside ``[1 - eps_low, 1 + eps_high]``."""
    eps_high = clip_coef if clip_coef_high is None else clip_coef_high
    ratio = importance_ratio(logp, old_logp).detach()
    return ((ratio < 1 - clip_coef) | (ratio > 1 + eps_high)).float().mean()


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """``KL(pi_old || pi_theta)`` from samples of ``pi_old`` with the k3 estimator (eq-kl-k3)."""
    return kl_k3(old_logp.detach(), logp.detach()).mean()


# --------------------------------------------------------------------- critic
def value_loss(values: torch.Tensor, returns: torch.Tensor, old_values: torch.Tensor | None = None,
               clip_coef: float | None = None, reduce: str = "mean") -> torch.Tensor:
    """Critic regression ``(1/2)(V_phi(s_t) - G_hat_t)^2`` on the return targets ``returns`` (eq-value-loss),
    optionally clipped around ``old_values`` as in PPO's reference implementation."""
    returns = returns.detach()
    per = (values - returns) ** 2
    if clip_coef is not None:
        if old_values is None:
            raise ValueError("value clipping needs old_values")
        v_clipped = old_values + torch.clamp(values - old_values, -clip_coef, clip_coef)
        per = torch.max(per, (v_clipped - returns) ** 2)
    return _reduce(0.5 * per, reduce)


def explained_variance(y_pred, y_true) -> float:
    """``1 - Var[y - y_hat] / Var[y]``: 1 is perfect, 0 no better than a constant, < 0 worse."""
    y_pred = torch.as_tensor(y_pred, dtype=torch.float64).flatten()
    y_true = torch.as_tensor(y_true, dtype=torch.float64).flatten()
    var_y = torch.var(y_true)
    return float("nan") if var_y == 0 else float(1 - torch.var(y_true - y_pred) / var_y)

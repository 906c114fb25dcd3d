"""Returns and advantage estimators, each named after the book equation it implements.

Conventions (CleanRL style): tensors are time-major, shape ``[T]`` or ``[T, N]`` for ``N``
parallel environments. At step ``t`` the agent saw ``s_t``, got ``rewards[t]`` and reached
``s_{t+1}``:

* ``values[t]      = V(s_t)``
* ``next_values[t] = V(s_{t+1})``, where ``s_{t+1}`` is the *real* next observation, also
  when the episode was truncated and the environment has already reset (Gymnasium's
  ``final_obs``);
* ``terminated[t]`` — ``s_{t+1}`` is terminal: its value is 0, do not bootstrap;
* ``truncated[t]``  — the episode was cut by a time limit: ``s_{t+1}`` is *not* terminal,
  so we bootstrap from ``V(s_{t+1})``, but nothing after ``t`` belongs to this episode.

The last step of a rollout behaves like a truncation: we bootstrap from ``next_values``.
"""
from __future__ import annotations

import torch

from .utils import check_finite, check_probability

__all__ = [
    "discounted_returns",
    "td_errors",
    "kstep_advantages",
    "monte_carlo_advantages",
    "gae",
    "group_normalized_advantages",
    "zero_variance_groups",
]


def _as_float(x, like: torch.Tensor | None = None) -> torch.Tensor:
    t = torch.as_tensor(x)
    if like is not None:
        return t.to(dtype=like.dtype, device=like.device)
    return t.float() if not torch.is_floating_point(t) else t


def _check_gamma(gamma: float) -> None:
    check_probability("gamma", gamma)


def _episode_ends(terminated, truncated, like: torch.Tensor) -> torch.Tensor:
    ends = torch.zeros_like(like)
    if terminated is not None:
        ends = torch.maximum(ends, _as_float(terminated, like))
    if truncated is not None:
        ends = torch.maximum(ends, _as_float(truncated, like))
    return ends


def discounted_returns(rewards, gamma: float, dones=None, last_value=None) -> torch.Tensor:
    """Reward-to-go ``G_t = sum_{l>=0} gamma^l r_{t+l}`` within each episode (eq-discounted-return).

    ``dones[t] = 1`` ends the episode after step ``t`` (nothing later is added).
    ``last_value`` (shape ``rewards[0]``) is ``V(s_T)`` of the state after the last step; it
    bootstraps an unfinished last episode as ``G_{T-1} = r_{T-1} + gamma * last_value``.
    Computed by the backward recursion ``G_t = r_t + gamma (1 - done_t) G_{t+1}``.
    """
    _check_gamma(gamma)
    rewards = _as_float(rewards)
    check_finite("rewards", rewards)
    done = torch.zeros_like(rewards) if dones is None else _as_float(dones, rewards)
    running = torch.zeros_like(rewards[0]) if last_value is None else _as_float(last_value, rewards)
    out = torch.empty_like(rewards)
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * (1.0 - done[t]) * running
        out[t] = running
    return out


def td_errors(rewards, values, next_values, terminated, gamma: float) -> torch.Tensor:
    """One-step TD error ``delta_t = r_t + gamma V(s_{t+1}) (1 - terminated_t) - V(s_t)`` (eq-td-error).

    This is also the 1-step advantage estimator ``A^(1)_t`` (eq-kstep-advantage with k=1).
    """
    _check_gamma(gamma)
    rewards = _as_float(rewards)
    check_finite("rewards", rewards)
    values, next_values = _as_float(values, rewards), _as_float(next_values, rewards)
    not_terminal = 1.0 - _as_float(terminated, rewards)
    return rewards + gamma * next_values * not_terminal - values


def kstep_advantages(rewards, values, next_values, terminated, truncated, gamma: float, k: int) -> torch.Tensor:
    """k-step advantage estimator (eq-kstep-advantage), computed from its definition

    ``A^(k)_t = r_t + gamma r_{t+1} + ... + gamma^{k-1} r_{t+k-1} + gamma^k V(s_{t+k}) - V(s_t)``.

    When the episode (or the rollout) ends at step ``t + j`` with ``j < k``, the sum stops
    there and bootstraps from ``next_values[t+j]`` unless that step was ``terminated``.
    ``k`` larger than the episode gives the Monte Carlo advantage ``A^(inf)``.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    _check_gamma(gamma)
    rewards = _as_float(rewards)
    check_finite("rewards", rewards)
    values, next_values = _as_float(values, rewards), _as_float(next_values, rewards)
    term = _as_float(terminated, rewards)
    ends = _episode_ends(terminated, truncated, rewards)
    T = rewards.shape[0]
    out = torch.empty_like(rewards)
    for t in range(T):
        total = torch.zeros_like(rewards[0])
        alive = torch.ones_like(rewards[0])  # 1 while still inside the episode that started at t
        for j in range(k):
            s = t + j
            if s >= T:
                break
            total = total + alive * gamma**j * rewards[s]
            last = (j == k - 1) or (s == T - 1)
            # bootstrap where the sum stops: after k steps, at an episode end, or at the rollout end
            stop_here = torch.maximum(ends[s], torch.full_like(ends[s], float(last)))
            total = total + alive * stop_here * gamma ** (j + 1) * (1.0 - term[s]) * next_values[s]
            alive = alive * (1.0 - stop_here)
        out[t] = total - values[t]
    return out


def monte_carlo_advantages(rewards, values, next_values, terminated, truncated, gamma: float) -> torch.Tensor:
    """``A^(inf)_t``: discounted return to the end of the episode minus ``V(s_t)`` (eq-kstep-advantage, k -> inf).

    Truncated episodes and the rollout's last step bootstrap from ``next_values``.
    """
    T = torch.as_tensor(rewards).shape[0]
    return kstep_advantages(rewards, values, next_values, terminated, truncated, gamma, k=T)


def gae(rewards, values, next_values, terminated, truncated, gamma: float, gae_lambda: float) -> torch.Tensor:
    """Generalised advantage estimation, GAE(gamma, lambda) (eq-gae).

    ``A_t = sum_{l>=0} (gamma lambda)^l delta_{t+l}``, summed only inside the episode, via the
    backward recursion ``A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}`` where
    ``done_t = terminated_t or truncated_t``. ``delta_t`` (eq-td-error) bootstraps from
    ``next_values`` on truncation and not on termination. Returns for the critic are
    ``advantages + values``.
    """
    check_probability("gae_lambda", gae_lambda)
    rewards = _as_float(rewards)
    deltas = td_errors(rewards, values, next_values, terminated, gamma)
    ends = _episode_ends(terminated, truncated, rewards)
    advantages = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + gamma * gae_lambda * (1.0 - ends[t]) * running
        advantages[t] = running
    return advantages


def _grouped(rewards, group_size: int | None) -> torch.Tensor:
    r = _as_float(rewards)
    if not torch.isfinite(r).all():
        raise ValueError(
            "rewards contain NaN or inf; check the reward function(s) before computing advantages"
        )
    if r.ndim == 1:
        if group_size is None:
            raise ValueError("pass group_size for flat rewards, or rewards of shape [num_groups, group_size]")
        if group_size < 2:
            raise ValueError(
                f"group_size must be >= 2 (a group of one has no spread to normalise by), got {group_size}"
            )
        if r.numel() % group_size:
            raise ValueError(f"{r.numel()} rewards do not split into groups of {group_size}")
        r = r.view(-1, group_size)
    elif r.ndim == 2:
        if r.shape[1] < 2:
            raise ValueError(f"group_size must be >= 2, got rewards of shape {tuple(r.shape)}")
    else:
        raise ValueError(f"rewards must be 1-D or 2-D, got shape {tuple(r.shape)}")
    return r


def group_normalized_advantages(rewards, group_size: int | None = None, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised advantage ``A_i = (r_i - mean(r)) / (std(r) + eps)`` (eq-group-advantage).

    ``rewards`` is ``[num_groups, G]`` or flat with ``group_size=G`` (consecutive blocks of
    G outputs for the same prompt). ``std`` is the unbiased sample standard deviation.
    ``scale``: ``"group"`` (GRPO), ``"batch"`` (one std over all rewards) or ``"none"``
    (Dr. GRPO: centre only). A group whose rewards are all equal gets exactly zero advantage,
    whatever the value, the dtype and ``scale`` (in float32 ``mean`` of eight rewards of 0.1 is not
    0.1 exactly, and the leftover ``1e-9`` divided by ``std + eps`` would be a spurious signal).
    Output has the shape of the input.
    """
    shape = torch.as_tensor(rewards).shape
    r = _grouped(rewards, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (r.std() + eps)
    elif scale != "none":
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    all_equal = (r == r[:, :1]).all(dim=1, keepdim=True)  # exact: no learning signal in this group
    return centred.masked_fill(all_equal, 0.0).reshape(shape)


def zero_variance_groups(rewards, group_size: int | None = None, tol: float = 1e-8) -> torch.Tensor:
    """Boolean mask, one per group, true where all G rewards are equal (no learning signal)."""
    r = _grouped(rewards, group_size)
    return (r.max(dim=1).values - r.min(dim=1).values) <= tol

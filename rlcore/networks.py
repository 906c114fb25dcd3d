"""Networks: MLP trunks, categorical and Gaussian policy heads, value and Q networks,
orthogonal initialisation (PPO implementation detail; Huang et al. 2022)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.distributions import Categorical, Normal


def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    """Orthogonal weights scaled by ``std`` and constant bias (CleanRL's ``layer_init``)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


def mlp(in_dim: int, out_dim: int, hidden: Sequence[int] = (64, 64), activation: type[nn.Module] = nn.Tanh,
        out_std: float = 1.0, orthogonal: bool = True) -> nn.Sequential:
    """``Linear -> act -> ... -> Linear``. With ``orthogonal`` the hidden layers get gain sqrt(2)
    and the output layer gain ``out_std`` (0.01 for policy logits, 1 for values)."""
    for name, v in (("in_dim", in_dim), ("out_dim", out_dim), *((f"hidden[{i}]", h) for i, h in enumerate(hidden))):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        lin = nn.Linear(d, h)
        layers += [layer_init(lin) if orthogonal else lin, activation()]
        d = h
    out = nn.Linear(d, out_dim)
    layers.append(layer_init(out, std=out_std) if orthogonal else out)
    return nn.Sequential(*layers)


class CategoricalPolicy(nn.Module):
    """``pi_theta(a|s) = softmax(logits_theta(s))`` for discrete actions."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: Sequence[int] = (64, 64), activation=nn.Tanh):
        super().__init__()
        self.net = mlp(obs_dim, n_actions, hidden, activation, out_std=0.01)

    def distribution(self, obs: torch.Tensor) -> Categorical:
        # validate_args=False: the argument checks cost about as much as the network itself on these tiny
        # MLPs; NaN logits still fail loudly when sampled (torch.multinomial rejects them)
        return Categorical(logits=self.net(obs), validate_args=False)

    def forward(self, obs: torch.Tensor) -> Categorical:
        return self.distribution(obs)


class GaussianPolicy(nn.Module):
    """``pi_theta(a|s) = N(mu_theta(s), diag(exp(log_std)^2))`` with a state-independent,
    learned ``log_std`` (the usual choice for PPO/TRPO on continuous control)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (64, 64), activation=nn.Tanh,
                 log_std_init: float = 0.0):
        super().__init__()
        self.mu = mlp(obs_dim, act_dim, hidden, activation, out_std=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))

    def distribution(self, obs: torch.Tensor) -> Normal:
        mu = self.mu(obs)
        return Normal(mu, self.log_std.expand_as(mu).exp(), validate_args=False)  # see CategoricalPolicy

    def forward(self, obs: torch.Tensor) -> Normal:
        return self.distribution(obs)


def log_prob(dist, actions: torch.Tensor) -> torch.Tensor:
    """Log-probability of a (possibly multi-dimensional) action: sums over action dims for Gaussians."""
    lp = dist.log_prob(actions)
    return lp.sum(-1) if isinstance(dist, Normal) else lp


def entropy(dist) -> torch.Tensor:
    ent = dist.entropy()
    return ent.sum(-1) if isinstance(dist, Normal) else ent


class ValueNetwork(nn.Module):
    """State-value critic ``V_phi(s)``: an MLP with one output, squeezed."""

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (64, 64), activation=nn.Tanh):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, activation, out_std=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class QNetwork(nn.Module):
    """Action-value network ``Q_theta(s, .)``: one output per discrete action (DQN)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: Sequence[int] = (120, 84), activation=nn.ReLU):
        super().__init__()
        self.net = mlp(obs_dim, n_actions, hidden, activation, orthogonal=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


def make_policy(observation_space, action_space, hidden: Sequence[int] = (64, 64), activation=nn.Tanh, **kw) -> nn.Module:
    """Categorical policy for ``Discrete`` actions, Gaussian for 1-D ``Box`` actions."""
    from .envs import action_dim, is_discrete, obs_dim, require_discrete_or_box

    require_discrete_or_box(action_space, "make_policy")
    cls = CategoricalPolicy if is_discrete(action_space) else GaussianPolicy
    return cls(obs_dim(observation_space), action_dim(action_space), hidden, activation, **kw)

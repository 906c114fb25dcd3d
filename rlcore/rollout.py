"""The on-policy rollout collector shared by PPO and TRPO (and the actor-critic agent they train).

One rollout is ``num_steps`` steps of ``num_envs`` parallel environments (a fixed-length
batch of ``num_steps * num_envs`` transitions, CleanRL style). For every step ``t`` we keep

* ``obs[t]`` (normalised if an :class:`~rlcore.normalize.ObservationNormalizer` is used),
  ``actions[t]``, ``logprobs[t] = log pi_old(a_t|s_t)``, ``values[t] = V(s_t)``;
* ``rewards[t]`` (scaled if a :class:`~rlcore.normalize.RewardNormalizer` is used);
* ``next_values[t] = V(s_{t+1})`` on the *real* next observation: when a sub-environment
  finished at step ``t``, the vector env has already reset it, and the real ``s_{t+1}`` is
  ``infos["final_obs"]`` (:func:`rlcore.envs.final_observations`). That is what lets a
  *truncated* episode bootstrap (eq-gae, terminated vs truncated);
* ``terminated[t]``, ``truncated[t]``.

Advantages are GAE(gamma, lambda) from :func:`rlcore.returns.gae` (eq-gae) and the critic's
targets are ``returns = advantages + values`` (the lambda-return).
"""
from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from typing import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from .envs import final_observations, finished_episodes, is_discrete, obs_dim
from .networks import ValueNetwork, log_prob, make_policy
from .normalize import ObservationNormalizer, RewardNormalizer
from .returns import gae

__all__ = ["ActorCritic", "Rollout", "RolloutCollector", "act_with"]


class ActorCritic(nn.Module):
    """A policy ``pi_theta`` (categorical or Gaussian, :func:`rlcore.networks.make_policy`) and a
    separate critic ``V_phi`` (:class:`rlcore.networks.ValueNetwork`), both orthogonally initialised.

    ``obs_normalizer`` (or ``None``) holds the running observation statistics the agent was
    trained with; :func:`act_with` applies them, so a saved agent acts correctly on raw observations.
    """

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, hidden: Sequence[int] = (64, 64),
                 log_std_init: float = 0.0):
        super().__init__()
        self.discrete = is_discrete(action_space)
        kw = {} if self.discrete else {"log_std_init": log_std_init}
        self.policy = make_policy(observation_space, action_space, tuple(hidden), **kw)
        self.critic = ValueNetwork(obs_dim(observation_space), tuple(hidden))
        if self.discrete:
            low = high = torch.zeros(0)
        else:
            low = torch.as_tensor(action_space.low, dtype=torch.float32)
            high = torch.as_tensor(action_space.high, dtype=torch.float32)
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        self.obs_normalizer: ObservationNormalizer | None = None

    def distribution(self, obs: torch.Tensor):
        return self.policy.distribution(obs)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs)

    def env_actions(self, actions: torch.Tensor) -> np.ndarray:
        """What the environment receives: Gaussian samples are clipped to the action bounds
        (the *unclipped* sample is what ``log pi`` is computed on)."""
        if self.discrete:
            return actions.cpu().numpy()
        return torch.clamp(actions, self.action_low, self.action_high).cpu().numpy()


def act_with(agent: nn.Module, obs, deterministic: bool = True, normalizer: ObservationNormalizer | None = None):
    """Action(s) of a policy for raw observation(s) ``obs`` (one ``[obs_dim]`` or a batch ``[B, obs_dim]``).

    ``deterministic``: the most likely action (argmax / Gaussian mean), else a sample.
    Continuous actions are clipped to ``agent.action_low/high`` when the agent has them.
    """
    obs = np.asarray(obs, dtype=np.float32)
    single = obs.ndim == 1
    batch = obs[None] if single else obs
    if normalizer is not None:
        batch = normalizer(batch, update=False)
    with torch.no_grad():
        device = next(agent.parameters()).device
        dist = agent.distribution(torch.as_tensor(batch, device=device))
        if deterministic:
            a = dist.probs.argmax(-1) if isinstance(dist, torch.distributions.Categorical) else dist.mean
        else:
            a = dist.sample()
        if not isinstance(dist, torch.distributions.Categorical) and getattr(agent, "action_low", None) is not None \
                and agent.action_low.numel():
            a = torch.clamp(a, agent.action_low, agent.action_high)
    a = a.cpu().numpy()
    if single:
        return int(a[0]) if a.ndim == 1 and np.issubdtype(a.dtype, np.integer) else a[0]
    return a


@dataclass
class Rollout:
    """One fixed-length rollout, time-major ``[num_steps, num_envs, ...]`` tensors."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    rewards: torch.Tensor
    values: torch.Tensor
    next_values: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def flat(self) -> dict[str, torch.Tensor]:
        """Every field reshaped to ``[num_steps * num_envs, ...]`` (the batch PPO/TRPO update on)."""
        T, N = self.rewards.shape
        return {k: v.reshape(T * N, *v.shape[2:]) for k, v in self.__dict__.items()}


class RolloutCollector:
    """Collects fixed-length rollouts from a vector env with an :class:`ActorCritic` (no gradients).

    ``collect(global_step)`` returns ``(rollout, episodes)`` where ``episodes`` lists
    ``(env_step, return, length)`` for every training episode that finished, ``env_step``
    being the global step counter right after the vector step in which it ended.
    """

    def __init__(self, envs: gym.vector.VectorEnv, agent: ActorCritic, num_steps: int, gamma: float,
                 gae_lambda: float, normalize_obs: bool = False, normalize_reward: bool = False,
                 device: str | torch.device = "cpu"):
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        self.envs, self.agent, self.num_steps = envs, agent, num_steps
        self.num_envs = envs.num_envs
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.device = torch.device(device)
        self.obs_shape = envs.single_observation_space.shape
        self.act_shape = envs.single_action_space.shape
        self.obs_norm = ObservationNormalizer(self.obs_shape) if normalize_obs else None
        self.reward_norm = RewardNormalizer(self.num_envs, gamma) if normalize_reward else None
        agent.obs_normalizer = self.obs_norm
        self.next_obs: np.ndarray | None = None  # normalised current observation of every sub-env

    def reset(self, seed: int | None) -> None:
        """Reset all sub-environments (sub-env ``i`` gets ``seed + i``) and seed the action space."""
        obs, _ = self.envs.reset(seed=seed)
        if seed is not None:
            self.envs.action_space.seed(seed)
        self.next_obs = self._normalize(obs, update=True)

    def _normalize(self, obs: np.ndarray, update: bool) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        return obs if self.obs_norm is None else self.obs_norm(obs, update=update)

    @torch.no_grad()
    def collect(self, global_step: int) -> tuple[Rollout, list[tuple[int, float, int]]]:
        if self.next_obs is None:
            raise RuntimeError("call RolloutCollector.reset(seed) before collect()")
        T, N, dev, agent = self.num_steps, self.num_envs, self.device, self.agent
        obs = torch.zeros((T, N, *self.obs_shape), device=dev)
        actions = torch.zeros((T, N, *self.act_shape), device=dev,
                              dtype=torch.long if agent.discrete else torch.float32)
        logprobs, rewards, values, next_values, terminated, truncated = (torch.zeros((T, N), device=dev) for _ in range(6))
        episodes: list[tuple[int, float, int]] = []

        cur = torch.as_tensor(self.next_obs, device=dev)
        cur_value = agent.value(cur)
        for t in range(T):
            dist = agent.distribution(cur)
            action = dist.sample()
            obs[t], actions[t], values[t] = cur, action, cur_value
            logprobs[t] = log_prob(dist, action)

            next_obs, reward, term, trunc, infos = self.envs.step(agent.env_actions(action))
            global_step += N
            done = np.logical_or(term, trunc)
            if self.reward_norm is not None:
                reward = self.reward_norm(reward, done)
            rewards[t] = torch.as_tensor(np.asarray(reward, dtype=np.float32), device=dev)
            terminated[t] = torch.as_tensor(term, dtype=torch.float32, device=dev)
            truncated[t] = torch.as_tensor(trunc, dtype=torch.float32, device=dev)

            normed = self._normalize(next_obs, update=True)
            cur = torch.as_tensor(normed, device=dev)
            cur_value = agent.value(cur)
            nv = cur_value.clone()
            if done.any():
                # the real s_{t+1} of the finished sub-envs (their next_obs is already a reset state)
                real = self._normalize(final_observations(next_obs, infos)[done], update=False)
                nv[torch.as_tensor(done, device=dev)] = agent.value(torch.as_tensor(real, device=dev))
                episodes += [(global_step, r, l) for r, l in finished_episodes(infos)]
            next_values[t] = nv
        self.next_obs = normed

        advantages = gae(rewards, values, next_values, terminated, truncated, self.gamma, self.gae_lambda)
        rollout = Rollout(obs, actions, logprobs, rewards, values, next_values, terminated, truncated,
                          advantages, advantages + values)
        return rollout, episodes

    # ------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        """Everything needed to continue the same environment stream after a restart.

        The sub-environments themselves are pickled (classic-control and most Gymnasium envs
        pickle fine); if that fails, resuming resets the environments instead (with a warning).
        """
        state = {"next_obs": None if self.next_obs is None else self.next_obs.copy(),
                 "obs_norm": None if self.obs_norm is None else self.obs_norm.state_dict(),
                 "reward_norm": None if self.reward_norm is None else self.reward_norm.state_dict(),
                 "envs": None, "stats": None}
        try:
            state["envs"] = pickle.dumps(self.envs.unwrapped.envs)
        except Exception as exc:  # noqa: BLE001 - any pickling failure just means "cannot restore exactly"
            warnings.warn(f"could not pickle the environments ({exc}); a resumed run will reset them", stacklevel=2)
        stats = getattr(self.envs, "episode_returns", None)
        if stats is not None:
            state["stats"] = {k: np.copy(getattr(self.envs, k)) for k in
                              ("episode_returns", "episode_lengths", "episode_start_times", "prev_dones")}
        return state

    def load_state_dict(self, state: dict, seed: int | None = None) -> None:
        if self.obs_norm is not None and state["obs_norm"] is not None:
            self.obs_norm.load_state_dict(state["obs_norm"])
        if self.reward_norm is not None and state["reward_norm"] is not None:
            self.reward_norm.load_state_dict(state["reward_norm"])
        if state["envs"] is not None and state["next_obs"] is not None:
            self.envs.unwrapped.envs = pickle.loads(state["envs"])
            self.next_obs = np.array(state["next_obs"], dtype=np.float32)
            if state["stats"] is not None:
                for k, v in state["stats"].items():
                    setattr(self.envs, k, np.copy(v))
        else:
            self.reset(seed)


"""Running mean / standard deviation normalisers for observations and rewards.

PPO and TRPO on continuous control (Pendulum, MuJoCo) learn much faster when the inputs of
the networks have roughly unit scale and the rewards are scaled so that the discounted
return has roughly unit variance (Engstrom et al. 2020; Huang et al. 2022, "The 37
implementation details of PPO"). These classes do what gymnasium's ``NormalizeObservation``
and ``NormalizeReward`` wrappers do, but on the batched arrays of a vector environment and
with ``state_dict`` / ``load_state_dict`` so the statistics travel with a checkpoint (an
agent trained on normalised observations is useless without them).
"""
from __future__ import annotations

import numpy as np

__all__ = ["RunningMeanStd", "ObservationNormalizer", "RewardNormalizer"]


class RunningMeanStd:
    """Mean and variance of a stream of batches (parallel Welford / Chan et al. update), float64."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = float(epsilon)  # a tiny prior count avoids dividing by zero on the first batch

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch, dtype=np.float64)
        if batch.shape[1:] != self.mean.shape:
            raise ValueError(f"batch of shape {batch.shape} does not match the statistics' shape {self.mean.shape}")
        b_mean, b_var, b_count = batch.mean(0), batch.var(0), batch.shape[0]
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean = np.array(state["mean"], dtype=np.float64)
        self.var = np.array(state["var"], dtype=np.float64)
        self.count = float(state["count"])


class ObservationNormalizer:
    """``clip((obs - mean) / sqrt(var + eps), -clip, clip)`` with running statistics."""

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, epsilon: float = 1e-8):
        self.rms = RunningMeanStd(shape)
        self.clip, self.epsilon = float(clip), float(epsilon)

    def __call__(self, obs: np.ndarray, update: bool = True) -> np.ndarray:
        """Normalise a batch ``[N, *shape]``; ``update=False`` freezes the statistics (evaluation, final observations)."""
        obs = np.asarray(obs, dtype=np.float64)
        if update:
            self.rms.update(obs)
        out = (obs - self.rms.mean) / np.sqrt(self.rms.var + self.epsilon)
        return np.clip(out, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {"rms": self.rms.state_dict(), "clip": self.clip, "epsilon": self.epsilon}

    def load_state_dict(self, state: dict) -> None:
        self.rms.load_state_dict(state["rms"])
        self.clip, self.epsilon = float(state["clip"]), float(state["epsilon"])


class RewardNormalizer:
    """Divide rewards by the running std of the discounted return (gymnasium's ``NormalizeReward``).

    Keeps one discounted return per sub-environment, ``G <- gamma G + r``, reset to 0 when
    an episode ends. Only the scale changes (no centring), so the optimal policy is unchanged.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, epsilon: float = 1e-8):
        self.rms = RunningMeanStd(())
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.gamma, self.clip, self.epsilon = float(gamma), float(clip), float(epsilon)

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        rewards = np.asarray(rewards, dtype=np.float64)
        self.returns = self.returns * self.gamma + rewards
        self.rms.update(self.returns)
        self.returns[np.asarray(dones, dtype=bool)] = 0.0
        return np.clip(rewards / np.sqrt(self.rms.var + self.epsilon), -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {"rms": self.rms.state_dict(), "returns": self.returns.copy(), "gamma": self.gamma,
                "clip": self.clip, "epsilon": self.epsilon}

    def load_state_dict(self, state: dict) -> None:
        self.rms.load_state_dict(state["rms"])
        self.returns = np.array(state["returns"], dtype=np.float64)
        self.gamma, self.clip, self.epsilon = float(state["gamma"]), float(state["clip"]), float(state["epsilon"])

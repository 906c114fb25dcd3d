"""REINFORCE (Williams 1992): Monte Carlo policy gradient on whole episodes, CleanRL style.

Each update collects ``episodes_per_update`` complete episodes with the current policy and
ascends the score-function estimate of the policy gradient (eq-reinforce)

    grad J(theta) ~ mean_t  grad log pi_theta(a_t | s_t) * (G_t - b(s_t)),

where ``G_t = sum_l gamma^l r_{t+l}`` is the reward-to-go (eq-discounted-return) and ``b`` an
optional learned baseline ``V_phi(s_t)`` (eq-reinforce-baseline). A baseline that depends only
on the state leaves the estimator unbiased and lowers its variance; the critic is fitted to
the same returns by regression (eq-value-loss).

Works with discrete actions (categorical policy) and continuous actions (Gaussian policy with a
learned, state-independent standard deviation), e.g. Pendulum-v1 or MountainCarContinuous-v0.
Gaussian samples are clipped to the action bounds before the environment sees them; the log
probability is that of the unclipped sample.

Episodes are collected in ``episodes_per_update`` environments side by side, one episode each
(an environment that finished waits for the others). Collecting "until K episodes have ended"
from always-running environments instead would over-represent short episodes.

Usage::

    from rlcore.algos import reinforce
    result = reinforce.train(reinforce.ReinforceConfig(env_id="CartPole-v1", seed=1))
"""
from __future__ import annotations

import pickle
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from rlcore.envs import is_discrete, make_env, obs_dim, require_discrete_or_box, require_flat_box_observations
from rlcore.lifecycle import GracefulInterrupt, check_max_grad_norm, clip_grad_norm
from rlcore.losses import explained_variance, reinforce_loss, value_loss
from rlcore.networks import ValueNetwork, entropy, log_prob, make_policy
from rlcore.returns import discounted_returns
from rlcore.training import History, rng_state, save_checkpoint, set_rng_state
from rlcore.training import progress as progress_bar
from rlcore.utils import check_positive, check_probability, seed_everything

from . import (RESUME_SAFE, TrainResult, begin_run, check_hidden, check_positive_int, check_seed, evaluate,
               fused_adam, notice, open_log, resolve_device)

__all__ = ["ReinforceConfig", "RESUME_SAFE_FIELDS", "collect_episodes", "train", "act", "load_agent"]


@dataclass
class ReinforceConfig:
    """Hyperparameters of REINFORCE. The defaults solve CartPole-v1 with the value baseline: with
    seed 1 the mean return of the last 100 training episodes passes 475 after about 110k steps."""

    env_id: str = "CartPole-v1"
    """Gymnasium id (discrete or 1-D continuous actions)."""
    seed: int = 1
    """Seed of the environments, the network initialisation and the action sampling."""
    total_timesteps: int = 300_000
    """Environment steps to train for (the last batch of whole episodes may run past it). Resuming with a
    larger total extends a run (REINFORCE has no schedule)."""
    learning_rate: float = 2e-3
    """Adam step size of the policy."""
    episodes_per_update: int = 8
    """Complete episodes collected (side by side) per policy-gradient step."""
    gamma: float = 0.99
    """Discount factor of the reward-to-go (eq-discounted-return)."""
    baseline: str = "value"
    """``"none"``: plain REINFORCE; ``"value"``: subtract a learned ``V_phi(s_t)`` (eq-reinforce-baseline)."""
    vf_learning_rate: float = 2e-3
    """Adam step size of the value baseline."""
    vf_iters: int = 5
    """Full-batch gradient steps of the value baseline per update."""
    normalize_advantages: bool = True
    """Standardise the weights ``G_t - b(s_t)`` over the batch (a per-batch rescaling of the step size)."""
    bootstrap_truncated: bool = True
    """With a value baseline, end the return of a time-limit-truncated episode with ``gamma V(s_T)`` instead of 0."""
    ent_coef: float = 0.0
    """Weight of an entropy bonus (0 is textbook REINFORCE)."""
    max_grad_norm: float | None = 1.0
    """Gradient-norm clipping threshold of both networks; ``None`` or ``0`` (or ``inf``) turns clipping off."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the policy and value MLPs (tanh; at least one layer)."""
    log_std_init: float = 0.0
    """Initial log standard deviation of a Gaussian policy (continuous actions only)."""
    eval_every: int = 0
    """Environment steps between deterministic evaluations (argmax / Gaussian mean); 0 disables them."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    device: str = "cpu"
    """Torch device of the networks ("cuda" needs CUDA)."""
    checkpoint_path: str | None = None
    """File for atomic checkpoints, also written on Ctrl-C/SIGTERM (``None``: no checkpoints).
    ``train(..., resume=True)`` continues from it; a fresh run refuses to overwrite it unless ``overwrite=True``."""
    checkpoint_every: int = 20_000
    """Environment steps between checkpoints (written after the update that crosses the mark, and at the end)."""
    log_path: str | None = None
    """JSONL file receiving every logged metric (``None``: no file)."""

    def __post_init__(self):
        for name in ("total_timesteps", "episodes_per_update", "vf_iters", "eval_episodes", "checkpoint_every"):
            check_positive_int(f"ReinforceConfig.{name}", getattr(self, name))
        check_positive_int("ReinforceConfig.eval_every", self.eval_every, allow_zero=True)
        check_seed(self.seed)
        self.hidden = check_hidden(self.hidden)
        check_positive("learning_rate", self.learning_rate)
        check_positive("vf_learning_rate", self.vf_learning_rate)
        check_positive("ent_coef", self.ent_coef, allow_zero=True)
        check_probability("gamma", self.gamma)
        check_max_grad_norm(self.max_grad_norm)
        if self.baseline not in ("none", "value"):
            raise ValueError(f"baseline must be 'none' or 'value', got {self.baseline!r}")


RESUME_SAFE_FIELDS = {
    **RESUME_SAFE,
    "eval_every": "only the deterministic evaluations (separate environments) change; training is unaffected",
    "eval_episodes": "only the deterministic evaluations (separate environments) change; training is unaffected",
}
"""Config fields a resumed REINFORCE run may change, with what the change does; any other change is refused."""


def act(agent: nn.Module, obs, deterministic: bool = True):
    """Action(s) of a REINFORCE policy for one observation or a batch: argmax / Gaussian mean when
    ``deterministic``, else a sample; continuous actions are clipped to the bounds stored on the agent."""
    obs = np.asarray(obs, dtype=np.float32)
    single = obs.ndim == 1
    with torch.no_grad():
        device = next(agent.parameters()).device
        dist = agent(torch.as_tensor(obs[None] if single else obs, device=device))
        if isinstance(dist, torch.distributions.Categorical):
            a = dist.probs.argmax(-1) if deterministic else dist.sample()
        else:
            a = dist.mean if deterministic else dist.sample()
            a = torch.clamp(a, agent.action_low, agent.action_high)
    a = a.cpu().numpy()
    return (int(a[0]) if a.ndim == 1 else a[0]) if single else a


# --------------------------------------------------------------------- collection
@torch.no_grad()
def collect_episodes(envs: list, obs: np.ndarray, policy: nn.Module, device) -> tuple[list[dict], np.ndarray, int]:
    """One complete episode from each environment in ``envs``, stepped side by side.

    ``obs[i]`` is the current (first) observation of ``envs[i]``. Returns ``(episodes, obs, steps)``:
    one dict per episode with ``obs [T, obs_dim]``, ``actions``, ``rewards [T]``, ``terminated``,
    ``truncated``, ``final_obs`` (the real last observation) and ``end_step`` (steps taken in this
    call when it ended), the first observations of the next episodes, and the steps taken.
    """
    n = len(envs)
    discrete = isinstance(policy.distribution(torch.as_tensor(obs[:1], device=device)), torch.distributions.Categorical)
    buf = [{"obs": [], "actions": [], "rewards": []} for _ in range(n)]
    episodes: list[dict | None] = [None] * n
    active = np.ones(n, dtype=bool)
    obs = obs.copy()
    steps = 0
    while active.any():
        idx = np.nonzero(active)[0]
        actions = policy.distribution(torch.as_tensor(obs[idx], device=device)).sample()
        env_actions = actions if discrete else torch.clamp(actions, policy.action_low, policy.action_high)
        env_actions = env_actions.cpu().numpy()
        for j, i in enumerate(idx):
            next_obs, reward, terminated, truncated, _ = envs[i].step(env_actions[j])
            steps += 1
            b = buf[i]
            b["obs"].append(obs[i].copy())
            b["actions"].append(actions[j])
            b["rewards"].append(float(reward))
            if terminated or truncated:
                episodes[i] = {"obs": torch.as_tensor(np.stack(b["obs"]), device=device),
                               "actions": torch.stack(b["actions"]),
                               "rewards": torch.as_tensor(b["rewards"], dtype=torch.float32, device=device),
                               "terminated": bool(terminated), "truncated": bool(truncated),
                               "final_obs": np.asarray(next_obs, dtype=np.float32), "end_step": steps}
                next_obs, _ = envs[i].reset()
                active[i] = False
            obs[i] = next_obs
    return episodes, obs, steps


# --------------------------------------------------------------------- training
def _make_policy(obs_space, act_space, cfg_hidden, log_std_init, device):
    policy = make_policy(obs_space, act_space, cfg_hidden,
                         **({} if is_discrete(act_space) else {"log_std_init": log_std_init})).to(device)
    low, high = ((torch.zeros(0), torch.zeros(0)) if is_discrete(act_space) else
                 (torch.as_tensor(act_space.low, dtype=torch.float32), torch.as_tensor(act_space.high, dtype=torch.float32)))
    policy.register_buffer("action_low", low.to(device))
    policy.register_buffer("action_high", high.to(device))
    return policy


def train(cfg: ReinforceConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Train REINFORCE; returns :class:`rlcore.algos.TrainResult` with metrics ``episode_return``,
    ``episode_length``, ``policy_loss``, ``entropy``, ``grad_norm`` (and ``value_loss``,
    ``explained_variance`` with a baseline; ``eval_return`` if ``eval_every``).

    ``resume=True`` continues from ``cfg.checkpoint_path`` (an error if there is none); a fresh run
    refuses to replace an earlier run's files unless ``overwrite=True``; Ctrl-C (SIGINT) or SIGTERM
    stops after the current update, writes the checkpoint and raises
    :class:`rlcore.lifecycle.TrainingInterrupted`. See :mod:`rlcore.lifecycle`."""
    if not isinstance(cfg, ReinforceConfig):
        raise TypeError(f"train expects a ReinforceConfig, got {type(cfg).__name__}")
    t0 = time.time()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)

    envs = [make_env(cfg.env_id) for _ in range(cfg.episodes_per_update)]
    try:
        require_discrete_or_box(envs[0].action_space, "REINFORCE", cfg.env_id)
        require_flat_box_observations(envs[0].observation_space, "REINFORCE", cfg.env_id)
        state = begin_run(cfg, "reinforce", resume=resume, overwrite=overwrite, safe=RESUME_SAFE_FIELDS,
                          map_location=device, required=["global_step", "n_updates", "policy", "optimizer", "value_net",
                                                         "vf_optimizer", "history", "rng", "envs", "obs"])
    except BaseException:
        for e in envs:
            e.close()
        raise
    obs_space, act_space = envs[0].observation_space, envs[0].action_space
    policy = _make_policy(obs_space, act_space, cfg.hidden, cfg.log_std_init, device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, **fused_adam(device))
    value_net = vf_optimizer = None
    if cfg.baseline == "value":
        value_net = ValueNetwork(obs_dim(obs_space), cfg.hidden).to(device)
        vf_optimizer = torch.optim.Adam(value_net.parameters(), lr=cfg.vf_learning_rate, **fused_adam(device))
    history = History()
    obs = np.stack([e.reset(seed=cfg.seed + i)[0] for i, e in enumerate(envs)]).astype(np.float32)
    for i, e in enumerate(envs):
        e.action_space.seed(cfg.seed + i)
    global_step, n_updates = 0, 0

    if state is not None:
        policy.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        if value_net is not None:
            value_net.load_state_dict(state["value_net"])
            vf_optimizer.load_state_dict(state["vf_optimizer"])
        history.load_state_dict(state["history"])
        set_rng_state(state["rng"])
        envs, obs = pickle.loads(state["envs"]), state["obs"]
        global_step, n_updates = state["global_step"], state["n_updates"]
        if global_step >= cfg.total_timesteps:
            notice(f"the checkpoint is at step {global_step}, which already reaches total_timesteps="
                   f"{cfg.total_timesteps}: nothing left to train (pass a larger total to extend the run)")
    logger = open_log(cfg.log_path, global_step if state is not None else None)

    def log(step: int, **metrics):
        history.log(step, **metrics)
        logger.log(step, **metrics)

    def checkpoint():
        save_checkpoint(cfg.checkpoint_path, {
            "algo": "reinforce", "config": asdict(cfg), "global_step": global_step, "n_updates": n_updates,
            "policy": policy.state_dict(), "optimizer": optimizer.state_dict(),
            "value_net": None if value_net is None else value_net.state_dict(),
            "vf_optimizer": None if vf_optimizer is None else vf_optimizer.state_dict(),
            "history": history.state_dict(), "rng": rng_state(), "envs": pickle.dumps(envs), "obs": obs,
        })

    bar = progress_bar(total=cfg.total_timesteps, initial=global_step, desc=f"REINFORCE {cfg.env_id}",
                       disable=None if progress else True)
    with GracefulInterrupt() as stop:
        while global_step < cfg.total_timesteps:
            # 1. collect whole episodes with the current policy
            episodes, obs, steps = collect_episodes(envs, obs, policy, device)
            for ep in sorted(episodes, key=lambda e: e["end_step"]):
                log(global_step + ep["end_step"], episode_return=float(ep["rewards"].sum()),
                    episode_length=len(ep["rewards"]))
            global_step += steps

            # 2. reward-to-go G_t of every step (eq-discounted-return); a truncated episode may bootstrap
            returns = []
            for ep in episodes:
                last_value = None
                if ep["truncated"] and value_net is not None and cfg.bootstrap_truncated:
                    with torch.no_grad():
                        # V(s_T) of the final observation; discounted_returns applies the gamma itself
                        last_value = value_net(torch.as_tensor(ep["final_obs"], device=device))
                returns.append(discounted_returns(ep["rewards"], cfg.gamma, last_value=last_value))
            b_obs = torch.cat([ep["obs"] for ep in episodes])
            b_actions = torch.cat([ep["actions"] for ep in episodes])
            b_returns = torch.cat(returns)

            # 3. weights G_t - b(s_t) (eq-reinforce-baseline)
            if value_net is not None:
                with torch.no_grad():
                    b_values = value_net(b_obs)
                advantages = b_returns - b_values
            else:
                advantages = b_returns.clone()
            if cfg.normalize_advantages and len(advantages) > 1:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

            # 4. one policy-gradient step on the score-function loss (eq-reinforce)
            dist = policy.distribution(b_obs)
            ent = entropy(dist).mean()
            pg_loss = reinforce_loss(log_prob(dist, b_actions), advantages)
            loss = pg_loss - cfg.ent_coef * ent
            optimizer.zero_grad()
            loss.backward()
            grad_norm = clip_grad_norm(policy.parameters(), cfg.max_grad_norm)  # None / 0: no clipping
            optimizer.step()
            n_updates += 1
            metrics = {"policy_loss": pg_loss.item(), "entropy": ent.item(), "grad_norm": float(grad_norm)}

            # 5. fit the baseline to the returns (eq-value-loss)
            if value_net is not None:
                for _ in range(cfg.vf_iters):
                    v_loss = value_loss(value_net(b_obs), b_returns)
                    vf_optimizer.zero_grad()
                    v_loss.backward()
                    clip_grad_norm(value_net.parameters(), cfg.max_grad_norm)
                    vf_optimizer.step()
                metrics.update(value_loss=v_loss.item(), explained_variance=explained_variance(b_values, b_returns))
            log(global_step, **metrics)

            # 6. evaluation and checkpoints (after the update that crosses each mark; also when Ctrl-C asked to stop)
            if cfg.eval_every and global_step // cfg.eval_every > (global_step - steps) // cfg.eval_every:
                ev = evaluate(lambda o: act(policy, o), cfg.env_id, cfg.eval_episodes, seed=cfg.seed + 100_000)
                log(global_step, eval_return=float(ev.mean()), eval_return_std=float(ev.std()))
            if cfg.checkpoint_path and (stop.requested or global_step // cfg.checkpoint_every
                                        > (global_step - steps) // cfg.checkpoint_every):
                checkpoint()
            bar.update(steps)
            bar.set_postfix(episode_return=f"{history.last('episode_return'):.1f}")
            if stop.requested:
                break

    bar.close()
    if cfg.checkpoint_path and not stop.requested:
        checkpoint()
    logger.close()
    for e in envs:
        e.close()
    if stop.requested:
        raise stop.interrupted(cfg.checkpoint_path, global_step)
    return TrainResult(history=history, agent=policy, config=cfg, env_steps=global_step,
                       wall_seconds=time.time() - t0)


def load_agent(state: dict, device: str = "cpu") -> nn.Module:
    """The trained policy of a REINFORCE checkpoint (with its action bounds; act with :func:`act`)."""
    cfg = state["config"]
    env = make_env(cfg["env_id"])
    policy = _make_policy(env.observation_space, env.action_space, tuple(cfg["hidden"]), cfg.get("log_std_init", 0.0),
                          "cpu")
    env.close()
    policy.load_state_dict(state["policy"])
    return policy.to(device).eval()

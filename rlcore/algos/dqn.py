"""Deep Q-Network (Mnih et al. 2015), CleanRL style: the whole algorithm reads top to bottom.

A Q-network ``Q_theta(s, .)`` is regressed on the TD target (eq-dqn-target)

    y = r + gamma * (1 - terminated) * max_a' Q_target(s', a'),

with a Huber loss (eq-dqn-loss) on minibatches drawn uniformly from a replay buffer of past
transitions, while the agent acts epsilon-greedily with a linearly decaying epsilon. The
target network ``Q_target`` is a lagged copy of ``Q_theta`` (hard copy every
``target_network_frequency`` steps, or Polyak averaging with ``tau < 1``).

With ``double_q=True`` the target is the Double DQN one (van Hasselt et al. 2016): the online
network picks the action, the target network scores it,

    y = r + gamma * (1 - terminated) * Q_target(s', argmax_a' Q_theta(s', a')),

which removes the upward bias of ``max`` over noisy estimates.

Two details decide whether DQN works on time-limited tasks such as CartPole-v1:

* the buffer stores the *real* next observation ``s'``: when a vector env auto-resets, the
  returned observation is already the first one of the next episode, and the real ``s'`` is in
  ``infos["final_obs"]`` (:func:`rlcore.envs.final_observations`);
* ``terminated`` and ``truncated`` are stored separately and only ``terminated`` stops the
  bootstrap: at a time-limit truncation the pole is still up and ``s'`` still has value.

Usage::

    from rlcore.algos import dqn
    result = dqn.train(dqn.DQNConfig(env_id="CartPole-v1", seed=1))
    result.history["eval_return"]
"""
from __future__ import annotations

import pickle
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from rlcore.envs import (final_observations, finished_episodes, make_env, make_vector_env, obs_dim, require_discrete,
                         require_flat_box_observations)
from rlcore.lifecycle import GracefulInterrupt, check_max_grad_norm, clip_grad_norm
from rlcore.losses import dqn_loss, td_target
from rlcore.networks import QNetwork
from rlcore.training import History, rng_state, save_checkpoint, set_rng_state
from rlcore.training import progress as progress_bar
from rlcore.utils import check_positive, check_probability, seed_everything

from . import (RESUME_SAFE, TrainResult, begin_run, check_hidden, check_positive_int, check_seed, evaluate, fused_adam,
               notice, open_log, resolve_device, whole_batches)

__all__ = ["DQNConfig", "RESUME_SAFE_FIELDS", "ReplayBuffer", "linear_schedule", "double_q_target", "train", "act",
           "load_agent"]


@dataclass
class DQNConfig:
    """Hyperparameters of DQN: rl-baselines3-zoo's CartPole-v1 settings (50k steps, bursts of 128
    gradient steps every 256 env steps, a [256, 256] Q-network, target refreshed before each burst).

    Measured (seeds 1-3, 50k steps, 10 greedy episodes every 2.5k steps, one CPU thread):
    the greedy evaluation first reaches >= 475 after 32.5k, 32.5k and 27.5k steps (all three seeds)
    (a whole 50k-step run took 47-136 s on a shared 2-core machine); the greedy return keeps
    oscillating between ~100 and 500 afterwards, and the rolling mean of the epsilon-greedy (epsilon = 0.04) training episodes stays below 475.
    ``double_q=True`` gave 27.5k, 32.5k, 37.5k: no better here, so it is off. Command::

        from rlcore.algos import dqn
        for s in (1, 2, 3):
            print(dqn.train(dqn.DQNConfig(seed=s, eval_every=2500)).history["eval_return"])

    Side by side with SB3 DQN: ``python benchmarks/classic_control.py --algos dqn --envs CartPole-v1``.
    """

    env_id: str = "CartPole-v1"
    """Gymnasium id of a task with a discrete action space."""
    seed: int = 1
    """Seed of the environments, the network initialisation, exploration and replay sampling."""
    total_timesteps: int = 50_000
    """Environment steps to train for (summed over the ``num_envs`` sub-environments; with ``num_envs > 1``
    a total that is not a multiple of ``num_envs`` is rounded *up*, with a notice). Resuming with a larger
    total extends a run (see ``exploration_fraction``)."""
    learning_rate: float = 2.3e-3
    """Adam step size."""
    num_envs: int = 1
    """Parallel environments (each vector step adds ``num_envs`` transitions)."""
    buffer_size: int = 100_000
    """Replay buffer capacity in transitions (the oldest are overwritten first)."""
    gamma: float = 0.99
    """Discount factor of the TD target (eq-dqn-target)."""
    tau: float = 1.0
    """Target update rate: 1 copies the weights (hard update), < 1 is Polyak averaging."""
    target_network_frequency: int = 10
    """Vector steps between two target-network updates (with ``train_frequency`` > this, the target
    is refreshed once per burst of ``gradient_steps``: it is fixed within a burst)."""
    use_target_network: bool = True
    """False bootstraps from the online network itself (the 'DQN without a target network' ablation)."""
    double_q: bool = False
    """Use the Double DQN target (select with the online network, evaluate with the target one)."""
    batch_size: int = 64
    """Transitions per gradient step."""
    start_e: float = 1.0
    """Initial exploration rate epsilon."""
    end_e: float = 0.04
    """Final exploration rate epsilon."""
    exploration_fraction: float = 0.16
    """Fraction of ``total_timesteps`` over which epsilon decays linearly from ``start_e`` to ``end_e``.
    Extending a run (resume with a larger ``total_timesteps``) continues epsilon linearly from its value at the
    checkpoint to ``end_e`` at ``exploration_fraction`` of the new total (the schedule is stored in the
    checkpoint, so epsilon never jumps); once it has reached ``end_e`` it stays there."""
    learning_starts: int = 1_000
    """Environment steps of (random) experience collected before the first gradient step."""
    train_frequency: int = 256
    """Vector steps between two bursts of gradient steps."""
    gradient_steps: int = 128
    """Gradient steps per burst (every ``train_frequency`` vector steps): the replay ratio is
    ``gradient_steps / (train_frequency * num_envs)`` updates per transition."""
    max_grad_norm: float | None = 10.0
    """Gradient-norm clipping threshold; ``None`` or ``0`` (or ``inf``) turns clipping off."""
    loss: str = "huber"
    """TD regression loss: ``"huber"`` (smooth L1, as in the Nature DQN) or ``"mse"``."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the Q-network (ReLU MLP; at least one layer)."""
    eval_every: int = 5_000
    """Environment steps between greedy evaluations (0 disables them)."""
    eval_episodes: int = 10
    """Episodes per greedy evaluation (epsilon = 0, separate environments)."""
    device: str = "cpu"
    """Torch device of the networks ("cpu" is fastest for these small MLPs; "cuda" needs CUDA)."""
    checkpoint_path: str | None = None
    """File for atomic checkpoints, also written on Ctrl-C/SIGTERM (``None``: no checkpoints).
    ``train(..., resume=True)`` continues from it; a fresh run refuses to overwrite it unless ``overwrite=True``."""
    checkpoint_every: int = 10_000
    """Environment steps between checkpoints (one is also written at the end)."""
    log_path: str | None = None
    """JSONL file receiving every logged metric (``None``: no file)."""

    def __post_init__(self):
        for name in ("total_timesteps", "num_envs", "buffer_size", "target_network_frequency", "batch_size",
                     "train_frequency", "gradient_steps", "eval_episodes", "checkpoint_every"):
            check_positive_int(f"DQNConfig.{name}", getattr(self, name))
        check_seed(self.seed)
        self.hidden = check_hidden(self.hidden)
        if self.double_q and not self.use_target_network:
            raise ValueError("double_q=True needs a target network to evaluate the chosen action; "
                             "set use_target_network=True (or double_q=False)")
        for name in ("learning_starts", "eval_every"):
            check_positive_int(f"DQNConfig.{name}", getattr(self, name), allow_zero=True)
        check_positive("learning_rate", self.learning_rate)
        check_max_grad_norm(self.max_grad_norm)
        for name in ("gamma", "start_e", "end_e", "exploration_fraction"):
            check_probability(name, getattr(self, name))
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must lie in (0, 1] (1 = hard target update), got {self.tau!r}")
        if self.loss not in ("huber", "mse"):
            raise ValueError(f"loss must be 'huber' or 'mse', got {self.loss!r}")
        if self.batch_size > self.buffer_size:
            raise ValueError(f"batch_size ({self.batch_size}) cannot exceed buffer_size ({self.buffer_size})")


RESUME_SAFE_FIELDS = {
    **RESUME_SAFE,
    "eval_every": "only the greedy evaluations (separate environments) change; training is unaffected",
    "eval_episodes": "only the greedy evaluations (separate environments) change; training is unaffected",
}
"""Config fields a resumed DQN run may change, with what the change does; any other change is refused."""


# --------------------------------------------------------------------- replay buffer
class ReplayBuffer:
    """A numpy ring buffer of transitions ``(s, a, r, s', terminated, truncated)``.

    ``next_obs`` must be the *real* ``s'`` (the final observation when an episode just ended).
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...]):
        self.capacity = int(capacity)
        self.obs = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.next_obs = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.truncated = np.zeros(capacity, dtype=np.float32)
        self.pos, self.size = 0, 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs, next_obs, actions, rewards, terminated, truncated) -> None:
        """Add a batch of transitions (one per sub-environment)."""
        for i in range(len(actions)):
            p = self.pos
            self.obs[p], self.next_obs[p] = obs[i], next_obs[i]
            self.actions[p], self.rewards[p] = actions[i], rewards[i]
            self.terminated[p], self.truncated[p] = terminated[i], truncated[i]
            self.pos = (p + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator, device="cpu") -> dict[str, torch.Tensor]:
        """A uniform minibatch (with replacement) as tensors on ``device``."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer; collect transitions first")
        idx = rng.integers(0, self.size, size=batch_size)
        return {k: torch.as_tensor(getattr(self, k)[idx], device=device)
                for k in ("obs", "next_obs", "actions", "rewards", "terminated", "truncated")}

    def state_dict(self) -> dict:
        keys = ("obs", "next_obs", "actions", "rewards", "terminated", "truncated")
        return {"pos": self.pos, "size": self.size, **{k: getattr(self, k)[: self.size].copy() for k in keys}}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.size = int(state["pos"]), int(state["size"])
        for k in ("obs", "next_obs", "actions", "rewards", "terminated", "truncated"):
            getattr(self, k)[: self.size] = state[k]


def linear_schedule(start_e: float, end_e: float, duration: float, t: float) -> float:
    """Epsilon decaying linearly from ``start_e`` at ``t = 0`` to ``end_e`` at ``t = duration``, then flat."""
    if duration <= 0:
        return end_e
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e) if end_e <= start_e else min(slope * t + start_e, end_e)


def double_q_target(rewards, next_q_online: torch.Tensor, next_q_target: torch.Tensor, terminated,
                    gamma: float) -> torch.Tensor:
    """Double DQN target ``y = r + gamma (1 - terminated) Q_target(s', argmax_a' Q_theta(s', a'))``.

    ``next_q_online`` and ``next_q_target`` are ``[B, A]``: the online and the target network at the
    real next state. Only ``terminated`` stops the bootstrap (as in :func:`rlcore.losses.td_target`).
    """
    if next_q_online.shape != next_q_target.shape:
        raise ValueError(f"next_q_online {tuple(next_q_online.shape)} and next_q_target "
                         f"{tuple(next_q_target.shape)} must have the same [batch, actions] shape")
    best = next_q_online.argmax(dim=-1, keepdim=True)
    rewards = torch.as_tensor(rewards, dtype=next_q_target.dtype)
    not_terminal = 1.0 - torch.as_tensor(terminated, dtype=next_q_target.dtype)
    return rewards + gamma * not_terminal * next_q_target.gather(-1, best).squeeze(-1)


def act(agent: nn.Module, obs, deterministic: bool = True, epsilon: float = 0.05, rng=None):
    """Greedy action ``argmax_a Q(s, a)`` for one observation or a batch (epsilon-greedy unless ``deterministic``)."""
    obs = np.asarray(obs, dtype=np.float32)
    single = obs.ndim == 1
    with torch.no_grad():
        device = next(agent.parameters()).device
        q = agent(torch.as_tensor(obs[None] if single else obs, device=device))
        a = q.argmax(-1).cpu().numpy()
    if not deterministic:
        rng = rng if rng is not None else np.random.default_rng()
        explore = rng.random(len(a)) < epsilon
        a = np.where(explore, rng.integers(0, q.shape[-1], size=len(a)), a)
    return int(a[0]) if single else a


# --------------------------------------------------------------------- training
def train(cfg: DQNConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Train DQN; returns :class:`rlcore.algos.TrainResult` with metrics ``episode_return``,
    ``episode_length``, ``td_loss``, ``q_values``, ``epsilon`` and ``eval_return``.

    ``resume=True`` continues from ``cfg.checkpoint_path`` (an error if there is none); a fresh run
    refuses to replace an earlier run's files unless ``overwrite=True``; Ctrl-C (SIGINT) or SIGTERM
    stops after the current step, writes the checkpoint and raises
    :class:`rlcore.lifecycle.TrainingInterrupted`. See :mod:`rlcore.lifecycle`."""
    if not isinstance(cfg, DQNConfig):
        raise TypeError(f"train expects a DQNConfig, got {type(cfg).__name__}")
    t0 = time.time()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)  # exploration and replay sampling

    envs = make_vector_env(cfg.env_id, cfg.num_envs, seed=None)
    N = cfg.num_envs
    try:
        require_discrete(envs.single_action_space, "DQN", cfg.env_id)
        require_flat_box_observations(envs.single_observation_space, "DQN", cfg.env_id)
        num_iterations = whole_batches(cfg.total_timesteps, N, "DQN", "vector steps (num_envs)")
        state = begin_run(cfg, "dqn", resume=resume, overwrite=overwrite, safe=RESUME_SAFE_FIELDS, map_location=device,
                          required=["iteration", "global_step", "n_updates", "q_network", "target_network",
                                    "optimizer", "buffer", "history", "np_rng", "rng", "obs", "envs", "episode_stats"])
    except BaseException:
        envs.close()
        raise
    q_network = QNetwork(obs_dim(envs.single_observation_space), int(envs.single_action_space.n), cfg.hidden).to(device)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=cfg.learning_rate, **fused_adam(device))
    target_network = QNetwork(obs_dim(envs.single_observation_space), int(envs.single_action_space.n), cfg.hidden).to(device)
    target_network.load_state_dict(q_network.state_dict())
    rb = ReplayBuffer(cfg.buffer_size, envs.single_observation_space.shape)
    history = History()
    obs, _ = envs.reset(seed=cfg.seed)
    start_iteration, global_step, n_updates = 0, 0, 0
    # epsilon: a line from start_e at step 0 to end_e at exploration_fraction * total_timesteps (then flat);
    # stored in the checkpoint so that an extended run continues it from where it was (see DQNConfig)
    schedule = {"start_step": 0, "start_e": cfg.start_e, "end_step": cfg.exploration_fraction * cfg.total_timesteps}

    if state is not None:
        q_network.load_state_dict(state["q_network"])
        target_network.load_state_dict(state["target_network"])
        optimizer.load_state_dict(state["optimizer"])
        rb.load_state_dict(state["buffer"])
        history.load_state_dict(state["history"])
        rng.bit_generator.state = state["np_rng"]
        set_rng_state(state["rng"])
        start_iteration, global_step, n_updates = state["iteration"], state["global_step"], state["n_updates"]
        envs.unwrapped.envs = pickle.loads(state["envs"])
        for k, v in state["episode_stats"].items():
            setattr(envs, k, np.copy(v))
        obs = state["obs"]
        schedule = dict(state.get("epsilon_schedule") or schedule)
        new_end = cfg.exploration_fraction * cfg.total_timesteps
        if state["config"]["total_timesteps"] != cfg.total_timesteps and new_end != schedule["end_step"]:
            eps_now = _epsilon(schedule, cfg.end_e, global_step)
            schedule = {"start_step": global_step, "start_e": eps_now, "end_step": new_end}
            if eps_now != cfg.end_e:
                notice(f"total_timesteps changed: epsilon continues linearly from {eps_now:.3g} at step {global_step} "
                       f"to {cfg.end_e} at step {new_end:.0f}")
        if start_iteration >= num_iterations:
            notice(f"the checkpoint is at step {global_step}, which already reaches total_timesteps="
                   f"{cfg.total_timesteps}: nothing left to train (pass a larger total to extend the run)")
    logger = open_log(cfg.log_path, global_step if state is not None else None)

    def log(step: int, **metrics):
        history.log(step, **metrics)
        logger.log(step, **metrics)

    def checkpoint(iteration: int):
        save_checkpoint(cfg.checkpoint_path, {
            "algo": "dqn", "config": asdict(cfg), "iteration": iteration, "global_step": global_step,
            "n_updates": n_updates, "epsilon_schedule": schedule,
            "q_network": q_network.state_dict(), "target_network": target_network.state_dict(),
            "optimizer": optimizer.state_dict(), "buffer": rb.state_dict(), "history": history.state_dict(),
            "np_rng": rng.bit_generator.state, "rng": rng_state(), "obs": obs,
            "envs": pickle.dumps(envs.unwrapped.envs),
            "episode_stats": {k: np.copy(getattr(envs, k)) for k in
                              ("episode_returns", "episode_lengths", "episode_start_times", "prev_dones")},
        })

    bar = progress_bar(total=num_iterations * N, initial=global_step, desc=f"DQN {cfg.env_id}",
                       disable=None if progress else True)
    with GracefulInterrupt() as stop:
        for iteration in range(start_iteration, num_iterations):
            # 1. act epsilon-greedily
            epsilon = _epsilon(schedule, cfg.end_e, global_step)
            explore = rng.random(N) < epsilon
            if explore.all():
                actions = rng.integers(0, envs.single_action_space.n, size=N)
            else:
                with torch.no_grad():
                    greedy = q_network(torch.as_tensor(obs, dtype=torch.float32, device=device)).argmax(-1).cpu().numpy()
                actions = np.where(explore, rng.integers(0, envs.single_action_space.n, size=N), greedy)
            next_obs, rewards, terminated, truncated, infos = envs.step(actions)
            global_step += N
            for ep_return, ep_length in finished_episodes(infos):
                log(global_step, episode_return=ep_return, episode_length=ep_length)

            # 2. store the transition with the real s' (not the reset observation) and both end flags
            rb.add(obs, final_observations(next_obs, infos), actions, rewards, terminated, truncated)
            obs = next_obs

            # 3. a burst of gradient steps on the TD error (eq-dqn-loss), target network held fixed
            if global_step > cfg.learning_starts and iteration % cfg.train_frequency == 0:
                for _ in range(cfg.gradient_steps):
                    data = rb.sample(cfg.batch_size, rng, device)
                    with torch.no_grad():
                        if cfg.double_q:
                            y = double_q_target(data["rewards"], q_network(data["next_obs"]),
                                                target_network(data["next_obs"]), data["terminated"], cfg.gamma)
                        else:
                            bootstrap_net = target_network if cfg.use_target_network else q_network
                            y = td_target(data["rewards"], bootstrap_net(data["next_obs"]), data["terminated"], cfg.gamma)
                    q_values = q_network(data["obs"])
                    loss = dqn_loss(q_values, data["actions"], y, kind=cfg.loss)
                    optimizer.zero_grad()
                    loss.backward()
                    grad_norm = clip_grad_norm(q_network.parameters(), cfg.max_grad_norm)  # None / 0: no clipping
                    optimizer.step()
                    n_updates += 1
                    if n_updates % 100 == 0:
                        q_sa = q_values.detach().gather(-1, data["actions"][:, None]).mean()
                        log(global_step, td_loss=loss.item(), q_values=q_sa.item(), grad_norm=float(grad_norm),
                            epsilon=epsilon)

            # 4. move the target network towards the online one
            if cfg.use_target_network and iteration % cfg.target_network_frequency == 0:
                with torch.no_grad():
                    for tp, p in zip(target_network.parameters(), q_network.parameters()):
                        tp.copy_(cfg.tau * p + (1.0 - cfg.tau) * tp)

            # 5. greedy evaluation on separate environments, and checkpoints (also when Ctrl-C asked to stop)
            if cfg.eval_every and global_step % cfg.eval_every < N:
                returns = evaluate(lambda o: act(q_network, o), cfg.env_id, cfg.eval_episodes, seed=cfg.seed + 100_000)
                log(global_step, eval_return=float(returns.mean()), eval_return_std=float(returns.std()))
                bar.set_postfix(eval_return=f"{returns.mean():.1f}", epsilon=f"{epsilon:.2f}")
            if cfg.checkpoint_path and (global_step % cfg.checkpoint_every < N or stop.requested):
                checkpoint(iteration + 1)
            bar.update(N)
            if stop.requested:
                break

    bar.close()
    if cfg.checkpoint_path and not stop.requested:
        checkpoint(num_iterations)
    logger.close()
    envs.close()
    if stop.requested:
        raise stop.interrupted(cfg.checkpoint_path, global_step)
    return TrainResult(history=history, agent=q_network, config=cfg, env_steps=global_step,
                       wall_seconds=time.time() - t0)


def _epsilon(schedule: dict, end_e: float, step: int) -> float:
    """Epsilon at env step ``step`` of the stored schedule (a line from ``start_e`` at ``start_step`` to ``end_e``
    at ``end_step``; a fresh run's is ``linear_schedule(start_e, end_e, exploration_fraction * total, step)``)."""
    return linear_schedule(schedule["start_e"], end_e, schedule["end_step"] - schedule["start_step"],
                           step - schedule["start_step"])


def load_agent(state: dict, device: str = "cpu") -> nn.Module:
    """The trained Q-network of a DQN checkpoint (act greedily with :func:`act`)."""
    cfg = state["config"]
    env = make_env(cfg["env_id"])
    q_network = QNetwork(obs_dim(env.observation_space), int(env.action_space.n), tuple(cfg["hidden"]))
    env.close()
    q_network.load_state_dict(state["q_network"])
    return q_network.to(device).eval()

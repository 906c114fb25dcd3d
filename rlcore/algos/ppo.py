"""Proximal Policy Optimization (Schulman et al. 2017), one file for discrete and continuous actions.

Reads top to bottom like CleanRL's ``ppo.py`` / ``ppo_continuous_action.py``:

1. ``num_envs`` vector environments, fixed-length rollouts of ``num_steps`` steps
   (:class:`rlcore.rollout.RolloutCollector`), GAE advantages (eq-gae);
2. ``update_epochs`` passes over the batch in ``num_minibatches`` shuffled minibatches, each
   minimising ``clipped surrogate (eq-ppo-clip) - ent_coef * entropy + vf_coef * value loss
   (eq-value-loss)`` with Adam (eps 1e-5), global gradient-norm clipping and a linearly
   annealed learning rate;
3. optional early stop of the epochs when the approximate KL exceeds ``target_kl``.

Implementation details follow Huang et al. (2022), "The 37 implementation details of PPO":
orthogonal init, advantage normalisation per minibatch, value clipping, observation and
reward normalisation for continuous control (``normalize_obs``/``normalize_reward``).

Usage::

    from rlcore.algos import ppo
    result = ppo.train(ppo.PPOConfig(env_id="CartPole-v1", seed=1))
    ppo.act(result.agent, obs)

``ppo.default_config(env_id, **overrides)`` returns the tuned preset for an environment
(``PRESETS``; e.g. Pendulum-v1 uses gamma 0.9 and normalisation).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from rlcore.envs import make_vector_env, require_discrete_or_box, require_flat_box_observations
from rlcore.lifecycle import GracefulInterrupt, check_max_grad_norm, clip_grad_norm
from rlcore.losses import approx_kl, clip_fraction, clipped_surrogate_loss, explained_variance, importance_ratio, value_loss
from rlcore.networks import entropy, log_prob
from rlcore.rollout import ActorCritic, RolloutCollector, act_with
from rlcore.training import History, rng_state, save_checkpoint, set_rng_state
from rlcore.training import progress as progress_bar
from rlcore.utils import check_positive, check_probability, seed_everything

from . import (RESUME_SAFE, TrainResult, begin_run, check_hidden, check_positive_int, check_seed,
               check_torch_threads, evaluate, fused_adam, notice, open_log, resolve_device, whole_batches)

__all__ = ["PPOConfig", "PRESETS", "RESUME_SAFE_FIELDS", "default_config", "train", "act", "load_agent",
           "first_minibatch_ratio", "annealed_fraction"]

RESUME_SAFE_FIELDS = {
    **RESUME_SAFE,
    "eval_every": "only the deterministic evaluations (separate environments) change; training is unaffected",
    "eval_episodes": "only the deterministic evaluations (separate environments) change; training is unaffected",
}
"""Config fields a resumed PPO run may change (:data:`rlcore.algos.RESUME_SAFE`); any other change is refused."""


@dataclass
class PPOConfig:
    """Hyperparameters of PPO. Defaults are tuned for CartPole-v1 on a CPU; see ``PRESETS``."""

    env_id: str = "CartPole-v1"
    """Gymnasium environment id (Discrete or 1-D Box actions)."""
    seed: int = 1
    """Seed of torch, numpy, the environments and the minibatch shuffling."""
    total_timesteps: int = 97 * 1024
    """Environment steps to train for (summed over the parallel environments). PPO trains whole rollouts
    of ``num_envs * num_steps`` steps: a total that is not a multiple is rounded *up*, with a notice.
    The default, 97 rollouts of 1024 (99,328 steps, "100k"), is the measured, tuned CartPole-v1 run.
    Resuming with a larger total extends a run (see ``anneal_lr``)."""
    learning_rate: float = 2.5e-3
    """Adam step size (annealed linearly to 0 when ``anneal_lr``)."""
    anneal_lr: bool = True
    """Linearly decay the learning rate to 0 over the run: update ``u`` of ``N`` uses ``(1 - (u - 1) / N) *
    learning_rate``. Extending a run (resume with a larger ``total_timesteps``) continues the decay linearly
    from the rate at the checkpoint to 0 at the new total (the schedule is stored in the checkpoint, so the
    rate never jumps). A run that finished its schedule has decayed to 0 and cannot be extended: start a
    fresh run with the larger total, or train runs you plan to extend with ``anneal_lr=False``."""
    num_envs: int = 8
    """Parallel environments in the vector env."""
    num_steps: int = 128
    """Steps per environment in one rollout; batch size = ``num_envs * num_steps``."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda (eq-gae): 0 is the TD error, 1 the Monte Carlo advantage."""
    num_minibatches: int = 4
    """Minibatches per epoch."""
    update_epochs: int = 10
    """Passes over each rollout."""
    norm_adv: bool = True
    """Normalise advantages to zero mean, unit std within each minibatch."""
    clip_coef: float = 0.2
    """Ratio clipping epsilon of the surrogate (eq-ppo-clip)."""
    clip_vloss: bool = True
    """Clip the value update around the old values (with ``clip_coef``)."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float | None = 0.5
    """Global gradient-norm clipping threshold; ``None`` or ``0`` turns clipping off."""
    target_kl: float | None = None
    """Stop the epochs of an update early when approx_kl exceeds this (None: never)."""
    normalize_obs: bool = False
    """Running mean/std observation normalisation (rlcore.normalize); useful for continuous control."""
    normalize_reward: bool = False
    """Scale rewards by the running std of the discounted return."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the actor and of the critic (separate networks, tanh); at least one layer."""
    log_std_init: float = 0.0
    """Initial log standard deviation of the Gaussian policy (continuous actions only)."""
    eval_every: int = 0
    """Environment steps between deterministic evaluations (argmax / Gaussian mean) on separate environments
    seeded ``seed + 100000``, after the update that crosses each mark; 0 disables them. Logged as ``eval_return``."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    device: str = "cpu"
    """Torch device ("cpu", "cuda", "cuda:N"); an unavailable device is an error before training."""
    torch_threads: int | None = 1
    """``torch.set_num_threads`` during training (1 is fastest for these tiny networks); None leaves it."""
    checkpoint_path: str | None = None
    """Where to save checkpoints (atomic; also on Ctrl-C/SIGTERM); None disables them. ``train(cfg, resume=True)``
    continues from it; a fresh run refuses to overwrite an existing one unless ``overwrite=True``."""
    checkpoint_every: int = 50_000
    """Save a checkpoint every this many environment steps (and at the end)."""
    log_path: str | None = None
    """JSONL file receiving every logged metric; None disables it."""


PRESETS: dict[str, dict] = {
    "CartPole-v1": {},
    "Acrobot-v1": dict(learning_rate=1e-3, ent_coef=0.0, normalize_obs=True, total_timesteps=195 * 1024),
    # constant lr, 8 minibatches of 256: the old preset (annealed lr, 32 minibatches of 64) left seed 2 near -600
    "Pendulum-v1": dict(total_timesteps=97 * 2048, num_envs=4, num_steps=512, learning_rate=1e-3, anneal_lr=False,
                        gamma=0.9, gae_lambda=0.95, update_epochs=10, num_minibatches=8, ent_coef=0.0,
                        clip_coef=0.2, normalize_obs=True, normalize_reward=True, max_grad_norm=0.5,
                        log_std_init=-0.5),
}
"""Tuned overrides per environment id (anything else gets CleanRL-like continuous defaults). Budgets are whole
rollouts (``195 * 1024`` is the 200k-step budget these presets were measured with, which PPO rounded down then)."""

_CONTINUOUS_DEFAULTS = dict(learning_rate=3e-4, num_envs=1, num_steps=2048, update_epochs=10, num_minibatches=32,
                            normalize_obs=True, normalize_reward=True, total_timesteps=488 * 2048)


def default_config(env_id: str = "CartPole-v1", **overrides) -> PPOConfig:
    """``PPOConfig`` with the preset for ``env_id`` (``PRESETS``), then ``overrides`` applied."""
    from rlcore.envs import is_discrete, make_env

    if env_id in PRESETS:
        base = dict(PRESETS[env_id])
    else:
        env = make_env(env_id)
        base = {} if is_discrete(env.action_space) else dict(_CONTINUOUS_DEFAULTS)
        env.close()
    base.update(overrides)
    return PPOConfig(env_id=env_id, **base)


def _validate(cfg: PPOConfig) -> None:
    if not isinstance(cfg, PPOConfig):
        raise TypeError(f"ppo.train needs a PPOConfig, got {type(cfg).__name__}; build one with ppo.PPOConfig(...) "
                        f"or ppo.default_config(env_id)")
    for name in ("total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "checkpoint_every",
                 "eval_episodes"):
        check_positive_int(name, getattr(cfg, name))
    check_positive_int("eval_every", cfg.eval_every, allow_zero=True)
    check_seed(cfg.seed)
    check_torch_threads(cfg.torch_threads)
    cfg.hidden = check_hidden(cfg.hidden)
    resolve_device(cfg.device)
    check_positive("learning_rate", cfg.learning_rate)
    check_probability("gamma", cfg.gamma)
    check_probability("gae_lambda", cfg.gae_lambda)
    check_positive("clip_coef", cfg.clip_coef)
    check_max_grad_norm(cfg.max_grad_norm)
    check_positive("ent_coef", cfg.ent_coef, allow_zero=True)
    check_positive("vf_coef", cfg.vf_coef, allow_zero=True)
    if cfg.target_kl is not None:
        check_positive("target_kl", cfg.target_kl)
    if (cfg.num_envs * cfg.num_steps) % cfg.num_minibatches:
        raise ValueError(f"num_envs * num_steps = {cfg.num_envs * cfg.num_steps} must be divisible by "
                         f"num_minibatches = {cfg.num_minibatches}")


def first_minibatch_ratio(history: History) -> np.ndarray:
    """``max |r - 1|`` on the first minibatch of the first epoch of every update.

    Before the first gradient step of an update ``pi_theta = pi_old``, so this should be 0
    (up to float rounding); a larger value means the stored ``logprobs`` are stale.
    """
    return history["first_minibatch_ratio_dev"]


def annealed_fraction(update: int, start_update: int, start_fraction: float, num_updates: int) -> float:
    """Learning-rate fraction of update ``update`` (1-based): linear from ``start_fraction`` at ``start_update``
    to 0 after update ``num_updates``. A fresh run uses ``(1, 1.0, N)``: ``1 - (update - 1) / N``; an extended run
    restarts the line at the first update after its checkpoint, from the fraction it had reached."""
    return start_fraction - start_fraction * (update - start_update) / (num_updates + 1 - start_update)


def train(cfg: PPOConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Train PPO; returns :class:`rlcore.algos.TrainResult`.

    ``resume=True`` continues from ``cfg.checkpoint_path`` (same environment stream, RNG states,
    optimizer, normalisers and history) until ``total_timesteps``; it is an error when there is no
    checkpoint. A fresh run refuses to replace an earlier run's checkpoint or log unless
    ``overwrite=True``. Ctrl-C (SIGINT) or SIGTERM stops at the end of the current update, writes
    the checkpoint and raises :class:`rlcore.lifecycle.TrainingInterrupted`. See :mod:`rlcore.lifecycle`.
    """
    _validate(cfg)
    show = progress
    device = resolve_device(cfg.device)
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    t0 = time.perf_counter()
    # CPU kernels used here are deterministic already (tested); asking torch for deterministic
    # algorithms imports torch._inductor (seconds), so only do it where it matters (CUDA)
    seed_everything(cfg.seed, deterministic=device.type != "cpu")

    envs = make_vector_env(cfg.env_id, cfg.num_envs, seed=None)
    try:
        require_discrete_or_box(envs.single_action_space, "PPO", cfg.env_id)
        require_flat_box_observations(envs.single_observation_space, "PPO", cfg.env_id)
        batch_size = cfg.num_envs * cfg.num_steps
        num_updates = whole_batches(cfg.total_timesteps, batch_size, "PPO", "rollouts (num_envs * num_steps)")
        state = begin_run(cfg, "ppo", resume=resume, overwrite=overwrite, safe=RESUME_SAFE_FIELDS,
                          required=["agent", "optimizer", "collector", "history", "rng", "shuffle_gen",
                                    "global_step", "update"], map_location=device)
    except BaseException:
        envs.close()
        raise
    agent = ActorCritic(envs.single_observation_space, envs.single_action_space, cfg.hidden, cfg.log_std_init).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5, **fused_adam(device))
    collector = RolloutCollector(envs, agent, cfg.num_steps, cfg.gamma, cfg.gae_lambda,
                                 cfg.normalize_obs, cfg.normalize_reward, device)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)

    minibatch_size = batch_size // cfg.num_minibatches
    history, global_step, update = History(), 0, 0
    # the annealed learning rate: a line from lr_start[1] at update lr_start[0] to 0 after update num_updates
    lr_start = (1, 1.0)
    ckpt = cfg.checkpoint_path
    if state is not None:
        agent.load_state_dict(state["agent"])
        optimizer.load_state_dict(state["optimizer"])
        collector.load_state_dict(state["collector"], seed=cfg.seed)
        history.load_state_dict(state["history"])
        set_rng_state(state["rng"])
        shuffle_gen.set_state(state["shuffle_gen"])
        global_step, update = state["global_step"], state["update"]
        saved = state.get("lr_schedule") or {"start_update": 1, "start_fraction": 1.0,
                                             "num_updates": state["config"]["total_timesteps"] // batch_size}
        lr_start = (saved["start_update"], saved["start_fraction"])
        if saved["num_updates"] != num_updates and cfg.anneal_lr and update < num_updates:
            # an extension: continue the line from the fraction the next update would have had
            fraction = annealed_fraction(update + 1, *lr_start, saved["num_updates"])
            if fraction <= 0:
                envs.close()
                raise ValueError(
                    f"cannot extend this run to total_timesteps={cfg.total_timesteps}: with anneal_lr its learning "
                    f"rate decayed to 0 at the end of its schedule (step {global_step}), so the extension would "
                    f"not learn. Start a fresh run with the larger total (overwrite=True / --overwrite, or another "
                    f"output path), and train runs you plan to extend with anneal_lr=False")
            lr_start = (update + 1, fraction)
            notice(f"extending PPO from {saved['num_updates']} to {num_updates} updates: the annealed learning rate "
                   f"continues linearly from {fraction * cfg.learning_rate:.3g} at step {global_step} to 0 at step "
                   f"{num_updates * batch_size}")
        if update >= num_updates:
            notice(f"the checkpoint is at step {global_step}, which already reaches total_timesteps="
                   f"{cfg.total_timesteps}: nothing left to train (pass a larger total to extend the run)")
    else:
        collector.reset(cfg.seed)
    logger = open_log(cfg.log_path, global_step if state is not None else None)

    def save():
        if ckpt is not None:
            save_checkpoint(ckpt, {"algo": "ppo", "config": asdict(cfg), "agent": agent.state_dict(),
                                   "optimizer": optimizer.state_dict(), "collector": collector.state_dict(),
                                   "history": history.state_dict(), "rng": rng_state(),
                                   "shuffle_gen": shuffle_gen.get_state(), "global_step": global_step, "update": update,
                                   "lr_schedule": {"start_update": lr_start[0], "start_fraction": lr_start[1],
                                                   "num_updates": num_updates}})

    bar = progress_bar(total=num_updates * batch_size, initial=global_step, desc=f"PPO {cfg.env_id}",
                       disable=None if show else True)
    with GracefulInterrupt() as stop:
        while update < num_updates:
            update += 1
            if cfg.anneal_lr:  # linear decay to 0 over the whole run
                optimizer.param_groups[0]["lr"] = annealed_fraction(update, *lr_start, num_updates) * cfg.learning_rate

            # ---- 1. rollout (no gradients) and GAE
            rollout, episodes = collector.collect(global_step)
            global_step += batch_size
            for step, ret, length in episodes:
                history.log(step, episode_return=ret, episode_length=length)
                logger.log(step, episode_return=ret, episode_length=length)
            b = rollout.flat()

            # ---- 2. update_epochs x num_minibatches gradient steps on the clipped objective
            clipfracs, kls, first_ratio_dev = [], [], float("nan")
            first_epoch_vloss, stop_early = float("nan"), False
            for epoch in range(cfg.update_epochs):
                epoch_pg, epoch_v, epoch_ent = [], [], []
                perm = torch.randperm(batch_size, generator=shuffle_gen).to(device)
                for start in range(0, batch_size, minibatch_size):
                    mb = perm[start:start + minibatch_size]
                    mb_obs = b["obs"][mb]
                    dist = agent.distribution(mb_obs)
                    newlogp = log_prob(dist, b["actions"][mb])
                    newvalue = agent.value(mb_obs)
                    if epoch == 0 and start == 0:  # pi_theta == pi_old here: the ratio must be 1
                        first_ratio_dev = float((importance_ratio(newlogp.detach(), b["logprobs"][mb]) - 1).abs().max())

                    mb_adv = b["advantages"][mb]
                    if cfg.norm_adv and mb_adv.numel() > 1:
                        mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                    pg_loss = clipped_surrogate_loss(newlogp, b["logprobs"][mb], mb_adv, cfg.clip_coef)
                    v_loss = value_loss(newvalue, b["returns"][mb], b["values"][mb],
                                        cfg.clip_coef if cfg.clip_vloss else None)
                    if cfg.ent_coef:
                        ent = entropy(dist).mean()
                        loss = pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss
                    else:  # no bonus: the entropy is only a metric, kept out of the backward pass (same gradients)
                        with torch.no_grad():
                            ent = entropy(dist).mean()
                        loss = pg_loss + cfg.vf_coef * v_loss

                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    clip_grad_norm(agent.parameters(), cfg.max_grad_norm)  # None / 0: no clipping
                    optimizer.step()

                    epoch_pg.append(pg_loss.item()), epoch_v.append(v_loss.item()), epoch_ent.append(ent.item())
                    kls.append(float(approx_kl(newlogp, b["logprobs"][mb])))
                    clipfracs.append(float(clip_fraction(newlogp, b["logprobs"][mb], cfg.clip_coef)))
                if epoch == 0:
                    first_epoch_vloss = float(np.mean(epoch_v))
                if cfg.target_kl is not None and kls[-1] > cfg.target_kl:
                    stop_early = True
                    break

            # losses: means over the last epoch run; value_loss_first_epoch shows the critic fitting within an update
            metrics = dict(policy_loss=float(np.mean(epoch_pg)), value_loss=float(np.mean(epoch_v)),
                           value_loss_first_epoch=first_epoch_vloss, entropy=float(np.mean(epoch_ent)),
                           approx_kl=float(np.mean(kls)), clip_fraction=float(np.mean(clipfracs)),
                           explained_variance=explained_variance(b["values"], b["returns"]),
                           learning_rate=optimizer.param_groups[0]["lr"], first_minibatch_ratio_dev=first_ratio_dev,
                           early_stop=float(stop_early), epochs_run=float(epoch + 1),
                           wall_seconds=time.perf_counter() - t0)
            history.log(global_step, **metrics)
            logger.log(global_step, **metrics)
            # greedy evaluation (separate environments) after the update that crosses each eval_every mark
            if cfg.eval_every and global_step // cfg.eval_every > (global_step - batch_size) // cfg.eval_every:
                ev = evaluate(lambda o: act(agent, o), cfg.env_id, cfg.eval_episodes, seed=cfg.seed + 100_000)
                history.log(global_step, eval_return=float(ev.mean()), eval_return_std=float(ev.std()))
                logger.log(global_step, eval_return=float(ev.mean()), eval_return_std=float(ev.std()))
            recent = history["episode_return"][-100:] if "episode_return" in history else []
            bar.update(batch_size)
            if len(recent):
                bar.set_postfix(ret=f"{np.mean(recent):.1f}")
            # ---- 3. checkpoint after the update that crosses each checkpoint_every mark; Ctrl-C: save and stop
            if global_step // cfg.checkpoint_every > (global_step - batch_size) // cfg.checkpoint_every \
                    and update < num_updates and not stop.requested:
                save()
            if stop.requested:
                break

    save()
    bar.close()
    logger.close()
    envs.close()
    if stop.requested:
        raise stop.interrupted(ckpt, global_step)
    return TrainResult(history=history, agent=agent, config=cfg, env_steps=global_step,
                       wall_seconds=time.perf_counter() - t0)


def load_agent(state: dict, device: str = "cpu") -> ActorCritic:
    """The trained :class:`ActorCritic` of a PPO checkpoint (with its observation normaliser's statistics)."""
    return _load_actor_critic(state, device)


def _load_actor_critic(state: dict, device: str = "cpu") -> ActorCritic:
    from rlcore.envs import make_env
    from rlcore.normalize import ObservationNormalizer

    cfg = state["config"]
    env = make_env(cfg["env_id"])
    agent = ActorCritic(env.observation_space, env.action_space, tuple(cfg["hidden"]), cfg.get("log_std_init", 0.0))
    env.close()
    agent.load_state_dict(state["agent"])
    norm = (state.get("collector") or {}).get("obs_norm")
    if norm is not None:
        agent.obs_normalizer = ObservationNormalizer(env.observation_space.shape)
        agent.obs_normalizer.load_state_dict(norm)
    return agent.to(device).eval()


def act(agent: ActorCritic, obs, deterministic: bool = True):
    """Action of a PPO agent for raw observation(s) (applies the agent's observation normaliser)."""
    if not isinstance(agent, ActorCritic):
        raise TypeError(f"ppo.act expects the ActorCritic agent returned by ppo.train, got {type(agent).__name__}; "
                        f"use the act function of the module that trained this agent")
    return act_with(agent, obs, deterministic, agent.obs_normalizer)


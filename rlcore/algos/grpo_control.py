"""GRPO on a control task: the bridge from PPO to the language-model chapters.

Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath) drops PPO's critic. For
a prompt it samples a *group* of G answers, scores each with one scalar reward, and uses the
group-normalised reward ``(R_i - mean(R)) / std(R)`` (eq-group-advantage) as the advantage
of every token of answer ``i``. Here the "prompt" is a reset seed of the environment and an
"answer" is a whole episode:

1. pick ``num_groups`` reset seeds; for each, run G episodes from the *same* initial state
   with the current policy (to the environment's time limit);
2. score each episode by its total (undiscounted) return; advantages =
   :func:`rlcore.returns.group_normalized_advantages`, copied to every step of the episode;
3. ``update_epochs`` passes of the clipped surrogate (eq-ppo-clip) over all steps, plus an
   optional ``beta * KL(pi_theta || pi_ref)`` with the k3 estimator (eq-kl-k3) to the initial
   policy. No value network, no GAE.

A group whose G returns are all equal carries no signal (all advantages 0);
``zero_variance_share`` reports their share (:func:`rlcore.returns.zero_variance_groups`).
"""
from __future__ import annotations

import copy
import pickle
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from rlcore.envs import make_env, require_discrete_or_box, require_flat_box_observations
from rlcore.kl import kl_k3
from rlcore.lifecycle import GracefulInterrupt, check_max_grad_norm, clip_grad_norm
from rlcore.losses import approx_kl, clip_fraction, clipped_surrogate_loss
from rlcore.networks import CategoricalPolicy, GaussianPolicy, entropy, log_prob, make_policy
from rlcore.returns import group_normalized_advantages, zero_variance_groups
from rlcore.rollout import act_with
from rlcore.training import History, rng_state, save_checkpoint, set_rng_state
from rlcore.training import progress as progress_bar
from rlcore.utils import check_positive, seed_everything

from . import (RESUME_SAFE, TrainResult, begin_run, check_hidden, check_positive_int, check_seed,
               check_torch_threads, evaluate, fused_adam, notice, open_log, resolve_device)

__all__ = ["GRPOControlConfig", "RESUME_SAFE_FIELDS", "default_config", "train", "act", "load_agent", "collect_groups"]

RESUME_SAFE_FIELDS = {
    **RESUME_SAFE,
    "eval_every": "only the deterministic evaluations (separate environments) change; training is unaffected",
    "eval_episodes": "only the deterministic evaluations (separate environments) change; training is unaffected",
}
"""Config fields a resumed GRPO run may change (:data:`rlcore.algos.RESUME_SAFE`); any other change is refused."""


@dataclass
class GRPOControlConfig:
    """Hyperparameters of GRPO on a Gymnasium control task (defaults tuned for CartPole-v1)."""

    env_id: str = "CartPole-v1"
    """Gymnasium environment id (Discrete or 1-D Box actions)."""
    seed: int = 1
    """Seed of torch, numpy, the reset seeds and the minibatch shuffling."""
    total_timesteps: int = 200_000
    """Environment steps to train for (training stops after the update that crosses it: whole episodes).
    Resuming with a larger total extends a run (GRPO has no schedule)."""
    group_size: int = 8
    """G: episodes per reset seed (>= 2; a group of one has no spread)."""
    num_groups: int = 4
    """Reset seeds ("prompts") per update."""
    learning_rate: float = 3e-3
    """Adam step size."""
    update_epochs: int = 8
    """Passes over the collected steps per update."""
    num_minibatches: int = 4
    """Minibatches per epoch."""
    clip_coef: float = 0.2
    """Ratio clipping epsilon (eq-ppo-clip)."""
    beta: float = 0.0
    """Weight of the k3 KL penalty to the reference (initial) policy; 0 disables it."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    max_grad_norm: float | None = 0.5
    """Global gradient-norm clipping threshold; ``None`` or ``0`` turns clipping off."""
    scale: str = "group"
    """Advantage scaling: 'group' (GRPO), 'batch' or 'none' (Dr. GRPO, centring only)."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the policy (at least one layer)."""
    eval_every: int = 0
    """Environment steps between deterministic evaluations (argmax / Gaussian mean) on separate environments
    seeded ``seed + 100000``, after the update that crosses each mark; 0 disables them. Logged as ``eval_return``."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    device: str = "cpu"
    """Torch device ("cpu", "cuda", "cuda:N"); an unavailable device is an error before training."""
    torch_threads: int | None = 1
    """``torch.set_num_threads`` during training; None leaves it."""
    checkpoint_path: str | None = None
    """Where to save checkpoints (atomic; also on Ctrl-C/SIGTERM); None disables them. ``train(cfg, resume=True)``
    continues from it; a fresh run refuses to overwrite an existing one unless ``overwrite=True``."""
    checkpoint_every: int = 50_000
    """Save a checkpoint every this many environment steps (and at the end)."""
    log_path: str | None = None
    """JSONL file receiving every logged metric; None disables it."""


def default_config(env_id: str = "CartPole-v1", **overrides) -> GRPOControlConfig:
    """``GRPOControlConfig`` for ``env_id`` with ``overrides`` (same interface as ``ppo.default_config``)."""
    return GRPOControlConfig(env_id=env_id, **overrides)


def _validate(cfg: GRPOControlConfig) -> None:
    if not isinstance(cfg, GRPOControlConfig):
        raise TypeError(f"grpo_control.train needs a GRPOControlConfig, got {type(cfg).__name__}")
    if not isinstance(cfg.group_size, int) or cfg.group_size < 2:
        raise ValueError(f"group_size must be an integer >= 2 (GRPO normalises returns within a group; a group "
                         f"of one has no spread), got {cfg.group_size!r}")
    for name in ("total_timesteps", "num_groups", "update_epochs", "num_minibatches", "checkpoint_every",
                 "eval_episodes"):
        check_positive_int(name, getattr(cfg, name))
    check_positive_int("eval_every", cfg.eval_every, allow_zero=True)
    check_seed(cfg.seed)
    check_torch_threads(cfg.torch_threads)
    cfg.hidden = check_hidden(cfg.hidden)
    resolve_device(cfg.device)
    check_positive("learning_rate", cfg.learning_rate)
    check_positive("clip_coef", cfg.clip_coef)
    check_positive("beta", cfg.beta, allow_zero=True)
    check_positive("ent_coef", cfg.ent_coef, allow_zero=True)
    check_max_grad_norm(cfg.max_grad_norm)
    if cfg.scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {cfg.scale!r}")


@torch.no_grad()
def collect_groups(envs: list, policy: nn.Module, reset_seeds: list[int], group_size: int,
                   device: torch.device = torch.device("cpu")) -> dict:
    """Run ``group_size`` episodes from each reset seed with ``policy``, all in lock-step.

    ``envs`` holds ``len(reset_seeds) * group_size`` single environments; episode ``j`` uses
    seed ``reset_seeds[j // group_size]``. Only unfinished episodes are stepped. Returns the
    concatenated per-step ``obs``, ``actions``, ``logprobs``, ``episode`` index, the episode
    ``returns`` and ``lengths``, and ``end_order`` (episode indices in the order they ended,
    with the number of steps collected so far at that moment).
    """
    n = len(envs)
    if n != len(reset_seeds) * group_size:
        raise ValueError(f"need {len(reset_seeds) * group_size} environments, got {n}")
    obs = np.stack([env.reset(seed=int(reset_seeds[j // group_size]))[0] for j, env in enumerate(envs)]).astype(np.float32)
    active = np.ones(n, dtype=bool)
    returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
    buf_obs, buf_act, buf_logp, buf_ep, end_order = [], [], [], [], []
    discrete = isinstance(policy, CategoricalPolicy)
    steps = 0
    while active.any():
        idx = np.nonzero(active)[0]
        o = torch.as_tensor(obs[idx], device=device)
        dist = policy.distribution(o)
        a = dist.sample()
        buf_obs.append(o), buf_act.append(a), buf_logp.append(log_prob(dist, a))
        buf_ep.append(torch.as_tensor(idx))
        a_np = a.cpu().numpy()
        if not discrete:
            space = envs[0].action_space
            a_np = np.clip(a_np, space.low, space.high)
        steps += len(idx)
        for k, j in enumerate(idx):
            o2, r, term, trunc, _ = envs[j].step(a_np[k])
            obs[j] = o2
            returns[j] += float(r)
            lengths[j] += 1
            if term or trunc:
                active[j] = False
                end_order.append((int(j), steps))
    return {"obs": torch.cat(buf_obs), "actions": torch.cat(buf_act), "logprobs": torch.cat(buf_logp),
            "episode": torch.cat(buf_ep), "returns": returns, "lengths": lengths, "end_order": end_order}


def train(cfg: GRPOControlConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Train GRPO on a control task; returns :class:`rlcore.algos.TrainResult` (agent = the policy).
    ``resume``, ``overwrite`` and Ctrl-C as in :func:`rlcore.algos.ppo.train` (see :mod:`rlcore.lifecycle`)."""
    _validate(cfg)
    device = resolve_device(cfg.device)
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    t0 = time.perf_counter()
    # CPU kernels used here are deterministic already (tested); asking torch for deterministic
    # algorithms imports torch._inductor (seconds), so only do it where it matters (CUDA)
    seed_everything(cfg.seed, deterministic=device.type != "cpu")

    n_envs = cfg.num_groups * cfg.group_size
    envs = [make_env(cfg.env_id) for _ in range(n_envs)]
    try:
        require_discrete_or_box(envs[0].action_space, "GRPO", cfg.env_id)
        require_flat_box_observations(envs[0].observation_space, "GRPO", cfg.env_id)
        state = begin_run(cfg, "grpo_control", resume=resume, overwrite=overwrite, safe=RESUME_SAFE_FIELDS,
                          required=["policy", "optimizer", "history", "rng", "seed_rng", "shuffle_gen", "envs",
                                    "global_step"], map_location=device)
    except BaseException:
        for env in envs:
            env.close()
        raise
    for i, env in enumerate(envs):
        env.action_space.seed(cfg.seed + i)
    policy = make_policy(envs[0].observation_space, envs[0].action_space, cfg.hidden).to(device)
    reference = copy.deepcopy(policy).requires_grad_(False) if cfg.beta > 0 else None
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5, **fused_adam(device))
    seed_rng = np.random.default_rng(cfg.seed)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)

    history, global_step = History(), 0
    ckpt = cfg.checkpoint_path
    if state is not None:
        policy.load_state_dict(state["policy"])
        if reference is not None:
            reference.load_state_dict(state["reference"])
        optimizer.load_state_dict(state["optimizer"])
        history.load_state_dict(state["history"])
        set_rng_state(state["rng"])
        seed_rng.bit_generator.state = state["seed_rng"]
        shuffle_gen.set_state(state["shuffle_gen"])
        envs = pickle.loads(state["envs"])
        global_step = state["global_step"]
        if global_step >= cfg.total_timesteps:
            notice(f"the checkpoint is at step {global_step}, which already reaches total_timesteps="
                   f"{cfg.total_timesteps}: nothing left to train (pass a larger total to extend the run)")
    logger = open_log(cfg.log_path, global_step if state is not None else None)

    def save():
        if ckpt is not None:
            save_checkpoint(ckpt, {"algo": "grpo_control", "config": asdict(cfg), "policy": policy.state_dict(),
                                   "reference": None if reference is None else reference.state_dict(),
                                   "optimizer": optimizer.state_dict(), "history": history.state_dict(),
                                   "rng": rng_state(), "seed_rng": seed_rng.bit_generator.state,
                                   "shuffle_gen": shuffle_gen.get_state(), "envs": pickle.dumps(envs),
                                   "global_step": global_step})

    bar = progress_bar(total=cfg.total_timesteps, initial=global_step, desc=f"GRPO {cfg.env_id}",
                       disable=None if progress else True)
    with GracefulInterrupt() as stop:
        while global_step < cfg.total_timesteps:
            # ---- 1. groups of G episodes from the same reset seed
            reset_seeds = seed_rng.integers(0, 2**31 - 1, size=cfg.num_groups).tolist()
            data = collect_groups(envs, policy, reset_seeds, cfg.group_size, device)
            for j, steps_then in data["end_order"]:
                step = global_step + steps_then
                history.log(step, episode_return=data["returns"][j], episode_length=data["lengths"][j])
                logger.log(step, episode_return=float(data["returns"][j]), episode_length=int(data["lengths"][j]))
            n_steps = int(data["lengths"].sum())
            global_step += n_steps

            # ---- 2. group-normalised advantage of each episode, copied to all of its steps
            ep_returns = torch.as_tensor(data["returns"], dtype=torch.float32).view(cfg.num_groups, cfg.group_size)
            ep_adv = group_normalized_advantages(ep_returns, scale=cfg.scale).flatten().to(device)
            zero_share = float(zero_variance_groups(ep_returns).float().mean())
            advantages = ep_adv[data["episode"].to(device)]
            obs, actions, old_logp = data["obs"], data["actions"], data["logprobs"]
            if reference is not None:
                with torch.no_grad():
                    ref_logp = log_prob(reference.distribution(obs), actions)

            # ---- 3. clipped surrogate over all steps (token-level mean), no critic
            mb_size = max(1, -(-n_steps // cfg.num_minibatches))
            kls, clipfracs, kl_refs = [], [], []
            for _ in range(cfg.update_epochs):
                perm = torch.randperm(n_steps, generator=shuffle_gen).to(device)
                for start in range(0, n_steps, mb_size):
                    mb = perm[start:start + mb_size]
                    dist = policy.distribution(obs[mb])
                    newlogp = log_prob(dist, actions[mb])
                    loss = clipped_surrogate_loss(newlogp, old_logp[mb], advantages[mb], cfg.clip_coef)
                    ent = entropy(dist).mean()
                    loss = loss - cfg.ent_coef * ent
                    if reference is not None:
                        kl_ref = kl_k3(newlogp, ref_logp[mb]).mean()
                        loss = loss + cfg.beta * kl_ref
                        kl_refs.append(kl_ref.item())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    clip_grad_norm(policy.parameters(), cfg.max_grad_norm)  # None / 0: no clipping
                    optimizer.step()
                    kls.append(float(approx_kl(newlogp, old_logp[mb])))
                    clipfracs.append(float(clip_fraction(newlogp, old_logp[mb], cfg.clip_coef)))

            metrics = dict(policy_loss=loss.item(), entropy=ent.item(), approx_kl=float(np.mean(kls)),
                           clip_fraction=float(np.mean(clipfracs)), zero_variance_share=zero_share,
                           group_return_mean=float(ep_returns.mean()), group_return_std=float(ep_returns.std(1).mean()),
                           kl_ref=float(np.mean(kl_refs)) if kl_refs else None, wall_seconds=time.perf_counter() - t0)
            history.log(global_step, **metrics)
            logger.log(global_step, **{k: v for k, v in metrics.items() if v is not None})
            # greedy evaluation (separate environments) after the update that crosses each eval_every mark
            if cfg.eval_every and global_step // cfg.eval_every > (global_step - n_steps) // cfg.eval_every:
                ev = evaluate(lambda o: act(policy, o), cfg.env_id, cfg.eval_episodes, seed=cfg.seed + 100_000)
                history.log(global_step, eval_return=float(ev.mean()), eval_return_std=float(ev.std()))
                logger.log(global_step, eval_return=float(ev.mean()), eval_return_std=float(ev.std()))
            bar.update(n_steps)
            bar.set_postfix(ret=f"{ep_returns.mean():.1f}")
            # checkpoint after the update that crosses each checkpoint_every mark; Ctrl-C: save and stop
            if global_step // cfg.checkpoint_every > (global_step - n_steps) // cfg.checkpoint_every \
                    and global_step < cfg.total_timesteps and not stop.requested:
                save()
            if stop.requested:
                break

    save()
    bar.close()
    logger.close()
    for env in envs:
        env.close()
    if stop.requested:
        raise stop.interrupted(ckpt, global_step)
    return TrainResult(history=history, agent=policy, config=cfg, env_steps=global_step,
                       wall_seconds=time.perf_counter() - t0)


def load_agent(state: dict, device: str = "cpu") -> nn.Module:
    """The trained policy of a GRPO checkpoint."""
    cfg = state["config"]
    env = make_env(cfg["env_id"])
    policy = make_policy(env.observation_space, env.action_space, tuple(cfg["hidden"]))
    env.close()
    policy.load_state_dict(state["policy"])
    return policy.to(device).eval()


def act(agent: nn.Module, obs, deterministic: bool = True):
    """Action of the policy returned by :func:`train` for raw observation(s)."""
    if not isinstance(agent, (CategoricalPolicy, GaussianPolicy)):
        raise TypeError(f"grpo_control.act expects the policy returned by grpo_control.train (CategoricalPolicy or "
                        f"GaussianPolicy), got {type(agent).__name__}; use the act function of the module that "
                        f"trained this agent")
    return act_with(agent, obs, deterministic)

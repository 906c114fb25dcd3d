"""Trust Region Policy Optimization (Schulman et al. 2015), one file, discrete and continuous actions.

Each update:

1. collect a fixed-length rollout (:class:`rlcore.rollout.RolloutCollector`, GAE, eq-gae);
2. policy step: maximise the surrogate ``L(theta) = E[r(theta) A]`` (eq-surrogate-sample,
   :func:`rlcore.losses.surrogate_loss`) subject to ``mean KL(pi_old || pi_theta) <= max_kl``
   (eq-trpo-problem). With the linear model of ``L`` (gradient ``g``) and the quadratic model of
   the KL (its Hessian at ``theta_old`` is the Fisher matrix ``F``, eq-fisher) the solution is
   ``theta_old + sqrt(2 delta / (s^T F s)) s`` with ``s = F^{-1} g`` (eq-trpo-step).
   ``s`` comes from :func:`conjugate_gradient` using only Fisher-vector products
   (:func:`fisher_vector_product`, double backprop of the KL; no matrix is ever formed).
   :func:`line_search` then backtracks until the real surrogate improves *and* the real KL
   is within ``max_kl`` (and reverts to ``theta_old`` if no step qualifies);
3. critic: a few epochs of Adam on the value loss (eq-value-loss) towards the lambda-returns.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Normal, kl_divergence

from rlcore.envs import make_vector_env, require_discrete_or_box, require_flat_box_observations
from rlcore.lifecycle import GracefulInterrupt, check_max_grad_norm, clip_grad_norm
from rlcore.losses import explained_variance, surrogate_loss, value_loss
from rlcore.networks import entropy, log_prob
from rlcore.rollout import ActorCritic, RolloutCollector, act_with
from rlcore.training import History, rng_state, save_checkpoint, set_rng_state
from rlcore.training import progress as progress_bar
from rlcore.utils import check_positive, check_probability, seed_everything

from . import (RESUME_SAFE, TrainResult, begin_run, check_hidden, check_positive_int, check_seed,
               check_torch_threads, evaluate, fused_adam, notice, open_log, resolve_device, whole_batches)

__all__ = ["TRPOConfig", "PRESETS", "RESUME_SAFE_FIELDS", "default_config", "train", "act", "load_agent", "flat_params",
           "set_flat_params", "flat_grad", "mean_kl", "fisher_vector_product", "fisher_operator", "conjugate_gradient",
           "line_search"]

RESUME_SAFE_FIELDS = {
    **RESUME_SAFE,
    "eval_every": "only the deterministic evaluations (separate environments) change; training is unaffected",
    "eval_episodes": "only the deterministic evaluations (separate environments) change; training is unaffected",
}
"""Config fields a resumed TRPO run may change (:data:`rlcore.algos.RESUME_SAFE`); any other change is refused."""


@dataclass
class TRPOConfig:
    """Hyperparameters of TRPO. Defaults are tuned for CartPole-v1; see ``PRESETS``."""

    env_id: str = "CartPole-v1"
    """Gymnasium environment id (Discrete or 1-D Box actions)."""
    seed: int = 1
    """Seed of torch, numpy, the environments and the critic's minibatches."""
    total_timesteps: int = 97 * 1024
    """Environment steps to train for. TRPO trains whole rollouts of ``num_envs * num_steps`` steps: a total
    that is not a multiple is rounded *up*, with a notice. The default, 97 rollouts of 1024 (99,328 steps,
    "100k"), is the measured CartPole-v1 run. Resuming with a larger total extends a run (TRPO has no schedule)."""
    num_envs: int = 8
    """Parallel environments."""
    num_steps: int = 128
    """Steps per environment per rollout; batch = ``num_envs * num_steps``."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda (eq-gae)."""
    max_kl: float = 0.01
    """Trust-region radius delta: bound on the mean KL(pi_old || pi_new) of a step (eq-trpo-problem)."""
    damping: float = 0.1
    """Added to the Fisher matrix, ``(F + damping I) x``, to keep CG well conditioned."""
    cg_iters: int = 10
    """Conjugate-gradient iterations."""
    cg_tol: float = 1e-10
    """CG stops when the squared residual falls below this."""
    backtrack_coef: float = 0.5
    """Line search shrinks the step by this factor each try."""
    max_backtracks: int = 10
    """Line-search tries before giving up (and keeping the old policy)."""
    accept_ratio: float = 0.1
    """Accept a step when actual / expected improvement exceeds this (and the KL is within max_kl)."""
    norm_adv: bool = True
    """Normalise advantages over the batch."""
    vf_learning_rate: float = 1e-3
    """Adam step size of the critic."""
    vf_epochs: int = 10
    """Critic epochs per update (a good critic matters: GAE advantages are only as good as V)."""
    vf_minibatches: int = 8
    """Critic minibatches per epoch."""
    max_grad_norm: float | None = None
    """Gradient-norm clipping of the critic's Adam steps; ``None`` or ``0`` (the default) turns it off. (The
    policy step needs none: the trust region bounds it.)"""
    normalize_obs: bool = False
    """Running mean/std observation normalisation."""
    normalize_reward: bool = False
    """Scale rewards by the running std of the discounted return."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of actor and critic (at least one layer)."""
    log_std_init: float = 0.0
    """Initial log std of the Gaussian policy (continuous actions)."""
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


PRESETS: dict[str, dict] = {
    "CartPole-v1": {},
    "Pendulum-v1": dict(total_timesteps=48 * 4096, num_envs=4, num_steps=1024, gamma=0.9, max_kl=0.02,
                        normalize_obs=True, normalize_reward=True, vf_epochs=10, vf_minibatches=16, log_std_init=-0.5),
}
"""Tuned overrides per environment id (budgets in whole rollouts: ``48 * 4096`` is the 200k-step budget the
preset was measured with, which TRPO rounded down then)."""


def default_config(env_id: str = "CartPole-v1", **overrides) -> TRPOConfig:
    """``TRPOConfig`` with the preset for ``env_id`` and ``overrides`` applied."""
    base = dict(PRESETS.get(env_id, {}))
    base.update(overrides)
    return TRPOConfig(env_id=env_id, **base)


# --------------------------------------------------------------------- the pieces the book shows
def flat_params(module: nn.Module) -> torch.Tensor:
    """All parameters of ``module`` as one vector (the TRPO update works on this vector)."""
    return torch.cat([p.data.reshape(-1) for p in module.parameters()])


def set_flat_params(module: nn.Module, flat: torch.Tensor) -> None:
    """Write a flat parameter vector back into ``module``."""
    i = 0
    for p in module.parameters():
        n = p.numel()
        p.data.copy_(flat[i:i + n].view_as(p))
        i += n
    if i != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} entries but the module has {i} parameters")


def flat_grad(output: torch.Tensor, module: nn.Module, **kw) -> torch.Tensor:
    """Gradient of a scalar w.r.t. every parameter of ``module``, flattened."""
    grads = torch.autograd.grad(output, list(module.parameters()), **kw)
    return torch.cat([g.reshape(-1) for g in grads])


def _detached(dist):
    if isinstance(dist, Categorical):
        return Categorical(logits=dist.logits.detach())
    if isinstance(dist, Normal):
        return Normal(dist.loc.detach(), dist.scale.detach())
    raise TypeError(f"unsupported distribution {type(dist).__name__}")


def mean_kl(policy: nn.Module, obs: torch.Tensor, old_dist=None) -> torch.Tensor:
    """``mean_s KL(pi_old(.|s) || pi_theta(.|s))`` over a batch of states (the TRPO constraint).

    ``old_dist`` defaults to the current policy, detached (then the value is 0 but its Hessian
    w.r.t. the parameters is the Fisher information matrix, eq-fisher).
    """
    dist = policy.distribution(obs)
    old = _detached(dist) if old_dist is None else old_dist
    kl = kl_divergence(old, dist)
    return (kl.sum(-1) if isinstance(dist, Normal) else kl).mean()


def fisher_vector_product(policy: nn.Module, obs: torch.Tensor, v: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    """``(F + damping I) v`` by double backprop (eq-fisher-vector-product):

    ``F v = grad_theta ( (grad_theta KL(pi_old || pi_theta)) . v )`` at ``theta = theta_old``.
    Costs two backward passes; the ``P x P`` matrix ``F`` is never built.
    """
    kl = mean_kl(policy, obs)
    grad_kl = flat_grad(kl, policy, create_graph=True)
    fvp = flat_grad((grad_kl * v.detach()).sum(), policy)
    return fvp + damping * v


def fisher_operator(policy: nn.Module, obs: torch.Tensor,
                    damping: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> (F + damping I) v``: the products of :func:`fisher_vector_product`, with ``grad KL`` built once.

    Conjugate gradient asks for about ten products at the same ``theta_old``; the first backward pass
    (``grad_theta KL`` with its graph) is the same for all of them, so only the second one is repeated.
    Same values as :func:`fisher_vector_product` (tested), at about half the cost per product.
    """
    kl = mean_kl(policy, obs)
    grad_kl = flat_grad(kl, policy, create_graph=True)

    def fvp(v: torch.Tensor) -> torch.Tensor:
        return flat_grad((grad_kl * v.detach()).sum(), policy, retain_graph=True) + damping * v

    return fvp


def conjugate_gradient(Avp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       tol: float = 1e-10) -> torch.Tensor:
    """Solve ``A x = b`` for symmetric positive-definite ``A`` given only ``v -> A v`` (eq-cg).

    Exact after ``dim`` iterations in exact arithmetic; TRPO uses about 10.
    """
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive integer, got {iters!r}")
    x = torch.zeros_like(b)
    r = b.clone()  # residual b - A x with x = 0
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < tol:
            break
        Ap = Avp(p)
        alpha = rr / (p @ Ap)
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def line_search(policy: nn.Module, loss_fn: Callable[[], torch.Tensor], kl_fn: Callable[[], torch.Tensor],
                old_params: torch.Tensor, fullstep: torch.Tensor, expected_improve: float, max_kl: float,
                backtrack_coef: float = 0.5, max_backtracks: int = 10, accept_ratio: float = 0.1) -> dict:
    """Backtracking line search on ``theta_old + frac * fullstep``, ``frac = 1, c, c^2, ...``.

    ``loss_fn()`` is the surrogate *loss* (to decrease) and ``kl_fn()`` the mean KL from
    ``pi_old``, both evaluated at the policy's current parameters. A step is accepted when
    the KL is within ``max_kl``, the loss decreased, and the actual improvement is at least
    ``accept_ratio`` of the linear prediction ``frac * expected_improve``. If none is
    accepted the old parameters are restored. Returns a dict with ``accepted``, ``fraction``,
    ``improvement``, ``kl``.
    """
    with torch.no_grad():
        set_flat_params(policy, old_params)
        loss_old = float(loss_fn())
        frac = 1.0
        for _ in range(max_backtracks):
            set_flat_params(policy, old_params + frac * fullstep)
            loss_new, kl = float(loss_fn()), float(kl_fn())
            improvement = loss_old - loss_new
            if np.isfinite(loss_new) and kl <= max_kl and improvement > 0 \
                    and improvement >= accept_ratio * frac * expected_improve:
                return {"accepted": True, "fraction": frac, "improvement": improvement, "kl": kl}
            frac *= backtrack_coef
        set_flat_params(policy, old_params)
        return {"accepted": False, "fraction": 0.0, "improvement": 0.0, "kl": 0.0}


def trpo_step(policy: nn.Module, obs: torch.Tensor, actions: torch.Tensor, old_logp: torch.Tensor,
              advantages: torch.Tensor, max_kl: float, damping: float = 0.1, cg_iters: int = 10,
              cg_tol: float = 1e-10, backtrack_coef: float = 0.5, max_backtracks: int = 10,
              accept_ratio: float = 0.1) -> dict:
    """One natural-gradient step with line search on a batch (eq-trpo-step); returns diagnostics."""
    with torch.no_grad():
        old_dist = _detached(policy.distribution(obs))

    def loss_fn():
        return surrogate_loss(log_prob(policy.distribution(obs), actions), old_logp, advantages)

    def kl_fn():
        return mean_kl(policy, obs, old_dist)

    loss = loss_fn()
    g = -flat_grad(loss, policy)  # gradient of the surrogate *objective*
    fvp = fisher_operator(policy, obs, damping)  # v -> (F + damping I) v at theta_old
    stepdir = conjugate_gradient(fvp, g, cg_iters, cg_tol)
    shs = float(stepdir @ fvp(stepdir))
    if not np.isfinite(shs) or shs <= 0:
        return {"accepted": False, "fraction": 0.0, "improvement": 0.0, "kl": 0.0, "step_size": 0.0,
                "grad_norm": float(g.norm()), "surrogate_loss": float(loss.detach())}
    step_size = float(np.sqrt(2.0 * max_kl / shs))  # puts the quadratic KL model exactly on the boundary
    fullstep = step_size * stepdir
    expected_improve = float(g @ fullstep)
    info = line_search(policy, loss_fn, kl_fn, flat_params(policy), fullstep, expected_improve, max_kl,
                       backtrack_coef, max_backtracks, accept_ratio)
    info.update(step_size=step_size, grad_norm=float(g.norm()), surrogate_loss=float(loss.detach()))
    return info


# --------------------------------------------------------------------- training loop
def _validate(cfg: TRPOConfig) -> None:
    if not isinstance(cfg, TRPOConfig):
        raise TypeError(f"trpo.train needs a TRPOConfig, got {type(cfg).__name__}; build one with trpo.TRPOConfig(...)")
    for name in ("total_timesteps", "num_envs", "num_steps", "cg_iters", "max_backtracks", "vf_epochs",
                 "vf_minibatches", "checkpoint_every", "eval_episodes"):
        check_positive_int(name, getattr(cfg, name))
    check_positive_int("eval_every", cfg.eval_every, allow_zero=True)
    check_seed(cfg.seed)
    check_torch_threads(cfg.torch_threads)
    cfg.hidden = check_hidden(cfg.hidden)
    resolve_device(cfg.device)
    check_max_grad_norm(cfg.max_grad_norm)
    check_positive("max_kl", cfg.max_kl)
    check_positive("damping", cfg.damping, allow_zero=True)
    check_positive("vf_learning_rate", cfg.vf_learning_rate)
    check_probability("gamma", cfg.gamma)
    check_probability("gae_lambda", cfg.gae_lambda)
    check_probability("backtrack_coef", cfg.backtrack_coef, closed=False)


def train(cfg: TRPOConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> TrainResult:
    """Train TRPO; returns :class:`rlcore.algos.TrainResult`. ``resume``, ``overwrite`` and Ctrl-C as in
    :func:`rlcore.algos.ppo.train` (see :mod:`rlcore.lifecycle`)."""
    _validate(cfg)
    device = resolve_device(cfg.device)
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    t0 = time.perf_counter()
    # CPU kernels used here are deterministic already (tested); asking torch for deterministic
    # algorithms imports torch._inductor (seconds), so only do it where it matters (CUDA)
    seed_everything(cfg.seed, deterministic=device.type != "cpu")

    envs = make_vector_env(cfg.env_id, cfg.num_envs, seed=None)
    try:
        require_discrete_or_box(envs.single_action_space, "TRPO", cfg.env_id)
        require_flat_box_observations(envs.single_observation_space, "TRPO", cfg.env_id)
        batch_size = cfg.num_envs * cfg.num_steps
        num_updates = whole_batches(cfg.total_timesteps, batch_size, "TRPO", "rollouts (num_envs * num_steps)")
        state = begin_run(cfg, "trpo", resume=resume, overwrite=overwrite, safe=RESUME_SAFE_FIELDS,
                          required=["agent", "vf_optimizer", "collector", "history", "rng", "shuffle_gen",
                                    "global_step", "update"], map_location=device)
    except BaseException:
        envs.close()
        raise
    agent = ActorCritic(envs.single_observation_space, envs.single_action_space, cfg.hidden, cfg.log_std_init).to(device)
    vf_optimizer = torch.optim.Adam(agent.critic.parameters(), lr=cfg.vf_learning_rate, eps=1e-5, **fused_adam(device))
    collector = RolloutCollector(envs, agent, cfg.num_steps, cfg.gamma, cfg.gae_lambda,
                                 cfg.normalize_obs, cfg.normalize_reward, device)
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)

    history, global_step, update = History(), 0, 0
    ckpt = cfg.checkpoint_path
    if state is not None:
        agent.load_state_dict(state["agent"])
        vf_optimizer.load_state_dict(state["vf_optimizer"])
        collector.load_state_dict(state["collector"], seed=cfg.seed)
        history.load_state_dict(state["history"])
        set_rng_state(state["rng"])
        shuffle_gen.set_state(state["shuffle_gen"])
        global_step, update = state["global_step"], state["update"]
        if update >= num_updates:
            notice(f"the checkpoint is at step {global_step}, which already reaches total_timesteps="
                   f"{cfg.total_timesteps}: nothing left to train (pass a larger total to extend the run)")
    else:
        collector.reset(cfg.seed)
    logger = open_log(cfg.log_path, global_step if state is not None else None)

    def save():
        if ckpt is not None:
            save_checkpoint(ckpt, {"algo": "trpo", "config": asdict(cfg), "agent": agent.state_dict(),
                                   "vf_optimizer": vf_optimizer.state_dict(), "collector": collector.state_dict(),
                                   "history": history.state_dict(), "rng": rng_state(),
                                   "shuffle_gen": shuffle_gen.get_state(), "global_step": global_step, "update": update})

    bar = progress_bar(total=num_updates * batch_size, initial=global_step, desc=f"TRPO {cfg.env_id}",
                       disable=None if progress else True)
    with GracefulInterrupt() as stop:
        while update < num_updates:
            update += 1
            rollout, episodes = collector.collect(global_step)
            global_step += batch_size
            for step, ret, length in episodes:
                history.log(step, episode_return=ret, episode_length=length)
                logger.log(step, episode_return=ret, episode_length=length)
            b = rollout.flat()
            adv = b["advantages"]
            if cfg.norm_adv:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)

            # ---- policy: natural gradient step inside the KL trust region
            info = trpo_step(agent.policy, b["obs"], b["actions"], b["logprobs"], adv, cfg.max_kl, cfg.damping,
                             cfg.cg_iters, cfg.cg_tol, cfg.backtrack_coef, cfg.max_backtracks, cfg.accept_ratio)

            # ---- critic: a few epochs of Adam on the value loss towards the lambda-returns
            mb_size = max(1, batch_size // cfg.vf_minibatches)
            for _ in range(cfg.vf_epochs):
                perm = torch.randperm(batch_size, generator=shuffle_gen).to(device)
                for start in range(0, batch_size, mb_size):
                    mb = perm[start:start + mb_size]
                    v_loss = value_loss(agent.value(b["obs"][mb]), b["returns"][mb])
                    vf_optimizer.zero_grad(set_to_none=True)
                    v_loss.backward()
                    if check_max_grad_norm(cfg.max_grad_norm) is not None:  # None / 0: no clipping
                        clip_grad_norm(agent.critic.parameters(), cfg.max_grad_norm)
                    vf_optimizer.step()

            with torch.no_grad():
                ent = float(entropy(agent.distribution(b["obs"])).mean())
            metrics = dict(policy_loss=info["surrogate_loss"], value_loss=v_loss.item(), entropy=ent, kl=info["kl"],
                           step_accepted=float(info["accepted"]), step_fraction=info["fraction"],
                           surrogate_improvement=info["improvement"], step_size=info["step_size"],
                           grad_norm=info["grad_norm"], explained_variance=explained_variance(b["values"], b["returns"]),
                           wall_seconds=time.perf_counter() - t0)
            history.log(global_step, **metrics)
            logger.log(global_step, **metrics)
            # greedy evaluation (separate environments) after the update that crosses each eval_every mark
            if cfg.eval_every and global_step // cfg.eval_every > (global_step - batch_size) // cfg.eval_every:
                ev = evaluate(lambda o: act(agent, o), cfg.env_id, cfg.eval_episodes, seed=cfg.seed + 100_000)
                history.log(global_step, eval_return=float(ev.mean()), eval_return_std=float(ev.std()))
                logger.log(global_step, eval_return=float(ev.mean()), eval_return_std=float(ev.std()))
            bar.update(batch_size)
            if "episode_return" in history:
                bar.set_postfix(ret=f"{np.mean(history['episode_return'][-100:]):.1f}")
            # checkpoint after the update that crosses each checkpoint_every mark; Ctrl-C: save and stop
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
    """The trained :class:`ActorCritic` of a TRPO checkpoint (with its observation normaliser's statistics)."""
    from rlcore.algos.ppo import _load_actor_critic

    return _load_actor_critic(state, device)


def act(agent: ActorCritic, obs, deterministic: bool = True):
    """Action of a TRPO agent for raw observation(s) (applies the agent's observation normaliser)."""
    if not isinstance(agent, ActorCritic):
        raise TypeError(f"trpo.act expects the ActorCritic agent returned by trpo.train, got {type(agent).__name__}; "
                        f"use the act function of the module that trained this agent")
    return act_with(agent, obs, deterministic, agent.obs_normalizer)

"""PPO for language models (RLHF-style), read top to bottom (coverage C14, C15).

The token-level MDP
-------------------
A prompt ``q`` is the initial state. At generation step ``t`` the state is
``s_t = (q, o_<t)``, the action is the next token ``o_t`` and the episode ends when the
model emits EOS (**terminated**: nothing follows, ``V = 0``) or hits ``max_new_tokens``.

What happens at ``max_new_tokens`` is a modelling choice (``PPOLMConfig.truncation``):

* ``"terminal"`` (default, as in TRL/OpenRLHF): the reward function scores the cut-off text,
  so the cut is the end of the episode: score on the last token, ``V(next) = 0``. This is
  the right call here because the position ``t`` is part of the state (the model sees how
  many tokens it has written), so the length limit is a rule of the task, not an
  unobserved time limit (Pardo et al., 2018, "Time limits in RL").
* ``"bootstrap"``: treat the cut as a Gymnasium-style *truncation*: the episode "would have
  gone on", so GAE bootstraps from ``V(s_{|o|})`` **and the score of a truncated sequence is
  withheld** (the score is the reward of an ending that did not happen yet). Assigning the
  score *and* bootstrapping counts the future twice: with ``gamma = 1`` the critic's target
  ``score + V(s_{|o|})`` then grows without bound (we measured the value loss rising from
  0.34 to 2.2 in 16 steps on the tiny model before adopting this rule).

Reward (eq-rlhf-reward)::

    r_t = r_phi(q, o_<=t) * 1[t = |o|]  -  beta * log( pi_theta(o_t|s_t) / pi_ref(o_t|s_t) )

i.e. the sequence score (here a rule-based reward from :mod:`rlcore.llm.rewards`) arrives
on the last generated token and every token pays a KL penalty against a frozen reference
model. This is "KL in the reward" (InstructGPT). The alternative "KL in the loss" (GRPO)
adds ``beta * KL_k3`` to the loss instead; :func:`ppo_lm_loss` supports both and the
book/tests spell out how their gradients relate.

Advantages are token-level GAE (eq-gae) computed with :func:`rlcore.returns.gae` along the
token axis, and the policy loss is the token-level clipped surrogate of eq-ppo-lm::

    L(theta) = - 1/N sum_i 1/|o_i| sum_t min(r_{i,t} A_{i,t}, clip(r_{i,t}, 1-eps, 1+eps) A_{i,t})

with ``r_{i,t} = pi_theta(o_{i,t}|q, o_{i,<t}) / pi_old(o_{i,t}|q, o_{i,<t})``.

Value model (the cost GRPO removes)
-----------------------------------
:class:`ValueHead` wraps the policy LM. By default the critic **shares the trunk**: one
forward pass returns both the token log-probabilities and ``V(s_t) = w^T h_t + b`` from the
last hidden state ``h_t``. This halves memory but lets value-loss gradients move the
policy's features (weighted by ``vf_coef``). ``separate_critic=True`` deep-copies the
trunk for the critic (InstructGPT's choice): twice the parameters, activations and
optimizer state, which is exactly the "value model cost" of C15.

Memory metric: on GPU ``peak_mem_gb`` is ``torch.cuda.max_memory_allocated`` (reset every
step). On CPU it is the process' peak resident set size from ``resource.getrusage``
(``ru_maxrss``; Linux reports KiB). ``tracemalloc`` is not used because torch allocates
tensors outside Python's allocator and it would miss them. ``ru_maxrss`` is monotone over
the life of the process, so on CPU it is an upper bound that includes everything loaded.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..kl import kl_estimator as _kl_estimator
from ..lifecycle import (GracefulInterrupt, check_max_grad_norm, check_resume_config, clip_grad_norm,
                         load_run_checkpoint, prepare_run)
from ..losses import clip_fraction, clipped_surrogate_loss, explained_variance, value_loss
from ..returns import gae
from ..training import History, JSONLLogger, rng_state, save_checkpoint, set_rng_state
from ..utils import check_positive, check_probability, seed_everything

__all__ = [
    "ValueHead",
    "per_token_rewards",
    "token_gae",
    "masked_mean",
    "sequence_mean",
    "ppo_lm_loss",
    "sequence_logprobs_and_values",
    "peak_memory_gb",
    "PPOLMConfig",
    "PPOLMResult",
    "RESUME_SAFE_CHANGES",
    "train_ppo_lm",
]

ALGO = "ppo_llm"
"""The ``"algo"`` tag of PPO-LM checkpoints (:func:`rlcore.lifecycle.load_run_checkpoint` refuses others)."""

RESUME_SAFE_CHANGES = {
    "total_steps": "training continues to the new number of iterations (the learning rates are constant, so "
                   "extending a run is the same as having asked for more at the start); not below the "
                   "checkpoint's step",
    "checkpoint_every": "only how often the checkpoint is written",
    "checkpoint_path": "the run continues from, and saves to, the new path",
    "log_path": "later rows go to the new log (cut back to the checkpoint's step if it exists)",
    "log_every": "only which iterations are logged",
    "eval_every": "only when the greedy evaluation runs (it draws no random numbers)",
    "eval_max_new_tokens": "only the evaluation's completion budget",
}
"""Fields of :class:`PPOLMConfig` that may differ between a checkpoint and the run resuming it, and what changing
each does; any other difference is refused (:func:`rlcore.lifecycle.check_resume_config`)."""

_CHECKPOINT_KEYS = ("model", "ref_model", "optimizer", "history", "step", "rng", "generator", "perm_generator",
                    "order_rng", "config")


# ============================================================== value head
class ValueHead(nn.Module):
    """Policy LM plus a scalar value ``V(s_t)`` per token from the last hidden state.

    ``separate_critic=False`` (default): the critic reuses the policy's transformer trunk
    (one forward pass, shared features). ``separate_critic=True``: the critic is a frozen-
    from-the-start deep copy of the trunk that is trained on its own (InstructGPT style).
    The linear head starts at zero so the first values are 0 (no spurious advantages).
    """

    def __init__(self, model: nn.Module, separate_critic: bool = False):
        super().__init__()
        if not hasattr(model, "config") or not hasattr(model.config, "hidden_size"):
            raise TypeError("ValueHead needs a transformers causal LM with config.hidden_size")
        self.policy = model
        self.separate_critic = bool(separate_critic)
        self.critic = copy.deepcopy(model) if separate_critic else None
        p = next(model.parameters())
        self.v_head = nn.Linear(model.config.hidden_size, 1, device=p.device, dtype=torch.float32)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)

    def forward(self, input_ids, attention_mask, position_ids=None, logits_to_keep: int = 0):
        """Return ``(logits, values [B, T])``; ``values[:, j]`` is ``V`` of the prefix ending at ``j``.

        ``logits`` are ``[B, T, V]``, or only the last ``logits_to_keep`` positions when it is > 0
        (a 49k-token vocabulary makes full logits the largest tensor of the step).
        """
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          output_hidden_states=not self.separate_critic, use_cache=False,
                          logits_to_keep=logits_to_keep)
        if self.separate_critic:
            # the critic's own LM head is unused: keep a single position of its logits
            h = self.critic(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            output_hidden_states=True, use_cache=False, logits_to_keep=1).hidden_states[-1]
        else:
            h = out.hidden_states[-1]
        values = self.v_head(h.float()).squeeze(-1)
        return out.logits, values


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    # left-padded prompts: positions count real tokens only, as during generation
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sequence_logprobs_and_values(model: nn.Module, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                 temperature: float = 1.0, with_values: bool = True):
    """One forward pass over ``[prompt, completion]``.

    Returns ``(logp [N, L], values [N, L+1] or None)``: ``logp[:, t] = log pi(o_t | q, o_<t)``
    (logits divided by ``temperature``, matching the sampling distribution) and
    ``values[:, t] = V(q, o_<t)``; ``values[:, L]`` is the value after the last slot, used to
    bootstrap truncated sequences. ``model`` is a :class:`ValueHead` or a plain causal LM
    (then ``with_values`` must be false).
    """
    P = prompt_ids.shape[1]
    L = completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attn = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], dim=1)
    pos = _positions(attn)
    if isinstance(model, ValueHead):
        logits, values = model(input_ids, attn, pos, logits_to_keep=L + 1)
    else:
        if with_values:
            raise TypeError("with_values=True needs a ValueHead-wrapped model")
        logits = model(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=False,
                       logits_to_keep=L + 1).logits
        values = None
    # logits at position j predict token j+1: the kept slots P-1 .. P+L-2 predict the completion
    logits = logits[:, :-1].float() / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    logp = logp * completion_mask.to(logp.dtype)
    if values is not None and with_values:
        values = values[:, P - 1:P + L]  # V(s_0) .. V(s_L)
    else:
        values = None
    return logp, values


# ============================================================== rewards and advantages
def _last_index(completion_mask: torch.Tensor) -> torch.Tensor:
    lengths = completion_mask.long().sum(-1)
    if (lengths == 0).any():
        raise ValueError("every completion needs at least one generated token (completion_mask row of zeros)")
    # right padding: the last generated token is at length - 1
    return lengths - 1


def per_token_rewards(scores, logp: torch.Tensor, ref_logp: torch.Tensor, completion_mask: torch.Tensor,
                      beta: float, kl_estimator: str = "k1") -> torch.Tensor:
    """Per-token RLHF reward (eq-rlhf-reward), shape ``[N, L]``, zero on padding.

    ``r_t = scores * 1[t = last generated token] - beta * k(logp_t, ref_logp_t)``, where
    ``k`` is ``log pi_theta - log pi_ref`` (``kl_estimator="k1"``, the standard choice:
    its sum over a sequence is the sequence log-ratio) or k2/k3 from :mod:`rlcore.kl`.
    Everything is detached: rewards are constants for the policy gradient.
    """
    check_positive("beta", beta, allow_zero=True)
    if logp.shape != ref_logp.shape or logp.shape != completion_mask.shape:
        raise ValueError(f"logp {tuple(logp.shape)}, ref_logp {tuple(ref_logp.shape)} and completion_mask "
                         f"{tuple(completion_mask.shape)} must have the same shape [N, L]")
    scores = torch.as_tensor(scores, dtype=torch.float32, device=logp.device).reshape(-1)
    if scores.shape[0] != logp.shape[0]:
        raise ValueError(f"got {scores.shape[0]} scores for {logp.shape[0]} completions; pass one score per completion")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf; check the reward function(s)")
    mask = completion_mask.float()
    kl = _kl_estimator(kl_estimator)(logp.detach().float(), ref_logp.detach().float())
    rewards = -beta * kl * mask
    last = _last_index(completion_mask)
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores
    return rewards


def token_gae(rewards: torch.Tensor, values: torch.Tensor, completion_mask: torch.Tensor, terminated,
              gamma: float = 1.0, gae_lambda: float = 0.95):
    """Token-level GAE (eq-gae) via :func:`rlcore.returns.gae` along the token axis.

    ``values`` is ``[N, L+1]`` (``V(s_0) .. V(s_L)``, from :func:`sequence_logprobs_and_values`)
    or ``[N, L]`` (then nothing is bootstrapped after the last slot). At each sequence's last
    generated token the episode ends: where ``terminated`` is true -> ``V(next) = 0``; where
    it is false (truncated) -> bootstrap from ``V(s_{|o|})``. Padding is zeroed. (The trainer
    passes all-true ``terminated`` under ``truncation="terminal"``; see the module docstring.)
    Returns ``(advantages [N, L], returns [N, L])`` with ``returns = advantages + V(s_t)``.
    """
    N, L = rewards.shape
    mask = completion_mask.float()
    values = values.detach().float()
    if values.shape == (N, L + 1):
        v, v_next = values[:, :L], values[:, 1:]
    elif values.shape == (N, L):
        v = values
        v_next = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    else:
        raise ValueError(f"values must be [N, L+1] or [N, L] for rewards [N, L] = {(N, L)}, got {tuple(values.shape)}")
    v, v_next = v * mask, v_next * mask
    terminated = torch.as_tensor(terminated, dtype=torch.bool, device=rewards.device).reshape(-1)
    if terminated.shape[0] != N:
        raise ValueError(f"terminated has {terminated.shape[0]} entries for {N} completions")
    last = _last_index(completion_mask)
    rows = torch.arange(N, device=rewards.device)
    term = torch.zeros_like(mask)
    trunc = torch.zeros_like(mask)
    term[rows, last] = terminated.float()
    trunc[rows, last] = (~terminated).float()
    # padding slots (after the last token) are separate one-step "episodes" with zeros everywhere
    pad = 1.0 - mask
    adv = gae((rewards * mask).T, v.T, v_next.T, torch.maximum(term, pad).T, trunc.T, gamma, gae_lambda).T
    adv = adv * mask
    return adv, (adv + v) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is 1 (all tokens of the batch pooled)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def sequence_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1/N sum_i 1/|o_i| sum_t x_{i,t}`` (eq-ppo-lm's aggregation): per-sequence mean, then mean over sequences."""
    mask = mask.to(per_token.dtype)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def _whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) / torch.sqrt(var + eps) * mask


def ppo_lm_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, completion_mask: torch.Tensor,
                clip_coef: float = 0.2, values: torch.Tensor | None = None, returns: torch.Tensor | None = None,
                old_values: torch.Tensor | None = None, vf_coef: float = 0.1, vf_clip_coef: float | None = 0.2,
                ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0, kl_estimator: str = "k3"):
    """Token-level PPO loss for LMs (eq-ppo-lm, C14), plus the critic and an optional KL-in-loss term.

    * policy: ``1/N sum_i 1/|o_i| sum_t clipped_surrogate_loss(reduce="none")`` (eq-ppo-clip per token);
    * value (if ``values``/``returns`` given): :func:`rlcore.losses.value_loss` per token, same
      aggregation, weighted by ``vf_coef`` (clipped around ``old_values`` if ``vf_clip_coef``);
    * KL in the loss (if ``kl_coef > 0``): ``kl_coef * 1/N sum_i 1/|o_i| sum_t k(logp, ref_logp)``
      with estimator ``kl_estimator`` (k3 as in GRPO). Use it *instead of* KL in the reward.

    All inputs are ``[N, L]``. Returns ``(loss, metrics)``; metrics are floats.
    """
    check_positive("clip_coef", clip_coef, allow_zero=True)
    check_positive("kl_coef", kl_coef, allow_zero=True)
    mask = completion_mask.float()
    pg_per_token = clipped_surrogate_loss(logp, old_logp, advantages, clip_coef=clip_coef, reduce="none")
    pg_loss = sequence_mean(pg_per_token, mask)
    loss = pg_loss
    metrics: dict[str, float] = {"pg_loss": float(pg_loss.detach())}
    with torch.no_grad():
        m = mask.bool()
        metrics["clip_frac"] = float(clip_fraction(logp[m], old_logp[m], clip_coef)) if m.any() else 0.0
        metrics["approx_kl_old"] = float(masked_mean(old_logp - logp, mask))
    if values is not None:
        if returns is None:
            raise ValueError("values were given without returns; pass returns from token_gae")
        v_per_token = value_loss(values, returns, old_values=old_values if vf_clip_coef is not None else None,
                                 clip_coef=vf_clip_coef if old_values is not None else None, reduce="none")
        v_loss = sequence_mean(v_per_token, mask)
        loss = loss + vf_coef * v_loss
        metrics["value_loss"] = float(v_loss.detach())
    if kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 (KL in the loss) needs ref_logp")
        kl = sequence_mean(_kl_estimator(kl_estimator)(logp, ref_logp.detach()), mask)
        loss = loss + kl_coef * kl
        metrics["kl_loss"] = float(kl.detach())
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def peak_memory_gb(device: torch.device | str) -> float:
    """Peak memory in GB: CUDA max allocated on GPU, else peak RSS of the process (see module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1e9 if sys.platform == "darwin" else 1e6)  # macOS reports bytes, Linux KiB


# ============================================================== config
@dataclass
class PPOLMConfig:
    """Hyperparameters of PPO for language models (defaults run on the tiny CPU model)."""

    total_steps: int = 20
    """Number of PPO iterations (each: one rollout batch, then ``update_epochs`` passes over it)."""
    batch_prompts: int = 4
    """Prompts per rollout batch."""
    num_generations: int = 2
    """Completions sampled per prompt (PPO does not need groups; >1 just gives more samples per prompt)."""
    max_new_tokens: int = 32
    """Maximum generated tokens; a completion that hits it is *truncated* and GAE bootstraps."""
    temperature: float = 1.0
    """Sampling temperature; log-probabilities are computed under the same temperature."""
    learning_rate: float = 1e-5
    """Adam learning rate of the policy (and of the value head)."""
    value_learning_rate: float | None = None
    """Learning rate of the value head / critic; ``None`` uses ``learning_rate``."""
    update_epochs: int = 2
    """Passes over each rollout batch (PPO re-uses samples; the ratio moves away from 1)."""
    minibatch_size: int = 4
    """Completions per gradient step."""
    clip_coef: float = 0.2
    """PPO clipping epsilon (eq-ppo-clip)."""
    vf_coef: float = 0.5
    """Weight of the value loss in the total loss."""
    vf_clip_coef: float | None = 0.2
    """Clip the value update around the rollout values (PPO2 style); ``None`` disables."""
    gamma: float = 1.0
    """Discount along tokens; 1 is standard for LMs (episodes are short and end for sure)."""
    gae_lambda: float = 0.95
    """GAE lambda along tokens (eq-gae)."""
    beta: float = 0.05
    """KL coefficient against the reference model."""
    kl_in: str = "reward"
    """``"reward"``: per-token ``-beta*log(pi/pi_ref)`` in the reward (eq-rlhf-reward, default);
    ``"loss"``: ``beta * k3`` added to the loss (GRPO style), the reward is then just the score."""
    whiten_advantages: bool = True
    """Normalise advantages over all generated tokens of the batch (mean 0, std 1)."""
    truncation: str = "terminal"
    """What ``max_new_tokens`` means for GAE: ``"terminal"`` (score the cut text, no bootstrap) or
    ``"bootstrap"`` (withhold the score of cut sequences, bootstrap from ``V``); see the module docstring."""
    separate_critic: bool = False
    """Critic as a separate copy of the trunk (True) or a head on the shared trunk (False)."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping (global norm): ``None`` or ``0`` turns clipping off, otherwise a finite number > 0.
    ``grad_norm`` (the norm before clipping) is logged either way."""
    template: str | None = "r1_zero"
    """Prompt template for :func:`rlcore.llm.tasks.format_prompt`; ``None``: the bare question."""
    fast: bool = False
    """Sample with :func:`rlcore.llm.fast.generate_fast` (the CPU-fast path of GRPO: a shared prompt prefix is
    computed once, finished rows leave the batch) instead of the teaching sampler
    :func:`rlcore.llm.sampling.generate`. Both draw from the same distribution, but not the same random numbers,
    so a run is reproducible with either, not across them. PPO recomputes every log-probability it uses, so the
    sampler's own log-probabilities do not enter the update."""
    reward_weights: list[float] | None = None
    """Weights of the reward functions (``None``: all 1)."""
    seed: int = 0
    """Seed for prompt order, sampling and initialisation."""
    device: str | None = None
    """``"cuda"``/``"cpu"``; ``None`` keeps the model where it is."""
    log_every: int = 1
    """Log metrics every this many steps."""
    eval_every: int = 0
    """Greedy evaluation on ``eval_dataset`` every this many steps (0: only at the end)."""
    eval_max_new_tokens: int | None = None
    """Completion budget for evaluation (``None``: ``max_new_tokens``)."""
    log_path: str | None = None
    """JSONL file for metrics (appended on resume)."""
    checkpoint_path: str | None = None
    """Where to save checkpoints (atomic); ``None`` disables."""
    checkpoint_every: int = 0
    """Save every this many steps (0: only at the end, when ``checkpoint_path`` is set). A Ctrl-C (SIGINT) or
    SIGTERM also saves, at the end of the current iteration, then raises
    :class:`rlcore.lifecycle.TrainingInterrupted`."""
    resume: bool = False
    """Continue from ``checkpoint_path`` (it must exist); the config may differ from the checkpoint's only in
    :data:`RESUME_SAFE_CHANGES`. The log is cut back to the checkpoint's step."""
    overwrite: bool = False
    """Replace an earlier run's checkpoint and log at the same paths; without it (and without ``resume``) a fresh
    run refuses to start over existing files."""

    def __post_init__(self):
        for name in ("total_steps", "batch_prompts", "num_generations", "max_new_tokens", "update_epochs", "minibatch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        check_positive("learning_rate", self.learning_rate)
        check_positive("temperature", self.temperature)
        check_positive("beta", self.beta, allow_zero=True)
        check_probability("gamma", self.gamma)
        check_probability("gae_lambda", self.gae_lambda)
        if not isinstance(self.fast, bool):
            raise ValueError(f"fast must be True or False, got {self.fast!r}")
        if self.truncation not in ("terminal", "bootstrap"):
            raise ValueError(f"truncation must be 'terminal' or 'bootstrap', got {self.truncation!r}")
        if self.kl_in not in ("reward", "loss"):
            raise ValueError(f"kl_in must be 'reward' or 'loss', got {self.kl_in!r}")
        check_max_grad_norm(self.max_grad_norm)
        if isinstance(self.log_every, bool) or not isinstance(self.log_every, int) or self.log_every < 1:
            raise ValueError(f"log_every must be an integer >= 1, got {self.log_every!r}")
        from .grpo import _check_lifecycle_fields

        _check_lifecycle_fields(self, ("checkpoint_every", "eval_every"))


@dataclass
class PPOLMResult:
    """What :func:`train_ppo_lm` returns: metrics, the trained :class:`ValueHead` (``.policy`` is the LM)."""

    history: History
    model: ValueHead
    config: PPOLMConfig
    steps: int
    wall_seconds: float
    samples: list = field(default_factory=list)


# ============================================================== training loop
def train_ppo_lm(cfg: PPOLMConfig, model: nn.Module, tokenizer, dataset: Sequence, reward_funcs: Sequence[Callable],
                 reward_weights: Sequence[float] | None = None, ref_model: nn.Module | None = None,
                 eval_dataset: Sequence | None = None) -> PPOLMResult:
    """Train ``model`` with token-level PPO (C14/C15) on ``dataset`` (``rlcore.llm.tasks.Example`` list).

    Each step: sample ``batch_prompts`` prompts -> generate ``num_generations`` completions each
    (:func:`rlcore.llm.sampling.generate`) -> sequence scores
    (:func:`rlcore.llm.rewards.compute_rewards`) -> ``old_logp``, values and ``ref_logp``
    (no grad) -> per-token rewards (eq-rlhf-reward) -> token GAE (eq-gae) -> ``update_epochs``
    passes of minibatch PPO updates (eq-ppo-lm). ``ref_model`` defaults to a frozen copy of
    ``model`` taken before training. ``model`` may already be a :class:`ValueHead`.

    Run lifecycle (:mod:`rlcore.lifecycle`), as in :func:`rlcore.llm.grpo.train_grpo`: paths checked before any
    work, earlier runs never overwritten silently, Ctrl-C/SIGTERM saves and raises
    :class:`~rlcore.lifecycle.TrainingInterrupted`, ``resume=True`` continues exactly with each step logged once.
    """
    from .grpo import _check_resume_step, _format, _plain_config, _reward_kwargs, evaluate  # shared with GRPO
    from .rewards import compute_rewards
    from .fast import generate_fast
    from .sampling import generate

    if not isinstance(cfg, PPOLMConfig):
        raise TypeError(f"cfg must be a PPOLMConfig, got {type(cfg).__name__}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty")
    if not reward_funcs:
        raise ValueError("pass at least one reward function, e.g. [accuracy_reward, format_reward]")
    weights = list(reward_weights if reward_weights is not None else (cfg.reward_weights or [1.0] * len(reward_funcs)))
    # the run's files are checked, and a checkpoint to resume read and compared, before any work is done
    prepare_run(cfg.checkpoint_path, cfg.log_path, resume=cfg.resume, overwrite=cfg.overwrite)
    ck = None
    if cfg.resume:
        ck = load_run_checkpoint(cfg.checkpoint_path, algo=ALGO, required=_CHECKPOINT_KEYS)
        from .preferences import _with_added_defaults

        saved = _with_added_defaults(ck["config"], PPOLMConfig, ("fast",))  # checkpoints older than the field
        check_resume_config(saved, _plain_config(cfg), RESUME_SAFE_CHANGES, path=cfg.checkpoint_path)
        _check_resume_step(int(ck["step"]), cfg.total_steps, "total_steps", cfg.checkpoint_path)
    perm_gen = seed_everything(cfg.seed)  # CPU generator: minibatch order
    wrapper = model if isinstance(model, ValueHead) else ValueHead(model, separate_critic=cfg.separate_critic)
    if cfg.device is not None:
        wrapper.to(cfg.device)
    device = next(wrapper.parameters()).device
    gen = torch.Generator(device=device)  # sampling generator lives where the logits are
    gen.manual_seed(cfg.seed)
    if ref_model is None:
        ref_model = copy.deepcopy(wrapper.policy)
    ref_model.eval().requires_grad_(False)

    policy_params = list(wrapper.policy.parameters())
    value_params = list(wrapper.v_head.parameters()) + (list(wrapper.critic.parameters()) if wrapper.critic is not None else [])
    optimizer = torch.optim.Adam([
        {"params": policy_params, "lr": cfg.learning_rate},
        {"params": value_params, "lr": cfg.value_learning_rate or cfg.learning_rate},
    ], eps=1e-6)
    history = History()
    start_step = 0
    order_rng = np.random.default_rng(cfg.seed)
    if ck is not None:
        wrapper.load_state_dict(ck["model"])
        ref_model.load_state_dict(ck["ref_model"])
        optimizer.load_state_dict(ck["optimizer"])
        history.load_state_dict(ck["history"])
        start_step = int(ck["step"])
        set_rng_state(ck["rng"])
        gen.set_state(ck["generator"])
        perm_gen.set_state(ck["perm_generator"])
        order_rng.bit_generator.state = ck["order_rng"]
    logger = JSONLLogger(cfg.log_path, keep_until=start_step if cfg.resume else None)
    prefilled = cfg.template == "r1_zero"
    G = cfg.num_generations
    t_start = time.perf_counter()
    samples: list = []

    def save(step):
        if cfg.checkpoint_path:
            save_checkpoint(cfg.checkpoint_path, {
                "model": wrapper.state_dict(), "ref_model": ref_model.state_dict(),
                "optimizer": optimizer.state_dict(), "history": history.state_dict(), "step": step,
                "rng": rng_state(), "generator": gen.get_state(),
                "perm_generator": perm_gen.get_state(), "order_rng": order_rng.bit_generator.state,
                "algo": ALGO, "config": _plain_config(cfg)})

    # Ctrl-C / SIGTERM: finish the current iteration, save a checkpoint, raise TrainingInterrupted; the log is
    # closed however the loop ends
    with GracefulInterrupt() as stop, logger:
        for step in range(start_step, cfg.total_steps):
            t0 = time.perf_counter()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            idx = order_rng.choice(len(dataset), size=min(cfg.batch_prompts, len(dataset)), replace=False)
            examples = [dataset[int(i)] for i in idx]
            prompts = [_format(ex, cfg.template, tokenizer) for ex in examples]

            # ---- rollout with the current policy (= pi_old for this iteration)
            wrapper.eval()
            with torch.no_grad():
                sampler = generate_fast if cfg.fast else generate
                ro = sampler(wrapper.policy, tokenizer, prompts, num_generations=G, max_new_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature, generator=gen)
            prompt_ids, prompt_mask = ro.prompt_ids.to(device), ro.prompt_mask.to(device)
            comp_ids, comp_mask = ro.completion_ids.to(device), ro.completion_mask.to(device)
            flat_prompts = [p for p in prompts for _ in range(G)]
            scores, per_func = compute_rewards(reward_funcs, weights, flat_prompts, ro.completions,
                                               **_reward_kwargs(examples, G, prefilled))
            scores = scores.to(device).float()
            terminated = ro.terminated.to(device)

            with torch.no_grad():
                old_logp, old_values_full = sequence_logprobs_and_values(wrapper, prompt_ids, prompt_mask, comp_ids,
                                                                         comp_mask, cfg.temperature)
                ref_logp, _ = sequence_logprobs_and_values(ref_model, prompt_ids, prompt_mask, comp_ids, comp_mask,
                                                           cfg.temperature, with_values=False)
                beta_reward = cfg.beta if cfg.kl_in == "reward" else 0.0
                if cfg.truncation == "bootstrap":
                    # a cut-off sequence has not ended: its score is not due yet, V(s_|o|) stands in for it
                    gae_terminated = terminated
                    rewards = per_token_rewards(scores * terminated.float(), old_logp, ref_logp, comp_mask, beta_reward)
                else:
                    gae_terminated = torch.ones_like(terminated)
                    rewards = per_token_rewards(scores, old_logp, ref_logp, comp_mask, beta_reward)
                advantages, returns = token_gae(rewards, old_values_full, comp_mask, gae_terminated, cfg.gamma,
                                                cfg.gae_lambda)
                if cfg.whiten_advantages:
                    advantages = _whiten(advantages, comp_mask.float())
                old_values = old_values_full[:, :-1]
                seq_kl = ((old_logp - ref_logp) * comp_mask).sum(-1).mean()

            # ---- PPO updates
            wrapper.train()
            N = comp_ids.shape[0]
            mb_metrics: list[dict] = []
            for _ in range(cfg.update_epochs):
                perm = torch.randperm(N, generator=perm_gen)
                for s in range(0, N, cfg.minibatch_size):
                    mb = perm[s:s + cfg.minibatch_size].to(device)
                    logp, values_full = sequence_logprobs_and_values(wrapper, prompt_ids[mb], prompt_mask[mb],
                                                                     comp_ids[mb], comp_mask[mb], cfg.temperature)
                    loss, met = ppo_lm_loss(logp, old_logp[mb], advantages[mb], comp_mask[mb], clip_coef=cfg.clip_coef,
                                            values=values_full[:, :-1], returns=returns[mb], old_values=old_values[mb],
                                            vf_coef=cfg.vf_coef, vf_clip_coef=cfg.vf_clip_coef, ref_logp=ref_logp[mb],
                                            kl_coef=cfg.beta if cfg.kl_in == "loss" else 0.0)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"non-finite PPO loss at step {step}; lower learning_rate or "
                                                 f"check rewards")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    grad_norm = clip_grad_norm(wrapper.parameters(), cfg.max_grad_norm)  # norm before clipping
                    optimizer.step()
                    met["grad_norm"] = grad_norm
                    mb_metrics.append(met)

            # ---- metrics
            lengths = comp_mask.float().sum(-1)
            mask_b = comp_mask.bool()
            metrics = {k: float(np.mean([m[k] for m in mb_metrics])) for k in mb_metrics[0]}
            metrics["first_value_loss"] = mb_metrics[0].get("value_loss", math.nan)
            metrics.update({
                "reward": float(scores.mean()), "reward_std": float(scores.std()) if N > 1 else 0.0,
                "kl_ref": float(seq_kl), "completion_length": float(lengths.mean()),
                "terminated_rate": float(terminated.float().mean()),
                "explained_variance": explained_variance(old_values[mask_b], returns[mask_b]),
                "time_per_step_s": time.perf_counter() - t0, "peak_mem_gb": peak_memory_gb(device),
            })
            for name, vals in per_func.items():
                metrics[f"rewards/{name}"] = float(torch.as_tensor(vals, dtype=torch.float32).mean())
            done = step + 1
            if eval_dataset is not None and (done == cfg.total_steps or (cfg.eval_every and done % cfg.eval_every == 0)):
                metrics.update(evaluate(wrapper.policy, tokenizer, eval_dataset, cfg.template,
                                        cfg.eval_max_new_tokens or cfg.max_new_tokens))
            if step % cfg.log_every == 0 or done == cfg.total_steps:
                history.log(done, **metrics)
                logger.log(done, **metrics)
            samples = list(zip(flat_prompts[:2], ro.completions[:2]))
            saved = bool(cfg.checkpoint_path and cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
            if saved:
                save(done)
            if stop.requested:  # a signal arrived during this iteration: keep everything done so far
                if cfg.checkpoint_path and not saved:
                    save(done)
                raise stop.interrupted(cfg.checkpoint_path, done)
    if cfg.checkpoint_path and cfg.total_steps > start_step:
        save(cfg.total_steps)
    return PPOLMResult(history=history, model=wrapper, config=cfg, steps=cfg.total_steps,
                       wall_seconds=time.perf_counter() - t_start, samples=samples)

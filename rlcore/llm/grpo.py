"""Group Relative Policy Optimization (GRPO) for language models, read top to bottom (C16-C18).

For each question ``q`` sample a group of ``G`` outputs ``o_1..o_G`` from ``pi_old``, score them
with rule-based rewards ``r_i``, and give every token of ``o_i`` the same group-normalised
advantage (eq-group-advantage)::

    A_i = (r_i - mean(r_1..r_G)) / std(r_1..r_G)

No value model is needed. The policy maximises the clipped, token-level objective
(eq-grpo-objective, DeepSeekMath eq. 3)::

    J(theta) = 1/G sum_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1-eps_low, 1+eps_high) A_i)
                                          - beta * KL_k3(pi_theta || pi_ref)_it ]
    rho_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)

:func:`grpo_loss` returns ``-J`` with four ways to aggregate the per-token terms (``loss_type``):

* ``"grpo"``    mean over each sequence's tokens, then over sequences (the formula above). A long
  completion's tokens each get weight ``1/|o_i|``: long wrong answers are penalised less per token.
* ``"bnpo"``    sum over all tokens of the (micro-)batch / number of tokens in it.
* ``"dr_grpo"`` sum over all tokens / (N * max_completion_length): a constant normaliser, so no
  length bias (Dr. GRPO, Liu et al. 2025); pair with ``scale_rewards="none"``.
* ``"dapo"``    token-level: sum / total number of tokens in the *global* batch (DAPO; equals
  ``bnpo`` unless the batch is split into micro-batches for gradient accumulation).

At ``theta = theta_old`` with ``beta = 0`` the ratio is 1, so the loss *value* is ``-mean(A)`` (0 for
group-normalised advantages) while its *gradient* is the REINFORCE gradient
``-1/N sum_i A_i 1/|o_i| sum_t grad log pi(o_it)``: the clipping only matters after the first update
on the same batch (``num_iterations > 1``).

**Data-parallel runs** (``torchrun --nproc_per_node W``, ``accelerate launch``, see the README's "Scaling out").
:func:`train_grpo` needs no other call: when ``torch.distributed`` is initialised with ``W > 1`` processes,

* every rank draws the same prompt order (``order_rng`` is seeded alike everywhere) and takes a contiguous,
  disjoint slice of each step's ``prompts_per_step`` prompts, all ``G`` completions of a prompt on the rank that
  owns it: a group's advantage (eq-group-advantage) needs the whole group. ``prompts_per_step`` must be
  divisible by ``W``;
* rewards are all-gathered before the advantages (so ``scale_rewards="batch"`` uses the global batch), the
  gradients are summed over ranks and divided by ``W`` by an explicit all-reduce after the backward passes (what
  DDP does, written out; it also serves the ``fast`` path, which calls the decoder directly), and each rank's
  loss keeps the *global* normalisation: ``grpo``/``dr_grpo`` average over sequences, and every rank holds the
  same number, so the mean of the ranks' means is the global mean; ``dapo`` divides by the all-reduced token
  count (and is multiplied by ``W`` against the averaging). ``bnpo`` divides by the tokens of each micro-batch,
  as on one process: a ``W``-process run equals one process with ``micro_batch_size = N / W``;
* logged metrics are global (gathered or all-reduced; the clip fractions are the mean of the ranks'), only
  rank 0 writes the log, runs the evaluation and saves checkpoints. A checkpoint holds no per-rank state, so
  it resumes with any number of processes that divides ``prompts_per_step``;
* sampling uses a generator seeded from ``(seed, step, rank)``: distinct per rank, reproducible. With
  ``seed_per_prompt=True`` each prompt's group is instead drawn from a generator seeded from
  ``(seed, step, position of the prompt in the step's batch)``, so the rollout does not depend on which rank
  samples it: a ``W``-process run then equals the one-process run with the same ``prompts_per_step`` up to
  float rounding (the ranks' tensors are padded to other widths and the gradient is summed in another
  order; ``tests/test_llm_distributed.py`` asserts parameters within ``1e-5``).

At start-up every rank compares a hash of its config (without ``device`` and ``progress_bar``), the dataset
size and the reward weights with the others', and whether each could start (rank 0 checks the files): a
mismatch or an indivisible batch raises the same clear error on every rank instead of a hang.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..kl import kl_estimator as _kl_estimator
from ..lifecycle import (GracefulInterrupt, check_max_grad_norm, check_resume_config, clip_grad_norm,
                         load_run_checkpoint, prepare_run)
from ..losses import clipped_surrogate_loss
from ..returns import group_normalized_advantages, zero_variance_groups
from ..training import History, JSONLLogger, progress, rng_state, save_checkpoint, set_rng_state
from ..utils import check_positive, check_probability, seed_everything
from .rewards import compute_rewards
from .fast import (apply_lora, autocast, check_fits_in_memory, estimate_training_memory, generate_fast,
                   token_logprobs_fast, trainable_parameters)
from .sampling import Rollout, generate, token_logprobs

__all__ = ["LOSS_TYPES", "RESUME_SAFE_CHANGES", "grpo_loss", "GRPOConfig", "GRPOResult", "train_grpo", "evaluate"]

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")

ALGO = "grpo_llm"
"""The ``"algo"`` tag of GRPO checkpoints (:func:`rlcore.lifecycle.load_run_checkpoint` refuses others)."""

RESUME_SAFE_CHANGES = {
    "steps": "training continues to the new number of steps (the learning rate is constant, so extending a run is "
             "the same as having asked for more steps at the start); it may not be below the checkpoint's step",
    "checkpoint_every": "only how often the checkpoint is written",
    "checkpoint_path": "the run continues from, and saves to, the new path",
    "log_path": "later rows go to the new log (cut back to the checkpoint's step if it exists)",
    "log_completions": "only how many completion rows are logged per step",
    "eval_every": "only when the greedy evaluation runs (it draws no random numbers)",
    "eval_max_new_tokens": "only the evaluation's completion budget",
    "eval_batch_size": "only the evaluation's batching",
    "progress_bar": "display only",
}
"""Fields of :class:`GRPOConfig` that may differ between a checkpoint and the run resuming it, and what changing
each does; any other difference is refused (:func:`rlcore.lifecycle.check_resume_config`)."""

_NOT_COMPARED = ("resume", "overwrite")  # how to start, not what the run is


def _plain_config(cfg) -> dict:
    """The config as stored in a checkpoint: plain, JSON-able fields, without the start flags."""
    return {k: v for k, v in asdict(cfg).items() if k not in _NOT_COMPARED}


# ============================================================== data parallelism (torchrun)
def _dist_info() -> tuple[bool, int, int]:
    """``(distributed, rank, world)``: distributed when ``torch.distributed`` is initialised with > 1 process (under
    ``torchrun``/``accelerate launch`` the process group is joined here, :func:`rlcore.llm.sft._dist_info`)."""
    from .sft import _dist_info as info

    return info()


def _fingerprint(cfg, n_examples: int, weights) -> int:
    """A hash of what every rank must agree on: the config (less ``device``/``progress_bar``), dataset size, weights."""
    plain = {k: v for k, v in asdict(cfg).items() if k not in ("device", "progress_bar")}
    text = json.dumps([plain, n_examples, [float(w) for w in weights]], sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "big")


def _agree_to_start(error: Exception | None, fingerprint: int, device: torch.device) -> None:
    """Under torch.distributed: raise on every rank if any rank could not start or the configs differ."""
    import torch.distributed as dist

    mine = torch.tensor([0 if error is None else 1, fingerprint], dtype=torch.int64, device=device)
    every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    if error is not None:
        raise error
    if any(int(t[0]) for t in every):
        raise RuntimeError("another rank could not start the GRPO run (its error says why: batch size, paths, "
                           "checkpoint or config); nothing was trained")
    prints = [int(t[1]) for t in every]
    if len(set(prints)) > 1:
        raise ValueError(f"the ranks were started with different GRPO settings (config hash per rank: "
                         f"{[f'{h:014x}' for h in prints]}); every process must get the same GRPOConfig (device "
                         f"and progress_bar may differ), dataset size and reward weights; nothing was trained")


def _broadcast_model(model) -> None:
    """Rank 0's parameters and buffers on every rank (as DDP does when it wraps a model)."""
    import torch.distributed as dist

    for t in model.state_dict().values():
        dist.broadcast(t, src=0)


def _gather(x: torch.Tensor, world: int) -> torch.Tensor:
    """The ranks' equally sized ``x`` concatenated in rank order: the global batch (``x`` itself on one process)."""
    if world == 1:
        return x
    import torch.distributed as dist

    y = x.to(torch.uint8) if x.dtype == torch.bool else x.contiguous()  # not every backend gathers bool
    parts = [torch.empty_like(y) for _ in range(world)]
    dist.all_gather(parts, y)
    return torch.cat(parts).to(x.dtype)


def _all_sum(x: torch.Tensor, world: int) -> torch.Tensor:
    """``x`` summed over ranks (``x`` itself on one process)."""
    if world == 1:
        return x
    import torch.distributed as dist

    x = x.clone()
    dist.all_reduce(x)
    return x


def _average_gradients(params, world: int) -> None:
    """Replace each gradient by its mean over the ranks (one flat all-reduce)."""
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def _seeded_generator(device: torch.device, *key: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from the integers ``key`` (NumPy's ``SeedSequence``)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> np.uint64(1)))
    return g


def _cat_rollouts(parts: Sequence[Rollout], pad_id: int) -> Rollout:
    """One :class:`Rollout` from several (prompts left-padded, completions right-padded to the widest)."""
    P = max(r.prompt_ids.shape[1] for r in parts)
    L = max(r.completion_ids.shape[1] for r in parts)

    def pad(t, width, value, left):
        extra = width - t.shape[1]
        return torch.nn.functional.pad(t, (extra, 0) if left else (0, extra), value=value)

    return Rollout(
        prompts=[p for r in parts for p in r.prompts],
        prompt_ids=torch.cat([pad(r.prompt_ids, P, pad_id, True) for r in parts]),
        prompt_mask=torch.cat([pad(r.prompt_mask, P, 0, True) for r in parts]),
        completion_ids=torch.cat([pad(r.completion_ids, L, pad_id, False) for r in parts]),
        completion_mask=torch.cat([pad(r.completion_mask, L, 0, False) for r in parts]),
        logprobs=torch.cat([pad(r.logprobs, L, 0.0, False) for r in parts]),
        completions=[c for r in parts for c in r.completions],
        terminated=torch.cat([r.terminated for r in parts]),
        num_generations=parts[0].num_generations)


# ============================================================== loss
def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
              completion_mask: torch.Tensor, clip_eps_low: float = 0.2, clip_eps_high: float | None = None,
              beta: float = 0.0, loss_type: str = "grpo", kl_estimator: str = "k3",
              max_completion_length: int | None = None, num_items_in_batch: int | float | None = None):
    """GRPO loss ``-J(theta)`` (eq-grpo-objective) and a dict of detached metrics.

    ``logp``, ``old_logp``, ``ref_logp``: ``[N, L]`` per-token log-probs under the current, sampling
    and reference policies; ``advantages``: ``[N]`` (one per sequence, broadcast over its tokens);
    ``completion_mask``: ``[N, L]``. ``clip_eps_high`` defaults to ``clip_eps_low`` (DAPO's
    "clip-higher" uses e.g. 0.28 > 0.2). ``beta > 0`` adds ``beta * KL`` with estimator
    ``kl_estimator`` (``"k3"`` in GRPO, eq-kl-k3) per token; ``ref_logp`` may be ``None`` only
    when ``beta == 0``. ``max_completion_length`` is Dr. GRPO's constant (default ``L``);
    ``num_items_in_batch`` is DAPO's global token count (default: tokens in this batch).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if logp.dim() != 2 or logp.shape != old_logp.shape or logp.shape != completion_mask.shape:
        raise ValueError(f"logp, old_logp and completion_mask must all be [N, L]; got {tuple(logp.shape)}, "
                         f"{tuple(old_logp.shape)}, {tuple(completion_mask.shape)}")
    advantages = torch.as_tensor(advantages, dtype=logp.dtype, device=logp.device)
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [N] = [{logp.shape[0]}] (one per sequence), got {tuple(advantages.shape)}")
    check_positive("beta", beta, allow_zero=True)
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (log-probs under the reference model); pass it or set beta=0")
    eps_high = clip_eps_low if clip_eps_high is None else clip_eps_high
    mask = completion_mask.to(logp.dtype)
    N, L = logp.shape

    adv = advantages[:, None].expand_as(logp)
    per_token = clipped_surrogate_loss(logp, old_logp, adv, clip_coef=clip_eps_low, clip_coef_high=eps_high, reduce="none")
    kl = None
    if beta > 0:
        kl = _kl_estimator(kl_estimator)(logp, ref_logp.detach())
        per_token = per_token + beta * kl

    if loss_type == "grpo":
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    elif loss_type == "dr_grpo":
        max_len = L if max_completion_length is None else max_completion_length
        if max_len < L:
            raise ValueError(f"max_completion_length ({max_len}) is shorter than the completions ({L})")
        loss = (per_token * mask).sum() / (N * max_len)
    else:  # dapo
        denom = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        loss = (per_token * mask).sum() / denom

    with torch.no_grad():
        n_tok = mask.sum().clamp(min=1)
        ratio = torch.exp(logp - old_logp)
        low = (ratio < 1 - clip_eps_low) & (adv < 0)  # clipped from below: gradient zeroed
        high = (ratio > 1 + eps_high) & (adv > 0)
        metrics = {
            "clip_ratio/low": ((low * mask).sum() / n_tok).item(),
            "clip_ratio/high": ((high * mask).sum() / n_tok).item(),
            "clip_ratio/region": (((low | high) * mask).sum() / n_tok).item(),
            "ratio_mean": ((ratio * mask).sum() / n_tok).item(),
        }
        if kl is not None:
            metrics["kl"] = ((kl * mask).sum() / n_tok).item()
    return loss, metrics


# ============================================================== config
@dataclass
class GRPOConfig:
    """Hyperparameters of GRPO (defaults run on the tiny CPU model; see the book for SmolLM2 settings)."""

    steps: int = 20
    """Number of GRPO steps; each samples a fresh batch of prompts and completions."""
    prompts_per_step: int = 4
    """Questions per step (the batch has ``prompts_per_step * num_generations`` completions)."""
    num_generations: int = 4
    """G, completions per question (group size, >= 2: the advantage compares outputs in a group)."""
    max_new_tokens: int = 32
    """Maximum completion length; longer completions are truncated (counted in ``truncation_rate``)."""
    temperature: float = 1.0
    """Sampling temperature; log-probabilities are taken under the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1 = off)."""
    learning_rate: float = 1e-5
    """Adam learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping (global norm): ``None`` or ``0`` turns clipping off, otherwise a finite number > 0.
    ``grad_norm`` (the norm before clipping) is logged either way."""
    beta: float = 0.0
    """KL coefficient against the frozen reference model; 0 skips the reference model entirely
    (DAPO / Dr. GRPO / most R1-Zero replications)."""
    kl_estimator: str = "k3"
    """``"k1"``, ``"k2"`` or ``"k3"`` (eq-kl-k3, GRPO's choice)."""
    kl_in_reward: bool = False
    """Put the KL penalty into the reward (``r_i - beta * sum_t KL_it`` with the ``kl_estimator``, RLHF
    style, before the advantages are normalised) instead of into the loss."""
    clip_eps_low: float = 0.2
    """Lower clip range: the ratio may not go below ``1 - clip_eps_low`` for negative advantages."""
    clip_eps_high: float | None = None
    """Upper clip range (``None``: same as ``clip_eps_low``; DAPO's clip-higher uses 0.28)."""
    num_iterations: int = 1
    """mu, gradient updates per rollout batch. 1: strictly on-policy (old = detached current, ratio 1);
    > 1: old log-probs are recomputed once and the clipping becomes active."""
    loss_type: str = "grpo"
    """Token aggregation: ``"grpo"``, ``"bnpo"``, ``"dr_grpo"`` or ``"dapo"`` (see :func:`grpo_loss`)."""
    scale_rewards: str = "group"
    """Advantage scaling: ``"group"`` (divide by group std), ``"batch"`` or ``"none"`` (Dr. GRPO)."""
    micro_batch_size: int | None = None
    """Completions per forward/backward pass (gradient accumulation); ``None``: the whole batch."""
    template: str | None = "r1_zero"
    """Prompt template for :func:`rlcore.llm.tasks.format_prompt` (``"r1_zero"``, ``"chat"``);
    ``None`` uses each example's prompt verbatim."""
    prefill_think: bool = True
    """End the templated prompt with ``<think>`` (the completion starts inside the reasoning block;
    reward functions receive ``prefilled_think=True``)."""
    reward_weights: list[float] | None = None
    """Weights of the reward functions (``None``: all 1)."""
    seed: int = 0
    """Seed for prompt order, sampling and anything random in training."""
    log_path: str | None = None
    """JSONL metrics file (appended on resume); also receives the completions tables."""
    log_completions: int = 4
    """Rows of (prompt, completion, reward) logged per step to ``log_path`` (0: none)."""
    checkpoint_path: str | None = None
    """Checkpoint file (atomic writes); ``None`` disables checkpointing."""
    checkpoint_every: int = 0
    """Save every this many steps (0: only at the end, when ``checkpoint_path`` is set). A Ctrl-C (SIGINT) or
    SIGTERM also saves, at the end of the current step, then raises :class:`rlcore.lifecycle.TrainingInterrupted`."""
    resume: bool = False
    """Continue from ``checkpoint_path`` (model, optimizer, step, RNG, history); it must exist, and the config may
    differ from the checkpoint's only in :data:`RESUME_SAFE_CHANGES`. The log is cut back to the checkpoint's step."""
    overwrite: bool = False
    """Replace an earlier run's checkpoint and log at the same paths; without it (and without ``resume``) a fresh
    run refuses to start over existing files."""
    eval_every: int = 0
    """Evaluate on ``eval_dataset`` with greedy decoding every this many steps (0: only at the end)."""
    eval_max_new_tokens: int | None = None
    """Completion budget for evaluation (``None``: ``max_new_tokens``)."""
    eval_batch_size: int = 32
    """Prompts per greedy-decoding batch during evaluation."""
    device: str | None = None
    """``"cuda"``/``"cpu"``; ``None`` keeps the model where it is."""
    progress_bar: bool = True
    """Show a tqdm progress bar (disabled in CI)."""
    fast: bool = False
    """Use the CPU-fast path of :mod:`rlcore.llm.fast`: the inverse-CDF sampler with a static cache, each
    prompt's prefix run once per group, logits only at completion positions in chunks. Same loss and gradient as the
    teaching path for a given rollout (tested); the sampler draws other random numbers."""
    bf16: bool = False
    """bfloat16 where the processor supports it: autocast for the forward/backward passes (parameters and
    optimizer stay float32); sampling from a bf16 copy of the weights with ``fast``, under autocast without."""
    lora_r: int = 0
    """LoRA rank (through ``peft``); 0 trains every parameter (the default, the path the book explains)."""
    lora_alpha: float | None = None
    """LoRA scaling ``alpha`` (``None``: ``2 * lora_r``)."""
    seed_per_prompt: bool = False
    """Draw each prompt's ``G`` completions with its own generator, seeded from ``(seed, step, position in the
    step's batch)``, one sampler call per prompt: the rollout is then the same whatever the number of processes,
    so a ``torchrun`` run equals the one-process run. ``False`` samples the batch in one call (faster)."""

    def __post_init__(self):
        if not isinstance(self.seed_per_prompt, bool):
            raise ValueError(f"seed_per_prompt must be True or False, got {self.seed_per_prompt!r}")
        if not isinstance(self.lora_r, int) or self.lora_r < 0:
            raise ValueError(f"lora_r must be an integer >= 0 (0 = full fine-tuning), got {self.lora_r!r}")
        for name in ("steps", "prompts_per_step", "num_generations", "max_new_tokens", "num_iterations"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2: GRPO's advantage compares the G outputs of a group "
                             f"(G=1 gives zero advantage everywhere), got {self.num_generations}")
        check_positive("learning_rate", self.learning_rate)
        check_positive("temperature", self.temperature)
        check_positive("beta", self.beta, allow_zero=True)
        check_probability("clip_eps_low", self.clip_eps_low)
        if self.clip_eps_high is not None:
            check_positive("clip_eps_high", self.clip_eps_high, allow_zero=True)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {self.scale_rewards!r}")
        _kl_estimator(self.kl_estimator)
        if self.micro_batch_size is not None and (not isinstance(self.micro_batch_size, int) or self.micro_batch_size < 1):
            raise ValueError(f"micro_batch_size must be a positive integer or None, got {self.micro_batch_size!r}")
        check_max_grad_norm(self.max_grad_norm)
        _check_lifecycle_fields(self, ("checkpoint_every", "eval_every", "log_completions"))


def _check_lifecycle_fields(cfg, counters: Sequence[str]) -> None:
    """Shared by the LLM configs: non-negative counters and consistent start flags."""
    for name in counters:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    for name in ("resume", "overwrite"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(cfg, name)!r}")
    if cfg.resume and cfg.overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other; choose one")
    if cfg.resume and not cfg.checkpoint_path:
        raise ValueError("resume=True needs a checkpoint_path to resume from")


def _check_resume_step(ck_step: int, total: int, field_name: str, path) -> None:
    if ck_step > total:
        raise ValueError(f"the checkpoint {str(path)!r} is at step {ck_step}, beyond {field_name}={total}; resume with "
                         f"{field_name} >= {ck_step} (a run cannot be shortened below its checkpoint)")


_CHECKPOINT_KEYS = ("model", "optimizer", "history", "step", "rng", "generator", "order_rng", "config")


@dataclass
class GRPOResult:
    """What :func:`train_grpo` returns."""

    model: Any
    history: History
    config: GRPOConfig
    steps: int
    wall_seconds: float
    last_rollout: Rollout | None = None
    eval_metrics: dict = field(default_factory=dict)


# ============================================================== data and rewards
def _prompt_of(ex) -> str:
    if isinstance(ex, str):
        return ex
    if isinstance(ex, dict):
        return ex["prompt"]
    return ex.prompt


def _format(ex, template, tokenizer, prefill_think: bool = True) -> str:
    if template is None:
        return _prompt_of(ex)
    from .tasks import format_prompt

    return format_prompt(_prompt_of(ex), template=template, tokenizer=tokenizer, prefill_think=prefill_think)


def _reward_kwargs(examples: Sequence, G: int, prefilled: bool) -> dict:
    """Dataset columns (``answer`` and ``meta`` keys, or dict keys) as TRL-style reward kwargs, one per completion."""
    rows = []
    for ex in examples:
        if isinstance(ex, str):
            rows.append({})
        elif isinstance(ex, dict):
            rows.append({k: v for k, v in ex.items() if k != "prompt"})
        else:
            row = dict(getattr(ex, "meta", None) or {})
            if hasattr(ex, "answer"):
                row["answer"] = ex.answer
            rows.append(row)
    keys = set().union(*rows) if rows else set()
    kw = {k: [r.get(k) for r in rows for _ in range(G)] for k in keys}
    kw["prefilled_think"] = [prefilled] * (len(examples) * G)
    return kw


def _reflection_rate(completions):
    from .rewards import reflection_rate

    return reflection_rate(completions)


# ============================================================== evaluation
@torch.no_grad()
def evaluate(model, tokenizer, dataset: Sequence, template: str | None = "r1_zero", max_new_tokens: int = 64,
             batch_size: int = 32, accuracy_fn: Callable | None = None, format_fn: Callable | None = None,
             prefill_think: bool = True, fast: bool = False, bf16: bool = False) -> dict:
    """Greedy decoding on a held-out set: ``{"heldout_accuracy", "format_rate", "mean_length"}``.

    ``accuracy_fn``/``format_fn`` default to :func:`rlcore.llm.rewards.accuracy_reward` and
    ``format_reward``; a completion counts as correct / well-formatted when its reward is > 0.5.
    ``fast`` decodes with :func:`rlcore.llm.fast.generate_fast` (the same greedy tokens), ``bf16`` under
    bf16 autocast (where supported; greedy choices can then differ from float32 where two logits tie closely).
    """
    if len(dataset) == 0:
        raise ValueError("eval dataset is empty")
    if accuracy_fn is None or format_fn is None:
        from .rewards import accuracy_reward, format_reward

        accuracy_fn = accuracy_fn or accuracy_reward
        format_fn = format_fn or format_reward
    prefilled = template is not None and prefill_think
    acc, fmt, lengths = [], [], []
    for s in range(0, len(dataset), batch_size):
        exs = list(dataset[s:s + batch_size])
        prompts = [_format(ex, template, tokenizer, prefill_think) for ex in exs]
        if fast or bf16:
            ro = generate_fast(model, tokenizer, prompts, num_generations=1, max_new_tokens=max_new_tokens, greedy=True,
                               bf16=bf16)
        else:
            ro = generate(model, tokenizer, prompts, num_generations=1, max_new_tokens=max_new_tokens, greedy=True)
        kw = _reward_kwargs(exs, 1, prefilled)
        acc += [float(v) > 0.5 for v in accuracy_fn(prompts, ro.completions, **kw)]
        fmt += [float(v) > 0.5 for v in format_fn(prompts, ro.completions, **kw)]
        lengths += ro.lengths.tolist()
    return {"heldout_accuracy": float(np.mean(acc)), "format_rate": float(np.mean(fmt)),
            "eval_mean_length": float(np.mean(lengths))}


# ============================================================== training loop
def train_grpo(cfg: GRPOConfig, model, tokenizer, dataset: Sequence, reward_funcs: Sequence[Callable],
               reward_weights: Sequence[float] | None = None, ref_model=None, eval_dataset: Sequence | None = None) -> GRPOResult:
    """Train ``model`` with GRPO (eq-grpo-objective) and return a :class:`GRPOResult`.

    ``dataset``: ``rlcore.llm.tasks.Example`` objects, dicts with a ``"prompt"`` key, or strings.
    ``reward_funcs``: TRL-style ``f(prompts, completions, **kwargs) -> list[float]``; the kwargs are
    the dataset columns (``answer``, meta keys) repeated per completion, plus ``prefilled_think``.
    Each step: sample prompts -> ``G`` completions each -> rewards -> group-normalised advantages
    (eq-group-advantage) -> old log-probs (only when ``num_iterations > 1``) -> reference log-probs
    (only when ``beta > 0``) -> ``num_iterations`` gradient steps on :func:`grpo_loss`.

    Run lifecycle (:mod:`rlcore.lifecycle`): the checkpoint and log paths are checked before any work (an
    earlier run's files are kept unless ``resume`` or ``overwrite``); a Ctrl-C/SIGTERM ends the current step,
    saves the checkpoint and raises :class:`~rlcore.lifecycle.TrainingInterrupted`; ``resume=True`` restores
    everything and the resumed run equals an uninterrupted one, log included (each step logged once).

    Under ``torchrun`` (``torch.distributed`` initialised, world size > 1) the same call trains data-parallel:
    each rank samples its own slice of the step's prompts, whole groups only (see the module docstring).
    """
    if not isinstance(cfg, GRPOConfig):
        raise TypeError(f"cfg must be a GRPOConfig, got {type(cfg).__name__}")
    distributed, rank, world = _dist_info()
    start_error, ck, fingerprint = None, None, 0
    try:
        if len(dataset) == 0:
            raise ValueError("dataset is empty; pass a list of examples")
        if isinstance(reward_funcs, Callable):
            reward_funcs = [reward_funcs]
        reward_funcs = list(reward_funcs)
        if not reward_funcs or not all(callable(f) for f in reward_funcs):
            raise ValueError("reward_funcs must be a non-empty list of callables f(prompts, completions, **kwargs)")
        weights = list(reward_weights if reward_weights is not None else (cfg.reward_weights or [1.0] * len(reward_funcs)))
        if len(weights) != len(reward_funcs):
            raise ValueError(f"got {len(weights)} reward weights for {len(reward_funcs)} reward functions")
        n_prompts = min(cfg.prompts_per_step, len(dataset))  # the global batch of prompts per step
        if n_prompts % world:
            raise ValueError(f"the {n_prompts} prompts of a step (prompts_per_step={cfg.prompts_per_step}, dataset of "
                             f"{len(dataset)}) cannot be split evenly over {world} processes; make prompts_per_step "
                             f"a multiple of the number of processes (each rank keeps whole groups)")
        fingerprint = _fingerprint(cfg, len(dataset), weights)
        # the run's files are checked (rank 0), and a checkpoint to resume read and compared, before any work is done
        if rank == 0:
            prepare_run(cfg.checkpoint_path, cfg.log_path, resume=cfg.resume, overwrite=cfg.overwrite)
        if cfg.resume:
            ck = load_run_checkpoint(cfg.checkpoint_path, algo=ALGO, required=_CHECKPOINT_KEYS)
            check_resume_config(ck["config"], _plain_config(cfg), RESUME_SAFE_CHANGES, path=cfg.checkpoint_path)
            _check_resume_step(int(ck["step"]), cfg.steps, "steps", cfg.checkpoint_path)
    except Exception as exc:
        if not distributed:
            raise
        start_error = exc

    gen = seed_everything(cfg.seed)
    if cfg.device is not None:
        model.to(cfg.device)
    device = next(model.parameters()).device
    if device.type != "cpu":
        gen = torch.Generator(device=device)
        gen.manual_seed(cfg.seed)
    if distributed:  # every rank learns whether all could start with the same settings, so none waits forever
        _agree_to_start(start_error, fingerprint, device)
        _broadcast_model(model)  # rank 0's weights everywhere (before the reference copy)
        if ref_model is not None:
            _broadcast_model(ref_model)
    # The reference model is only built when a KL term needs it (beta > 0): it costs a full copy.
    own_ref = False
    if cfg.beta > 0 and ref_model is None:
        ref_model, own_ref = copy.deepcopy(model), True
    if ref_model is not None:
        ref_model.eval().requires_grad_(False)
    if cfg.lora_r and not hasattr(model, "peft_config"):
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha)
        if distributed:
            _broadcast_model(model)  # the adapters' initialisation too
    sample_fn = generate_fast if cfg.fast else generate
    logprob_fn = token_logprobs_fast if cfg.fast else token_logprobs
    def amp():
        return autocast(device, enabled=cfg.bf16)

    # the fast sampler takes bf16 itself (a bf16 weight copy); autocast would re-cast every weight per token
    sample_kw = {"bf16": cfg.bf16} if cfg.fast else {}
    sample_ctx = (lambda: autocast(device, enabled=False)) if cfg.fast else amp
    # refuse a run that cannot fit before any work is done (a crash at step 1 would waste the set-up)
    probe = [_format(dataset[i], cfg.template, tokenizer, cfg.prefill_think) for i in range(min(len(dataset), 64))]
    prompt_len = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in probe)
    n_rows = n_prompts // world * cfg.num_generations  # completions on this rank
    mem = estimate_training_memory(model, min(cfg.micro_batch_size or n_rows, n_rows), prompt_len + cfg.max_new_tokens,
                                   bf16=cfg.bf16, lora=bool(cfg.lora_r), sample_rows=n_rows,
                                   sample_len=prompt_len + cfg.max_new_tokens)
    if ref_model is not None:
        mem["reference_model"] = mem["weights"]
        mem["total"] += mem["weights"]
    check_fits_in_memory(mem, f"lower micro_batch_size (now {cfg.micro_batch_size}), prompts_per_step x num_generations "
                              f"({n_rows}) or max_new_tokens ({cfg.max_new_tokens}), or train LoRA adapters (lora_r=16)",
                         device=device)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    history = History()
    start_step = 0
    order_rng = np.random.default_rng(cfg.seed)
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if own_ref and ck.get("ref_model") is not None:
            ref_model.load_state_dict(ck["ref_model"])
        history.load_state_dict(ck["history"])
        start_step = int(ck["step"])
        set_rng_state(ck["rng"])
        gen.set_state(ck["generator"].cpu())
        order_rng.bit_generator.state = ck["order_rng"]

    def save(step: int):
        if rank != 0:  # one writer; the checkpoint holds no per-rank state
            return
        save_checkpoint(cfg.checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "ref_model": ref_model.state_dict() if own_ref else None, "history": history.state_dict(),
            "step": step, "rng": rng_state(), "generator": gen.get_state(),
            "order_rng": order_rng.bit_generator.state, "algo": ALGO, "config": _plain_config(cfg)})

    logger = JSONLLogger(cfg.log_path if rank == 0 else None, keep_until=start_step if cfg.resume else None)
    G = cfg.num_generations
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prefilled = cfg.template is not None and cfg.prefill_think
    kl_fn = _kl_estimator(cfg.kl_estimator)
    loss_beta = 0.0 if cfg.kl_in_reward else cfg.beta
    eval_tokens = cfg.eval_max_new_tokens or cfg.max_new_tokens
    t_start = time.perf_counter()
    ro = None
    eval_metrics: dict = {}
    bar = progress(range(start_step, cfg.steps), total=cfg.steps, initial=start_step, desc="GRPO",
                   disable=None if cfg.progress_bar and rank == 0 else True)
    # Ctrl-C / SIGTERM: finish the current step, save a checkpoint, raise TrainingInterrupted; the log and the
    # progress bar are closed however the loop ends
    with GracefulInterrupt() as stop, logger, bar:
        for step in bar:
            t0 = time.perf_counter()
            idx = order_rng.choice(len(dataset), size=n_prompts, replace=False)  # the same on every rank
            mine = range(rank * (n_prompts // world), (rank + 1) * (n_prompts // world))  # this rank's whole groups
            examples = [dataset[int(idx[j])] for j in mine]
            prompts = [_format(ex, cfg.template, tokenizer, cfg.prefill_think) for ex in examples]

            # ---- 1. rollout: G completions per prompt from the current policy (= pi_old)
            sample = dict(num_generations=G, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                          top_p=cfg.top_p, **sample_kw)
            with sample_ctx():
                if cfg.seed_per_prompt:  # a group's tokens do not depend on which rank draws them
                    ro = _cat_rollouts([sample_fn(model, tokenizer, [p], generator=_seeded_generator(
                        device, cfg.seed, step, 1, j), **sample) for j, p in zip(mine, prompts)], pad_id)
                else:  # one stream per rank under torchrun
                    ro = sample_fn(model, tokenizer, prompts, **sample,
                                   generator=_seeded_generator(device, cfg.seed, step, 0, rank) if distributed else gen)
            p_ids, p_mask, c_ids, c_mask = ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask
            N, L = c_ids.shape

            # ---- 2. rewards (eq-outcome-reward), one scalar per completion
            rewards, per_func = compute_rewards(reward_funcs, weights, ro.prompts, ro.completions,
                                                 **_reward_kwargs(examples, G, prefilled))
            rewards = rewards.to(device=device, dtype=torch.float32)

            # ---- 3. old and reference log-probs (no grad); skipped when not needed
            old_logp = ref_logp = None
            with torch.no_grad(), amp():
                if cfg.num_iterations > 1:
                    old_logp = logprob_fn(model, p_ids, p_mask, c_ids, c_mask, cfg.temperature)
                if cfg.beta > 0:
                    ref_logp = logprob_fn(ref_model, p_ids, p_mask, c_ids, c_mask, cfg.temperature)
            seq_kl = None
            if cfg.kl_in_reward and cfg.beta > 0:
                behaviour = old_logp if old_logp is not None else ro.logprobs.to(device)
                seq_kl = (kl_fn(behaviour, ref_logp) * c_mask).sum(1)
                rewards = rewards - cfg.beta * seq_kl

            # ---- 4. group-normalised advantages (eq-group-advantage); equal rewards -> 0
            all_rewards = _gather(rewards, world)  # the global batch's rewards, in prompt order
            advantages = group_normalized_advantages(all_rewards, group_size=G, scale=cfg.scale_rewards)
            advantages = advantages[rank * N:(rank + 1) * N]  # this rank's rows
            zero_var = zero_variance_groups(all_rewards, group_size=G)

            # ---- 5. num_iterations (mu) gradient steps on the same batch
            model.train()
            mb = cfg.micro_batch_size or N
            n_tokens = _all_sum(c_mask.sum(), world)  # dapo's denominator: the global batch's tokens
            step_metrics: list[dict] = []
            entropy_sum = torch.zeros((), device=device)
            for it in range(cfg.num_iterations):
                optimizer.zero_grad(set_to_none=True)
                loss_total = 0.0
                for s in range(0, N, mb):
                    sl = slice(s, s + mb)
                    with amp():
                        logp, ent = logprob_fn(model, p_ids[sl], p_mask[sl], c_ids[sl], c_mask[sl], cfg.temperature,
                                               return_entropy=True)
                    if it == 0:
                        entropy_sum = entropy_sum + ent.sum()
                    old = old_logp[sl] if old_logp is not None else logp.detach()
                    loss, met = grpo_loss(
                        logp, old, ref_logp[sl] if ref_logp is not None else None, advantages[sl], c_mask[sl],
                        clip_eps_low=cfg.clip_eps_low, clip_eps_high=cfg.clip_eps_high, beta=loss_beta,
                        loss_type=cfg.loss_type, kl_estimator=cfg.kl_estimator,
                        max_completion_length=cfg.max_new_tokens, num_items_in_batch=n_tokens)
                    # grpo/dr_grpo average over sequences and bnpo over the micro-batch: weight by its share
                    # of the batch; dapo already divides by the global token count.
                    if cfg.loss_type != "dapo":
                        loss = loss * (logp.shape[0] / N)
                    elif distributed:  # undo the averaging over ranks below: the sum over all tokens counts
                        loss = loss * world
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"non-finite GRPO loss at step {step}; lower learning_rate or "
                                                 f"check rewards")
                    loss.backward()
                    loss_total += loss.item()
                    step_metrics.append(met)
                if distributed:  # every rank steps with the mean gradient, as DDP would
                    _average_gradients(trainable_parameters(model), world)
                grad_norm = clip_grad_norm(trainable_parameters(model), cfg.max_grad_norm)  # norm before clipping
                optimizer.step()
            model.eval()

            # ---- 6. metrics (of the global batch: gathered or summed over ranks under torchrun)
            lengths = _gather(c_mask.sum(1).float(), world)
            term = _gather(ro.terminated.to(device), world)
            reflection = _reflection_rate(ro.completions)
            n_all = N * world
            if distributed:
                totals = torch.tensor([loss_total, entropy_sum.item(), reflection * N, float(stop.requested)],
                                      dtype=torch.float64, device=device)
                totals = _all_sum(totals, world)
                loss_total, entropy_sum, reflection = totals[0].item() / world, totals[1], totals[2].item() / n_all
                stop_any = totals[3].item() > 0  # a signal on any rank: every rank stops after this step
            m = {
                "reward": all_rewards.mean().item(), "reward_std": all_rewards.std().item() if n_all > 1 else 0.0,
                "frac_zero_std_groups": zero_var.float().mean().item(),
                "loss": loss_total, "grad_norm": grad_norm,
                "entropy": (entropy_sum / n_tokens.clamp(min=1)).item(),
                "completion_length": lengths.mean().item(),
                "completion_length_terminated": lengths[term].mean().item() if term.any() else None,
                "truncation_rate": 1.0 - term.float().mean().item(),
                "reflection_rate": reflection,
                "step_time": time.perf_counter() - t0,
            }
            for name, vals in per_func.items():
                vals = _gather(vals.float().to(device), world)
                m[f"rewards/{name}"] = vals.mean().item()
                m[f"rewards/{name}_std"] = vals.std().item() if len(vals) > 1 else 0.0
            for k in step_metrics[0]:
                m[k] = float(np.mean([d[k] for d in step_metrics]))
                if distributed:  # the mean of the ranks' means
                    m[k] = _all_sum(torch.tensor(m[k], dtype=torch.float64, device=device), world).item() / world
            if seq_kl is not None:
                m["kl"] = (_all_sum(seq_kl.sum(), world) / n_tokens.clamp(min=1)).item()
            done = step + 1
            if rank == 0 and eval_dataset is not None and (done == cfg.steps or (cfg.eval_every and done % cfg.eval_every == 0)):
                eval_metrics = evaluate(model, tokenizer, eval_dataset, cfg.template, eval_tokens,
                                        cfg.eval_batch_size, prefill_think=cfg.prefill_think, fast=cfg.fast,
                                        bf16=cfg.bf16)
                m.update(eval_metrics)
            history.log(done, **{k: v for k, v in m.items() if v is not None})
            logger.log(done, **m)
            if cfg.log_completions:
                rows = [{"prompt": ro.prompts[i], "completion": ro.completions[i], "reward": rewards[i].item(),
                         "advantage": advantages[i].item()} for i in range(min(cfg.log_completions, N))]
                logger.log(done, completions=rows)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(reward=f"{m['reward']:.3f}", len=f"{m['completion_length']:.1f}")
            saved = bool(cfg.checkpoint_path) and (done == cfg.steps or bool(cfg.checkpoint_every
                                                                              and done % cfg.checkpoint_every == 0))
            if saved:
                save(done)
            if (stop_any if distributed else stop.requested):  # a signal arrived during this step: keep what is done
                if cfg.checkpoint_path and not saved:
                    save(done)
                raise stop.interrupted(cfg.checkpoint_path, done)
    return GRPOResult(model=model, history=history, config=cfg, steps=cfg.steps,
                      wall_seconds=time.perf_counter() - t_start, last_rollout=ro, eval_metrics=eval_metrics)

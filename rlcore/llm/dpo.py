"""The KL-regularised objective, its closed-form optimum, and the losses that use it: DPO, IPO, best-of-n.

RLHF's policy stage maximises reward while staying close to a reference policy (eq-kl-objective)::

    J(pi) = E_{y ~ pi}[ r(y) ]  -  beta * KL( pi || pi_ref )          (per prompt x; x is dropped below)

For ``beta > 0`` its maximiser over all distributions is the Gibbs distribution (eq-kl-optimum)::

    pi*(y) = pi_ref(y) * exp( r(y) / beta ) / Z,        Z = sum_y pi_ref(y) * exp( r(y) / beta )

and the maximum value is the soft maximum (eq-kl-optimum-value)::

    J(pi*) = beta * log Z

(proof: ``J(pi) = beta log Z - beta KL(pi || pi*)``). ``beta`` must be positive: at ``beta = 0`` the
objective has no KL term and the "optimum" is a point mass (``exp(r/0)``); for ``beta < 0`` it rewards
moving *away* from ``pi_ref``. :func:`kl_regularized_optimum` computes ``pi*`` over an enumerated output
set in log space (``softmax(log pi_ref + r / beta)``), stable for any reward scale.

DPO (Rafailov et al. 2023)
--------------------------
Solving eq-kl-optimum for the reward gives the implicit reward (eq-dpo-implicit-reward)::

    r(y) = beta * log( pi*(y) / pi_ref(y) ) + beta * log Z

``Z`` cancels in a difference, so plugging it into eq-bradley-terry (:mod:`rlcore.llm.preferences`) gives a
likelihood of the comparisons in terms of the policy alone, the DPO loss (eq-dpo-loss)::

    L_DPO(theta) = - E_{(x, y_w, y_l)} log sigma( r_theta(y_w) - r_theta(y_l) ),
    r_theta(y)   = beta * log( pi_theta(y | x) / pi_ref(y | x) )

whose gradient (eq-dpo-gradient) weights each pair by how wrongly the implicit reward orders it::

    grad L_DPO = - beta * E[ sigma( r_theta(y_l) - r_theta(y_w) ) * ( grad log pi_theta(y_w) - grad log pi_theta(y_l) ) ]

When every pair of outputs has comparison data drawn from the Bradley–Terry model of a reward ``r``, the
population minimiser of eq-dpo-loss is ``pi*`` of eq-kl-optimum for that ``r`` (the implicit reward then
equals ``r`` up to the per-prompt constant ``beta log Z``, which the data cannot identify).

IPO (Azar et al. 2023) replaces ``-log sigma`` by a square that keeps the log-ratio margin finite even for
deterministic preferences (eq-ipo-loss)::

    L_IPO(theta) = E[ ( h_theta(y_w, y_l) - 1 / (2 tau) )^2 ],
    h_theta(y_w, y_l) = log( pi_theta(y_w) / pi_ref(y_w) ) - log( pi_theta(y_l) / pi_ref(y_l) )

Sequence log-probabilities ``log pi(y | x) = sum_t log pi(y_t | x, y_<t)`` are sums over the completion
tokens (EOS included) of :func:`rlcore.llm.fast.token_logprobs_fast` (:func:`sequence_logps`).

Best-of-n
---------
Sampling ``n`` outputs from ``pi_ref`` and keeping the highest-reward one (:func:`best_of_n`) is the
simplest KL-regularised policy. With the outputs sorted by reward and ``F`` the reward's CDF under
``pi_ref``, the best-of-n distribution is (eq-best-of-n; ties share their mass in proportion to ``pi_ref``)::

    pi_bon(y) = F(r(y))^n - F(r(y)^-)^n

and its KL from the reference is at most (eq-best-of-n-kl; Stiennon et al. 2020, Beirami et al. 2024)::

    KL( pi_bon || pi_ref ) <= log n - (n - 1) / n

with equality in the limit of a continuous reward distribution (no atoms); :func:`best_of_n_distribution`
gives the exact value for a discrete one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..training import History
from ..utils import check_positive
from .preferences import (PreferencePair, _interleave, _PairTrainingConfig, _SAFE_COMMON, _start, _train_pairs,
                          check_preference_pairs, encode_prompt_completion)

__all__ = [
    "check_beta",
    "kl_regularized_objective",
    "kl_regularized_optimum",
    "kl_regularized_value",
    "implicit_reward",
    "PreferenceLossOutput",
    "dpo_loss",
    "ipo_loss",
    "sequence_logps_from_ids",
    "sequence_logps",
    "DPOConfig",
    "RESUME_SAFE_CHANGES",
    "train_dpo",
    "best_of_n",
    "best_of_n_distribution",
    "best_of_n_kl",
]


# ============================================================== the KL-regularised objective
def check_beta(beta: float, name: str = "beta") -> float:
    """``beta`` as a float if it is a finite number > 0, else a ``ValueError`` saying why it must be."""
    ok = isinstance(beta, (int, float, np.integer, np.floating)) and not isinstance(beta, bool)
    if not (ok and math.isfinite(beta) and beta > 0):
        raise ValueError(
            f"{name} must be a finite number > 0, got {beta!r}: it is the KL coefficient of the objective "
            f"max_pi E_pi[r] - {name} * KL(pi || pi_ref) that DPO solves, whose optimum pi_ref * exp(r / {name}) / Z "
            f"exists only for {name} > 0 ({name} = 0 drops the KL term, so the optimum is a point mass and the "
            f"implicit reward {name} * log(pi / pi_ref) is identically 0; {name} < 0 rewards moving away from "
            f"pi_ref). Typical values are 0.01 to 0.5")
    return float(beta)


def _as_float(x, like: torch.Tensor | None = None) -> torch.Tensor:
    t = torch.as_tensor(x)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if like is not None:
        t = t.to(dtype=like.dtype, device=like.device)
    return t


def _check_distribution(p: torch.Tensor, name: str) -> None:
    if p.dim() == 0 or p.shape[-1] == 0:
        raise ValueError(f"{name} must have the outputs on its last axis, got shape {tuple(p.shape)}")
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{name} must be finite and >= 0 (probabilities of the enumerated outputs)")
    tol = 1e-4 if p.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-8
    if not torch.allclose(p.sum(-1), torch.ones((), dtype=p.dtype), atol=tol):
        raise ValueError(f"{name} must sum to 1 over the last axis, sums to {p.sum(-1).tolist()}; normalise it")


def _check_rewards(ref_probs: torch.Tensor, rewards: torch.Tensor) -> None:
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf; every output needs a finite reward")
    try:
        torch.broadcast_shapes(ref_probs.shape, rewards.shape)
    except RuntimeError:
        raise ValueError(f"ref_probs {tuple(ref_probs.shape)} and rewards {tuple(rewards.shape)} do not match; "
                         f"pass one reward per output") from None


def kl_regularized_objective(pi, ref_probs, rewards, beta: float) -> torch.Tensor:
    """``E_pi[r] - beta * KL(pi || pi_ref)`` (eq-kl-objective) over the last axis (the enumerated outputs).

    Differentiable in ``pi``; ``0 log 0 = 0``; ``+inf`` KL (so ``-inf``) where ``pi`` puts mass outside
    ``pi_ref``'s support.
    """
    beta = check_beta(beta)
    pi = _as_float(pi)
    ref_probs, rewards = _as_float(ref_probs, pi), _as_float(rewards, pi)
    _check_distribution(pi.detach(), "pi")
    _check_distribution(ref_probs, "ref_probs")
    _check_rewards(ref_probs, rewards)
    kl = (torch.xlogy(pi, pi) - torch.xlogy(pi, ref_probs)).sum(-1)  # KL(pi || pi_ref)
    return (pi * rewards).sum(-1) - beta * kl


def kl_regularized_optimum(ref_probs, rewards, beta: float) -> torch.Tensor:
    """``pi*(y) = pi_ref(y) exp(r(y)/beta) / Z`` (eq-kl-optimum) over the last axis, computed as
    ``softmax(log pi_ref + r / beta)`` (no overflow for any reward scale; outputs with ``pi_ref = 0`` get 0)."""
    beta = check_beta(beta)
    ref_probs = _as_float(ref_probs)
    rewards = _as_float(rewards, ref_probs)
    _check_distribution(ref_probs, "ref_probs")
    _check_rewards(ref_probs, rewards)
    return torch.softmax(torch.log(ref_probs) + rewards / beta, dim=-1)


def kl_regularized_value(ref_probs, rewards, beta: float) -> torch.Tensor:
    """The maximum of eq-kl-objective, ``beta * log sum_y pi_ref(y) exp(r(y)/beta)`` (eq-kl-optimum-value)."""
    beta = check_beta(beta)
    ref_probs = _as_float(ref_probs)
    rewards = _as_float(rewards, ref_probs)
    _check_distribution(ref_probs, "ref_probs")
    _check_rewards(ref_probs, rewards)
    return beta * torch.logsumexp(torch.log(ref_probs) + rewards / beta, dim=-1)


def implicit_reward(logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """``beta * (log pi(y) - log pi_ref(y))`` (eq-dpo-implicit-reward, without the unidentified ``beta log Z``)."""
    beta = check_beta(beta)
    return beta * (logps - ref_logps)


# ============================================================== DPO and IPO losses
class PreferenceLossOutput(NamedTuple):
    """What :func:`dpo_loss` and :func:`ipo_loss` return (unpacks as a tuple)."""

    loss: torch.Tensor
    """The loss: a scalar (``reduction="mean"``) or ``[B]`` (``"none"``)."""
    chosen_rewards: torch.Tensor
    """``[B]`` implicit rewards ``beta * log(pi/pi_ref)`` of the chosen completions (detached)."""
    rejected_rewards: torch.Tensor
    """``[B]`` implicit rewards of the rejected completions (detached)."""
    metrics: dict
    """Floats: ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies`` (share with chosen > rejected),
    ``rewards/margins`` (mean chosen - rejected)."""


def _check_logps(*logps: torch.Tensor) -> None:
    shape = logps[0].shape
    if logps[0].dim() != 1 or logps[0].numel() == 0 or any(x.shape != shape for x in logps):
        raise ValueError(f"the four log-probability tensors must all be [B] with B >= 1; got "
                         f"{[tuple(x.shape) for x in logps]}")


def _reduce(per_pair: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_pair.mean()
    if reduction == "none":
        return per_pair
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _output(loss, chosen_rewards, rejected_rewards) -> PreferenceLossOutput:
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    metrics = {"rewards/chosen": float(c.mean()), "rewards/rejected": float(r.mean()),
               "rewards/accuracies": float((c > r).float().mean()), "rewards/margins": float((c - r).mean())}
    return PreferenceLossOutput(loss, c, r, metrics)


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1,
             reduction: str = "mean") -> PreferenceLossOutput:
    """The DPO loss (eq-dpo-loss) of ``B`` pairs from sequence log-probabilities, each ``[B]``.

    ``-log sigma(beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])``, mean over the batch
    (``reduction="none"``: per pair). The reference log-probs are constants (detached).
    """
    beta = check_beta(beta)
    _check_logps(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps.detach()  # [B]
    rejected_logratios = policy_rejected_logps - ref_rejected_logps.detach()  # [B]
    logits = beta * (chosen_logratios - rejected_logratios)  # [B] = r_theta(y_w) - r_theta(y_l)
    loss = _reduce(-F.logsigmoid(logits), reduction)
    return _output(loss, beta * chosen_logratios, beta * rejected_logratios)


def ipo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, tau: float = 0.1,
             reduction: str = "mean") -> PreferenceLossOutput:
    """The IPO loss (eq-ipo-loss): ``(h - 1/(2 tau))^2`` with ``h`` the difference of the two log-ratios, each ``[B]``.

    The loss is minimal at a log-ratio margin ``h = 1/(2 tau)``, not at infinity: ``tau`` plays ``beta``'s
    part (smaller ``tau``, larger margin, further from ``pi_ref``). The reported implicit rewards are
    ``tau * log(pi/pi_ref)``.
    """
    tau = check_beta(tau, "tau")
    _check_logps(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps.detach()  # [B]
    rejected_logratios = policy_rejected_logps - ref_rejected_logps.detach()  # [B]
    h = chosen_logratios - rejected_logratios  # [B]
    loss = _reduce((h - 1.0 / (2.0 * tau)) ** 2, reduction)
    return _output(loss, tau * chosen_logratios, tau * rejected_logratios)


# ============================================================== sequence log-probabilities
def sequence_logps_from_ids(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                            completion_mask: torch.Tensor, fast: bool = True, temperature: float = 1.0) -> torch.Tensor:
    """``log pi(y | x) = sum_t log pi(y_t | x, y_<t)`` over the completion tokens: ``[N]`` (differentiable).

    ``temperature``: the log-probabilities of the policy that samples from ``softmax(logits / T)`` (the
    distribution a sampler at temperature ``T`` draws from; 1 is the model's own).

    ``fast=True``: :func:`rlcore.llm.fast.token_logprobs_fast` (each distinct prompt of adjacent rows run once,
    logits only at completion positions, in chunks); ``False``: the teaching
    :func:`rlcore.llm.sampling.token_logprobs`. Both return masked per-token values ``[N, L]``.
    """
    from .fast import token_logprobs_fast
    from .sampling import token_logprobs

    fn = token_logprobs_fast if fast else token_logprobs
    per_token = fn(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)  # [N, L], 0 on padding
    return per_token.sum(-1)


def sequence_logps(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], max_length: int | None = None,
                   add_eos: bool = True, fast: bool = True, average: bool = False,
                   batch_size: int | None = None, temperature: float = 1.0) -> torch.Tensor:
    """``[N]`` sequence log-probabilities of ``(prompt, completion)`` texts (:func:`sequence_logps_from_ids`).

    The completion is scored with an EOS appended (``add_eos``): a preference is about the whole answer,
    including where it stops. ``average=True`` divides by the number of tokens (length-normalised, as in
    SimPO; not what DPO's derivation uses). ``batch_size`` rows at a time (``None``: all at once);
    gradients flow when enabled.
    """
    prompts, completions = list(prompts), list(completions)
    device = next(model.parameters()).device
    step = batch_size or max(len(prompts), 1)
    out = []
    for s in range(0, len(prompts), step):
        p_ids, p_mask, c_ids, c_mask = encode_prompt_completion(tokenizer, prompts[s:s + step],
                                                                completions[s:s + step], max_length, add_eos, device)
        lp = sequence_logps_from_ids(model, p_ids, p_mask, c_ids, c_mask, fast=fast, temperature=temperature)
        out.append(lp / c_mask.sum(-1).to(lp.dtype) if average else lp)
    if not out:
        raise ValueError("no (prompt, completion) rows to score")
    return torch.cat(out)


# ============================================================== DPO training
ALGO = "dpo"
"""The ``"algo"`` tag of DPO checkpoints (:func:`rlcore.lifecycle.load_run_checkpoint` refuses others)."""

RESUME_SAFE_CHANGES = dict(_SAFE_COMMON)
"""Fields of :class:`DPOConfig` that may differ between a checkpoint and the run resuming it, and what changing
each does; any other difference is refused (:func:`rlcore.lifecycle.check_resume_config`)."""

_CHECKPOINT_KEYS = ("model", "optimizer", "history", "step", "rng", "config", "ref_logps", "eval_ref_logps")

LOSS_TYPES = ("dpo", "ipo")


@dataclass
class DPOConfig(_PairTrainingConfig):
    """Hyperparameters of DPO / IPO (eq-dpo-loss, eq-ipo-loss); defaults suit the tiny CPU model.

    For a pretrained 135M model: ``learning_rate`` ~5e-7 to 1e-6 with full fine-tuning (DPO moves a model
    fast), ~5e-5 with ``lora_r=16``.
    """

    beta: float = 0.1
    """KL coefficient ``beta`` of eq-kl-objective (must be > 0); for ``loss_type="ipo"`` it is IPO's ``tau``."""
    loss_type: str = "dpo"
    """``"dpo"`` (eq-dpo-loss, Bradley–Terry likelihood) or ``"ipo"`` (eq-ipo-loss, squared margin)."""
    fast: bool = True
    """Sequence log-probs with :func:`rlcore.llm.fast.token_logprobs_fast` (prefix reuse: the chosen and rejected
    rows of a pair share their prompt) instead of the teaching :func:`rlcore.llm.sampling.token_logprobs`."""
    lora_r: int = 0
    """LoRA rank through ``peft`` (0: train every parameter). The adapters are added to ``model`` in place."""
    lora_alpha: float | None = None
    """LoRA ``alpha`` (``None``: ``2 * lora_r``)."""
    temperature: float = 1.0
    """The policy is the model sampled at this temperature: ``pi(y|x)`` and ``pi_ref(y|x)`` are products of
    ``softmax(logits / T)``. Use the temperature the pairs were sampled at (the reference policy that made
    the data), and sample the trained model at the same temperature."""

    def __post_init__(self):
        super().__post_init__()
        check_beta(self.beta, "beta")
        check_positive("temperature", self.temperature)
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if isinstance(self.lora_r, bool) or not isinstance(self.lora_r, int) or self.lora_r < 0:
            raise ValueError(f"lora_r must be an integer >= 0 (0 = full fine-tuning), got {self.lora_r!r}")


def train_dpo(cfg: DPOConfig, model: nn.Module, ref_model: nn.Module | None, tokenizer, pairs,
              eval_pairs=None) -> History:
    """Train the causal LM ``model`` on preference ``pairs`` with DPO or IPO; returns a :class:`History`.

    The reference log-probabilities ``log pi_ref(y_w | x)``, ``log pi_ref(y_l | x)`` are constants: they are
    computed once, before the first step, for every pair (``ref_model``; ``None``: ``model`` itself as it is
    at the start, so no copy of the weights is kept), and stored in the checkpoint, so a resumed run needs no
    reference model. Each step then scores the chosen and rejected completions of ``batch_size`` pairs in one
    pass (``2 * batch_size`` rows, :func:`sequence_logps_from_ids`) and takes an AdamW step.

    Metrics per logged step: ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``,
    ``rewards/margins`` (implicit rewards, eq-dpo-implicit-reward), ``logps/chosen``, ``logps/rejected``,
    ``logps/gap`` (mean chosen - rejected log-prob under the policy), ``grad_norm``, ``lr``, ``pairs_seen``,
    ``time_s``; at evaluations (every ``eval_every`` steps and at the end) ``train_reward_accuracy``,
    ``train_margin`` (first ``eval_max_pairs`` pairs) and, with ``eval_pairs``, ``eval_loss``,
    ``eval_reward_accuracy``, ``eval_margin``, ``eval_logp_gap``.

    Run lifecycle (:mod:`rlcore.lifecycle`): paths checked before any work, earlier runs never overwritten
    silently, Ctrl-C/SIGTERM saves and raises :class:`~rlcore.lifecycle.TrainingInterrupted`, ``resume=True``
    continues exactly (same pairs required), each step logged once.
    """
    from .fast import apply_lora, autocast, check_fits_in_memory, estimate_training_memory, trainable_parameters

    if not isinstance(cfg, DPOConfig):
        raise TypeError(f"cfg must be a DPOConfig, got {type(cfg).__name__}")
    pairs = check_preference_pairs(pairs)
    eval_pairs = check_preference_pairs(eval_pairs, "eval_pairs") if eval_pairs is not None else None
    ck = _start(cfg, ALGO, RESUME_SAFE_CHANGES, pairs, _CHECKPOINT_KEYS)
    if ck is not None:
        saved_eval = ck["eval_ref_logps"]
        if (saved_eval is None) != (eval_pairs is None) or (eval_pairs is not None and
                                                            saved_eval.shape[0] != len(eval_pairs)):
            raise ValueError(f"the checkpoint {cfg.checkpoint_path!r} holds reference log-probs for "
                             f"{'no' if saved_eval is None else saved_eval.shape[0]} eval pairs, not "
                             f"{0 if eval_pairs is None else len(eval_pairs)}; resume with the same eval_pairs")
    torch.manual_seed(cfg.seed)  # LoRA's initialisation
    if cfg.device is not None:
        model.to(cfg.device)
        if ref_model is not None:
            ref_model.to(cfg.device)
    device = next(model.parameters()).device
    loss_fn = dpo_loss if cfg.loss_type == "dpo" else ipo_loss

    def pair_logps(net, batch: Sequence[PreferencePair]) -> torch.Tensor:
        prompts, texts = _interleave(batch)
        ids = encode_prompt_completion(tokenizer, prompts, texts, cfg.max_length, device=device)
        with autocast(device, enabled=cfg.bf16):
            lp = sequence_logps_from_ids(net, *ids, fast=cfg.fast, temperature=cfg.temperature).float()  # [2B]: chosen even, rejected odd
        return lp.view(-1, 2)  # [B, 2]

    @torch.no_grad()
    def all_logps(net, ps: Sequence[PreferencePair]) -> torch.Tensor:
        was_training = net.training
        net.eval()
        try:
            return torch.cat([pair_logps(net, ps[s:s + cfg.eval_batch_size]).cpu()
                              for s in range(0, len(ps), cfg.eval_batch_size)])  # [n, 2]
        finally:
            net.train(was_training)

    # the reference log-probs: before LoRA and before any update (LoRA starts as the identity anyway)
    if ck is not None:
        ref_logps, eval_ref_logps = ck["ref_logps"], ck["eval_ref_logps"]
        if ref_logps.shape != (len(pairs), 2):
            raise ValueError(f"the checkpoint {cfg.checkpoint_path!r} holds reference log-probs for "
                             f"{ref_logps.shape[0]} pairs, not {len(pairs)}; resume with the same pairs")
    else:
        ref_net = ref_model if ref_model is not None else model
        ref_logps = all_logps(ref_net, pairs)
        eval_ref_logps = all_logps(ref_net, eval_pairs) if eval_pairs is not None else None
    if cfg.lora_r and not hasattr(model, "peft_config"):
        # peft injects the adapters into ``model`` in place; the caller's object trains through them
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha)
    longest = max(len(tokenizer(p.prompt + max(p.chosen, p.rejected, key=len), add_special_tokens=False)["input_ids"])
                  for p in pairs[:256]) + 1
    check_fits_in_memory(estimate_training_memory(model, 2 * cfg.batch_size, min(longest, cfg.max_length),
                                                  bf16=cfg.bf16, lora=bool(cfg.lora_r)),
                         f"lower batch_size (now {cfg.batch_size}) or max_length (now {cfg.max_length}), or train "
                         f"LoRA adapters (lora_r=16)", device=device)
    def losses(lp: torch.Tensor, ref: torch.Tensor, reduction="mean") -> PreferenceLossOutput:
        ref = ref.to(lp.device)
        return loss_fn(lp[:, 0], lp[:, 1], ref[:, 0], ref[:, 1], cfg.beta, reduction=reduction)

    def step_fn(idx: list[int]):
        lp = pair_logps(model, [pairs[i] for i in idx])  # [B, 2]
        ref = ref_logps[idx]  # [B, 2]
        out = losses(lp, ref)
        with torch.no_grad():
            m = dict(out.metrics)
            m.update({"logps/chosen": float(lp[:, 0].mean()), "logps/rejected": float(lp[:, 1].mean()),
                      "logps/gap": float((lp[:, 0] - lp[:, 1]).mean())})
        return out.loss, m

    def evaluate():
        n = min(cfg.eval_max_pairs, len(pairs))
        lp = all_logps(model, pairs[:n])
        out = losses(lp, ref_logps[:n])
        m = {"train_reward_accuracy": out.metrics["rewards/accuracies"], "train_margin": out.metrics["rewards/margins"]}
        if eval_pairs is not None:
            lp = all_logps(model, eval_pairs)
            out = losses(lp, eval_ref_logps)
            m.update({"eval_loss": float(out.loss), "eval_reward_accuracy": out.metrics["rewards/accuracies"],
                      "eval_margin": out.metrics["rewards/margins"],
                      "eval_logp_gap": float((lp[:, 0] - lp[:, 1]).mean())})
        return m

    extra = {"ref_logps": ref_logps, "eval_ref_logps": eval_ref_logps}
    return _train_pairs(cfg, ALGO, model, trainable_parameters(model), pairs, ck, step_fn, evaluate, extra)


# ============================================================== best-of-n
def best_of_n(samples_rewards, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best-of-n selection: ``(indices [M], best rewards [M])`` of the highest reward in each group of ``n``.

    ``samples_rewards``: ``[M, n]``, or flat ``[M * n]`` with each group's ``n`` samples consecutive (as the
    rows of a :class:`~rlcore.llm.sampling.Rollout` with ``num_generations=n``). The indices point into the
    flat layout; ties go to the first sample.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    r = _as_float(samples_rewards)
    if r.dim() == 1:
        if r.numel() == 0 or r.numel() % n:
            raise ValueError(f"got {r.numel()} rewards, not a positive multiple of n={n}; pass n samples per prompt")
        r = r.view(-1, n)
    if r.dim() != 2 or r.shape[1] != n:
        raise ValueError(f"samples_rewards must be [M, n] or [M * n], got {tuple(r.shape)} with n={n}")
    if torch.isnan(r).any():
        raise ValueError("samples_rewards contain NaN; every sample needs a reward")
    arg = r.argmax(dim=1)  # [M]; the first maximum on ties
    best = r.gather(1, arg[:, None]).squeeze(1)  # [M]
    return arg + n * torch.arange(r.shape[0]), best


def best_of_n_distribution(ref_probs, rewards, n: int) -> torch.Tensor:
    """The exact distribution of best-of-n from ``pi_ref`` over an enumerated output set (eq-best-of-n).

    ``P(best = y) = [F(r(y))^n - F(r(y)^-)^n] * pi_ref(y) / P(r = r(y))``: the chance that the maximum of ``n``
    draws has the reward ``r(y)``, shared among the outputs with that reward in proportion to ``pi_ref``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    ref_probs = _as_float(ref_probs)
    rewards = _as_float(rewards, ref_probs)
    _check_distribution(ref_probs, "ref_probs")
    if ref_probs.dim() != 1 or rewards.shape != ref_probs.shape:
        raise ValueError(f"ref_probs and rewards must both be [K]; got {tuple(ref_probs.shape)} and {tuple(rewards.shape)}")
    _check_rewards(ref_probs, rewards)
    values, group = torch.unique(rewards, sorted=True, return_inverse=True)  # ascending distinct rewards
    mass = torch.zeros(values.shape[0], dtype=ref_probs.dtype).index_add_(0, group, ref_probs)  # P(r = v)
    cdf = mass.cumsum(0).clamp(max=1.0)  # F(v)
    below = cdf - mass  # F(v^-)
    p_max = cdf ** n - below.clamp(min=0.0) ** n  # P(max of n draws has reward v)
    share = torch.where(mass[group] > 0, ref_probs / mass[group], torch.zeros_like(ref_probs))
    return p_max[group] * share


def best_of_n_kl(n: int) -> float:
    """``log n - (n - 1) / n``: the KL(pi_bon || pi_ref) of best-of-n for a continuous reward distribution, an
    upper bound for any reward distribution (eq-best-of-n-kl)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return math.log(n) - (n - 1) / n

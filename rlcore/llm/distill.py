"""Distillation of a reasoning model into a smaller student (coverage C23).

DeepSeek-R1's distilled models are plain SFT: sample many answers from the strong model,
keep only the verified ones (**rejection sampling**: the accuracy and format rewards both
equal 1), and fine-tune the student on those ``(prompt, completion)`` pairs with the
masked next-token loss of :mod:`rlcore.llm.sft`. The paper's finding is that, at the
small scale, distilling is better than running RL on the student itself.

Compute accounting (how "equal compute" is measured)
----------------------------------------------------
We count FLOPs with the standard transformer approximation (Kaplan et al., 2020):
a forward pass costs ``2 N`` FLOPs per token and a forward+backward ``6 N`` per token,
for a model with ``N`` parameters (attention's quadratic term and the embedding lookup
are ignored; at these lengths they are small). Concretely:

* generation: every prompt token (prefill) and every generated token is one forward token
  (with a KV cache nothing is recomputed);
* scoring passes without gradient (old log-probs, reference log-probs): ``P + L`` forward
  tokens per sequence;
* training (SFT or the policy update): ``P + L`` forward+backward tokens per sequence per pass.

Distillation pays the **teacher's** generation (``2 N_teacher`` per token, counted when
``count_teacher=True``, the default: the samples are not free) plus the student's SFT.
RL on the student pays the student's generation, scoring and updates. Rule-based rewards
cost nothing in this ledger.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..utils import check_positive
from .sft import SFTConfig, train_sft

__all__ = [
    "RejectionStats",
    "rejection_sample",
    "distill",
    "ComputeLedger",
    "count_parameters",
    "grpo_step_flops",
    "rl_steps_for_budget",
    "distill_vs_rl",
]


@dataclass
class RejectionStats:
    """What rejection sampling produced and what it cost."""

    prompts: int = 0
    """Questions sampled."""
    samples: int = 0
    """Completions generated (prompts * num_samples)."""
    accepted: int = 0
    """Completions that passed every reward function (before de-duplication / the per-prompt cap)."""
    kept: int = 0
    """Pairs returned."""
    prompts_solved: int = 0
    """Questions with at least one accepted completion."""
    prompt_tokens: int = 0
    """Prompt tokens prefilled (once per prompt and sample)."""
    generated_tokens: int = 0
    """Tokens generated."""

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.samples if self.samples else 0.0


def _default_reward_funcs():
    from .rewards import accuracy_reward, format_reward

    return [accuracy_reward, format_reward]


def rejection_sample(teacher, tokenizer, examples: Sequence, reward_funcs: Sequence[Callable] | None = None,
                     num_samples: int = 4, template: str | None = "r1_zero", max_new_tokens: int = 128,
                     temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16, seed: int = 0,
                     threshold: float = 1.0, max_per_prompt: int | None = 1,
                     generate_fn: Callable[[list[str], int], list[str]] | None = None,
                     return_stats: bool = False, fast: bool = False, bf16: bool = False):
    """Sample ``num_samples`` completions per example from ``teacher`` and keep the verified ones.

    A completion is kept when **every** reward function gives at least ``threshold`` (default
    ``[accuracy_reward, format_reward]`` with threshold 1: a correct answer in the exact
    ``<think>``/``<answer>`` format). Duplicates of the same prompt are dropped and at most
    ``max_per_prompt`` pairs are kept per prompt (``None``: all).

    ``generate_fn(prompts, num_generations) -> list[str]`` replaces sampling from ``teacher``
    (``len(prompts) * num_generations`` completions, grouped per prompt): a stub for tests,
    or an API client. Returns ``[(prompt, completion), ...]`` (with :class:`RejectionStats`
    when ``return_stats``); prompts are formatted with ``template`` so the pairs feed
    :func:`rlcore.llm.sft.train_sft` directly. ``fast``/``bf16`` sample with
    :func:`rlcore.llm.fast.generate_fast` (bf16: from a bfloat16 copy of the teacher).
    """
    from .grpo import _format, _reward_kwargs
    from .rewards import compute_rewards

    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if max_per_prompt is not None and (not isinstance(max_per_prompt, int) or max_per_prompt < 1):
        raise ValueError(f"max_per_prompt must be None or a positive integer, got {max_per_prompt!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    examples = list(examples)
    if not examples:
        raise ValueError("examples is empty")
    if teacher is None and generate_fn is None:
        raise ValueError("pass a teacher model or a generate_fn(prompts, num_generations) -> completions")
    reward_funcs = list(reward_funcs) if reward_funcs is not None else _default_reward_funcs()
    prefilled = template == "r1_zero"
    gen = None
    if generate_fn is None:
        from .fast import generate_fast
        from .sampling import generate

        device = next(teacher.parameters()).device
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)

    stats = RejectionStats()
    pairs: list[tuple[str, str]] = []
    for s in range(0, len(examples), batch_size):
        exs = examples[s:s + batch_size]
        prompts = [_format(ex, template, tokenizer) for ex in exs]
        if generate_fn is not None:
            completions = list(generate_fn(prompts, num_samples))
            if len(completions) != len(prompts) * num_samples:
                raise ValueError(f"generate_fn returned {len(completions)} completions for {len(prompts)} prompts "
                                 f"x {num_samples} samples")
            if tokenizer is not None:
                stats.generated_tokens += sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) + 1
                                              for c in completions)
        else:
            sampler = generate_fast if (fast or bf16) else generate
            kw = {"bf16": True} if bf16 else {}
            ro = sampler(teacher, tokenizer, prompts, num_generations=num_samples, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p, generator=gen, **kw)
            completions = ro.completions
            stats.generated_tokens += int(ro.completion_mask.sum())
        if tokenizer is not None:
            stats.prompt_tokens += num_samples * sum(len(tokenizer(p, add_special_tokens=False)["input_ids"])
                                                     for p in prompts)
        flat_prompts = [p for p in prompts for _ in range(num_samples)]
        _, per_func = compute_rewards(reward_funcs, None, flat_prompts, completions,
                                      **_reward_kwargs(exs, num_samples, prefilled))
        ok = torch.ones(len(completions), dtype=torch.bool)
        for vals in per_func.values():
            ok &= torch.as_tensor(vals) >= threshold
        stats.prompts += len(prompts)
        stats.samples += len(completions)
        stats.accepted += int(ok.sum())
        for i, prompt in enumerate(prompts):
            group = range(i * num_samples, (i + 1) * num_samples)
            kept: list[str] = []
            for j in group:
                if ok[j] and completions[j] not in kept:
                    kept.append(completions[j])
            if kept:
                stats.prompts_solved += 1
            for c in kept[:max_per_prompt] if max_per_prompt is not None else kept:
                pairs.append((prompt, c))
    stats.kept = len(pairs)
    return (pairs, stats) if return_stats else pairs


def distill(student, tokenizer, pairs: Sequence[tuple[str, str]], cfg: SFTConfig | None = None, **kwargs):
    """Distillation = SFT of ``student`` on the teacher's verified pairs (:func:`rlcore.llm.sft.train_sft`).

    Returns the training :class:`~rlcore.training.History` (``seq_tokens`` counts the compute)."""
    if not pairs:
        raise ValueError("no pairs to distill on: rejection sampling kept nothing (raise num_samples, "
                         "or check the teacher's format)")
    return train_sft(student, tokenizer, pairs, cfg or SFTConfig(), **kwargs)


# ============================================================== compute accounting
def count_parameters(model) -> int:
    """Number of parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@dataclass
class ComputeLedger:
    """FLOPs ~ 2 N per forward token + 6 N per trained token, per model (see the module docstring)."""

    entries: list = field(default_factory=list)

    def forward(self, n_params: int, tokens: int, what: str = "forward") -> None:
        self.entries.append((what, 2.0 * n_params * tokens))

    def train(self, n_params: int, tokens: int, what: str = "train") -> None:
        self.entries.append((what, 6.0 * n_params * tokens))

    @property
    def flops(self) -> float:
        return float(sum(f for _, f in self.entries))

    def breakdown(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for what, f in self.entries:
            out[what] = out.get(what, 0.0) + f
        return out


def grpo_step_flops(n_params: int, prompts_per_step: int, num_generations: int, prompt_len: float,
                    completion_len: float, num_iterations: int = 1, beta: float = 0.0,
                    shared_prefix: bool = False) -> float:
    """FLOPs of one GRPO step on a model with ``n_params`` parameters (module docstring's rules):
    generation (prefill once per prompt, then ``completion_len`` tokens per sample), old log-probs
    (only when ``num_iterations > 1``), reference log-probs (only when ``beta > 0``), and
    ``num_iterations`` forward+backward passes over all ``P + L`` tokens. ``shared_prefix=True`` counts
    what :func:`rlcore.llm.fast.token_logprobs_fast` computes: each prompt once per group in every pass."""
    n = prompts_per_step * num_generations
    seq = prompt_len + completion_len
    if shared_prefix:  # per pass: P tokens per prompt + L per completion, i.e. an average sequence of ...
        seq = prompts_per_step * prompt_len / n + completion_len
    fwd = prompts_per_step * prompt_len + n * completion_len
    fwd += n * seq * ((num_iterations > 1) + (beta > 0))
    return 2.0 * n_params * fwd + 6.0 * n_params * n * seq * num_iterations


def rl_steps_for_budget(budget_flops: float, n_params: int, prompts_per_step: int, num_generations: int,
                        prompt_len: float, completion_len: float, num_iterations: int = 1, beta: float = 0.0) -> int:
    """Largest number of GRPO steps whose cost (:func:`grpo_step_flops`) fits in ``budget_flops``.

    Pass ``completion_len = max_new_tokens`` for a guaranteed upper bound on the cost (RL then
    gets at most the budget); the realised cost is measured afterwards from the run's lengths."""
    check_positive("budget_flops", budget_flops)
    per = grpo_step_flops(n_params, prompts_per_step, num_generations, prompt_len, completion_len, num_iterations, beta)
    return max(1, int(budget_flops // per))


def distill_vs_rl(teacher, student, tokenizer, train_examples: Sequence, test_examples: Sequence,
                  reward_funcs: Sequence[Callable] | None = None, sft_cfg: SFTConfig | None = None,
                  grpo_cfg=None, num_samples: int = 4, template: str | None = "r1_zero", max_new_tokens: int = 128,
                  count_teacher: bool = True, eval_max_new_tokens: int | None = None, seed: int = 0,
                  evaluate_fn: Callable | None = None, fast: bool = False, bf16: bool = False) -> dict:
    """Distillation vs RL on the student at (approximately, from below) equal compute (C23).

    1. rejection-sample ``teacher`` on ``train_examples``; SFT a copy of ``student`` on the kept pairs;
       its budget = teacher generation (if ``count_teacher``) + student SFT tokens, in FLOPs;
    2. run GRPO (``grpo_cfg``, a :class:`rlcore.llm.grpo.GRPOConfig`; ``steps`` is overwritten) on
       another copy of ``student`` for as many steps as fit in that budget, costing each step with
       ``max_new_tokens`` as completion length (an upper bound); the realised cost is reported;
    3. evaluate both students greedily on ``test_examples``.

    Returns ``{"distill": {...}, "rl": {...}}`` with ``heldout_accuracy``, ``format_rate``,
    ``flops`` (and a breakdown) for each, plus the rejection statistics.
    ``evaluate_fn(model, name) -> dict`` (``name`` is ``"distill"`` or ``"rl"``) replaces the greedy
    :func:`rlcore.llm.grpo.evaluate`; ``fast``/``bf16`` go to rejection sampling and evaluation.
    """
    from .grpo import GRPOConfig, evaluate, train_grpo

    reward_funcs = list(reward_funcs) if reward_funcs is not None else _default_reward_funcs()
    sft_cfg = sft_cfg or SFTConfig(seed=seed)
    eval_tokens = eval_max_new_tokens or max_new_tokens
    n_teacher, n_student = count_parameters(teacher), count_parameters(student)

    pairs, stats = rejection_sample(teacher, tokenizer, train_examples, reward_funcs, num_samples=num_samples,
                                    template=template, max_new_tokens=max_new_tokens, seed=seed, return_stats=True,
                                    fast=fast, bf16=bf16)

    def _eval(model, name):
        if evaluate_fn is not None:
            return evaluate_fn(model, name)
        return evaluate(model, tokenizer, test_examples, template, eval_tokens, fast=fast, bf16=bf16)

    d_ledger = ComputeLedger()
    if count_teacher:
        d_ledger.forward(n_teacher, stats.prompt_tokens + stats.generated_tokens, "teacher_generation")
    d_student = copy.deepcopy(student)
    d_hist = None
    if pairs:
        d_hist = distill(d_student, tokenizer, pairs, sft_cfg)
        d_ledger.train(n_student, int(d_hist.last("seq_tokens")), "student_sft")
    d_eval = _eval(d_student, "distill")

    budget = d_ledger.flops
    g = grpo_cfg or GRPOConfig(seed=seed, template=template, max_new_tokens=max_new_tokens)
    from .grpo import _format

    prompt_len = sum(len(tokenizer(_format(ex, g.template, tokenizer), add_special_tokens=False)["input_ids"])
                     for ex in train_examples) / len(train_examples)
    steps = rl_steps_for_budget(budget, n_student, g.prompts_per_step, g.num_generations, prompt_len,
                                g.max_new_tokens, g.num_iterations, g.beta) if budget > 0 else 1
    g = copy.deepcopy(g)
    g.steps = steps
    r_student = copy.deepcopy(student)
    res = train_grpo(g, r_student, tokenizer, list(train_examples), reward_funcs)
    r_ledger = ComputeLedger()
    for L in res.history["completion_length"]:
        per = grpo_step_flops(n_student, g.prompts_per_step, g.num_generations, prompt_len, L, g.num_iterations, g.beta)
        r_ledger.entries.append(("student_grpo", per))
    r_eval = _eval(res.model, "rl")
    return {
        "distill": {**d_eval, "flops": d_ledger.flops, "flops_breakdown": d_ledger.breakdown(), "pairs": len(pairs),
                    "acceptance_rate": stats.acceptance_rate, "prompts_solved": stats.prompts_solved,
                    "sft_loss": list(map(float, d_hist["loss"])) if d_hist is not None else []},
        "rl": {**r_eval, "flops": r_ledger.flops, "steps": steps,
               "reward": list(map(float, res.history["reward"]))},
        "n_params": {"teacher": n_teacher, "student": n_student},
        "count_teacher": count_teacher,
    }

"""Checkers for chapter 9's exercises (distillation and running the model): the rejection-sampling
filter, the FLOPs of a GRPO step, and the length of the chain of thought; and a derivation, the number of
GRPO steps that cost as much as a distillation (a formula, see :mod:`rlcore.exercise_checks._derivation`).

Each checker follows :func:`rlcore.exercises.check`: hand-made cases first, then random ones,
expected values from rlcore's reference, and known mistakes with a hint each::

    from rlcore.exercise_checks import ch09 as checks
    checks.check_rejection_filter(my_rejection_filter)
"""
from __future__ import annotations

import random
from typing import Callable

from rlcore.exercises import Case, Mistake, check

__all__ = ["reference_rejection_filter", "check_rejection_filter", "check_grpo_step_flops", "check_think_length",
           "check_equal_compute_steps", "equal_compute_steps"]


# --------------------------------------------------------------------- rejection sampling
def reference_rejection_filter(completions, accuracy, format_ok, num_samples, max_per_prompt):
    """Indices of the completions that :func:`rlcore.llm.distill.rejection_sample` keeps, computed
    by running it with the given completions and rewards (a stub generator, no model)."""
    from rlcore.llm.distill import rejection_sample

    n_prompts = len(completions) // num_samples
    prompts = [f"question {i}" for i in range(n_prompts)]

    def gen(batch_prompts, k):
        return list(completions)

    def acc_fn(prompts_, comps, **kw):
        return list(accuracy)

    def fmt_fn(prompts_, comps, **kw):
        return list(format_ok)

    pairs = rejection_sample(None, None, prompts, [acc_fn, fmt_fn], num_samples=num_samples, template=None,
                             batch_size=max(n_prompts, 1), max_per_prompt=max_per_prompt, generate_fn=gen)
    kept, start = [], {}
    for prompt, completion in pairs:
        i = int(prompt.split()[1])
        j = next(j for j in range(i * num_samples + start.get(i, 0), (i + 1) * num_samples)
                 if completions[j] == completion and accuracy[j] >= 1 and format_ok[j] >= 1)
        start[i] = j - i * num_samples + 1
        kept.append(j)
    return kept


def check_rejection_filter(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-09-rejection: ``fn(completions, accuracy, format_ok, num_samples, max_per_prompt)``
    returns the indices (ascending) of the completions kept for distillation. Completions come in
    groups of ``num_samples`` per prompt (rows ``[i*k, (i+1)*k)`` belong to prompt ``i``); a completion
    is kept when its accuracy **and** format rewards are both 1, it is not a duplicate of a completion
    already kept for the same prompt, and its prompt has fewer than ``max_per_prompt`` kept so far
    (``None``: no cap). Reference: :func:`rlcore.llm.distill.rejection_sample`."""
    def case(comps, acc, fmt, k, cap, label):
        args = {"completions": comps, "accuracy": acc, "format_ok": fmt, "num_samples": k, "max_per_prompt": cap}
        return Case(args, reference_rejection_filter(comps, acc, fmt, k, cap), label)

    cases = [
        case(["a", "b", "c", "d"], [1, 1, 0, 1], [1, 1, 1, 1], 2, None, "two prompts, keep every verified completion"),
        case(["a", "b", "c", "d"], [1, 1, 0, 1], [1, 1, 1, 1], 2, 1, "at most one per prompt: the first verified one"),
        case(["a", "b", "c", "d"], [1, 1, 1, 1], [0, 1, 0, 0], 2, None, "correct but badly formatted: rejected"),
        case(["x", "x", "y", "x"], [1, 1, 1, 1], [1, 1, 1, 1], 4, None, "duplicates of one prompt are kept once"),
        case(["x", "y", "x", "y"], [1, 1, 1, 1], [1, 1, 1, 1], 2, None, "the same text for two prompts: kept for each"),
        case(["a", "b", "c"], [0, 0, 0], [1, 1, 1], 3, 1, "nothing verified: nothing kept"),
    ]
    rng = random.Random(4)
    for i in range(8):
        k, n = rng.randint(1, 4), rng.randint(1, 5)
        comps = [rng.choice("pqrs") for _ in range(k * n)]
        acc = [float(rng.random() < 0.6) for _ in comps]
        fmt = [float(rng.random() < 0.7) for _ in comps]
        cases.append(case(comps, acc, fmt, k, rng.choice([None, 1, 2]), f"random batch {i + 1}"))

    def accuracy_only(comps, acc, fmt, k, cap):
        return [j for j in range(len(comps)) if acc[j] >= 1]

    def no_dedup(comps, acc, fmt, k, cap):
        out = []
        for i in range(len(comps) // k):
            kept = [j for j in range(i * k, (i + 1) * k) if acc[j] >= 1 and fmt[j] >= 1]
            out += kept if cap is None else kept[:cap]
        return out

    def global_dedup(comps, acc, fmt, k, cap):
        out, seen = [], set()
        for i in range(len(comps) // k):
            n = 0
            for j in range(i * k, (i + 1) * k):
                if acc[j] >= 1 and fmt[j] >= 1 and comps[j] not in seen and (cap is None or n < cap):
                    out.append(j)
                    seen.add(comps[j])
                    n += 1
        return out

    mistakes = [
        Mistake(accuracy_only, "a completion must pass *both* rules: a correct answer in the wrong format would "
                               "teach the student the wrong format."),
        Mistake(no_dedup, "drop duplicates within a prompt's group: the same text twice only weights that sample "
                          "twice as much."),
        Mistake(global_dedup, "de-duplicate within each prompt's group, not across prompts: the same text can be the "
                              "right answer to two different questions."),
    ]
    return check(fn, cases, "rejection_filter", raise_on_fail=raise_on_fail, mistakes=mistakes,
                 exercise="ex-09-rejection",
                 hint="reread eq-rejection-sampling: go through the prompts one at a time; within a prompt's group "
                      "keep a completion when both rewards are 1, its text is not among those already kept *for "
                      "this prompt*, and the prompt's cap is not reached.")


# --------------------------------------------------------------------- compute accounting
def check_grpo_step_flops(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-09-flops: ``fn(n_params, prompts_per_step, num_generations, prompt_len, completion_len,
    num_iterations, beta)`` returns the FLOPs of one GRPO step with the rules of
    :mod:`rlcore.llm.distill`: a forward token costs ``2 N``, a trained token ``6 N``; generation
    prefills each prompt once and then generates ``completion_len`` tokens per sample; old log-probs
    (only when ``num_iterations > 1``) and reference log-probs (only when ``beta > 0``) are one forward
    pass over all ``P + L`` tokens of every sample; each of the ``num_iterations`` updates is a forward
    and backward pass over them. Reference: :func:`rlcore.llm.distill.grpo_step_flops`."""
    from rlcore.llm.distill import grpo_step_flops

    def case(N, p, G, P, L, mu, beta, label):
        args = {"n_params": N, "prompts_per_step": p, "num_generations": G, "prompt_len": P,
                "completion_len": L, "num_iterations": mu, "beta": beta}
        return Case(args, grpo_step_flops(*args.values()), label)

    cases = [
        case(1000, 1, 2, 10, 5, 1, 0.0, "one prompt, two samples, on-policy, no KL"),
        case(1000, 4, 8, 50, 100, 1, 0.0, "a typical step without old or reference passes"),
        case(1000, 4, 8, 50, 100, 2, 0.0, "two updates per batch: old log-probs are needed"),
        case(1000, 4, 8, 50, 100, 1, 0.04, "beta > 0: reference log-probs are needed"),
        case(135_000_000, 16, 8, 120.5, 256, 4, 0.04, "SmolLM2-sized, everything on"),
    ]
    rng = random.Random(9)
    for i in range(5):
        cases.append(case(rng.randint(10**3, 10**8), rng.randint(1, 32), rng.randint(2, 16), rng.uniform(5, 300),
                          rng.uniform(1, 500), rng.randint(1, 4), rng.choice([0.0, 0.01]), f"random step {i + 1}"))

    def prefill_per_sample(N, p, G, P, L, mu, beta):
        n = p * G
        fwd = n * (P + L) + n * (P + L) * ((mu > 1) + (beta > 0))
        return 2.0 * N * fwd + 6.0 * N * n * (P + L) * mu

    def always_old(N, p, G, P, L, mu, beta):
        n = p * G
        fwd = p * P + n * L + n * (P + L) * (1 + (beta > 0))
        return 2.0 * N * fwd + 6.0 * N * n * (P + L) * mu

    def train_2n(N, p, G, P, L, mu, beta):
        n = p * G
        fwd = p * P + n * L + n * (P + L) * ((mu > 1) + (beta > 0))
        return 2.0 * N * fwd + 2.0 * N * n * (P + L) * mu

    mistakes = [
        Mistake(prefill_per_sample, "with a KV cache the prompt is prefilled once per prompt, not once per "
                                    "sample; only the generated tokens are paid per sample."),
        Mistake(always_old, "with num_iterations == 1 the old log-probs equal the current ones (detached): no extra "
                            "forward pass is needed."),
        Mistake(train_2n, "a trained token costs a forward *and* a backward pass: 6 N, not 2 N."),
    ]
    return check(fn, cases, "grpo_step_flops", raise_on_fail=raise_on_fail, mistakes=mistakes, rtol=1e-9,
                 exercise="ex-09-flops",
                 hint="reread eq-distill-compute and the rules in the exercise: count the forward tokens (the "
                      "prefill, the generated tokens, and the extra passes for old and reference log-probs, each "
                      "only when it is needed) and the trained tokens of every update, and price them separately.")


# --------------------------------------------------------------------- reading the thinking
def check_think_length(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-09-think: ``fn(completion, prefilled_think) -> int`` is the number of
    whitespace-separated words in the chain of thought: the first ``<think>...</think>`` block
    (with ``prefilled_think`` the completion starts inside it); an unclosed block counts up to the
    end of the text; no think block at all: 0. Reference: :func:`rlcore.llm.rewards.think_length`."""
    from rlcore.llm.rewards import think_length

    def case(c, pre, label):
        return Case({"completion": c, "prefilled_think": pre}, think_length(c, pre), label)

    cases = [
        case("<think>add the ones then the tens</think><answer>5</answer>", False, "a closed think block"),
        case("add the ones</think><answer>5</answer>", True, "prefilled: the completion starts inside the block"),
        case("<answer>5</answer>", False, "no think block: 0"),
        case("<think>ones 3+4=7 write 7 and then", False, "unclosed (cut by max_new_tokens): count to the end"),
        case("<think>\n  a\n\tb  </think> c d", False, "any whitespace separates words; text after the block is not thinking"),
        case("<think>a b</think><think>c d e</think>", False, "two blocks: the first one"),
        case("", True, "an empty prefilled completion: 0"),
    ]
    rng = random.Random(6)
    for i in range(6):
        words = " ".join(rng.choice(["so", "7", "carry", "wait,", "ok"]) for _ in range(rng.randint(0, 9)))
        pre = rng.random() < 0.5
        c = (words if pre else "<think>" + words) + rng.choice(["</think><answer>1</answer>", "", "</think> x y"])
        cases.append(case(c, pre, f"random completion {i + 1}"))

    def ignore_prefill(c, pre):
        return think_length(c, False)

    def zero_unclosed(c, pre):
        text = ("<think>" + c) if pre else c
        if "<think>" not in text or "</think>" not in text:
            return 0
        return think_length(c, pre)

    mistakes = [
        Mistake(ignore_prefill, "with prefilled_think true the '<think>' is in the prompt, not the completion: "
                                "prepend it before parsing."),
        Mistake(zero_unclosed, "a block cut off by max_new_tokens still holds thinking: count up to the end."),
    ]
    return check(fn, cases, "think_length", raise_on_fail=raise_on_fail, mistakes=mistakes,
                 exercise="ex-09-think",
                 hint="with prefilled_think the opening tag is in the prompt, not in the completion; count the "
                      "whitespace-separated words between the first opening tag and the next closing tag (or the "
                      "end of the text); without a think block the count is 0.")


# --------------------------------------------------------------------- derivation: equal compute
def equal_compute_steps(k, n_questions, n_samples, acceptance, epochs, prompts_per_step, group_size):
    """The reference: the number of GRPO steps on the student (before rounding down) whose FLOPs equal those of
    a distillation (eq-distill-compute) in which a teacher ``k`` times the student's size samples
    ``n_samples`` completions for each of ``n_questions`` questions, a share ``acceptance`` of them is kept,
    and the student is fine-tuned on the kept ones for ``epochs`` epochs; each GRPO step samples
    ``group_size`` completions for ``prompts_per_step`` questions and trains on them once (one update per
    batch, no reference model). All completions have the same length, prompts are not counted and the
    rewards are rules (free). The student's size and the completion length cancel."""
    return n_questions * n_samples * (k + 3 * epochs * acceptance) / (4 * prompts_per_step * group_size)


def check_equal_compute_steps(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-09-equal-compute: ``fn(k, n_questions, n_samples, acceptance, epochs, prompts_per_step,
    group_size)``, called with sympy symbols, returns :func:`equal_compute_steps` as a formula; compared at
    hand-made and random points."""
    import numpy as np
    import sympy as sp

    from rlcore.exercise_checks._derivation import closed_form_check

    k, acceptance = sp.symbols("k acceptance", positive=True)
    n_questions, n_samples, epochs, prompts_per_step, group_size = sp.symbols(
        "n_questions n_samples epochs prompts_per_step group_size", integer=True, positive=True)
    symbols = {"k": k, "n_questions": n_questions, "n_samples": n_samples, "acceptance": acceptance,
               "epochs": epochs, "prompts_per_step": prompts_per_step, "group_size": group_size}
    reference = equal_compute_steps(*symbols.values())

    def pt(*values):
        return dict(zip(symbols, values))

    points = [(pt(1.0, 96, 4, 0.5, 2, 4, 8), "teacher and student of the same size (the SmolLM2 comparison)"),
              (pt(20.0, 1000, 4, 0.25, 2, 16, 8), "a teacher twenty times larger"),
              (pt(1.0, 80, 4, 1.0, 1, 4, 8), "every sample kept, one epoch"),
              (pt(5.0, 100, 1, 0.1, 3, 10, 10), "one sample per question, few kept")]
    rng = np.random.default_rng(9)
    points += [(pt(float(np.round(rng.uniform(0.5, 50), 3)), int(rng.integers(10, 2000)), int(rng.integers(1, 17)),
                   float(np.round(rng.uniform(0.01, 1.0), 3)), int(rng.integers(1, 6)), int(rng.integers(1, 33)),
                   int(rng.integers(2, 17))), f"random setting {i + 1}") for i in range(8)]
    Q, n, a, E, B, Gs = n_questions, n_samples, acceptance, epochs, prompts_per_step, group_size
    mistakes = [
        (Q * n * (1 + 3 * E * a) / (4 * B * Gs),
         "the teacher's forward passes cost in proportion to the teacher's own size, which is k times the "
         "student's."),
        (Q * n * (k + 3 * E * a) / (3 * B * Gs),
         "an RL step does not only train: it first generates its samples, a forward pass over every token it "
         "will train on."),
        (Q * n * (k + 3 * E) / (4 * B * Gs),
         "the student is fine-tuned only on the samples that pass the filter of eq-rejection-sampling."),
        (Q * n * (k + 3 * a) / (4 * B * Gs),
         "each epoch of the student's fine-tuning passes over the kept samples once more."),
    ]
    return closed_form_check(
        fn, symbols, reference, points, "equal_compute_steps",
        hint="write both sides of eq-distill-compute per token of a completion: the teacher's generation, the "
             "student's fine-tuning (kept samples, every epoch), and one GRPO step (generation, then one update); "
             "the student's size and the completion length cancel when you divide.",
        exercise="ex-09-equal-compute", mistakes=mistakes, raise_on_fail=raise_on_fail)

"""The conditions under which the statements of chapters 7-9 hold, checked on small exact cases.

Each test backs one sentence of the book that states *when* a result holds (or why a constant is what
it is), using rlcore where it implements the quantity:

* ch7: a group whose rewards are all equal contributes no gradient only when beta = 0 or the policy
  equals the reference; a GRPO step on such groups leaves the weights unchanged only without weight
  decay (the "the steps left the model unchanged" of the SmolLM2 runs); the partial format credit is
  1 exactly when the strict rule is, and the exercise's useless completion earns 0.8; the accuracy rule
  compares numbers; the zero-variance share under two rules is a product only for distinct weights.
* ch8: ``sft_loss`` on a batch is the token-weighted mean of eq-sft-loss, which is the mean over the
  examples only when the completions have the same length.
* ch9: the 2|theta| (forward) and 6|theta| (forward + backward) FLOPs per token of eq-distill-compute
  are matmul counts up to the attention scores, whose share grows with the context; the equal-compute
  number of GRPO steps of the exercise follows from ``grpo_step_flops``.
"""
from __future__ import annotations

import itertools
import random

import pytest
import torch

pytest.importorskip("transformers")

from rlcore.exercise_checks.ch07 import HACKING_CASES  # noqa: E402
from rlcore.llm import distill, rewards, sft  # noqa: E402
from rlcore.llm.grpo import GRPOConfig, grpo_loss, train_grpo  # noqa: E402
from rlcore.llm.models import tiny_model  # noqa: E402
from rlcore.returns import group_normalized_advantages, zero_variance_groups  # noqa: E402

F64 = torch.float64


# ===================================================================== chapter 7: groups without signal
def test_equal_rewards_give_no_gradient_only_without_kl_or_at_the_reference():
    """eq-group-advantage / alg-r1-zero step 4: "zero-variance groups contribute nothing" needs beta = 0
    (as in every run of chapters 7-9) or a policy equal to the reference."""
    g = torch.Generator().manual_seed(0)
    G, L = 4, 5
    rewards_equal = torch.ones(1, G, dtype=F64)
    adv = group_normalized_advantages(rewards_equal).reshape(-1)
    assert torch.equal(adv, torch.zeros(G, dtype=F64))
    assert bool(zero_variance_groups(rewards_equal).all())
    logits = torch.randn(G, L, 6, generator=g, dtype=F64).requires_grad_(True)
    tokens = torch.randint(0, 6, (G, L), generator=g)
    mask = torch.ones(G, L, dtype=F64)

    def logp_of(lg):
        return torch.log_softmax(lg, -1).gather(-1, tokens[..., None])[..., 0]

    logp = logp_of(logits)
    ref_far = logp_of(logits.detach() + torch.randn(G, L, 6, generator=g, dtype=F64))
    (grad0,) = torch.autograd.grad(grpo_loss(logp, logp.detach(), None, adv, mask, beta=0.0)[0], logits,
                                 retain_graph=True)
    assert float(grad0.abs().max()) == 0.0
    (grad_kl,) = torch.autograd.grad(grpo_loss(logp, logp.detach(), ref_far, adv, mask, beta=0.1)[0], logits,
                                   retain_graph=True)
    assert float(grad_kl.abs().max()) > 1e-3                      # the KL term still pulls towards pi_ref
    (grad_ref,) = torch.autograd.grad(grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, beta=0.1)[0], logits)
    assert float(grad_ref.abs().max()) < 1e-12                   # ... except at pi_theta = pi_ref


def _constant_reward(prompts, completions, **kwargs):
    return [0.0] * len(completions)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_steps_on_groups_without_signal_leave_the_model_unchanged_only_without_weight_decay(weight_decay):
    """Ch7 "the four strict steps left the model unchanged", ch9 "no step changed the policy": every
    reward 0 and beta = 0 give a zero gradient; AdamW then moves nothing, unless it decays the weights."""
    model, tok = tiny_model(seed=0, vocab="0123456789+=?")
    before = [p.detach().clone() for p in model.parameters()]
    cfg = GRPOConfig(steps=2, prompts_per_step=2, num_generations=4, max_new_tokens=4, learning_rate=1e-2,
                     template=None, progress_bar=False, log_completions=0, seed=0, beta=0.0,
                     weight_decay=weight_decay)
    res = train_grpo(cfg, model, tok, ["1+2=?", "3+4=?", "5+1=?"], [_constant_reward])
    assert list(res.history["frac_zero_std_groups"]) == [1.0, 1.0]
    unchanged = all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    assert unchanged == (weight_decay == 0.0)


# ===================================================================== chapter 7: the rules
def _random_strings(n, seed):
    rng = random.Random(seed)
    parts = ["<think>", "</think>", "<answer>", "</answer>", "5", "t", " ", "\n", "x"]
    return ["".join(rng.choice(parts) for _ in range(rng.randint(0, 8))) for _ in range(n)]


def test_partial_format_credit_is_one_exactly_when_the_strict_rule_is():
    """Ch7: partial credit, 0.2 for each of five checks, "equals 1 exactly when the strict rule does"; the
    useless completion of the partial-credit discussion passes four checks and earns 0.8."""
    cases = [c for _, c in HACKING_CASES] + _random_strings(3000, 0) + [
        "<think>a</think><answer>5</answer>", " <think>a</think>\n<answer>5</answer> "]
    strict = rewards.format_reward(None, cases)
    partial = rewards.partial_format_reward(None, cases)
    assert sum(strict) >= 2 and sum(s == 0 for s in strict) > 100   # both sides of the equivalence occur
    for c, s, p in zip(cases, strict, partial):
        assert (p == 1.0) == (s == 1.0), c
    assert rewards.partial_format_reward(None, ["<think>x</think><answer>y</answer> and more"]) == [pytest.approx(0.8)]
    assert rewards.format_reward(None, ["<think>x</think><answer>y</answer> and more"]) == [0.0]


def test_accuracy_rule_compares_the_last_answer_as_a_number():
    """eq-r1-accuracy-reward: "0042" and "42.0" equal 42, "42 apples" does not; the last block is graded."""
    done = "<think>t</think><answer>{}</answer>"
    outs = [done.format("0042"), done.format("42.0"), done.format("42 apples"),
            "<think>t</think><answer>41</answer><answer>42</answer>",
            "<think>t</think><answer>42</answer><answer>41</answer>"]
    assert rewards.accuracy_reward(None, outs, answer=["42"] * len(outs)) == [1.0, 1.0, 0.0, 1.0, 0.0]


def _zero_variance_share(p_acc, p_fmt, G, w_acc, w_fmt):
    """Exact P(all G rewards equal) by enumerating every group of (accuracy, format) outcomes."""
    outcomes = [(a, f) for a in (0, 1) for f in (0, 1)]
    prob = {(a, f): (p_acc if a else 1 - p_acc) * (p_fmt if f else 1 - p_fmt) for a, f in outcomes}
    groups = list(itertools.product(outcomes, repeat=G))
    r = torch.tensor([[w_acc * a + w_fmt * f for a, f in grp] for grp in groups], dtype=F64)
    weight = torch.tensor([float(torch.tensor([prob[o] for o in grp], dtype=F64).prod()) for grp in groups], dtype=F64)
    return float((weight * zero_variance_groups(r).to(F64)).sum())


@pytest.mark.parametrize("p_acc,p_fmt,G", [(0.1, 0.5, 3), (0.3, 0.8, 4), (0.02, 0.5, 4)])
def test_zero_variance_share_under_two_rules_is_a_product_only_for_distinct_weights(p_acc, p_fmt, G):
    """Ch7 exercise ex-07-zero-variance: with weights 1 and 0.5 the share is
    (p_acc^G + (1-p_acc)^G)(p_fmt^G + (1-p_fmt)^G); with equal weights it is p_0^G + p_1^G + p_2^G, larger."""
    product = (p_acc**G + (1 - p_acc) ** G) * (p_fmt**G + (1 - p_fmt) ** G)
    assert _zero_variance_share(p_acc, p_fmt, G, 1.0, 0.5) == pytest.approx(product, abs=1e-12)
    p0, p2 = (1 - p_acc) * (1 - p_fmt), p_acc * p_fmt
    p1 = 1 - p0 - p2
    equal = _zero_variance_share(p_acc, p_fmt, G, 1.0, 1.0)
    assert equal == pytest.approx(p0**G + p1**G + p2**G, abs=1e-12)
    assert equal > product + 1e-6


# ===================================================================== chapter 8: the SFT loss on a batch
def test_sft_loss_on_a_batch_weights_each_example_by_its_length():
    """eq-sft-loss is per example; sft.sft_loss pools the completion tokens of the batch, i.e. the mean of
    eq-sft-loss weighted by |o|, which is the plain mean over examples only for equal lengths."""
    g = torch.Generator().manual_seed(0)
    V, T = 7, 9
    logits = torch.randn(2, T, V, generator=g, dtype=F64)
    labels = torch.full((2, T), sft.IGNORE_INDEX)
    labels[0, 3:5] = torch.tensor([1, 2])                        # |o_1| = 2
    labels[1, 2:8] = torch.tensor([3, 1, 4, 1, 5, 6])            # |o_2| = 6
    logp = torch.log_softmax(logits[:, :-1], -1)
    per_ex, lens = [], []
    for b in range(2):
        sel = labels[b, 1:] != sft.IGNORE_INDEX
        nll = -logp[b][sel].gather(-1, labels[b, 1:][sel][:, None])[:, 0]
        per_ex.append(float(nll.mean()))                         # eq-sft-loss of example b
        lens.append(int(sel.sum()))
    pooled = float(sft.sft_loss(logits, labels))
    assert pooled == pytest.approx((lens[0] * per_ex[0] + lens[1] * per_ex[1]) / sum(lens), abs=1e-6)  # sft_loss computes in float32
    assert abs(pooled - sum(per_ex) / 2) > 1e-2
    labels_eq = torch.full((2, T), sft.IGNORE_INDEX)             # equal lengths: the two coincide
    labels_eq[0, 3:6], labels_eq[1, 5:8] = torch.tensor([1, 2, 0]), torch.tensor([3, 1, 4])
    per_eq = [float(sft.sft_loss(logits[b:b + 1], labels_eq[b:b + 1])) for b in range(2)]
    assert float(sft.sft_loss(logits, labels_eq)) == pytest.approx(sum(per_eq) / 2, abs=1e-6)


# ===================================================================== chapter 9: counting FLOPs
def _flops(model, T, backward):
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randint(3, model.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(T))
    with FlopCounterMode(display=False) as fc:
        out = model(input_ids=x).logits
        if backward:
            out.sum().backward()
    return fc.get_total_flops()


def test_two_and_six_flops_per_parameter_and_token_hold_for_short_contexts_only():
    """eq-distill-compute: a forward pass costs about 2|theta| FLOPs per token and forward + backward about
    6|theta| (the backward pass is two matrix products per weight matrix), counting matmuls and leaving
    out the attention scores, whose cost per token grows with the context length."""
    model, _ = tiny_model(seed=0)
    n = distill.count_parameters(model)
    short, long = 8, 512
    assert _flops(model, short, False) / (2 * n * short) == pytest.approx(1.0, abs=0.03)
    assert _flops(model, short, True) / (6 * n * short) == pytest.approx(1.0, abs=0.03)
    assert _flops(model, long, False) / (2 * n * long) > 1.5       # long context: attention is no longer small
    # the excess is the attention scores: Q K^T and the weighted sum of V, 4 n_layer T d per token
    cfg = model.config
    excess = _flops(model, long, False) - 2 * n * long
    assert excess == pytest.approx(4 * cfg.num_hidden_layers * long * cfg.hidden_size * long, rel=0.05)


def test_equal_compute_steps_follow_from_the_ledger():
    """Ch9 exercise ex-09-equal-compute: with prompts not counted, S = n_q n (k + 3 E p_keep) / (4 B G);
    12 steps for the SmolLM2 settings at acceptance 1/2, 69 for a teacher 20 times larger."""
    P, n_tok = 1000, 10                                          # student parameters, tokens per completion
    for k, expected in ((1, 12), (20, 69)):
        n_q, n, E, p_keep, B, G = 96, 4, 2, 0.5, 4, 8
        c_distill = 2 * k * P * n_q * n * n_tok + 6 * P * E * p_keep * n_q * n * n_tok
        step = distill.grpo_step_flops(P, B, G, prompt_len=0, completion_len=n_tok, num_iterations=1, beta=0.0)
        assert step == 8 * P * B * G * n_tok
        assert c_distill / step == pytest.approx(n_q * n * (k + 3 * E * p_keep) / (4 * B * G)) == expected
        assert distill.rl_steps_for_budget(c_distill, P, B, G, 0, n_tok) == expected

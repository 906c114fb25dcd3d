"""Checkers for chapter 6's exercises (GRPO): the group-normalised advantage, the k3 KL estimator and
the aggregation of per-token losses (GRPO, BNPO, Dr. GRPO); and a derivation, the advantages of a group
with 0/1 rewards in closed form (a formula, see :mod:`rlcore.exercise_checks._derivation`).

Each checker follows :func:`rlcore.exercises.check`: hand-made cases first, then random ones,
expected values from rlcore's reference, and known mistakes with a hint each::

    from rlcore.exercise_checks import ch06 as checks
    checks.check_group_advantages(my_group_advantages)
"""
from __future__ import annotations

from typing import Callable

import torch

from rlcore.exercises import Case, Mistake, check

__all__ = ["check_group_advantages", "check_kl_k3", "check_grpo_aggregation", "aggregate_reference",
           "check_binary_group_advantage", "binary_group_advantage"]

DTYPE = torch.float64
EPS = 1e-4  # rlcore.returns.group_normalized_advantages' default


def _t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=DTYPE)


# --------------------------------------------------------------------- group-normalised advantage
def _adv_variant(rewards, G, *, unbiased=True, per_group=True, centre=True, scale=True):
    r = rewards.view(-1, G)
    mean = r.mean(1, keepdim=True) if per_group else r.mean()
    std = r.std(1, keepdim=True, unbiased=unbiased) if per_group else r.std(unbiased=unbiased)
    out = (r - mean) if centre else r
    if scale:
        out = out / (std + EPS)
    return out.flatten()


def check_group_advantages(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-06-group-advantage: ``fn(rewards, group_size)`` returns the group-normalised advantages
    of eq-group-advantage, ``A_i = (r_i - mean(group)) / (std(group) + 1e-4)``.

    ``rewards`` is a flat float64 tensor ``[num_groups * G]`` whose consecutive blocks of ``G`` belong to the
    same prompt; ``std`` is the sample standard deviation (``torch.std``, divisor ``G - 1``). Output has the
    shape of ``rewards``. Reference: :func:`rlcore.returns.group_normalized_advantages`.
    """
    from rlcore.returns import group_normalized_advantages

    def case(rewards, G, label, hint=""):
        args = {"rewards": _t(rewards), "group_size": G}
        return Case(args, group_normalized_advantages(args["rewards"], group_size=G), label, hint)

    g = torch.Generator().manual_seed(0)
    cases = [
        case([1.0, 0.0], 2, "one group of two: +-1/sqrt(2) (sample std of {0, 1} is 1/sqrt(2))"),
        case([1.0, 0.0, 0.0, 0.0], 4, "one correct answer out of four"),
        case([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], 3, "two prompts: each group is normalised on its own"),
        case([1.0, 1.0, 1.0, 0.0, 1.0, 0.0], 3,
             "the first group is all correct: zero advantage (no signal), not NaN",
             hint="a group whose rewards are all equal has standard deviation 0: the 1e-4 in the denominator of "
                  "eq-group-advantage keeps the advantage at 0 instead of 0/0, which is NaN."),
        case([5.0, 7.0, 9.0, 100.0, 101.0, 102.0], 3, "rewards on very different scales per prompt"),
        case(torch.rand(32, generator=g, dtype=DTYPE), 8, "random rewards, G = 8"),
        case((torch.rand(64, generator=g) < 0.3).to(DTYPE), 16, "random 0/1 rewards, G = 16"),
    ]
    mistakes = [
        Mistake(lambda r, G: _adv_variant(r, G, unbiased=False),
                "use the sample standard deviation (divisor G - 1, as rlcore and TRL do), not the population one "
                "(divisor G)."),
        Mistake(lambda r, G: _adv_variant(r, G, per_group=False),
                "normalise within each group of G consecutive rewards, not over the whole batch: the baseline is "
                "the mean reward of the *same* prompt."),
        Mistake(lambda r, G: _adv_variant(r, G, centre=False),
                "subtract the group mean first: an advantage says how much better than the group an answer is."),
        Mistake(lambda r, G: _adv_variant(r, G, scale=False),
                "that is only centred (Dr. GRPO's choice); eq-group-advantage also divides by the group's standard deviation (plus 1e-4)."),
    ]
    return check(fn, cases, "group_advantages",
                 hint="reread eq-group-advantage: the flat rewards come in groups of G consecutive answers to the "
                      "same prompt; standardise each group with its own mean and sample standard deviation, and "
                      "return the advantages in the original flat order.", exercise="ex-06-group-advantage",
                 # loose enough that std without the 1e-4 passes the ordinary cases: it fails (NaN) where it should
                 atol=1e-6, rtol=1e-3, raise_on_fail=raise_on_fail, mistakes=mistakes)


# --------------------------------------------------------------------- k3
def check_kl_k3(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-06-k3: ``fn(logp, ref_logp)`` returns the per-sample k3 estimate (eq-kl-k3) of
    ``KL(pi_theta || pi_ref)`` from samples of ``pi_theta``:

    ``k3 = pi_ref / pi_theta - log(pi_ref / pi_theta) - 1``, computed from the log-probabilities.

    Inputs are float64 tensors of any (equal) shape; the output has the same shape.
    Reference: :func:`rlcore.kl.kl_k3`.
    """
    from rlcore.kl import kl_k3

    def case(logp, ref, label):
        args = {"logp": _t(logp), "ref_logp": _t(ref)}
        return Case(args, kl_k3(*args.values()), label)

    g = torch.Generator().manual_seed(1)
    lp = -torch.rand(5, 7, generator=g, dtype=DTYPE) * 4
    cases = [
        case([-1.0, -2.0], [-1.0, -2.0], "identical policies: 0"),
        case([-1.0], [-2.0], "pi_ref / pi_theta = e^-1"),
        case([-2.0], [-1.0], "pi_ref / pi_theta = e"),
        case([-0.1, -3.0, -0.7], [-0.2, -2.0, -0.7], "a few tokens"),
        case(lp, lp + 0.5 * torch.randn(5, 7, generator=g, dtype=DTYPE), "random [5, 7] batch"),
        case(lp, lp + 1e-7 * torch.randn(5, 7, generator=g, dtype=DTYPE), "nearly identical policies"),
    ]
    mistakes = [
        Mistake(lambda lp, rf: torch.exp(lp - rf) - (lp - rf) - 1,
                "the ratio is upside down: k3 uses the reference's probability over the policy's, pi_ref / pi_theta."),
        Mistake(lambda lp, rf: lp - rf, "that is k1, the log-ratio (eq-kl-k1); k3 is eq-kl-k3."),
        Mistake(lambda lp, rf: 0.5 * (lp - rf) ** 2, "that is k2 (eq-kl-k2); k3 is eq-kl-k3."),
        Mistake(lambda lp, rf: torch.exp(rf - lp) - (rf - lp),
                "a constant is missing: the estimate of KL(p || p) must be 0, and yours is 1."),
        Mistake(lambda lp, rf: torch.exp(rf - lp) + (rf - lp) - 1,
                "sign of the log term: k3 is never negative, because log x is at most x minus 1."),
    ]
    return check(fn, cases, "kl_k3",
                 hint="reread eq-kl-k3: write the probability ratio pi_ref / pi_theta with the two log-probabilities "
                      "(never exponentiate them one by one), then apply the estimator elementwise.",
                 atol=1e-9, rtol=1e-6, raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-06-k3")


# --------------------------------------------------------------------- aggregation
def aggregate_reference(per_token: torch.Tensor, completion_mask: torch.Tensor, loss_type: str,
                        max_completion_length: int) -> torch.Tensor:
    """rlcore's aggregation of a given per-token loss matrix, obtained from :func:`rlcore.llm.grpo.grpo_loss`.

    With ``logp = old_logp = 0``, zero advantages, ``beta = 1`` and the k1 estimator, the per-token term of
    ``grpo_loss`` is ``1 * (logp - ref_logp) = -ref_logp``; passing ``ref_logp = -per_token`` makes it
    exactly ``per_token``, so the result is ``grpo_loss``'s own aggregation of ``per_token``.
    """
    from rlcore.llm.grpo import grpo_loss

    zeros = torch.zeros_like(per_token)
    loss, _ = grpo_loss(zeros, zeros, -per_token, torch.zeros(per_token.shape[0], dtype=per_token.dtype),
                        completion_mask, beta=1.0, loss_type=loss_type, kl_estimator="k1",
                        max_completion_length=max_completion_length)
    return loss


def _agg_variant(per, mask, loss_type, max_len, *, wrong=""):
    N, L = per.shape
    tok = per * mask
    if loss_type == "grpo":
        if wrong == "padded":
            return tok.sum(1).div(L).mean()
        if wrong == "tokens":
            return tok.sum() / mask.sum()
        return (tok.sum(1) / mask.sum(1)).mean()
    if loss_type == "bnpo":
        if wrong == "seqmean":
            return (tok.sum(1) / mask.sum(1)).mean()
        return tok.sum() / mask.sum()
    if wrong == "width":
        return tok.sum() / (N * L)
    if wrong == "tokens":
        return tok.sum() / mask.sum()
    return tok.sum() / (N * max_len)


def check_grpo_aggregation(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-06-aggregation: ``fn(per_token, completion_mask, loss_type, max_completion_length)`` turns
    a ``[N, L]`` matrix of per-token losses into the scalar loss, for ``loss_type``

    * ``"grpo"``: ``1/N sum_i 1/|o_i| sum_t l_{i,t}`` (each completion's mean, then the mean over completions);
    * ``"bnpo"``: ``sum_{i,t} l_{i,t} / sum_i |o_i|`` (every generated token of the batch weighs the same);
    * ``"dr_grpo"``: ``sum_{i,t} l_{i,t} / (N * max_completion_length)`` (a constant normaliser).

    Sums run over generated tokens only (``completion_mask``); padding holds junk. ``max_completion_length``
    is the generation budget, which may exceed ``L``. Reference: :func:`rlcore.llm.grpo.grpo_loss`
    (see :func:`aggregate_reference`).
    """
    def case(per, mask, loss_type, max_len, label):
        args = {"per_token": _t(per), "completion_mask": _t(mask), "loss_type": loss_type,
                "max_completion_length": max_len}
        return Case(args, aggregate_reference(args["per_token"], args["completion_mask"], loss_type, max_len).to(DTYPE),
                    label)

    per = [[1.0, 1.0, 1.0, 1.0], [4.0, 9.0, 9.0, 9.0]]
    mask = [[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]]
    cases = [
        case(per, mask, "grpo", 4, "grpo: row means 1 and 4 (padding ignored), then their mean"),
        case(per, mask, "bnpo", 4, "bnpo: 4 + 4 = 8 over 5 generated tokens"),
        case(per, mask, "dr_grpo", 4, "dr_grpo: 8 over N * max_completion_length = 2 * 4"),
        case(per, mask, "dr_grpo", 10, "dr_grpo with a budget of 10 tokens: 8 / (2 * 10), not / (2 * L)"),
    ]
    g = torch.Generator().manual_seed(2)
    for i, (N, L, budget) in enumerate([(6, 9, 9), (4, 12, 16), (8, 5, 32)]):
        lengths = torch.randint(1, L + 1, (N,), generator=g)
        lengths[0] = L
        m = (torch.arange(L)[None] < lengths[:, None]).to(DTYPE)
        p = torch.randn(N, L, generator=g, dtype=DTYPE)
        for lt in ("grpo", "bnpo", "dr_grpo"):
            cases.append(case(p, m, lt, budget, f"random batch {i + 1}, {lt} (N = {N}, L = {L}, budget {budget})"))

    mistakes = [
        Mistake(lambda p, m, lt, ml: _agg_variant(p, m, lt, ml, wrong="padded"),
                "grpo: divide each row's sum by its own length |o_i| (its generated tokens), not by the padded width."),
        Mistake(lambda p, m, lt, ml: _agg_variant(p, m, lt, ml, wrong="tokens"),
                "you pooled all tokens of the batch: that is bnpo. grpo averages within each completion first; dr_grpo "
                "divides by a constant of the run."),
        Mistake(lambda p, m, lt, ml: _agg_variant(p, m, lt, ml, wrong="seqmean"),
                "bnpo pools every generated token of the batch: one average over all of them, not a mean of "
                "per-completion means."),
        Mistake(lambda p, m, lt, ml: _agg_variant(p, m, lt, ml, wrong="width"),
                "dr_grpo's normaliser uses the generation budget max_completion_length, a constant of the run, not "
                "the width L of this batch, which changes from batch to batch."),
    ]
    return check(fn, cases, "grpo_aggregation",
                 hint="only generated tokens count (completion_mask); then the three rules of the exercise differ "
                      "in the normaliser: grpo averages within each completion and then over completions, bnpo "
                      "over all generated tokens at once, dr_grpo divides by a constant of the run.",
                 atol=1e-9, rtol=1e-7, raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-06-aggregation")


# --------------------------------------------------------------------- derivation: a group of 0/1 rewards
def binary_group_advantage(k, G):
    """The reference: the advantages (eq-group-advantage, sample standard deviation, without the 1e-4) of a
    correct and of a wrong answer in a group of ``G`` answers with 0/1 rewards of which ``k`` are correct
    (``0 < k < G``), as the tuple ``(A_correct, A_wrong)``."""
    import sympy as sp

    return sp.sqrt((G - k) * (G - 1) / (k * G)), -sp.sqrt(k * (G - 1) / ((G - k) * G))


def check_binary_group_advantage(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-06-binary-advantage: ``fn(k, G)``, called with sympy symbols (positive integers), returns the
    tuple :func:`binary_group_advantage` of two formulas; compared at hand-made and random groups. Hand-made
    cases include the values of :func:`rlcore.returns.group_normalized_advantages` up to its 1e-4."""
    import numpy as np
    import sympy as sp

    from rlcore.exercise_checks._derivation import closed_form_check

    k, G = sp.symbols("k G", integer=True, positive=True)
    symbols = {"k": k, "G": G}
    reference = binary_group_advantage(k, G)

    points = [({"k": 1, "G": 2}, "one right, one wrong"), ({"k": 1, "G": 8}, "one correct answer out of eight"),
              ({"k": 7, "G": 8}, "one wrong answer out of eight"), ({"k": 4, "G": 8}, "half of the group correct"),
              ({"k": 2, "G": 16}, "two correct answers out of sixteen")]
    rng = np.random.default_rng(6)
    for i in range(8):
        G_ = int(rng.integers(3, 65))
        points.append(({"k": int(rng.integers(1, G_)), "G": G_}, f"random group {i + 1}"))
    mistakes = [
        ((sp.sqrt((G - k) / k), -sp.sqrt(k / (G - k))),
         "that uses the population standard deviation (divisor G); eq-group-advantage in rlcore and TRL divides by "
         "the sample standard deviation (divisor G - 1)."),
        (((G - k) / G, -k / G),
         "that is only the centred reward; eq-group-advantage also divides by the group's standard deviation."),
        ((-sp.sqrt(k * (G - 1) / ((G - k) * G)), sp.sqrt((G - k) * (G - 1) / (k * G))),
         "the two values are swapped (or the signs flipped): a correct answer beats the group mean, so its "
         "advantage is positive."),
        ((sp.sqrt(k * (G - 1) / ((G - k) * G)), -sp.sqrt((G - k) * (G - 1) / (k * G))),
         "the magnitudes are swapped: the rarer outcome gets the larger advantage (a single correct answer in a "
         "large group is pushed up strongly)."),
    ]
    return closed_form_check(
        fn, symbols, reference, points, "binary_group_advantage",
        hint="with k ones and G - k zeros, write the group mean, then the sum of squared deviations (k of one "
             "size, G - k of the other) and the sample standard deviation; divide each centred reward by it and "
             "simplify. Return the pair (correct, wrong) as formulas in k and G.",
        exercise="ex-06-binary-advantage", mistakes=mistakes, raise_on_fail=raise_on_fail)

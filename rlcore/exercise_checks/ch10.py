"""Checkers for chapter 10's exercises (direct alignment): the DPO loss from sequence log-probabilities, and a
derivation, the probability that a best-of-n completion beats a reference completion (a formula, see
:mod:`rlcore.exercise_checks._derivation`).

Each checker follows :func:`rlcore.exercises.check`: hand-made cases first, then random ones, expected values
from rlcore's reference (:mod:`rlcore.llm.dpo`), and known mistakes with a hint each::

    from rlcore.exercise_checks import ch10 as checks
    checks.check_dpo_loss(my_dpo_loss)
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from rlcore.exercises import Case, Mistake, check

__all__ = ["check_dpo_loss", "check_bon_win_rate", "bon_win_rate"]

DTYPE = torch.float64


def _t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=DTYPE)


# --------------------------------------------------------------------- the DPO loss
def check_dpo_loss(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-10-dpo-loss: ``fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
    ref_rejected_logps, beta)`` returns the mean DPO loss of eq-dpo-loss over the batch (a scalar tensor):

    ``-mean log sigmoid(beta * [(pc - rc) - (pr - rr)])`` for the four ``[B]`` tensors of sequence log-probabilities.

    Reference: :func:`rlcore.llm.dpo.dpo_loss`.
    """
    from rlcore.llm.dpo import dpo_loss

    names = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")

    def case(pc, pr, rc, rr, beta, label):
        args = dict(zip(names, map(_t, (pc, pr, rc, rr))))
        args["beta"] = beta
        expected = dpo_loss(*(args[n] for n in names), beta).loss
        return Case(args, expected.to(DTYPE), label)

    cases = [
        case([-5.0], [-5.0], [-5.0], [-5.0], 0.1, "policy equals the reference: the loss is log 2"),
        case([-4.0], [-6.0], [-5.0], [-5.0], 0.5, "the chosen completion gained and the rejected one lost probability"),
        case([-4.0, -9.0], [-6.0, -7.0], [-4.0, -8.0], [-6.0, -8.0], 1.0,
             "a pair whose log-probabilities equal the reference's, and one that got worse"),
        case([-500.0], [-10.0], [-10.0], [-10.0], 2.0, "a pair ordered so wrongly that a naive sigmoid underflows to 0"),
    ]
    g = torch.Generator().manual_seed(5)
    for i, (B, beta) in enumerate([(4, 0.1), (8, 0.5), (16, 0.05)]):
        ref = -torch.rand(2, B, generator=g, dtype=DTYPE) * 40 - 1
        pol = ref + torch.randn(2, B, generator=g, dtype=DTYPE) * 3
        cases.append(case(pol[0], pol[1], ref[0], ref[1], beta, f"random batch {i + 1} (B = {B})"))

    def no_reference(pc, pr, rc, rr, beta):
        return -F.logsigmoid(beta * (pc - pr)).mean()

    def reference_added(pc, pr, rc, rr, beta):
        return -F.logsigmoid(beta * ((pc + rc) - (pr + rr))).mean()

    def chosen_rejected_swapped(pc, pr, rc, rr, beta):
        return -F.logsigmoid(beta * ((pr - rr) - (pc - rc))).mean()

    def beta_outside(pc, pr, rc, rr, beta):
        return -beta * F.logsigmoid((pc - rc) - (pr - rr)).mean()

    def summed(pc, pr, rc, rr, beta):
        return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).sum()

    mistakes = [
        Mistake(no_reference, "the implicit reward is a log-ratio against the reference model (eq-dpo-implicit-reward), "
                              "not the policy's log-probability alone."),
        Mistake(reference_added, "the reference enters as a ratio: its log-probabilities are subtracted, not added."),
        Mistake(chosen_rejected_swapped, "the loss is small when the chosen completion's implicit reward is the larger "
                                         "one; check which difference goes inside."),
        Mistake(beta_outside, "beta scales the implicit rewards inside the sigmoid, not the loss."),
        Mistake(summed, "average over the pairs of the batch, so that the loss does not grow with the batch size."),
    ]
    return check(fn, cases, "dpo_loss", mistakes=mistakes, raise_on_fail=raise_on_fail, exercise="ex-10-dpo-loss",
                 hint="reread eq-dpo-loss: each completion's implicit reward is beta times its log-ratio against the "
                      "reference; the loss of a pair is the negative log-sigmoid of the chosen minus the rejected "
                      "implicit reward, averaged over the batch; the stable log-sigmoid avoids underflow.")


# --------------------------------------------------------------------- derivation: best-of-n win rate
def bon_win_rate(n):
    """Probability that a best-of-n completion outscores an independent reference completion (continuous reward)."""
    return n / (n + 1)


def check_bon_win_rate(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-10-bon-win-rate: ``fn(n)``, called with a sympy symbol, returns :func:`bon_win_rate` as a
    formula; compared at hand-made and random points."""
    import numpy as np
    import sympy as sp

    from rlcore.exercise_checks._derivation import closed_form_check

    n = sp.Symbol("n", integer=True, positive=True)
    symbols = {"n": n}
    points = [({"n": 1}, "best-of-1 is the reference itself"), ({"n": 2}, "best of two"),
              ({"n": 16}, "best of sixteen"), ({"n": 1000}, "a thousand samples")]
    rng = np.random.default_rng(10)
    points += [({"n": int(v)}, f"random n {i + 1}") for i, v in enumerate(rng.integers(3, 500, size=8))]
    mistakes = [
        ((n - 1) / n, "best-of-one is the reference itself, which wins against an independent copy of itself half "
                      "the time."),
        (1 - sp.Rational(1, 2) ** n, "the n draws are not n independent coin flips against the reference sample: they "
                                     "all face the same reference sample."),
        (1 - 1 / (n + 1) ** 2, "count the n + 1 draws once: each of them is equally likely to be the largest."),
        (sp.log(n) - (n - 1) / n, "that is the KL of eq-best-of-n-kl, not a probability."),
    ]
    return closed_form_check(
        fn, symbols, bon_win_rate(n), points, "bon_win_rate",
        hint="the best-of-n sample and the reference sample together are n + 1 independent draws from the reference; "
             "by symmetry, which of them is the largest?",
        exercise="ex-10-bon-win-rate", mistakes=mistakes, raise_on_fail=raise_on_fail)

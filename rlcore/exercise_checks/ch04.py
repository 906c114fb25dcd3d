"""Checkers for chapter 4's exercises (PPO and GAE): the k-step advantage estimator, the (clipped)
value loss and the explained variance, and a derivation: how a constant error of the critic shifts the GAE
advantage near the end of an episode (a formula, see :mod:`rlcore.exercise_checks._derivation`). The GAE
and clipped-surrogate exercises of the chapter use
:func:`rlcore.exercises.check_gae` and :func:`rlcore.exercises.check_clipped_surrogate`.

Each checker follows :func:`rlcore.exercises.check`: hand-made cases first, then random ones,
expected values from rlcore's reference, and known mistakes with a hint each::

    from rlcore.exercise_checks import ch04 as checks
    checks.check_kstep_advantage(my_kstep_advantage)
"""
from __future__ import annotations

from typing import Callable

import torch

from rlcore.exercises import Case, Mistake, check

__all__ = ["check_kstep_advantage", "check_value_loss", "check_explained_variance", "check_gae_offset_shift",
           "gae_offset_shift"]

DTYPE = torch.float64


def _t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=DTYPE)


# --------------------------------------------------------------------- k-step advantage
def _kstep_loop(r, v, nv, term, trunc, gamma, k, *, boot_exp=0, stop_at_ends=True, boot_terminal=False,
                use_values=False, subtract_v=True):
    """A k-step estimator written as a plain loop; the keyword arguments switch on known mistakes.

    ``boot_exp``: extra power of gamma on the bootstrap (-1: gamma^(k-1)); ``use_values``: bootstrap
    from ``values[t+j+1]`` instead of ``next_values[t+j]`` (wrong across an episode end)."""
    T = r.shape[0]
    out = torch.empty_like(r)
    for t in range(T):
        total = 0.0
        for j in range(k):
            s = t + j
            total = total + gamma**j * r[s]
            end = bool(term[s] or trunc[s]) and stop_at_ends
            if j == k - 1 or s == T - 1 or end:
                nxt = v[s + 1] if (use_values and s + 1 < T) else nv[s]
                alive = 1.0 if boot_terminal else 1.0 - float(term[s])
                total = total + gamma ** (j + 1 + boot_exp) * alive * nxt
                break
        out[t] = total - (v[t] if subtract_v else 0.0)
    return out


def check_kstep_advantage(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-04-kstep: ``fn(rewards, values, next_values, terminated, truncated, gamma, k)``
    returns the k-step advantage estimates (eq-kstep-advantage)

    ``A^(k)_t = r_t + gamma r_{t+1} + ... + gamma^{k-1} r_{t+k-1} + gamma^k V(s_{t+k}) - V(s_t)``

    for every step ``t`` of a rollout. Inputs are float64 tensors ``[T]``; ``next_values[t] = V(s_{t+1})``.
    Where t's episode ends (``terminated`` or ``truncated`` at step ``t + j``, ``j < k``) or the rollout
    ends first, the sum stops there and bootstraps from ``next_values[t + j]``, except after a
    ``terminated`` step (a terminal state is worth 0). Reference: :func:`rlcore.returns.kstep_advantages`.
    """
    from rlcore.returns import kstep_advantages

    def case(r, v, nv, term, trunc, gamma, k, label):
        args = {"rewards": _t(r), "values": _t(v), "next_values": _t(nv), "terminated": _t(term),
                "truncated": _t(trunc), "gamma": gamma, "k": k}
        return Case(args, kstep_advantages(*args.values()), label)

    r4, v4 = [1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 1.5, 2.0]
    nv4 = v4[1:] + [3.0]
    z4 = [0.0] * 4
    cases = [
        case(r4, v4, nv4, z4, z4, 0.9, 1, "k = 1: the TD errors delta_t"),
        case(r4, v4, nv4, z4, z4, 0.9, 2, "k = 2, no episode end: bootstrap from V(s_{t+2})"),
        case(r4, v4, nv4, z4, z4, 0.5, 10, "k longer than the rollout: bootstrap from the last next_value"),
        case(r4, v4, nv4, [0.0, 1.0, 0.0, 0.0], z4, 0.9, 3, "terminated after step 1: no bootstrap there"),
        case(r4, v4, [1.0, 7.0, 1.5, 2.0], z4, [0.0, 1.0, 0.0, 0.0], 0.9, 3,
             "truncated after step 1 (time limit): bootstrap from next_values[1] = 7"),
    ]
    g = torch.Generator().manual_seed(0)
    for i, (T, k) in enumerate([(12, 3), (20, 5), (15, 15)]):
        ends = torch.rand(T, generator=g, dtype=DTYPE)
        cases.append(case(torch.randn(T, generator=g, dtype=DTYPE), torch.randn(T, generator=g, dtype=DTYPE),
                          torch.randn(T, generator=g, dtype=DTYPE), (ends < 0.12).to(DTYPE),
                          ((ends > 0.12) & (ends < 0.24)).to(DTYPE), 0.95, k, f"random rollout {i + 1}, k = {k}"))

    mistakes = [
        Mistake(lambda *a: _kstep_loop(*a, subtract_v=False),
                "that is a k-step *return*; the advantage estimate subtracts the baseline V(s_t)."),
        Mistake(lambda *a: _kstep_loop(*a, boot_exp=-1),
                "off by one in the bootstrap's discount: after k rewards r_t .. r_{t+k-1} the value V(s_{t+k}) "
                "is k steps away, as far as the step after the last reward."),
        Mistake(lambda *a: _kstep_loop(*a, boot_terminal=True),
                "after a terminated step the next state is terminal and worth 0: do not bootstrap there."),
        Mistake(lambda *a: _kstep_loop(*a, stop_at_ends=False),
                "the sum must stop at the end of t's episode (terminated or truncated): the rewards after it "
                "belong to the next episode."),
        Mistake(lambda *a: _kstep_loop(*a, use_values=True),
                "bootstrap from next_values (the value of the real next state), not from the following entry of "
                "values: after an episode end that is the value of the *next* episode's first state."),
    ]
    return check(fn, cases, "kstep_advantage",
                 hint="reread eq-kstep-advantage: for each t sum up to k discounted rewards, stopping early at the "
                      "end of t's episode or of the rollout; where you stop, bootstrap from the value of the next "
                      "state (unless that step terminated), and subtract the baseline V(s_t).",
                 atol=1e-8, rtol=1e-6, raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-04-kstep")


# --------------------------------------------------------------------- value loss
def check_value_loss(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-04-value-loss: ``fn(values, returns, old_values, clip_coef)`` returns PPO's critic
    loss (eq-value-loss) averaged over the batch:

    * ``clip_coef is None``: ``mean((1/2) (V - R)^2)``;
    * otherwise the clipped form of PPO's reference implementation,
      ``mean((1/2) max((V - R)^2, (V_clip - R)^2))`` with
      ``V_clip = V_old + clip(V - V_old, -clip_coef, clip_coef)``.

    Inputs are float64 tensors ``[B]``; the answer is a scalar. Reference: :func:`rlcore.losses.value_loss`.
    """
    from rlcore.losses import value_loss

    def case(v, ret, old, eps, label):
        args = {"values": _t(v), "returns": _t(ret), "old_values": _t(old), "clip_coef": eps}
        return Case(args, value_loss(*args.values()), label)

    cases = [
        case([1.0, 2.0], [0.0, 4.0], [1.0, 2.0], None, "no clipping: half the mean squared error"),
        case([1.0], [-1.0], [0.0], 0.2, "V moved 1.0 away from R: the unclipped term is the larger one"),
        case([1.0], [3.0], [0.0], 0.2, "V moved 1.0 from V_old towards R: the clipped term is the larger one"),
        case([0.1, -0.1], [2.0, -2.0], [0.0, 0.0], 0.2, "inside the clip range both terms agree"),
    ]
    g = torch.Generator().manual_seed(0)
    for i, eps in enumerate([None, 0.2, 0.5]):
        old = torch.randn(32, generator=g, dtype=DTYPE)
        cases.append(case(old + 0.5 * torch.randn(32, generator=g, dtype=DTYPE),
                          old + torch.randn(32, generator=g, dtype=DTYPE), old, eps, f"random batch {i + 1}"))

    def clipped(v, ret, old, eps, combine, half=True):
        per = (v - ret) ** 2
        if eps is not None:
            per = combine(per, (old + torch.clamp(v - old, -eps, eps) - ret) ** 2)
        return (0.5 if half else 1.0) * per.mean()

    mistakes = [
        Mistake(lambda v, ret, old, eps: clipped(v, ret, old, None, torch.max),
                "clip_coef is ignored: with a clip_coef, also compute the squared error of the values clipped "
                "to a band around the *old* values (not around the returns) and take the larger of the two."),
        Mistake(lambda v, ret, old, eps: clipped(v, ret, old, eps, torch.max, half=False),
                "the loss is *half* the squared error (so its gradient is V - R)."),
        Mistake(lambda v, ret, old, eps: clipped(v, ret, old, eps, torch.min),
                "take the larger (max) of the unclipped and the clipped squared errors, not the min nor the clipped "
                "term alone: like the policy's clipped objective, the clipped value loss is the pessimistic one."),
    ]
    return check(fn, cases, "value_loss",
                 hint="reread eq-value-loss: half the squared error between values and returns; with a clip_coef, "
                      "also the error of the values clipped to a band of width clip_coef around the *old* "
                      "values, keeping per sample the larger of the two, then the mean over the batch.",
                 atol=1e-9, rtol=1e-7, raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-04-value-loss")


# --------------------------------------------------------------------- explained variance
def check_explained_variance(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-04-explained-variance: ``fn(y_pred, y_true)`` returns the explained variance
    ``1 - Var[y_true - y_pred] / Var[y_true]`` as a float (1: perfect, 0: no better than predicting
    the mean, negative: worse). Inputs are float64 tensors ``[B]`` whose ``y_true`` is not constant.
    Reference: :func:`rlcore.losses.explained_variance`.
    """
    from rlcore.losses import explained_variance

    def case(pred, true, label):
        args = {"y_pred": _t(pred), "y_true": _t(true)}
        return Case(args, explained_variance(*args.values()), label)

    g = torch.Generator().manual_seed(0)
    y = torch.randn(64, generator=g, dtype=DTYPE)
    cases = [
        case([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], "a perfect prediction: 1"),
        case([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], "predicting the mean: 0"),
        case([11.0, 12.0, 13.0], [1.0, 2.0, 3.0], "right up to a constant offset: still 1"),
        case([3.0, 2.0, 1.0], [1.0, 2.0, 3.0], "anti-correlated: negative"),
        case(y + 0.5 * torch.randn(64, generator=g, dtype=DTYPE), y, "random: a noisy critic"),
        case(0.3 * y + torch.randn(64, generator=g, dtype=DTYPE), y, "random: a poor critic"),
    ]

    def var(x):
        return torch.var(x)

    mistakes = [
        Mistake(lambda p, t: float(var(t - p) / var(t)),
                "that is the *unexplained* fraction of the variance; explained variance is its complement."),
        Mistake(lambda p, t: float(1 - ((t - p) ** 2).mean() / var(t)),
                "you used the mean squared error; explained variance uses the *variance* of the error, so a "
                "constant offset in the prediction does not count against it."),
        Mistake(lambda p, t: float(var(p) / var(t)),
                "comparing the spread of the predictions with the spread of the targets ignores whether they "
                "agree; use the variance of the residual, target minus prediction."),
    ]
    return check(fn, cases, "explained_variance",
                 hint="reread eq-explained-variance: compare the variance of the prediction error with the variance "
                      "of the targets; 1 is a perfect critic, 0 no better than predicting the mean.",
                 atol=1e-9, rtol=1e-7, raise_on_fail=raise_on_fail, mistakes=mistakes,
                 exercise="ex-04-explained-variance")


# --------------------------------------------------------------------- derivation: a constant critic error in GAE
def gae_offset_shift(c, gamma, lam, n):
    """The reference: the change of the GAE advantage (eq-gae) of a step when the critic is ``V + c`` instead of
    ``V`` on every non-terminal state, for a step that is the ``n``-th last of an episode that *terminates*
    (``n = 1``: the terminating step itself; its next state is terminal and worth 0 whatever the critic)."""
    x = gamma * lam
    return c * ((gamma - 1) * (1 - x ** (n - 1)) / (1 - x) - x ** (n - 1))


def check_gae_offset_shift(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-04-gae-offset: ``fn(c, gamma, lam, n)``, called with sympy symbols (``n`` a positive integer),
    returns :func:`gae_offset_shift` as a formula; compared at hand-made and random points (``gamma * lam < 1``)."""
    import numpy as np
    import sympy as sp

    from rlcore.exercise_checks._derivation import closed_form_check

    c = sp.Symbol("c", real=True)
    gamma, lam = sp.symbols("gamma lam", positive=True)
    n = sp.Symbol("n", integer=True, positive=True)
    symbols = {"c": c, "gamma": gamma, "lam": lam, "n": n}
    reference = gae_offset_shift(c, gamma, lam, n)

    def pt(c_, g_, l_, n_):
        return {"c": c_, "gamma": g_, "lam": l_, "n": n_}

    points = [(pt(1.0, 0.99, 0.95, 1), "the terminating step itself"),
              (pt(1.0, 0.99, 0.95, 2), "the step before the terminating one"),
              (pt(1.0, 0.99, 0.95, 500), "a step far from the end of its episode"),
              (pt(2.0, 1.0, 0.9, 10), "no discount, ten steps before the end"),
              (pt(-1.0, 0.9, 0.0, 5), "lambda 0: one TD error only")]
    rng = np.random.default_rng(4)
    points += [(pt(float(np.round(rng.normal(0, 3), 3)), float(np.round(rng.uniform(0.8, 1.0), 3)),
                   float(np.round(rng.uniform(0.05, 0.98), 3)), int(rng.integers(1, 300))), f"random point {i + 1}")
               for i in range(8)]
    x = gamma * lam
    mistakes = [
        ((gamma - 1) * c / (1 - x),
         "that is the shift far from the end of the episode; the sum of TD errors in eq-gae stops at the "
         "terminating step, and that step's TD error has no bootstrap term."),
        (c * (gamma - 1) * (1 - x**n) / (1 - x),
         "you treated the terminating step like the others; its next state is terminal and worth 0 whatever the "
         "critic says, so the error enters its TD error only through the subtracted value of its own state."),
        (c * ((gamma - 1) * (1 - x ** (n - 1)) / (1 - x) + x ** (n - 1)),
         "the sign of the terminating step's contribution: a critic that is too high makes that step's TD error "
         "smaller, because its value is subtracted and nothing is added back."),
        (c * ((gamma - 1) * (1 - gamma ** (n - 1)) / (1 - gamma) - gamma ** (n - 1)),
         "GAE discounts the TD errors by gamma times lambda, not by gamma alone (eq-gae)."),
    ]
    return closed_form_check(
        fn, symbols, reference, points, "gae_offset_shift",
        hint="write how the constant error changes each TD error (eq-td-error) of the remaining steps of the "
             "episode, the terminating one being different; then sum the changes with the weights of eq-gae (a "
             "finite geometric series) and return the total as a formula in c, gamma, lam and n.",
        exercise="ex-04-gae-offset", mistakes=mistakes, raise_on_fail=raise_on_fail)

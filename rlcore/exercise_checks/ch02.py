"""Checker for chapter 2's derivation exercise: the score of a Gaussian policy with respect to its
log standard deviation. (The chapter's other checkers live in :mod:`rlcore.exercises`.)

The reader's function is called with sympy symbols and must return a formula (see
:mod:`rlcore.exercise_checks._derivation`)::

    from rlcore.exercise_checks import ch02
    ch02.check_gaussian_log_std_score(my_log_std_score)
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import sympy as sp

from rlcore.exercise_checks._derivation import closed_form_check

__all__ = ["check_gaussian_log_std_score", "gaussian_log_std_score"]


def gaussian_log_std_score(a, m, sigma):
    """The reference: the derivative of ``log N(a; m, sigma^2)`` with respect to ``log sigma`` (the parameter
    that ``rlcore.networks.GaussianPolicy`` learns)."""
    return (a - m) ** 2 / sigma**2 - 1


def check_gaussian_log_std_score(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-02-gaussian-score: ``fn(a, m, sigma)``, called with sympy symbols (``sigma`` positive),
    returns the score of a Gaussian policy with respect to ``log sigma`` (eq-log-derivative), compared with
    :func:`gaussian_log_std_score` at hand-made and random points."""
    a, m = sp.symbols("a m", real=True)
    sigma = sp.Symbol("sigma", positive=True)
    symbols = {"a": a, "m": m, "sigma": sigma}
    reference = gaussian_log_std_score(a, m, sigma)

    def pt(a_, m_, s_):
        return {"a": a_, "m": m_, "sigma": s_}

    points = [(pt(2.0, 0.0, 1.0), "two standard deviations above the mean"),
              (pt(0.0, 0.0, 1.0), "the action is the mean"),
              (pt(-1.0, 0.0, 1.0), "one standard deviation below the mean"),
              (pt(3.0, 1.0, 2.0), "one standard deviation from the mean, wider Gaussian"),
              (pt(0.5, 0.0, 0.1), "five standard deviations from the mean")]
    rng = np.random.default_rng(2)
    for i in range(8):
        s_ = float(np.round(rng.uniform(0.1, 3.0), 3))
        m_ = float(np.round(rng.normal(0, 2), 3))
        points.append((pt(float(np.round(m_ + s_ * rng.normal(0, 1.5), 3)), m_, s_), f"random point {i + 1}"))
    mistakes = [
        ((a - m) ** 2 / sigma**3 - 1 / sigma,
         "that is the derivative with respect to sigma itself; the policy's parameter is log sigma, so the chain "
         "rule multiplies by the derivative of sigma with respect to its logarithm."),
        ((a - m) ** 2 / sigma**2,
         "a term is missing: the normalising constant of the Gaussian density depends on sigma too, and its "
         "logarithm contributes to the derivative."),
        (1 - (a - m) ** 2 / sigma**2,
         "the sign is flipped: an action far from the mean (many standard deviations) must raise log pi when sigma "
         "grows."),
        ((a - m) ** 2 / (2 * sigma**4) - 1 / (2 * sigma**2),
         "that is the derivative with respect to the variance; the policy's parameter is log sigma."),
        ((a - m) / sigma**2,
         "that is the score with respect to the mean m; the exercise asks for the derivative with respect to "
         "log sigma."),
    ]
    return closed_form_check(
        fn, symbols, reference, points, "gaussian_log_std_score",
        hint="write log pi as the logarithm of the Gaussian density, as a function of log sigma (both the "
             "normalising constant and the exponent depend on it), and differentiate with respect to log sigma; "
             "the result is a formula in a, m and sigma.",
        exercise="ex-02-gaussian-score", mistakes=mistakes, raise_on_fail=raise_on_fail)

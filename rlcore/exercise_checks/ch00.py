"""Checker for chapter 0's derivation exercise: the value of a two-state chain in closed form.

The reader's function is called with sympy symbols and must return a formula (see
:mod:`rlcore.exercise_checks._derivation`)::

    from rlcore.exercise_checks import ch00
    ch00.check_two_state_value(my_two_state_value)
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import sympy as sp

from rlcore.exercise_checks._derivation import closed_form_check

__all__ = ["check_two_state_value", "two_state_value"]


def _symbols():
    r0, r1 = sp.symbols("r0 r1", real=True)
    p, q, gamma = sp.symbols("p q gamma", positive=True)
    return {"r0": r0, "r1": r1, "p": p, "q": q, "gamma": gamma}


def two_state_value(r0, r1, p, q, gamma):
    """The reference: ``V^pi(s_0)`` of the chain that leaves ``s_0`` with probability ``p`` and ``s_1`` with
    probability ``q`` (staying otherwise), with rewards ``r0`` in ``s_0`` and ``r1`` in ``s_1`` and discount
    ``gamma``: the solution of the two equations eq-bellman-v, by Cramer's rule."""
    return ((1 - gamma + gamma * q) * r0 + gamma * p * r1) / ((1 - gamma) * (1 - gamma + gamma * (p + q)))


def check_two_state_value(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-00-two-state-value: ``fn(r0, r1, p, q, gamma)``, called with sympy symbols, returns
    ``V^pi(s_0)`` of the two-state chain in closed form (eq-bellman-v with one action).

    Compared with :func:`two_state_value` at hand-made and random points (``0 < p, q <= 1``,
    ``0 < gamma < 1``)."""
    s = _symbols()
    r0, r1, p, q, gamma = s.values()
    reference = two_state_value(r0, r1, p, q, gamma)

    def pt(r0_, r1_, p_, q_, g_):
        return {"r0": r0_, "r1": r1_, "p": p_, "q": q_, "gamma": g_}

    points = [
        (pt(1.0, 0.0, 1.0, 1.0, 0.5), "the chain alternates between the two states every step"),
        (pt(2.0, 2.0, 0.3, 0.6, 0.9), "equal rewards in both states: a constant reward stream"),
        (pt(0.0, 1.0, 0.5, 0.5, 0.8), "reward only in the other state"),
        (pt(1.0, -1.0, 0.1, 0.9, 0.95), "s_0 is sticky, s_1 is left quickly"),
    ]

    rng = np.random.default_rng(0)
    for i in range(8):
        points.append((pt(float(np.round(rng.normal(0, 2), 3)), float(np.round(rng.normal(0, 2), 3)),
                          float(np.round(rng.uniform(0.05, 1), 3)), float(np.round(rng.uniform(0.05, 1), 3)),
                          float(np.round(rng.uniform(0.1, 0.99), 3))), f"random chain {i + 1}"))
    mistakes = [
        (r0 / (1 - gamma * (1 - p)),
         "you dropped the value of s_1: after moving to s_1 the agent keeps collecting its rewards (and may come "
         "back), so V(s_1) appears in eq-bellman-v for s_0, and you need the second equation too."),
        (((1 - gamma + gamma * p) * r0 + gamma * q * r1) / ((1 - gamma) * (1 - gamma + gamma * (p + q))),
         "the two transition probabilities are swapped: p is the probability of leaving s_0, q that of leaving s_1."),
        (((1 - gamma + gamma * q) * r0 + gamma * p * r1) / (1 - gamma + gamma * (p + q)),
         "a factor is missing: with the same reward in both states the value must be that of a constant reward "
         "stream, a geometric series in the discount (check the determinant of the linear system)."),
        (r0 / (1 - gamma),
         "that is the value of staying in s_0 forever; the chain leaves s_0 with probability p at every step."),
    ]
    return closed_form_check(
        fn, s, reference, points, "two_state_value",
        hint="write eq-bellman-v for each of the two states (one action, so no sum over actions): two linear "
             "equations in V(s_0) and V(s_1); solve them by hand or with sympy's solver and return V(s_0) as a "
             "formula in the arguments.",
        exercise="ex-00-two-state-value", mistakes=mistakes, raise_on_fail=raise_on_fail)

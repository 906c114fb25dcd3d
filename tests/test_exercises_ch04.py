"""Checkers of chapter 4's exercises (rlcore.exercise_checks.ch04): independent right answers pass,
known mistakes fail with their hint, unfinished stubs get "not implemented yet" (no hint), and the
references the checkers use agree with independent computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rlcore import losses, returns
from rlcore.exercise_checks import ch04 as checks
from rlcore.exercises import ExerciseError
from _exercise_helpers import fails_with

torch.set_num_threads(1)


# ------------------------------------------------------------------ independent solutions
def kstep_by_definition(rewards, values, next_values, terminated, truncated, gamma, k):
    """A^(k)_t from its definition in plain Python floats, walking forward from t."""
    r, v, nv = (x.tolist() for x in (rewards, values, next_values))
    term, trunc = terminated.tolist(), truncated.tolist()
    T, out = len(r), []
    for t in range(T):
        total, s = 0.0, t
        while True:
            total += gamma ** (s - t) * r[s]
            if s - t + 1 == k or s == T - 1 or term[s] or trunc[s]:
                if not term[s]:
                    total += gamma ** (s - t + 1) * nv[s]
                break
            s += 1
        out.append(total - v[t])
    return torch.tensor(out, dtype=torch.float64)


def value_loss_numpy(values, rets, old_values, clip_coef):
    v, R, old = (np.asarray(x, dtype=np.float64) for x in (values, rets, old_values))
    per = (v - R) ** 2
    if clip_coef is not None:
        per = np.maximum(per, (old + np.clip(v - old, -clip_coef, clip_coef) - R) ** 2)
    return float(0.5 * per.mean())


def explained_variance_numpy(y_pred, y_true):
    p, y = np.asarray(y_pred, dtype=np.float64), np.asarray(y_true, dtype=np.float64)
    return float(1.0 - np.var(y - p) / np.var(y))  # population variances: the ratio is the same


CHECKERS = [
    (checks.check_kstep_advantage, kstep_by_definition),
    (checks.check_value_loss, value_loss_numpy),
    (checks.check_explained_variance, explained_variance_numpy),
]


_fails_with = fails_with


# ------------------------------------------------------------------ right answers pass
@pytest.mark.parametrize("checker,fn", CHECKERS, ids=lambda x: getattr(x, "__name__", ""))
def test_independent_solutions_pass(checker, fn, capsys):
    assert checker(fn) is True
    assert capsys.readouterr().out.startswith("✓")


def test_rlcore_references_pass(capsys):
    assert checks.check_kstep_advantage(returns.kstep_advantages)
    assert checks.check_value_loss(losses.value_loss)
    assert checks.check_explained_variance(losses.explained_variance)


@pytest.mark.parametrize("checker", [c for c, _ in CHECKERS], ids=lambda c: c.__name__)
def test_stub_returning_none_gets_a_helpful_message(checker, capsys):
    def stub(*args):
        ...

    out = _fails_with(checker, stub, "returned None", "not implemented yet", capsys=capsys)
    assert "Hint" not in out and "case 1 of" not in out, out
    with pytest.raises(ExerciseError, match="returned None"):
        checker(stub, raise_on_fail=True)


# ------------------------------------------------------------------ references vs independent computations
def test_kstep_reference_matches_definition_on_random_rollouts():
    g = torch.Generator().manual_seed(3)
    for k in (1, 3, 25):
        T = 20
        ends = torch.rand(T, generator=g, dtype=torch.float64)
        args = (torch.randn(T, generator=g, dtype=torch.float64), torch.randn(T, generator=g, dtype=torch.float64),
                torch.randn(T, generator=g, dtype=torch.float64), (ends < 0.1).double(),
                ((ends > 0.1) & (ends < 0.2)).double(), 0.9)
        torch.testing.assert_close(returns.kstep_advantages(*args, k), kstep_by_definition(*args, k))


def test_value_loss_reference_matches_numpy():
    g = torch.Generator().manual_seed(4)
    for eps in (None, 0.1, 1.0):
        old = torch.randn(50, generator=g, dtype=torch.float64)
        v = old + torch.randn(50, generator=g, dtype=torch.float64)
        R = torch.randn(50, generator=g, dtype=torch.float64)
        assert float(losses.value_loss(v, R, old, eps)) == pytest.approx(value_loss_numpy(v, R, old, eps), rel=1e-12)


# ------------------------------------------------------------------ known mistakes get their hint
def _kstep_variant(**wrong):
    def fn(r, v, nv, term, trunc, gamma, k):
        return checks._kstep_loop(r, v, nv, term, trunc, gamma, k, **wrong)
    return fn


def test_kstep_variant_without_mistakes_passes(capsys):
    assert checks.check_kstep_advantage(_kstep_variant()) is True


@pytest.mark.parametrize("wrong,fragment", [
    (dict(subtract_v=False), "subtracts the baseline"),
    (dict(boot_exp=-1), "is k steps away"),
    (dict(boot_terminal=True), "terminal and worth 0"),
    (dict(stop_at_ends=False), "must stop at the end of t's episode"),
    (dict(use_values=True), "not from the following entry of values"),
])
def test_kstep_mistakes(wrong, fragment, capsys):
    _fails_with(checks.check_kstep_advantage, _kstep_variant(**wrong), fragment, capsys=capsys)


def test_kstep_monte_carlo_instead_of_k_steps_fails(capsys):
    # ignoring k (always summing to the episode end) is caught by the k = 1 and k = 2 cases
    mc = lambda r, v, nv, te, tr, g, k: returns.monte_carlo_advantages(r, v, nv, te, tr, g)  # noqa: E731
    _fails_with(checks.check_kstep_advantage, mc, "k = 1", capsys=capsys)


def _value_loss(combine, half=True, around_returns=False):
    def fn(v, R, old, eps):
        per = (v - R) ** 2
        if eps is not None:
            centre = R if around_returns else old
            per = combine(per, (centre + torch.clamp(v - centre, -eps, eps) - R) ** 2)
        return (0.5 if half else 1.0) * per.mean()
    return fn


def test_value_loss_mistakes(capsys):
    assert checks.check_value_loss(_value_loss(torch.max)) is True
    capsys.readouterr()
    _fails_with(checks.check_value_loss, _value_loss(torch.max, half=False), "*half*", capsys=capsys)
    _fails_with(checks.check_value_loss, _value_loss(torch.min), "not the min nor the clipped", capsys=capsys)
    _fails_with(checks.check_value_loss, lambda v, R, old, eps: 0.5 * ((v - R) ** 2).mean(), "clip_coef is ignored",
                capsys=capsys)
    _fails_with(checks.check_value_loss, _value_loss(torch.max, around_returns=True), "clip_coef is ignored",
                capsys=capsys)
    _fails_with(checks.check_value_loss, lambda v, R, old, eps: ((v - R) ** 2).mean() / 2 if eps is None else
                0.5 * ((old + torch.clamp(v - old, -eps, eps) - R) ** 2).mean(), "not the min nor the clipped",
                capsys=capsys)


def test_explained_variance_mistakes(capsys):
    _fails_with(checks.check_explained_variance, lambda p, y: float(torch.var(y - p) / torch.var(y)),
                "*unexplained*", capsys=capsys)
    _fails_with(checks.check_explained_variance, lambda p, y: float(1 - ((y - p) ** 2).mean() / torch.var(y)),
                "constant offset", capsys=capsys)
    _fails_with(checks.check_explained_variance, lambda p, y: float(torch.var(p) / torch.var(y)),
                "spread of the predictions", capsys=capsys)


def test_exception_in_student_code_is_reported(capsys):
    def broken(r, v, nv, term, trunc, gamma, k):
        return r[k + 100]

    out = _fails_with(checks.check_kstep_advantage, broken, "IndexError", "line 2 of broken", capsys=capsys)
    assert "Traceback" not in out


# ------------------------------------------------------------------ derivation: a constant critic error in GAE
def _shift_by_rlcore(c, gamma, lam, n, T=None):
    """The shift measured with rlcore's gae: one terminating episode of n steps, critic V and V + c."""
    g = torch.Generator().manual_seed(n)
    r = torch.randn(n, generator=g, dtype=torch.float64)
    v = torch.randn(n + 1, generator=g, dtype=torch.float64)
    term = torch.zeros(n, dtype=torch.float64)
    term[-1] = 1.0
    zeros = torch.zeros(n, dtype=torch.float64)
    base = returns.gae(r, v[:-1], v[1:], term, zeros, gamma, lam)
    off = returns.gae(r, v[:-1] + c, v[1:] + c, term, zeros, gamma, lam)
    return float(off[0] - base[0])


@pytest.mark.parametrize("c,gamma,lam,n", [(1.0, 0.99, 0.95, 1), (1.0, 0.99, 0.95, 7), (-2.0, 1.0, 0.9, 12),
                                           (0.5, 0.9, 0.0, 4), (3.0, 0.97, 0.8, 200)])
def test_gae_offset_reference_matches_rlcore_gae(c, gamma, lam, n):
    assert float(checks.gae_offset_shift(c, gamma, lam, n)) == pytest.approx(_shift_by_rlcore(c, gamma, lam, n),
                                                                            rel=1e-9, abs=1e-12)


def test_gae_offset_right_formulas_pass(capsys):
    import sympy as sp

    def with_sum(c, gamma, lam, n):
        l = sp.Symbol("l", integer=True)
        return sp.Sum((gamma * lam) ** l * (gamma - 1) * c, (l, 0, n - 2)) - (gamma * lam) ** (n - 1) * c

    assert checks.check_gae_offset_shift(checks.gae_offset_shift) is True
    assert checks.check_gae_offset_shift(with_sum, raise_on_fail=True) is True
    assert capsys.readouterr().out.startswith("✓ gae_offset_shift")


@pytest.mark.parametrize("fn,fragment", [
    (lambda c, g, l, n: (g - 1) * c / (1 - g * l), "far from the end"),
    (lambda c, g, l, n: c * (g - 1) * (1 - (g * l) ** n) / (1 - g * l), "like the others"),
    (lambda c, g, l, n: c * ((g - 1) * (1 - (g * l) ** (n - 1)) / (1 - g * l) + (g * l) ** (n - 1)), "the sign"),
    (lambda c, g, l, n: c * ((g - 1) * (1 - g ** (n - 1)) / (1 - g) - g ** (n - 1)), "gamma times lambda"),
])
def test_gae_offset_mistakes_get_their_hint(fn, fragment, capsys):
    assert checks.check_gae_offset_shift(fn) is False
    out = capsys.readouterr().out
    assert out.startswith("✗") and fragment in out, out


def test_gae_offset_python_loop_and_stub(capsys):
    def loop(c, gamma, lam, n):
        return sum((gamma * lam) ** l * (gamma - 1) * c for l in range(n - 1)) - (gamma * lam) ** (n - 1) * c

    assert checks.check_gae_offset_shift(loop) is False
    assert "with sympy symbols, not numbers" in capsys.readouterr().out

    def my_gae_offset_shift(c, gamma, lam, n):
        ...

    assert checks.check_gae_offset_shift(my_gae_offset_shift) is False
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "Hint" not in out

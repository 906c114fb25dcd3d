"""Checker of chapter 0's derivation exercise (rlcore.exercise_checks.ch00) and the machinery that checks
every derivation exercise (rlcore.exercise_checks._derivation): right formulas pass however they are
written, known wrong formulas fail with their conceptual hint, unwritten stubs get "not implemented yet",
numeric code on the symbols gets a note on what to write instead, and the reference agrees with an
independent computation."""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

from rlcore import tabular
from rlcore.exercise_checks import _derivation, ch00
from rlcore.exercises import ExerciseError
from _exercise_helpers import fails_with


# ------------------------------------------------------------------ right answers, written differently
def value_by_sympy_solve(r0, r1, p, q, gamma):
    V0, V1 = sp.symbols("V0 V1")
    sol = sp.solve([sp.Eq(V0, r0 + gamma * ((1 - p) * V0 + p * V1)),
                    sp.Eq(V1, r1 + gamma * (q * V0 + (1 - q) * V1))], [V0, V1])
    return sol[V0]


def value_by_matrix_inverse(r0, r1, p, q, gamma):
    P = sp.Matrix([[1 - p, p], [q, 1 - q]])
    return ((sp.eye(2) - gamma * P).inv() * sp.Matrix([r0, r1]))[0]


@pytest.mark.parametrize("fn", [ch00.two_state_value, value_by_sympy_solve, value_by_matrix_inverse],
                         ids=["reference", "sympy-solve", "matrix-inverse"])
def test_right_formulas_pass(fn, capsys):
    assert ch00.check_two_state_value(fn) is True
    assert ch00.check_two_state_value(fn, raise_on_fail=True) is True
    assert capsys.readouterr().out.startswith("✓ two_state_value: all 12 cases passed")


def test_reference_is_the_exact_value_of_the_chain():
    """The closed form against rlcore's linear-algebra value of the same chain, and sympy's simplification."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        r0, r1 = rng.normal(size=2)
        p, q = rng.uniform(0.01, 1, size=2)
        gamma = float(rng.uniform(0.1, 0.99))
        mdp = tabular.TabularMDP(P=torch.tensor([[[1 - p, p]], [[q, 1 - q]]]), R=torch.tensor([[r0], [r1]]),
                                 gamma=gamma, mu0=torch.tensor([1.0, 0.0]))
        V = tabular.state_values(mdp, torch.ones(2, 1, dtype=torch.float64))
        assert float(V[0]) == pytest.approx(float(ch00.two_state_value(r0, r1, p, q, gamma)), rel=1e-10)
    s = sp.symbols("r0 r1 p q gamma")
    assert sp.simplify(value_by_sympy_solve(*s) - ch00.two_state_value(*s)) == 0


# ------------------------------------------------------------------ wrong answers get a conceptual hint
@pytest.mark.parametrize("fn,fragment", [
    (lambda r0, r1, p, q, g: r0 / (1 - g * (1 - p)), "dropped the value of s_1"),
    (lambda r0, r1, p, q, g: ((1 - g + g * p) * r0 + g * q * r1) / ((1 - g) * (1 - g + g * (p + q))), "swapped"),
    (lambda r0, r1, p, q, g: ((1 - g + g * q) * r0 + g * p * r1) / (1 - g + g * (p + q)), "a factor is missing"),
    (lambda r0, r1, p, q, g: r0 / (1 - g), "staying in s_0 forever"),
])
def test_known_mistakes_get_their_hint(fn, fragment, capsys):
    out = fails_with(ch00.check_two_state_value, fn, fragment, "Hint:", capsys=capsys)
    assert "input:" in out and "expected:" in out and "got:" in out


def test_an_unknown_wrong_formula_gets_the_general_hint(capsys):
    fails_with(ch00.check_two_state_value, lambda r0, r1, p, q, g: r0 + r1 + g, "eq-bellman-v for each of the two",
               capsys=capsys)


def test_the_hint_never_shows_the_reference_formula(capsys):
    fails_with(ch00.check_two_state_value, lambda r0, r1, p, q, g: r0, capsys=capsys)
    # the failing case shows numbers only, never a formula in the symbols
    assert "gamma*" not in capsys.readouterr().out


# ------------------------------------------------------------------ stubs and broken answers
def test_stub_gets_not_implemented_only(capsys):
    def my_two_state_value(r0, r1, p, q, gamma):
        ...

    out = fails_with(ch00.check_two_state_value, my_two_state_value, "not implemented yet", "ex-00-two-state-value",
                     capsys=capsys)
    assert "Hint" not in out and "case 1" not in out
    with pytest.raises(ExerciseError, match="not implemented yet"):
        ch00.check_two_state_value(my_two_state_value, raise_on_fail=True)


def test_numeric_code_on_the_symbols_says_what_to_write_instead(capsys):
    def my_two_state_value(r0, r1, p, q, gamma):
        A = np.array([[1 - gamma * (1 - p), -gamma * p], [-gamma * q, 1 - gamma * (1 - q)]])
        return np.linalg.solve(A, np.array([r0, r1]))[0]

    out = fails_with(ch00.check_two_state_value, my_two_state_value, "with sympy symbols, not numbers",
                     "raised at line 3 of my_two_state_value", capsys=capsys)
    assert "Traceback" not in out

    def loop(r0, r1, p, q, gamma):
        return sum(gamma**k * r0 for k in range(int(1 / (1 - gamma))))

    fails_with(ch00.check_two_state_value, loop, "TypeError", "with sympy symbols, not numbers", capsys=capsys)


def test_foreign_symbols_and_non_formulas_are_reported(capsys):
    fails_with(ch00.check_two_state_value, lambda r0, r1, p, q, g: sp.Symbol("V") * r0,
               "not arguments of the function", capsys=capsys)
    fails_with(ch00.check_two_state_value, lambda r0, r1, p, q, g: (r0, r1), "shape (2,)", capsys=capsys)


def test_a_numeric_constant_is_a_formula(capsys):
    """A closed form may be a plain number (the checker sympifies it): here it is wrong, and says so."""
    out = fails_with(ch00.check_two_state_value, lambda *args: 1.0, "got:      1", capsys=capsys)
    assert "not implemented" not in out


# ------------------------------------------------------------------ the machinery on other structures
def test_tuple_and_matrix_references():
    x = sp.Symbol("x", positive=True)
    points = [({"x": 0.5}, "a half"), ({"x": 2.0}, "two")]
    ok = _derivation.closed_form_check(lambda x: (x, 1 / x), {"x": x}, (x, 1 / x), points, "pair", hint="h",
                                       exercise="ex-99-test")
    assert ok
    assert _derivation.closed_form_check(lambda x: [[x, 0], [0, 2]], {"x": x}, sp.Matrix([[x, 0], [0, 2]]),
                                         points, "matrix", hint="h", exercise="ex-99-test")
    assert not _derivation.closed_form_check(lambda x: x, {"x": x}, (x, 1 / x), points, "pair", hint="h",
                                             exercise="ex-99-test")
    assert not _derivation.closed_form_check(lambda x: x, {"x": x}, sp.Matrix([[x]]), points, "matrix", hint="h",
                                             exercise="ex-99-test")


def test_complex_values_are_reported(capsys):
    x = sp.Symbol("x", positive=True)
    ok = _derivation.closed_form_check(lambda x: sp.sqrt(x - 3), {"x": x}, sp.sqrt(x), [({"x": 1.0}, "one")],
                                       "root", hint="h", exercise="ex-99-test")
    assert not ok and "not a real number" in capsys.readouterr().out


def test_evaluate_is_exact_at_rational_points():
    x = sp.Symbol("x")
    assert _derivation.evaluate(x / 3, [x], [0.3]) == pytest.approx(0.1, abs=1e-15)
    assert _derivation.evaluate((x, x**2), [x], [2]) == (2.0, 4.0)
    assert np.array_equal(_derivation.evaluate(sp.Matrix([[x, 1]]), [x], [3]), np.array([[3.0, 1.0]]))

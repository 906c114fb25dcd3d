"""Checking *derivation* exercises: the reader derives a closed form and writes it as a function
that returns a formula.

The reader's function is called **once, with sympy symbols** (e.g. ``sigma`` positive, ``G`` a
positive integer), so it must return a formula in them, a sympy expression (or a tuple, or a
matrix, of them), not run a computation: a loop over ``range(G)`` or a ``numpy`` call on a symbol
fails, and the check says why. The formula is then compared with the reference closed form
*numerically*, at hand-picked and random points (exact sympy evaluation, then a float comparison
with a tolerance). Two analytic expressions that agree at a dozen random points of their domain
are equal with probability one, so this is a symbolic comparison without relying on
``sympy.simplify`` (which cannot prove every true identity).

Each point is one :class:`rlcore.exercises.Case`, so a failure shows readable numbers (the point,
the expected and the returned value), never the reference formula, and known mistakes (other
formulas) get their hint as usual::

    from rlcore.exercise_checks._derivation import closed_form_check

    def check_my_result(fn, raise_on_fail=False):
        sigma = sympy.Symbol("sigma", positive=True)
        return closed_form_check(fn, {"sigma": sigma}, 1 / sigma**2, points=[...], name="my_result",
                                 hint="...", exercise="ex-03-...", raise_on_fail=raise_on_fail)
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import sympy as sp

from rlcore.exercises import Case, Mistake, check

__all__ = ["closed_form_check", "evaluate"]

_SYMBOLS_NOTE = ("(note: the check calls your function once with sympy symbols, not numbers, so that it "
                 "returns a formula: write it with sympy's functions, such as sp.sqrt, sp.log and sp.exp, "
                 "and without loops, numpy calls or if-statements on the arguments)")


def _as_formula(value: Any, shape: tuple) -> Any:
    """The reader's result as sympy objects in the reference's structure: a scalar expression, a tuple
    (``shape == (k,)``) or a matrix (``shape == (n, m)``). Results of another structure are kept as they
    are, so that the comparison reports the mismatch."""
    if shape == ():
        if isinstance(value, (tuple, list)) or (isinstance(value, np.ndarray) and value.ndim > 0):
            return tuple(sp.sympify(v) for v in value)
        return sp.sympify(value)
    if len(shape) == 1:
        if isinstance(value, (tuple, list)) or (isinstance(value, np.ndarray) and value.ndim == 1):
            return tuple(sp.sympify(v) for v in value)
        return sp.sympify(value)
    if not isinstance(value, (list, tuple, np.ndarray, sp.MatrixBase)):
        raise ValueError(f"your function returned a single {type(value).__name__} where a {shape[0]} x {shape[1]} "
                         f"matrix of formulas was expected (a sympy Matrix or a list of rows)")
    return sp.Matrix(value)


def evaluate(formula: Any, symbols: Sequence[sp.Symbol], values: Sequence[Any]) -> Any:
    """``formula`` (a sympy expression, a tuple of them or a matrix) at ``symbols = values``, as a float,
    a tuple of floats or a float64 array; raises ``ValueError`` for a formula with other free symbols or a
    complex value."""
    subs = {s: sp.nsimplify(v) if isinstance(v, float) else v for s, v in zip(symbols, values)}

    def one(expr):
        expr = sp.sympify(expr)
        value = expr.subs(subs)
        extra = value.free_symbols
        if extra:
            raise ValueError(f"your formula contains the symbol(s) {sorted(map(str, extra))}, which are not "
                             f"arguments of the function: use only the symbols it receives")
        z = complex(value.evalf(30))
        if abs(z.imag) > 1e-9 * (1.0 + abs(z.real)):
            raise ValueError(f"your formula is not a real number here (it evaluates to {z:.6g})")
        return z.real

    if isinstance(formula, sp.MatrixBase):
        return np.array([[one(formula[i, j]) for j in range(formula.shape[1])] for i in range(formula.shape[0])])
    if isinstance(formula, tuple):
        return tuple(one(e) for e in formula)
    return one(formula)


class _Formula:
    """The reader's function, seen by :func:`rlcore.exercises.check` as a numeric function of the point:
    called with sympy symbols once (lazily), then evaluated at each case's values."""

    def __init__(self, fn: Callable, symbols: dict[str, sp.Symbol], shape: tuple):
        self.fn, self.symbols, self.shape = fn, symbols, shape
        self.__name__ = getattr(fn, "__name__", "your function")
        code = getattr(fn, "__code__", None)
        if code is not None:  # lets the checker point at the line of the reader's function that raised
            self.__code__ = code
        self._done, self._result, self._error = False, None, None

    def _formula(self):
        if not self._done:
            self._done = True
            try:
                self._result = self.fn(*self.symbols.values())
            except (TypeError, AttributeError) as exc:  # numpy / math / float() on a symbol, ...
                message = f"{exc} {_SYMBOLS_NOTE}".strip()
                try:
                    error = type(exc)(message)
                except Exception:  # noqa: BLE001 - exception types whose constructor wants other arguments
                    error = TypeError(message)
                self._error = error.with_traceback(exc.__traceback__)
            except Exception as exc:  # noqa: BLE001 - the reader's code: reported by check()
                self._error = exc
        if self._error is not None:
            raise self._error
        return self._result

    def __call__(self, *values):
        result = self._formula()
        if result is None or result is Ellipsis:
            return result
        try:
            formula = _as_formula(result, self.shape)
        except ValueError:
            raise
        except (sp.SympifyError, TypeError) as exc:
            raise ValueError(f"your function returned {type(result).__name__}, which is not a formula "
                             f"(a sympy expression{'' if self.shape == () else ', in the expected structure'})"
                             ) from exc
        return evaluate(formula, list(self.symbols.values()), values)


def closed_form_check(
    fn: Callable,
    symbols: dict[str, sp.Symbol],
    reference: Any,
    points: Sequence[tuple[dict[str, Any], str]],
    name: str,
    hint: str,
    exercise: str,
    mistakes: Sequence[tuple[Any, str]] = (),
    raise_on_fail: bool = False,
    atol: float = 1e-9,
    rtol: float = 1e-7,
) -> bool:
    """Check that ``fn``, called with ``symbols`` (in order), returns a formula equal to ``reference``.

    ``reference`` is a sympy expression in ``symbols``, a tuple of them or a ``sympy.Matrix``;
    ``points`` lists ``({name: value}, label)`` pairs, the hand-made ones first; ``mistakes`` lists
    ``(wrong formula, hint)`` pairs, wrong formulas in the same symbols with a conceptual hint each.
    Prints and returns like :func:`rlcore.exercises.check` (one case per point)."""
    names, syms = list(symbols), list(symbols.values())
    if isinstance(reference, sp.MatrixBase):
        shape = tuple(reference.shape)
    elif isinstance(reference, tuple):
        shape = (len(reference),)
    else:
        shape = ()

    def numeric(formula):
        return lambda *values: evaluate(formula, syms, values)

    cases = [Case({k: point[k] for k in names}, evaluate(reference, syms, [point[k] for k in names]), label)
             for point, label in points]
    wrong = [Mistake(numeric(formula), text) for formula, text in mistakes]
    return check(_Formula(fn, symbols, shape), cases, name, hint=hint, atol=atol, rtol=rtol,
                 raise_on_fail=raise_on_fail, mistakes=wrong, exercise=exercise)

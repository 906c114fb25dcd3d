"""Automatic checks for the book's exercises.

Every exercise asks the reader to write a small function; a checker runs it on a list of
cases (small hand-made ones first, so a failure shows a readable input, then random
ones) and compares the result with rlcore's reference implementation::

    >>> from rlcore.exercises import check_discounted_returns
    >>> check_discounted_returns(my_discounted_returns)     # doctest: +SKIP
    ✓ discounted_returns: all 9 cases passed

A failing function gets one readable message instead of a stack trace: which case
failed, its input, the expected and the returned value, and a hint. When the wrong
answer matches a *known mistake* (forgetting the discount, bootstrapping through a
terminal state, ...) the hint names that mistake.

Hints are *conceptual*: they say what to think about and which equation to reread,
never the code or a formula that could be typed in as the answer (the student edition
of the book and the student notebooks must not give the solutions away; see
:func:`hint_problems`, which the tests apply to every hint). A function that is not
written yet (its body is still ``...``, it returns ``None`` or raises
``NotImplementedError``) gets only "not implemented yet" and a pointer to the
exercise's statement, no hint.

Adding a checker for a new exercise takes three things (see :func:`check_gae`):

1. a list of :class:`Case` objects whose ``expected`` comes from the rlcore reference;
2. optionally a list of :class:`Mistake` objects, wrong implementations with a hint each;
3. a call to :func:`check`.

Checkers return ``True``/``False`` and print the verdict; with ``raise_on_fail=True`` they
raise :class:`ExerciseError` (an ``AssertionError``) carrying the same message.
:func:`all_checkers` lists every checker of the book and :func:`checker_texts` returns the
texts a checker can print (hints, case labels), for the tests and for grading
(:mod:`rlcore.grading`).
"""
from __future__ import annotations

import copy
import importlib
import linecache
import pkgutil
import re
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = [
    "ExerciseError",
    "Case",
    "Mistake",
    "check",
    "compare",
    "check_discounted_returns",
    "check_policy_evaluation",
    "check_state_distribution",
    "check_td_target",
    "check_gae",
    "check_clipped_surrogate",
    "all_checkers",
    "checker_texts",
    "hint_problems",
    "NOT_IMPLEMENTED",
]

NOT_IMPLEMENTED = "not implemented yet"
"""What a checker prints (after ``✗ name:``) for a function that is not written yet."""


class ExerciseError(AssertionError):
    """Raised by a checker called with ``raise_on_fail=True`` when a case fails."""


@dataclass
class Case:
    """One input to the student's function and the reference answer.

    ``args`` maps argument names (used only to display the input) to values; the function is
    called positionally, ``fn(*args.values())``, so the reader may name parameters freely.
    """

    args: dict[str, Any]
    expected: Any
    label: str = ""
    """What this case tests, shown when it fails (e.g. ``"gamma = 0: only the immediate reward"``)."""
    hint: str = ""
    """A hint specific to this case; shown instead of the checker's general hint."""


@dataclass
class Mistake:
    """A known wrong implementation: if the reader's output matches ``fn(*args)`` (and that
    differs from the right answer) the checker shows ``hint``."""

    fn: Callable[..., Any]
    hint: str


# --------------------------------------------------------------------- formatting
def _to_numpy(x: Any) -> np.ndarray | None:
    """Numbers, lists, numpy arrays and torch tensors as a float64 array (None if impossible)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr


def _fmt(x: Any, indent: int = 14, max_chars: int = 400) -> str:
    """Short readable text for an input or output; continuation lines are indented by ``indent``."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        is_tensor = isinstance(x, torch.Tensor)
        arr = x.detach().cpu().numpy() if is_tensor else x
        prefix = "tensor(" if is_tensor else "array("
        body = np.array2string(arr, precision=4, suppress_small=True, threshold=40, separator=", ",
                               prefix=prefix)
        text = prefix + body + (f", shape={tuple(arr.shape)})" if arr.ndim > 1 else ")")
    elif isinstance(x, float):
        text = f"{x:.6g}"
    elif isinstance(x, (list, tuple)) and _to_numpy(x) is not None and _to_numpy(x).dtype.kind == "f":
        body = np.array2string(_to_numpy(x), precision=4, suppress_small=True, threshold=40, separator=", ")
        text = body if isinstance(x, list) else "(" + body[1:-1] + ")"
    else:
        text = repr(x)
    if len(text) > max_chars:
        text = text[: max_chars - 4] + " ..."
    lines = [line for line in text.split("\n") if line.strip()]
    return ("\n" + " " * indent).join(lines)


def _fmt_args(args: dict[str, Any]) -> str:
    return ("\n" + " " * 14).join(f"{k} = {_fmt(v, indent=14 + len(k) + 3)}" for k, v in args.items())


def compare(got: Any, expected: Any, atol: float = 1e-6, rtol: float = 1e-5) -> str | None:
    """``None`` if ``got`` matches ``expected`` (numbers, arrays, tensors, tuples of them) within
    ``atol + rtol * |expected|``, else a short reason."""
    if got is None:
        return ("your function returned None: fill in its body (replace the `...`) and end it "
                "with a `return` statement")
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected a tuple of {len(expected)} values, got {type(got).__name__}"
        for i, (g, e) in enumerate(zip(got, expected)):
            reason = compare(g, e, atol, rtol)
            if reason:
                return f"output {i}: {reason}"
        return None
    g, e = _to_numpy(got), _to_numpy(expected)
    if g is None:
        return f"expected numbers, got an object of type {type(got).__name__}"
    if g.shape != e.shape:
        if g.size == e.size:
            return f"shape {g.shape} where {e.shape} was expected (right values, wrong shape?)"
        return f"shape {g.shape} where {e.shape} was expected"
    if not np.isfinite(g).all():
        return "the result contains NaN or inf"
    err = np.abs(g - e)
    tol = atol + rtol * np.abs(e)
    if (err > tol).any():
        idx = np.unravel_index(np.argmax(err - tol), err.shape) if err.ndim else ()
        where = f" at index {idx if len(idx) > 1 else idx[0]}" if idx else ""
        return f"largest error {float(err.max()):.3g}{where} (tolerance {atol:g} + {rtol:g}·|expected|)"
    return None


def _describe_exception(exc: BaseException, fn: Callable) -> str:
    """``TypeError: message (line 3 of my_fn: `code`)`` without a stack dump."""
    msg = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, NotImplementedError):
        msg += " (the function is not implemented yet)"
    code = getattr(fn, "__code__", None)
    if code is not None:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == code.co_filename]
        if frames:
            f = frames[-1]
            line = (f.line or linecache.getline(f.filename, f.lineno)).strip()
            where = f"line {f.lineno - code.co_firstlineno + 1} of {f.name}"
            msg += f"\n    raised at {where}: {line}" if line else f"\n    raised at {where}"
    return msg


# --------------------------------------------------------------------- the framework
_RECORDING: list[dict] | None = None
"""While :func:`checker_texts` runs a checker, :func:`check` records its arguments here instead of checking."""


def _not_implemented(got: Any, exc: BaseException | None) -> str:
    """Why the reader's function counts as not written yet ('' if it does not)."""
    if isinstance(exc, NotImplementedError):
        return "raised NotImplementedError"
    if exc is None and got is None:
        return "returned None"
    if exc is None and got is Ellipsis:
        return "returned ..."
    return ""


def _not_implemented_message(title: str, fn: Callable, why: str, exercise: str) -> str:
    fname = getattr(fn, "__name__", "your function")
    where = f"exercise {exercise}" if exercise else "the exercise"
    return (f"✗ {title}: {NOT_IMPLEMENTED}\n"
            f"    {fname} {why}: write its body as {where} asks (the statement is just above "
            f"this cell), then run the check again.")


def check(
    fn: Callable,
    cases: Sequence[Case],
    name: str = "",
    hint: str = "",
    atol: float = 1e-6,
    rtol: float = 1e-5,
    raise_on_fail: bool = False,
    mistakes: Sequence[Mistake] = (),
    exercise: str = "",
) -> bool:
    """Run ``fn`` on every case and compare with ``case.expected``; stop at the first failure.

    Exceptions raised by ``fn`` are caught and reported (type, message, the line of ``fn``
    that raised, and the input). Each case gets a deep copy of its inputs, so a function
    that modifies its arguments cannot spoil later cases. Prints ``✓ ...`` or ``✗ ...`` and
    returns ``True``/``False``; with ``raise_on_fail=True`` a failure raises
    :class:`ExerciseError` with the same message instead of printing it.

    A function that is not written yet (it returns ``None`` or ``...`` on the first case, or
    raises ``NotImplementedError``) gets ``✗ name: not implemented yet`` and a pointer to the
    statement of ``exercise`` (its label, e.g. ``"ex-00-returns"``), without any hint. ``hint``
    (shown when a case fails and no known mistake matches) and the hints of ``mistakes`` and
    ``cases`` must be conceptual: no code, no formula to type in (see :func:`hint_problems`).
    """
    if not callable(fn):
        raise TypeError(f"pass your function itself (e.g. my_fn, not my_fn(...)), got {type(fn).__name__}")
    if not cases:
        raise ValueError("check needs at least one case")
    title = name or getattr(fn, "__name__", "exercise")
    if _RECORDING is not None:
        _RECORDING.append({"name": title, "exercise": exercise, "hint": hint,
                           "mistakes": [m.hint for m in mistakes],
                           "case_hints": [c.hint for c in cases if c.hint],
                           "labels": [c.label for c in cases if c.label]})
        return True
    for k, case in enumerate(cases, start=1):
        args = copy.deepcopy(case.args)
        reason, got, exc = None, None, None
        try:
            got = fn(*args.values())
        except Exception as e:  # the reader's code: report it, do not crash
            exc = e
            reason = "your function raised " + _describe_exception(e, fn)
        why = _not_implemented(got, exc)
        if why and (k == 1 or exc is not None):
            message = _not_implemented_message(title, fn, why, exercise)
            if raise_on_fail:
                raise ExerciseError(message)
            print(message)
            return False
        if reason is None:
            if got is None:
                reason = ("your function returned None for this input: does every path through it end "
                          "with a `return` statement?")
            else:
                reason = compare(got, case.expected, atol, rtol)
        if reason is None:
            continue
        lines = [f"✗ {title}: case {k} of {len(cases)}" + (f" ({case.label})" if case.label else "") + " failed",
                 f"    input:    {_fmt_args(case.args)}",
                 f"    expected: {_fmt(case.expected)}"]
        if got is not None or not reason.startswith("your function raised"):
            lines.append(f"    got:      {_fmt(got)}")
        lines.append(f"    problem:  {reason}")
        case_hint = "" if got is None and exc is None else (
            case.hint or _match_mistake(got, case, mistakes, atol, rtol) or hint)
        if case_hint:
            lines.append(f"  Hint: {case_hint}")
        message = "\n".join(lines)
        if raise_on_fail:
            raise ExerciseError(message)
        print(message)
        return False
    print(f"✓ {title}: all {len(cases)} cases passed")
    return True


def _match_mistake(got: Any, case: Case, mistakes: Sequence[Mistake], atol: float, rtol: float) -> str:
    if got is None:
        return ""
    for m in mistakes:
        try:
            wrong = m.fn(*copy.deepcopy(case.args).values())
        except Exception:
            continue
        if compare(wrong, case.expected, atol, rtol) is not None and compare(got, wrong, atol, rtol) is None:
            return m.hint
    return ""


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------- chapter 0
def _returns_mistakes() -> list[Mistake]:
    def no_discount(rewards, gamma):
        return np.cumsum(np.asarray(rewards, dtype=float)[::-1])[::-1]

    def from_start(rewards, gamma):
        r = np.asarray(rewards, dtype=float)
        return np.array([sum(gamma**k * r[k] for k in range(t + 1)) for t in range(len(r))])

    def absolute_discount(rewards, gamma):
        r = np.asarray(rewards, dtype=float)
        return np.array([sum(gamma**k * r[k] for k in range(t, len(r))) for t in range(len(r))])

    def skip_current(rewards, gamma):
        r = np.asarray(rewards, dtype=float)
        return np.array([sum(gamma ** (k - t - 1) * r[k] for k in range(t + 1, len(r))) for t in range(len(r))])

    def discount_first(rewards, gamma):
        r = np.asarray(rewards, dtype=float)
        return np.array([sum(gamma ** (k - t + 1) * r[k] for k in range(t, len(r))) for t in range(len(r))])

    return [
        Mistake(no_discount, "you summed the future rewards without discounting them: in "
                             "eq-discounted-return a reward further in the future weighs less."),
        Mistake(from_start, "you summed the rewards from the *start* of the episode up to t; the "
                            "return G_t looks *forward*, from step t to the end of the episode."),
        Mistake(absolute_discount, "you discounted by the absolute time step; the discount counts the "
                                   "steps *from t*, so the reward of step t itself is never discounted."),
        Mistake(skip_current, "off by one: G_t includes the reward r_t of step t itself, "
                              "undiscounted."),
        Mistake(discount_first, "off by one in the exponent: the immediate reward r_t is not "
                                "discounted, the next one is discounted once, and so on."),
    ]


def check_discounted_returns(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-00-returns: ``fn(rewards, gamma)`` returns the array of returns-to-go
    ``G_t = sum_k gamma^k r_{t+k}`` (eq-discounted-return) of one episode.

    ``rewards`` is passed as a 1-D float64 numpy array; the answer may be a list, an array or
    a tensor. Reference: :func:`rlcore.returns.discounted_returns`.
    """
    from .returns import discounted_returns

    def case(rewards, gamma, label="", hint=""):
        rewards = np.asarray(rewards, dtype=np.float64)
        expected = discounted_returns(torch.as_tensor(rewards), gamma).numpy()
        return Case({"rewards": rewards, "gamma": gamma}, expected, label, hint)

    g = _rng(0)
    cases = [
        case([1.0, 1.0, 1.0], 0.9, "three rewards of 1"),
        case([0.0, 0.0, 1.0], 0.5, "a single reward at the end"),
        case([2.0, -1.0, 3.0], 0.0, "gamma = 0 keeps only the immediate reward"),
        case([1.0, 2.0, 3.0, 4.0], 1.0, "gamma = 1: plain sums of the remaining rewards"),
        case([5.0], 0.99, "an episode of one step"),
        *(case(g.normal(size=int(g.integers(2, 30))), float(g.uniform(0.5, 0.999)), f"random episode {i + 1}")
          for i in range(4)),
    ]
    return check(fn, cases, "discounted_returns",
                 hint="reread eq-discounted-return: G_t adds the rewards from step t to the end of the episode, "
                      "each discounted by how many steps after t it comes. Which return is the easiest to "
                      "compute, and how does each return relate to the next one?",
                 raise_on_fail=raise_on_fail, mistakes=_returns_mistakes(), exercise="ex-00-returns")


def _mdp_from_arrays(P, R, gamma, mu0=None):
    from .tabular import TabularMDP

    S = np.asarray(R).shape[0]
    return TabularMDP(P, R, gamma, np.full(S, 1.0 / S) if mu0 is None else mu0)


def _tabular_cases(with_mu0: bool) -> list[tuple[dict, str]]:
    """Hand-made and random (P, R, gamma, [mu0,] pi) inputs shared by the tabular checkers."""
    from .tabular import gridworld, random_mdp

    out = []
    # two states, one action: s0 -> s1 -> s1 ..., reward 1 in s0 and 2 in s1
    P = np.zeros((2, 1, 2))
    P[0, 0, 1] = P[1, 0, 1] = 1.0
    R = np.array([[1.0], [2.0]])
    pi = np.ones((2, 1))
    base = {"P": P, "R": R, "gamma": 0.5}
    out.append(({**base, **({"mu0": np.array([1.0, 0.0])} if with_mu0 else {}), "pi": pi},
                "two states, one action: s0 -> s1 -> s1 -> ..."))
    grid = gridworld()
    uniform = np.full((grid.n_states, grid.n_actions), 0.25)
    out.append(({"P": grid.P.numpy(), "R": grid.R.numpy(), "gamma": grid.gamma,
                 **({"mu0": grid.mu0.numpy()} if with_mu0 else {}), "pi": uniform},
                "the 3x4 gridworld, uniform random policy"))
    g = _rng(1)
    for i, (S, A, gamma) in enumerate([(3, 2, 0.9), (5, 3, 0.95), (6, 4, 0.7)]):
        mdp = random_mdp(S, A, gamma, seed=10 + i)
        pi = g.dirichlet(np.ones(A), size=S)
        out.append(({"P": mdp.P.numpy(), "R": mdp.R.numpy(), "gamma": gamma,
                     **({"mu0": mdp.mu0.numpy()} if with_mu0 else {}), "pi": pi},
                    f"random MDP with {S} states and {A} actions"))
    return out


def check_policy_evaluation(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-00-policy-evaluation: ``fn(P, R, gamma, pi)`` returns ``V^pi`` (eq-bellman-v).

    ``P[s, a, s']``, ``R[s, a]`` and ``pi[s, a]`` are float64 numpy arrays. Reference:
    :func:`rlcore.tabular.state_values`.
    """
    from .tabular import state_values

    cases = []
    for args, label in _tabular_cases(with_mu0=False):
        mdp = _mdp_from_arrays(args["P"], args["R"], args["gamma"])
        cases.append(Case(args, state_values(mdp, torch.as_tensor(args["pi"])).numpy(), label))

    def p_pi(P, pi):
        return np.einsum("sa,sax->sx", pi, P)

    def immediate(P, R, gamma, pi):
        return (pi * R).sum(1)

    def no_gamma(P, R, gamma, pi):
        return np.linalg.solve(np.eye(len(R)) - p_pi(P, pi), (pi * R).sum(1))

    def transposed(P, R, gamma, pi):
        return np.linalg.solve(np.eye(len(R)) - gamma * p_pi(P, pi).T, (pi * R).sum(1))

    def greedy(P, R, gamma, pi):
        V = np.zeros(len(R))
        for _ in range(1000):
            V = (R + gamma * P @ V).max(1)
        return V

    mistakes = [
        Mistake(immediate, "this is only the expected immediate reward; V^pi also counts the "
                           "discounted values of the states that follow (eq-bellman-v)."),
        Mistake(no_gamma, "the discount is missing: in eq-bellman-v the values of the next states are "
                          "discounted by gamma."),
        Mistake(transposed, "the policy's transition matrix is transposed: its rows must be the current "
                            "state and its columns the next state."),
        Mistake(greedy, "you computed the optimal value V* (max over actions); policy evaluation "
                        "averages over actions with the given pi(a|s)."),
    ]
    return check(fn, cases, "policy_evaluation",
                 hint="reread eq-bellman-v: averaging the rewards and the transitions over the actions with pi "
                      "gives the policy's own reward vector and state-to-state transition matrix, and V^pi is "
                      "the solution of a linear system built from them (solve it exactly, do not iterate).",
                 atol=1e-6, rtol=1e-6, raise_on_fail=raise_on_fail, mistakes=mistakes,
                 exercise="ex-00-policy-evaluation")


def check_state_distribution(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-00-state-distribution: ``fn(P, gamma, mu0, pi)`` returns the normalised
    discounted state distribution ``d^pi`` (eq-eta, eq-dpi). Reference:
    :func:`rlcore.tabular.state_distribution`.
    """
    from .tabular import state_distribution

    cases = []
    for args, label in _tabular_cases(with_mu0=True):
        mdp = _mdp_from_arrays(args["P"], args["R"], args["gamma"], args["mu0"])
        inputs = {k: args[k] for k in ("P", "gamma", "mu0", "pi")}
        cases.append(Case(inputs, state_distribution(mdp, torch.as_tensor(args["pi"])).numpy(), label))

    def p_pi(P, pi):
        return np.einsum("sa,sax->sx", pi, P)

    def unnormalised(P, gamma, mu0, pi):
        return np.linalg.solve((np.eye(len(mu0)) - gamma * p_pi(P, pi)).T, mu0)

    def not_transposed(P, gamma, mu0, pi):
        eta = np.linalg.solve(np.eye(len(mu0)) - gamma * p_pi(P, pi), mu0)
        return eta / eta.sum()

    def stationary(P, gamma, mu0, pi):
        d = mu0.copy()
        for _ in range(1000):
            d = d @ p_pi(P, pi)
        return d / d.sum()

    mistakes = [
        Mistake(unnormalised, "this is eta, the *un*normalised discounted visitation (it sums to "
                              "1/(1-gamma)); d^pi is a probability distribution (eq-dpi)."),
        Mistake(not_transposed, "eta flows *forward* from mu0, so it is a row vector: its linear system "
                                "uses the transpose of the matrix in the Bellman equation for V (eq-eta)."),
        Mistake(stationary, "this is the long-run (undiscounted) distribution; d^pi weights the "
                            "state at time t by gamma to the power t, starting from mu0 (eq-eta)."),
    ]
    return check(fn, cases, "state_distribution",
                 hint="reread eq-eta and eq-dpi: eta(s) adds up, over time, the discounted probability of being "
                      "in s when starting from mu0; written with matrices it is the solution of a linear system "
                      "(mind on which side the policy's transition matrix acts), and d^pi normalises it.",
                 atol=1e-6, rtol=1e-6, raise_on_fail=raise_on_fail, mistakes=mistakes,
                 exercise="ex-00-state-distribution")


# --------------------------------------------------------------------- chapter 1
def check_td_target(fn: Callable, raise_on_fail: bool = False) -> bool:
    """DQN's target: ``fn(rewards, next_q_target, terminated, gamma)`` returns
    ``y = r + gamma (1 - terminated) max_a' Q_target(s', a')`` (eq-dqn-target) for a batch.

    ``rewards`` and ``terminated`` are float tensors ``[B]``, ``next_q_target`` is ``[B, A]``.
    Reference: :func:`rlcore.losses.td_target`.
    """
    from .losses import td_target

    def case(r, q, term, gamma, label=""):
        r = torch.as_tensor(r, dtype=torch.float64)
        q = torch.as_tensor(q, dtype=torch.float64)
        term = torch.as_tensor(term, dtype=torch.float64)
        return Case({"rewards": r, "next_q_target": q, "terminated": term, "gamma": gamma},
                    td_target(r, q, term, gamma), label)

    g = torch.Generator().manual_seed(0)
    cases = [
        case([1.0], [[2.0, 5.0]], [0.0], 0.9, "one transition, not terminal"),
        case([1.0, 1.0], [[2.0, 5.0], [2.0, 5.0]], [0.0, 1.0], 0.9, "the second transition is terminal"),
        case([0.5, -1.0, 2.0], [[1.0, -3.0, 0.0], [4.0, 4.0, 1.0], [-1.0, -2.0, -0.5]], [0.0, 0.0, 0.0], 0.5,
             "three actions, negative values"),
    ]
    for i in range(3):
        B, A = 8, 2 + i
        cases.append(case(torch.randn(B, generator=g, dtype=torch.float64), torch.randn(B, A, generator=g, dtype=torch.float64),
                          (torch.rand(B, generator=g) < 0.3).double(), 0.99, f"random batch {i + 1}"))

    mistakes = [
        Mistake(lambda r, q, t, gamma: r + gamma * q.max(-1).values,
                "a terminal next state has value 0: where terminated is 1 the target is the reward alone."),
        Mistake(lambda r, q, t, gamma: r + gamma * t * q.max(-1).values,
                "the mask is inverted: bootstrap when the next state is *not* terminal, not when it is."),
        Mistake(lambda r, q, t, gamma: r + gamma * (1 - t) * q.mean(-1),
                "Q-learning bootstraps from the best next action: max over a', not the mean."),
        Mistake(lambda r, q, t, gamma: r + (1 - t) * q.max(-1).values,
                "the discount gamma is missing in front of the next state's value."),
    ]
    return check(fn, cases, "td_target",
                 hint="reread eq-dqn-target: the target is the reward plus the discounted value of the best next "
                      "action according to the target network, and a terminal next state has no value.",
                 raise_on_fail=raise_on_fail, mistakes=mistakes)


# --------------------------------------------------------------------- chapter 4
def check_gae(fn: Callable, raise_on_fail: bool = False) -> bool:
    """GAE: ``fn(rewards, values, next_values, terminated, truncated, gamma, lam)`` returns the
    advantages ``A_t = sum_l (gamma lam)^l delta_{t+l}`` within each episode (eq-gae).

    Inputs are float tensors ``[T]`` (the last case is ``[T, N]``, N parallel environments).
    ``next_values[t] = V(s_{t+1})``; ``terminated[t]`` means ``s_{t+1}`` is terminal (no
    bootstrap); ``truncated[t]`` means the episode was cut after step t (bootstrap from
    ``next_values[t]`` but do not carry later TD errors back). Reference:
    :func:`rlcore.returns.gae`.
    """
    from .returns import gae

    def case(r, v, nv, term, trunc, gamma, lam, label=""):
        args = {"rewards": r, "values": v, "next_values": nv, "terminated": term, "truncated": trunc,
                "gamma": gamma, "lam": lam}
        args = {k: torch.as_tensor(x, dtype=torch.float64) if k not in ("gamma", "lam") else x for k, x in args.items()}
        return Case(args, gae(*args.values()), label)

    z3 = [0.0, 0.0, 0.0]
    cases = [
        case([1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], z3, z3, 0.9, 0.0, "lambda = 0: the TD errors"),
        case([1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], z3, z3, 0.9, 0.8, "one episode, no ends"),
        case([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0], z3, 0.9, 0.95,
             "terminated after step 1"),
        case([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [1.0, 7.0, 1.0], z3, [0.0, 1.0, 0.0], 0.9, 0.95,
             "truncated after step 1 (time limit)"),
    ]
    g = torch.Generator().manual_seed(0)
    for i, shape in enumerate([(12,), (20,), (16, 3)]):
        ends = torch.rand(shape, generator=g)
        label = f"random rollout {i + 1}" + (", shape [T, N]" if len(shape) == 2 else "")
        cases.append(case(torch.randn(shape, generator=g), torch.randn(shape, generator=g),
                          torch.randn(shape, generator=g), (ends < 0.1).double(), ((ends > 0.1) & (ends < 0.2)).double(),
                          0.99, 0.95, label))

    def _loop(r, v, nv, term, trunc, gamma, lam, boot, cut):
        deltas = r + gamma * nv * boot(term, trunc) - v
        out, running = torch.empty_like(r), torch.zeros_like(r[0])
        for t in reversed(range(r.shape[0])):
            running = deltas[t] + gamma * lam * cut(term[t], trunc[t]) * running
            out[t] = running
        return out

    # order matters: the first wrong implementation that reproduces the output names the mistake
    mistakes = [
        Mistake(lambda *a: _loop(*a, boot=lambda te, tr: 1.0, cut=lambda te, tr: (1 - te) * (1 - tr)),
                "after a terminated step the next state has value 0: that step's TD error (eq-td-error) has no "
                "bootstrap term."),
        Mistake(lambda *a: _loop(*a, boot=lambda te, tr: (1 - te) * (1 - tr), cut=lambda te, tr: (1 - te) * (1 - tr)),
                "a truncated episode did not end in a terminal state: still bootstrap from next_values "
                "there; only terminated zeroes V(s_{t+1})."),
        Mistake(lambda *a: _loop(*a, boot=lambda te, tr: 1 - te, cut=lambda te, tr: 1 - te),
                "the sum must also stop at a truncation (the next step belongs to a new episode): "
                "an episode ends when it is terminated *or* truncated."),
        Mistake(lambda *a: _loop(*a, boot=lambda te, tr: 1 - te, cut=lambda te, tr: 1.0),
                "the sum must stop at an episode end: the advantage of a later step must not be carried "
                "back across it."),
    ]
    return check(fn, cases, "gae",
                 hint="reread eq-td-error and eq-gae: compute the TD errors first (no bootstrap from a terminal "
                      "next state), then accumulate them backwards in time with the weight gamma lambda, "
                      "restarting at every episode end (terminated *or* truncated).",
                 atol=1e-5, rtol=1e-5, raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-04-gae")


def check_clipped_surrogate(fn: Callable, raise_on_fail: bool = False) -> bool:
    """PPO: ``fn(logp, old_logp, advantages, clip_coef)`` returns the clipped surrogate *loss*
    ``-mean(min(r A, clip(r, 1 - eps, 1 + eps) A))``, ``r = exp(logp - old_logp)`` (eq-ppo-clip).

    Reference: :func:`rlcore.losses.clipped_surrogate_loss`.
    """
    from .losses import clipped_surrogate_loss

    def case(logp, old, adv, eps, label=""):
        logp, old, adv = (torch.as_tensor(x, dtype=torch.float64) for x in (logp, old, adv))
        return Case({"logp": logp, "old_logp": old, "advantages": adv, "clip_coef": eps},
                    clipped_surrogate_loss(logp, old, adv, eps), label)

    import math

    cases = [
        case([math.log(0.5)], [math.log(0.5)], [1.0], 0.2, "ratio 1: loss = -A"),
        case([math.log(0.9)], [math.log(0.5)], [1.0], 0.2, "ratio 1.8 > 1 + eps with A > 0: clipped"),
        case([math.log(0.9)], [math.log(0.5)], [-1.0], 0.2, "ratio 1.8 with A < 0: not clipped"),
        case([math.log(0.1)], [math.log(0.5)], [-2.0], 0.2, "ratio 0.2 < 1 - eps with A < 0: clipped"),
    ]
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        old = -torch.rand(32, generator=g, dtype=torch.float64) * 3
        cases.append(case(old + 0.4 * torch.randn(32, generator=g, dtype=torch.float64), old,
                          torch.randn(32, generator=g, dtype=torch.float64), 0.1 + 0.1 * i, f"random batch {i + 1}"))

    def ratio(lp, old):
        return torch.exp(lp - old)

    mistakes = [
        Mistake(lambda lp, old, a, eps: torch.mean(torch.min(ratio(lp, old) * a, torch.clamp(ratio(lp, old), 1 - eps, 1 + eps) * a)),
                "the sign: return the *loss* to minimise, the negative of the clipped objective."),
        Mistake(lambda lp, old, a, eps: -torch.mean(torch.clamp(ratio(lp, old), 1 - eps, 1 + eps) * a),
                "take the minimum of the unclipped r A and the clipped term (a pessimistic bound), "
                "not the clipped term alone."),
        Mistake(lambda lp, old, a, eps: -torch.mean(torch.max(ratio(lp, old) * a, torch.clamp(ratio(lp, old), 1 - eps, 1 + eps) * a)),
                "min, not max: the objective is the pessimistic (smaller) of the two terms."),
        Mistake(lambda lp, old, a, eps: -torch.mean(torch.min((lp - old) * a, torch.clamp(lp - old, -eps, eps) * a)),
                "the ratio is a ratio of probabilities, not the difference of the log-probabilities."),
    ]
    return check(fn, cases, "clipped_surrogate",
                 hint="reread eq-ppo-clip: the probability ratio comes from the two log-probabilities; per sample "
                      "take the pessimistic (smaller) of the unclipped and the clipped term, average them, and "
                      "return the *negative*: a loss to minimise.",
                 atol=1e-6, rtol=1e-5, raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-04-clip")


# --------------------------------------------------------------------- chapter 2
def _softmax_np(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def check_softmax_policy_gradient(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-02-softmax-gradient: ``fn(logits, mean_rewards)`` returns the exact gradient
    of a K-armed bandit's objective ``J(theta) = sum_a pi_theta(a) m_a`` with respect to the
    softmax logits ``theta`` (eq-softmax-policy; eq-pg-theorem with a single state).

    Inputs are 1-D float64 numpy arrays of length K; the answer is an array of length K.
    Reference: autograd through ``torch.softmax`` (the closed form is ``pi_b (m_b - J)``).
    """

    def reference(logits, m):
        th = torch.as_tensor(logits, dtype=torch.float64).clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(torch.softmax(th, -1) @ torch.as_tensor(m, dtype=torch.float64), th)
        return grad.numpy()

    def case(logits, m, label=""):
        logits, m = np.asarray(logits, dtype=np.float64), np.asarray(m, dtype=np.float64)
        return Case({"logits": logits, "mean_rewards": m}, reference(logits, m), label)

    g = _rng(2)
    cases = [
        case([0.0, 0.0], [1.0, 0.0], "two arms, uniform policy"),
        case([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], "three arms, uniform policy"),
        case([1.0, -1.0, 0.5], [2.0, 2.0, 2.0], "all arms equal: the gradient is zero"),
        case([3.0, 0.0, -3.0], [0.0, 1.0, 5.0], "a peaked policy"),
        *(case(g.normal(size=k), g.normal(size=k), f"random bandit with {k} arms") for k in (4, 6, 10)),
    ]

    mistakes = [
        Mistake(lambda th, m: _softmax_np(th) * m,
                "pi_b m_b is only the derivative of the b-th term through its own exponent; every "
                "pi_a depends on theta_b through the normaliser (use the softmax derivative given in the "
                "exercise)."),
        Mistake(lambda th, m: m - _softmax_np(th) @ m,
                "a factor is missing: the gradient of an arm's logit is also weighted by how often that arm "
                "is played."),
        Mistake(lambda th, m: _softmax_np(th) * (m - m.mean()),
                "the baseline inside the gradient is J, the policy's own mean reward, not the plain average "
                "of the arms."),
        Mistake(lambda th, m: _softmax_np(th) * (_softmax_np(th) @ m - m),
                "the sign is flipped: raising the logit of an arm that is better than average "
                "(m_b > J) must increase J."),
    ]
    return check(fn, cases, "softmax_policy_gradient",
                 hint="differentiate J through the softmax (eq-softmax-policy) by hand: every probability depends "
                      "on every logit through the normaliser; then simplify the sum over the arms.",
                 raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-02-softmax-gradient")


def check_reinforce_gradient(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-02-reinforce: ``fn(logits, actions, rewards, baseline)`` returns the REINFORCE
    (score-function) estimate of a bandit's policy gradient from N samples (eq-reinforce,
    eq-reinforce-baseline):

    ``(1/N) sum_i (r_i - b) grad_theta log pi_theta(a_i)``, with ``pi_theta = softmax(logits)``.

    ``logits`` is float64 ``[K]``, ``actions`` int64 ``[N]``, ``rewards`` float64 ``[N]``,
    ``baseline`` a float; the answer has shape ``[K]``. Reference: autograd of
    :func:`rlcore.losses.reinforce_loss` (whose gradient is minus this estimate).
    """
    from .losses import reinforce_loss

    def reference(logits, actions, rewards, baseline):
        th = torch.as_tensor(logits, dtype=torch.float64).clone().requires_grad_(True)
        logp = torch.log_softmax(th, -1)[torch.as_tensor(actions)]
        loss = reinforce_loss(logp, torch.as_tensor(rewards, dtype=torch.float64) - baseline)
        (grad,) = torch.autograd.grad(loss, th)
        return (-grad).numpy()

    def case(logits, actions, rewards, baseline, label=""):
        args = {"logits": np.asarray(logits, dtype=np.float64), "actions": np.asarray(actions, dtype=np.int64),
                "rewards": np.asarray(rewards, dtype=np.float64), "baseline": float(baseline)}
        return Case(args, reference(*args.values()), label)

    g = _rng(3)
    cases = [
        case([0.0, 0.0], [0], [1.0], 0.0, "one sample, two arms, no baseline"),
        case([0.0, 0.0, 0.0], [2, 2], [1.0, 3.0], 0.0, "the same arm twice"),
        case([0.0, 0.0, 0.0], [0, 1, 2], [1.0, 2.0, 3.0], 2.0, "baseline 2: the middle sample gets zero weight"),
        case([1.0, -0.5], [0, 1, 1, 0], [5.0, 5.0, 5.0, 5.0], 5.0, "every reward equals the baseline: zero estimate"),
    ]
    for i, (k, n) in enumerate([(3, 16), (5, 64), (8, 200)]):
        logits = g.normal(size=k)
        actions = g.choice(k, size=n, p=_softmax_np(logits))
        cases.append(case(logits, actions, g.normal(size=n) + 1.0, float(g.normal()), f"random batch {i + 1}"))

    def score(logits, actions):
        return np.eye(len(logits))[actions] - _softmax_np(logits)

    mistakes = [
        Mistake(lambda th, a, r, b: -((r - b)[:, None] * score(th, a)).mean(0),
                "this is the gradient of the *loss* (minus the objective); the estimate of grad J has the "
                "opposite sign."),
        Mistake(lambda th, a, r, b: (r[:, None] * score(th, a)).mean(0),
                "the baseline is missing: each sample is weighted by its reward minus the baseline."),
        Mistake(lambda th, a, r, b: ((r - b)[:, None] * score(th, a)).sum(0),
                "average over the N samples (mean), do not sum them."),
        Mistake(lambda th, a, r, b: ((r - b)[:, None] * np.eye(len(th))[a]).mean(0),
                "the normaliser's part of the score is missing: the gradient of log pi(a) has a term for "
                "every arm, not only for the chosen one."),
        Mistake(lambda th, a, r, b: ((r - b)[:, None] * _softmax_np(th)[a][:, None] * score(th, a)).mean(0),
                "that is the gradient of pi(a), not of log pi(a) (eq-log-derivative)."),
    ]
    return check(fn, cases, "reinforce_gradient",
                 hint="reread eq-reinforce-baseline: the estimate averages over the samples; what each sample "
                      "needs is its score, the gradient of log pi of the chosen arm with respect to all the "
                      "logits (derive it by hand for the softmax, eq-log-derivative).",
                 raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-02-reinforce")


def check_policy_gradient_theorem(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-02-pg-theorem: ``fn(P, R, gamma, mu0, logits)`` returns the exact gradient of
    ``J(theta) = mu0 . V^pi`` for a tabular softmax policy ``pi = softmax(logits[s])``, computed
    with the policy gradient theorem (eq-pg-theorem): ``sum_s eta(s) sum_a Q^pi(s,a) grad pi(a|s)``.

    ``P[s, a, s']``, ``R[s, a]``, ``mu0[s]`` and ``logits[s, a]`` are float64 numpy arrays; the
    answer has the shape of ``logits``. Reference: :func:`rlcore.tabular.exact_policy_gradient`
    (autograd through the exact value, independent of the theorem).
    """
    from .tabular import exact_policy_gradient

    cases = []
    for args, label in _tabular_cases(with_mu0=True):
        logits = np.log(args["pi"])
        inputs = {"P": args["P"], "R": args["R"], "gamma": args["gamma"], "mu0": args["mu0"], "logits": logits}
        mdp = _mdp_from_arrays(args["P"], args["R"], args["gamma"], args["mu0"])
        cases.append(Case(inputs, exact_policy_gradient(mdp, torch.as_tensor(logits)).numpy(), label))
    # a far-from-uniform policy on a random MDP
    from .tabular import random_mdp

    m = random_mdp(4, 3, 0.8, seed=7)
    logits = 2.0 * _rng(4).normal(size=(4, 3))
    cases.append(Case({"P": m.P.numpy(), "R": m.R.numpy(), "gamma": 0.8, "mu0": m.mu0.numpy(), "logits": logits},
                      exact_policy_gradient(m, torch.as_tensor(logits)).numpy(), "random MDP, peaked policy"))

    def parts(P, R, gamma, mu0, logits):
        pi = _softmax_np(logits)
        P_pi = np.einsum("sa,sax->sx", pi, P)
        eye = np.eye(len(mu0))
        V = np.linalg.solve(eye - gamma * P_pi, (pi * R).sum(1))
        Q = R + gamma * P @ V
        eta = np.linalg.solve((eye - gamma * P_pi).T, mu0)
        return pi, V, Q, eta

    def weighted(weights_of):
        def wrong(P, R, gamma, mu0, logits):
            pi, V, Q, eta = parts(P, R, gamma, mu0, logits)
            w, values = weights_of(pi, V, Q, eta, mu0, R)
            return w[:, None] * pi * (values - (pi * values).sum(1, keepdims=True))
        return wrong

    def no_pi_factor(P, R, gamma, mu0, logits):
        pi, V, Q, eta = parts(P, R, gamma, mu0, logits)
        return eta[:, None] * (Q - V[:, None])

    mistakes = [
        Mistake(weighted(lambda pi, V, Q, eta, mu0, R: (eta / eta.sum(), Q)),
                "you weighted the states by the normalised d^pi; the exact gradient weights them by the "
                "unnormalised eta itself (the theorem's equality, not its 'proportional to' form)."),
        Mistake(weighted(lambda pi, V, Q, eta, mu0, R: (mu0, Q)),
                "you weighted the states by the start distribution mu0; the gradient weights each state by "
                "its discounted visitation eta(s) (eq-eta)."),
        Mistake(weighted(lambda pi, V, Q, eta, mu0, R: (eta, R)),
                "the immediate reward R(s,a) is not enough: the theorem uses the action value Q^pi(s,a) "
                "(eq-bellman-q)."),
        Mistake(no_pi_factor,
                "a factor of the softmax derivative is missing: the derivative of pi(a|s) with respect to a "
                "logit of s is also weighted by the probability of that logit's action."),
    ]
    return check(fn, cases, "policy_gradient_theorem",
                 hint="evaluate the right-hand side of eq-pg-theorem exactly: it needs V^pi and Q^pi (chapter 0), "
                      "the unnormalised discounted visitation eta (eq-eta), and the derivative of the softmax "
                      "with respect to the logits of each state.",
                 atol=1e-6, rtol=1e-5, raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-02-pg-theorem")


__all__ += ["check_softmax_policy_gradient", "check_reinforce_gradient", "check_policy_gradient_theorem"]


# --------------------------------------------------------------------- introspection (tests, grading)
def all_checkers() -> dict[str, Callable]:
    """Every checker of the book, ``{"rlcore.exercises.check_gae": check_gae, ...}``: the public
    ``check_*`` functions of this module and of the chapter modules ``rlcore.exercise_checks.chNN``."""
    from . import exercise_checks

    modules = [importlib.import_module(__name__)]
    for info in sorted(pkgutil.iter_modules(exercise_checks.__path__), key=lambda m: m.name):
        modules.append(importlib.import_module(f"{exercise_checks.__name__}.{info.name}"))
    found = {}
    for mod in modules:
        for attr in sorted(vars(mod)):
            obj = getattr(mod, attr)
            if attr.startswith("check_") and callable(obj) and getattr(obj, "__module__", "") == mod.__name__:
                found[f"{mod.__name__}.{attr}"] = obj
    return found


def checker_texts(checker: Callable) -> dict[str, Any]:
    """What ``checker`` can print, without running any case: ``{"name", "exercise", "hint",
    "mistakes": [hints], "case_hints": [...], "labels": [case labels]}`` (the checker's
    reference values are still computed, so this takes as long as building its cases)."""
    global _RECORDING
    _RECORDING = []
    try:
        checker(lambda *args: None)
        recorded = _RECORDING
    finally:
        _RECORDING = None
    if len(recorded) != 1:
        raise RuntimeError(f"{getattr(checker, '__name__', checker)} called check() {len(recorded)} times")
    return recorded[0]


# Code in a hint: an assignment or keyword argument (a single '='), a library or method call,
# indexing or slicing, Python's power operator, a call of a common numeric or string function,
# or a Python statement (def, for ... in range, lambda, import, '; return').
_CODE_PATTERNS = [
    (re.compile(r"(?<![=<>!])=(?!=)"), "an '=' (assignment, keyword argument or equation)"),
    (re.compile(r"\b(?:torch|np|numpy|F|nn|math|re|scipy|random|unicodedata|fractions)\.\w"), "a library call"),
    (re.compile(r"\w\.\w+\("), "a method call"),
    (re.compile(r"[\w\)\]]\["), "indexing or slicing"),
    (re.compile(r"\*\*"), "the power operator **"),
    (re.compile(r"\b(?:exp|log|max|min|mean|sum|clip|clamp|where|gather|solve|len|range|float|int|list|"
                r"softmax|log_softmax|sqrt|std|var|abs|split|strip|fullmatch|search|findall|rfind|find|"
                r"cross_entropy|einsum|cumsum|reshape|view|flatten|grad|zeros|ones|eye|full|argmax|"
                r"Fraction|count|sorted|escape|compile|name|detach|kl_divergence|Categorical|isascii|"
                r"isalpha|append)\("), "a function call"),
    (re.compile(r"\bdef\s+\w+\(|\bfor\s+\w+\s+in\s+range\b|\blambda\s+\w+\s*:|;\s*return\b|\bimport\s+\w+$",
                re.M), "a Python statement"),
]


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def hint_problems(text: str, solution_lines: Sequence[str] = (), min_chars: int = 12) -> list[str]:
    """Why ``text`` (a hint) gives code or a typeable formula away: a list of reasons, empty if none.

    A hint may name concepts, equations (by label: ``eq-gae``), arguments (``terminated``) and
    mathematical objects (``V(s_{t+1})``, ``pi(a|s)``); it may not contain an ``=``, a library
    or method call, indexing, ``**``, a call of a numeric function (``exp(``, ``max(``, ...), or
    any line of a model solution (``solution_lines``, compared without whitespace, lines of at
    least ``min_chars`` characters).
    """
    reasons = [f"{what}: {m.group(0)!r}" for pattern, what in _CODE_PATTERNS for m in [pattern.search(text)] if m]
    flat = _squash(text)
    for line in solution_lines:
        code = _squash(line)
        if len(code) >= min_chars and code in flat:
            reasons.append(f"a line of a model solution: {line.strip()!r}")
    return reasons

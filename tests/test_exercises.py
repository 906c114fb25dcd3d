"""The exercise checkers: right answers pass (rlcore's and independent implementations),
typical wrong answers fail with the message that names the mistake, and errors in the
reader's code become a readable message instead of a traceback."""
import re

import numpy as np
import pytest
import torch

from rlcore import exercises as ex
from rlcore import losses, returns, tabular


# --------------------------------------------------------------------- independent solutions
def returns_by_definition(rewards, gamma):
    r = list(rewards)
    return [sum(gamma ** (k - t) * r[k] for k in range(t, len(r))) for t in range(len(r))]


def evaluation_by_iteration(P, R, gamma, pi):
    V = np.zeros(len(R))
    for _ in range(3000):  # gamma <= 0.95: error 0.95**3000 ~ 1e-67
        V = (pi * (R + gamma * P @ V)).sum(1)
    return V


def distribution_by_series(P, gamma, mu0, pi):
    P_pi = np.einsum("sa,sax->sx", pi, P)
    eta, p_t = np.zeros_like(mu0), mu0.copy()
    for t in range(3000):
        eta += gamma**t * p_t
        p_t = p_t @ P_pi
    return eta / eta.sum()


def td_target_loop(rewards, next_q, terminated, gamma):
    return torch.tensor([float(rewards[i]) + (0.0 if terminated[i] else gamma * float(next_q[i].max()))
                         for i in range(len(rewards))], dtype=torch.float64)


def gae_by_definition(rewards, values, next_values, terminated, truncated, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l}, the sum stopping at the end of t's episode."""
    if rewards.ndim == 2:  # one column per environment
        cols = [gae_by_definition(*(x[:, j] for x in (rewards, values, next_values, terminated, truncated)),
                                  gamma, lam) for j in range(rewards.shape[1])]
        return torch.stack(cols, dim=1)
    T = len(rewards)
    delta = [float(rewards[t] + gamma * (1 - terminated[t]) * next_values[t] - values[t]) for t in range(T)]
    out = []
    for t in range(T):
        total, l = 0.0, 0
        while t + l < T:
            total += (gamma * lam) ** l * delta[t + l]
            if terminated[t + l] or truncated[t + l]:
                break
            l += 1
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def clipped_by_cases(logp, old_logp, advantages, clip_coef):
    """The piecewise form of PPO's objective, sample by sample."""
    out = []
    for lp, old, a in zip(logp.tolist(), old_logp.tolist(), advantages.tolist()):
        r = np.exp(lp - old)
        if a >= 0:
            obj = min(r, 1 + clip_coef) * a
        else:
            obj = max(r, 1 - clip_coef) * a
        out.append(obj)
    return -float(np.mean(out))


def _policy_evaluation_ref(P, R, gamma, pi):
    mdp = tabular.TabularMDP(P, R, gamma, np.full(len(R), 1.0 / len(R)))
    return tabular.state_values(mdp, torch.as_tensor(pi))


def _state_distribution_ref(P, gamma, mu0, pi):
    mdp = tabular.TabularMDP(P, np.zeros(P.shape[:2]), gamma, mu0)
    return tabular.state_distribution(mdp, torch.as_tensor(pi))


RIGHT = [
    (ex.check_discounted_returns, lambda r, g: returns.discounted_returns(torch.as_tensor(r), g)),
    (ex.check_discounted_returns, returns_by_definition),
    (ex.check_policy_evaluation, _policy_evaluation_ref),
    (ex.check_policy_evaluation, evaluation_by_iteration),
    (ex.check_state_distribution, _state_distribution_ref),
    (ex.check_state_distribution, distribution_by_series),
    (ex.check_td_target, losses.td_target),
    (ex.check_td_target, td_target_loop),
    (ex.check_gae, returns.gae),
    (ex.check_gae, gae_by_definition),
    (ex.check_clipped_surrogate, losses.clipped_surrogate_loss),
    (ex.check_clipped_surrogate, clipped_by_cases),
]


@pytest.mark.parametrize("checker,fn", RIGHT, ids=lambda x: getattr(x, "__name__", "ref"))
def test_right_answers_pass(checker, fn, capsys):
    assert checker(fn) is True
    assert checker(fn, raise_on_fail=True) is True
    assert "✓" in capsys.readouterr().out


# --------------------------------------------------------------------- known mistakes
def _fails_with(checker, fn, *fragments, capsys):
    assert checker(fn) is False
    out = capsys.readouterr().out
    assert out.startswith("✗")
    for f in fragments:
        assert f in out, f"{f!r} not in message:\n{out}"
    assert "Traceback" not in out
    return out


def test_returns_forgetting_discount(capsys):
    out = _fails_with(ex.check_discounted_returns, lambda r, g: np.cumsum(r[::-1])[::-1],
                      "without discounting", "case 1 of", "expected: array([2.71, 1.9 , 1.  ])", capsys=capsys)
    assert "got:      array([3., 2., 1.])" in out


def test_returns_off_by_one(capsys):
    def skip_current(r, g):
        return [sum(g ** (k - t - 1) * r[k] for k in range(t + 1, len(r))) for t in range(len(r))]

    def exponent_plus_one(r, g):
        return [sum(g ** (k - t + 1) * r[k] for k in range(t, len(r))) for t in range(len(r))]

    _fails_with(ex.check_discounted_returns, skip_current, "off by one", "includes the reward r_t", capsys=capsys)
    _fails_with(ex.check_discounted_returns, exponent_plus_one, "off by one in the exponent", capsys=capsys)


def test_returns_forward_sum_and_absolute_discount(capsys):
    def forward(r, g):
        return [sum(g**k * r[k] for k in range(t + 1)) for t in range(len(r))]

    def absolute(r, g):
        return [sum(g**k * r[k] for k in range(t, len(r))) for t in range(len(r))]

    _fails_with(ex.check_discounted_returns, forward, "*start* of the episode", capsys=capsys)
    # case 1 with gamma=0.9 exposes the absolute-time discount at t >= 1
    _fails_with(ex.check_discounted_returns, absolute, "absolute time step", capsys=capsys)


def test_returns_only_first_return_gives_shape_message(capsys):
    _fails_with(ex.check_discounted_returns, lambda r, g: returns_by_definition(r, g)[0],
                "shape ()", "(3,) was expected", capsys=capsys)


def test_policy_evaluation_mistakes(capsys):
    def transposed(P, R, gamma, pi):
        P_pi = np.einsum("sa,sax->sx", pi, P)
        return np.linalg.solve(np.eye(len(R)) - gamma * P_pi.T, (pi * R).sum(1))

    def optimal(P, R, gamma, pi):
        return tabular.value_iteration(tabular.TabularMDP(P, R, gamma, np.full(len(R), 1 / len(R))))[0]

    _fails_with(ex.check_policy_evaluation, transposed, "transposed", capsys=capsys)
    _fails_with(ex.check_policy_evaluation, lambda P, R, g, pi: (pi * R).sum(1), "immediate reward", capsys=capsys)
    _fails_with(ex.check_policy_evaluation, optimal, "optimal value V*", capsys=capsys)


def test_state_distribution_mistakes(capsys):
    def eta(P, gamma, mu0, pi):
        return distribution_by_series(P, gamma, mu0, pi) / (1 - gamma)

    _fails_with(ex.check_state_distribution, eta, "*un*normalised", capsys=capsys)


def test_td_target_mistakes(capsys):
    _fails_with(ex.check_td_target, lambda r, q, t, g: r + g * q.max(-1).values,
                "terminal next state has value 0", "the second transition is terminal", capsys=capsys)
    _fails_with(ex.check_td_target, lambda r, q, t, g: r + g * (1 - t) * q.mean(-1), "max over a'", capsys=capsys)


def test_gae_mistakes(capsys):
    def variant(boot_on_terminal=False, stop_on_truncation=True, stop_on_termination=True, no_boot_on_truncation=False):
        def fn(r, v, nv, term, trunc, gamma, lam):
            nonterm = torch.ones_like(term) if boot_on_terminal else 1 - term
            if no_boot_on_truncation:
                nonterm = nonterm * (1 - trunc)
            delta = r + gamma * nonterm * nv - v
            keep = torch.ones_like(r)
            if stop_on_termination:
                keep = keep * (1 - term)
            if stop_on_truncation:
                keep = keep * (1 - trunc)
            out, run = torch.empty_like(r), torch.zeros_like(r[0])
            for t in reversed(range(len(r))):
                run = delta[t] + gamma * lam * keep[t] * run
                out[t] = run
            return out
        return fn

    assert ex.check_gae(variant()) is True
    capsys.readouterr()
    _fails_with(ex.check_gae, variant(boot_on_terminal=True), "terminated after step 1",
                "no bootstrap term", capsys=capsys)
    _fails_with(ex.check_gae, variant(no_boot_on_truncation=True), "truncated after step 1",
                "still bootstrap from next_values", capsys=capsys)
    _fails_with(ex.check_gae, variant(stop_on_truncation=False), "truncated after step 1",
                "also stop at a truncation", capsys=capsys)
    _fails_with(ex.check_gae, variant(stop_on_truncation=False, stop_on_termination=False),
                "must stop at an episode end", capsys=capsys)


def test_clipped_surrogate_mistakes(capsys):
    def objective_not_loss(lp, old, a, eps):
        return -losses.clipped_surrogate_loss(lp, old, a, eps)

    _fails_with(ex.check_clipped_surrogate, objective_not_loss, "the sign", capsys=capsys)
    _fails_with(ex.check_clipped_surrogate, lambda lp, old, a, eps: -(torch.exp(lp - old) * a).mean(),
                "ratio 1.8 > 1 + eps with A > 0: clipped", capsys=capsys)


# --------------------------------------------------------------------- the framework itself
def test_exception_in_student_code_is_reported_not_raised(capsys):
    def buggy(rewards, gamma):
        out = []
        for t in range(len(rewards)):
            out.append(float(rewards[t]) / (gamma - gamma))  # divides by zero
        return out

    def numpy_buggy(rewards, gamma):
        return rewards[len(rewards)]

    out = _fails_with(ex.check_discounted_returns, numpy_buggy, "IndexError", "index 3 is out of bounds",
                      "input:    rewards = array([1., 1., 1.])", capsys=capsys)
    assert "raised at line 2 of numpy_buggy: return rewards[len(rewards)]" in out
    out = _fails_with(ex.check_discounted_returns, buggy, "ZeroDivisionError", "line 4 of buggy", capsys=capsys)
    assert "File " not in out


def test_stub_returning_none_and_not_implemented(capsys):
    def stub(rewards, gamma):
        ...

    def raises(rewards, gamma):
        raise NotImplementedError

    out = _fails_with(ex.check_discounted_returns, stub, "not implemented yet", "stub returned None",
                      "exercise ex-00-returns", capsys=capsys)
    assert "Hint" not in out and "case 1" not in out and "expected" not in out, out
    out = _fails_with(ex.check_discounted_returns, raises, "not implemented yet", "raised NotImplementedError",
                      capsys=capsys)
    assert "Hint" not in out
    out = _fails_with(ex.check_discounted_returns, lambda r, g: ..., "not implemented yet", "returned ...",
                      capsys=capsys)
    assert "Hint" not in out


def test_none_on_a_later_case_is_a_failure_without_a_hint(capsys):
    def partial(rewards, gamma):
        if len(rewards) == 3:
            return returns_by_definition(rewards, gamma)

    out = _fails_with(ex.check_discounted_returns, partial, "returned None for this input", "case 4 of",
                      capsys=capsys)
    assert "not implemented yet" not in out and "Hint" not in out


def test_raise_on_fail_raises_exercise_error_with_the_message(capsys):
    with pytest.raises(ex.ExerciseError) as info:
        ex.check_discounted_returns(lambda r, g: np.cumsum(r[::-1])[::-1], raise_on_fail=True)
    assert isinstance(info.value, AssertionError)
    assert "without discounting" in str(info.value) and str(info.value).startswith("✗")
    assert capsys.readouterr().out == ""  # raised, not printed


def test_student_code_cannot_spoil_cases_by_mutating_inputs(capsys):
    def correct_then_mutates(rewards, gamma):
        out = returns_by_definition(rewards, gamma)
        rewards[:] = 1e9
        return out

    assert ex.check_discounted_returns(correct_then_mutates) is True


def test_generic_check_and_compare():
    cases = [ex.Case({"x": 2.0}, 4.0, "square of 2"), ex.Case({"x": np.array([1.0, 3.0])}, np.array([1.0, 9.0]))]
    assert ex.check(lambda x: x * x, cases, name="square")
    assert not ex.check(lambda x: x + x, cases[1:], name="square")
    assert not ex.check(lambda x: x * x, [ex.Case({"x": 1.0}, 2.0, hint="H!")], raise_on_fail=False)
    with pytest.raises(ex.ExerciseError, match="H!"):
        ex.check(lambda x: x * x, [ex.Case({"x": 1.0}, 2.0, hint="H!")], raise_on_fail=True)
    with pytest.raises(TypeError, match="pass your function itself"):
        ex.check(4.0, cases)
    assert ex.compare(torch.tensor([1.0, 2.0]), np.array([1.0, 2.0 + 1e-8])) is None
    assert "shape" in ex.compare(np.zeros(3), np.zeros((3, 1)))
    assert "NaN" in ex.compare(np.array([np.nan]), np.array([0.0]))
    assert "largest error" in ex.compare(1.1, 1.0)
    assert ex.compare((1.0, np.ones(2)), (1.0, np.ones(2))) is None
    assert "output 1" in ex.compare((1.0, np.zeros(2)), (1.0, np.ones(2)))


# --------------------------------------------------------------------- hints give no answer away
def _all_texts():
    """(checker, kind, text) for every hint, known-mistake hint, case hint and case label of every checker."""
    out = []
    for name, checker in ex.all_checkers().items():
        info = ex.checker_texts(checker)
        out += [(name, "hint", info["hint"])] if info["hint"] else []
        out += [(name, "mistake", h) for h in info["mistakes"]]
        out += [(name, "case hint", h) for h in info["case_hints"]]
        out += [(name, "label", h) for h in info["labels"]]
    return out


def _solution_lines():
    import json

    from rlcore import grading

    lines = []
    for path in sorted(grading.CHAPTERS.glob("[0-9]*.ipynb")):
        nb = json.loads(path.read_text())
        lines += grading.solution_sources(nb)
        for model in grading.model_answers(nb).values():
            lines += model.split("\n")
    return [line for line in lines if len("".join(line.split())) >= 12]


def test_every_checker_is_listed_and_says_which_exercise_it_checks():
    checkers = ex.all_checkers()
    assert len(checkers) >= 34
    unlabelled = [name for name, c in checkers.items() if not ex.checker_texts(c)["exercise"]]
    assert unlabelled == ["rlcore.exercises.check_td_target"], unlabelled  # used by no chapter


def test_no_hint_contains_code_a_typeable_formula_or_a_solution_line():
    solution = _solution_lines()
    assert len(solution) > 100
    bad = [f"{name} ({kind}): {text!r}\n      {ex.hint_problems(text, solution)}"
           for name, kind, text in _all_texts() if kind != "label" and ex.hint_problems(text, solution)]
    assert not bad, "hints must be conceptual (see rlcore.exercises.hint_problems):\n" + "\n".join(bad)


def test_case_labels_contain_no_library_code_and_no_solution_line():
    solution = {"".join(line.split()) for line in _solution_lines()}
    bad = []
    for name, kind, text in _all_texts():
        if kind != "label":
            continue
        flat = "".join(text.split())
        if re.search(r"\b(?:torch|np|numpy|F|re)\.\w", text) or any(s in flat for s in solution if len(s) >= 15):
            bad.append(f"{name}: {text!r}")
    assert not bad, "\n".join(bad)


def test_equations_named_in_hints_exist_in_the_chapters():
    import json

    from rlcore import grading

    known = set()
    for path in sorted(grading.CHAPTERS.glob("[0-9]*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            src = "".join(cell["source"])
            known |= set(re.findall(r"\$\$\s*\((eq-[\w-]+)\)", src)) | set(re.findall(r":label:\s*(eq-[\w-]+)", src))
    named = {(name, label.rstrip("-.,")) for name, kind, text in _all_texts()
             for label in re.findall(r"\beq-[\w-]+", text)}
    assert named
    missing = sorted(f"{name}: {label}" for name, label in named if label not in known)
    assert not missing, "hints name equations that no chapter defines:\n" + "\n".join(missing)


@pytest.mark.parametrize("name", sorted(ex.all_checkers()))
def test_an_unwritten_stub_gets_only_not_implemented(name, capsys):
    checker = ex.all_checkers()[name]

    def stub(*args):
        ...

    def raises(*args):
        raise NotImplementedError

    for fn in (stub, raises):
        assert checker(fn) is False
        out = capsys.readouterr().out
        assert out.startswith("✗") and "not implemented yet" in out, out
        assert "Hint" not in out and "expected" not in out and "input" not in out, out
        assert len(out.strip().split("\n")) == 2, out

"""Checkers of chapter 2's exercises (rlcore.exercises): right answers pass, known mistakes fail
with their hint, and the reference values agree with independent closed forms."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rlcore import exercises as ex
from rlcore import tabular as tab


def softmax(x):
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


# ------------------------------------------------------------------ independent solutions
def bandit_gradient(logits, m):
    """Closed form dJ/dtheta_b = pi_b (m_b - J), no autograd."""
    p = softmax(logits)
    return p * (m - p @ m)


def reinforce_estimate(logits, actions, rewards, baseline):
    """mean_i (r_i - b)(onehot(a_i) - pi), written without rlcore."""
    p = softmax(logits)
    return ((rewards - baseline)[:, None] * (np.eye(len(logits))[actions] - p)).mean(0)


def theorem_gradient(P, R, gamma, mu0, logits):
    """eta(s) pi(b|s) (Q(s,b) - V(s)) with numpy linear algebra only."""
    pi = softmax(logits)
    P_pi = np.einsum("sa,sax->sx", pi, P)
    eye = np.eye(len(mu0))
    V = np.linalg.solve(eye - gamma * P_pi, (pi * R).sum(1))
    Q = R + gamma * P @ V
    eta = np.linalg.solve((eye - gamma * P_pi).T, mu0)
    return eta[:, None] * pi * (Q - V[:, None])


CHECKERS = [
    (ex.check_softmax_policy_gradient, bandit_gradient),
    (ex.check_reinforce_gradient, reinforce_estimate),
    (ex.check_policy_gradient_theorem, theorem_gradient),
]


@pytest.mark.parametrize("checker,solution", CHECKERS)
def test_correct_solution_passes(checker, solution, capsys):
    assert checker(solution) is True
    assert "✓" in capsys.readouterr().out
    assert checker(solution, raise_on_fail=True) is True


@pytest.mark.parametrize("checker,solution", CHECKERS)
def test_torch_answer_accepted(checker, solution):
    assert checker(lambda *a: torch.as_tensor(solution(*a))) is True


@pytest.mark.parametrize("checker,solution", CHECKERS)
def test_stub_and_scaled_answers_fail(checker, solution, capsys):
    assert checker(lambda *a: None) is False
    out = capsys.readouterr().out
    assert "returned None" in out and "not implemented yet" in out and "Hint" not in out, out
    assert checker(lambda *a: 1.01 * solution(*a)) is False
    with pytest.raises(ex.ExerciseError):
        checker(lambda *a: 1.01 * solution(*a), raise_on_fail=True)


@pytest.mark.parametrize("checker,solution", CHECKERS)
def test_exceptions_are_reported(checker, solution, capsys):
    def broken(*a):
        raise NotImplementedError

    assert checker(broken) is False
    assert "not implemented yet" in capsys.readouterr().out


def _p(th):
    return softmax(th)


@pytest.mark.parametrize("wrong,phrase", [
    (lambda th, m: _p(th) * m, "normaliser"),
    (lambda th, m: m - _p(th) @ m, "how often that arm is played"),
    (lambda th, m: _p(th) * (m - m.mean()), "plain average"),
    (lambda th, m: -bandit_gradient(th, m), "sign is flipped"),
])
def test_softmax_gradient_mistakes_get_their_hint(wrong, phrase, capsys):
    assert ex.check_softmax_policy_gradient(wrong) is False
    assert phrase in capsys.readouterr().out


@pytest.mark.parametrize("wrong,phrase", [
    (lambda th, a, r, b: -reinforce_estimate(th, a, r, b), "gradient of the *loss*"),
    (lambda th, a, r, b: reinforce_estimate(th, a, r, 0.0), "baseline is missing"),
    (lambda th, a, r, b: len(a) * reinforce_estimate(th, a, r, b), "do not sum"),
    (lambda th, a, r, b: ((r - b)[:, None] * np.eye(len(th))[a]).mean(0), "normaliser's part of the score"),
    (lambda th, a, r, b: ((r - b)[:, None] * _p(th)[a][:, None] * (np.eye(len(th))[a] - _p(th))).mean(0),
     "eq-log-derivative"),
])
def test_reinforce_mistakes_get_their_hint(wrong, phrase, capsys):
    assert ex.check_reinforce_gradient(wrong) is False
    assert phrase in capsys.readouterr().out


def _theorem_variant(weights, use_R=False, with_pi=True):
    def wrong(P, R, gamma, mu0, logits):
        pi = softmax(logits)
        P_pi = np.einsum("sa,sax->sx", pi, P)
        eye = np.eye(len(mu0))
        V = np.linalg.solve(eye - gamma * P_pi, (pi * R).sum(1))
        Q = R + gamma * P @ V
        eta = np.linalg.solve((eye - gamma * P_pi).T, mu0)
        w = {"d": eta / eta.sum(), "mu0": mu0, "eta": eta}[weights]
        vals = R if use_R else Q
        adv = vals - (pi * vals).sum(1, keepdims=True)
        return w[:, None] * (pi if with_pi else 1.0) * adv
    return wrong


@pytest.mark.parametrize("wrong,phrase", [
    (_theorem_variant("d"), "normalised d^pi"),
    (_theorem_variant("mu0"), "start distribution"),
    (_theorem_variant("eta", use_R=True), "immediate reward"),
    (_theorem_variant("eta", with_pi=False), "factor of the softmax derivative"),
])
def test_theorem_mistakes_get_their_hint(wrong, phrase, capsys):
    assert ex.check_policy_gradient_theorem(wrong) is False
    assert phrase in capsys.readouterr().out


def test_reinforce_estimate_is_unbiased_for_the_checked_gradient():
    """The two bandit exercises fit together: the REINFORCE estimate averages to the exact gradient."""
    g = np.random.default_rng(0)
    logits, means = np.array([0.3, -0.2, 0.8]), np.array([1.0, 0.0, 2.0])
    n = 200_000
    actions = g.choice(3, size=n, p=softmax(logits))
    rewards = means[actions] + g.normal(size=n)
    per_sample = (rewards - 1.0)[:, None] * (np.eye(3)[actions] - softmax(logits))
    se = per_sample.std(0, ddof=1) / np.sqrt(n)
    assert np.all(np.abs(reinforce_estimate(logits, actions, rewards, 1.0) - bandit_gradient(logits, means)) < 5 * se)


def test_theorem_solution_matches_rlcore_theorem_rhs():
    mdp = tab.random_mdp(6, 3, 0.95, seed=3)
    logits = np.random.default_rng(1).normal(size=(6, 3))
    ours = theorem_gradient(mdp.P.numpy(), mdp.R.numpy(), 0.95, mdp.mu0.numpy(), logits)
    assert np.allclose(ours, tab.policy_gradient_theorem(mdp, torch.as_tensor(logits)).numpy(), atol=1e-10)
    assert np.allclose(ours, tab.exact_policy_gradient(mdp, torch.as_tensor(logits)).numpy(), atol=1e-10)


def test_checkers_reject_non_callables():
    with pytest.raises(TypeError, match="pass your function itself"):
        ex.check_reinforce_gradient(np.zeros(3))


# ------------------------------------------------------------------ derivation: the Gaussian score of log sigma
def test_gaussian_log_std_score_right_formulas_pass(capsys):
    import sympy as sp

    from rlcore.exercise_checks import ch02

    def by_differentiation(a, m, sigma):  # differentiate the log-density with respect to u = log sigma
        u = sp.Symbol("u", real=True)
        logp = -(a - m) ** 2 / (2 * sp.exp(2 * u)) - u - sp.log(2 * sp.pi) / 2
        return sp.diff(logp, u).subs(u, sp.log(sigma))

    assert ch02.check_gaussian_log_std_score(ch02.gaussian_log_std_score) is True
    assert ch02.check_gaussian_log_std_score(by_differentiation, raise_on_fail=True) is True
    assert capsys.readouterr().out.startswith("✓ gaussian_log_std_score")


def test_gaussian_log_std_score_reference_matches_autograd_and_has_mean_zero():
    from rlcore.exercise_checks import ch02
    from rlcore.networks import GaussianPolicy

    torch.manual_seed(0)
    policy = GaussianPolicy(3, 1).double()
    obs = torch.randn(5, 3, dtype=torch.float64)
    dist = policy.distribution(obs)
    a = dist.sample()
    logp = dist.log_prob(a).sum()
    (g,) = torch.autograd.grad(logp, policy.log_std)
    m, sigma = dist.mean.detach(), dist.stddev.detach()
    expected = sum(float(ch02.gaussian_log_std_score(a[i, 0], m[i, 0], sigma[i, 0])) for i in range(5))
    assert float(g.sum()) == pytest.approx(expected, rel=1e-9)
    z = np.random.default_rng(0).standard_normal(400_000)
    score = ch02.gaussian_log_std_score(z, 0.0, 1.0)
    assert abs(score.mean()) < 4 * score.std() / np.sqrt(len(z)) and score.var() == pytest.approx(2.0, rel=0.02)


@pytest.mark.parametrize("fn,fragment", [
    (lambda a, m, s: (a - m) ** 2 / s**3 - 1 / s, "with respect to sigma itself"),
    (lambda a, m, s: (a - m) ** 2 / s**2, "normalising constant"),
    (lambda a, m, s: 1 - (a - m) ** 2 / s**2, "sign is flipped"),
    (lambda a, m, s: (a - m) / s**2, "score with respect to the mean"),
])
def test_gaussian_log_std_score_mistakes_get_their_hint(fn, fragment, capsys):
    from rlcore.exercise_checks import ch02

    assert ch02.check_gaussian_log_std_score(fn) is False
    out = capsys.readouterr().out
    assert out.startswith("✗") and fragment in out, out


def test_gaussian_log_std_score_stub_gets_not_implemented(capsys):
    from rlcore.exercise_checks import ch02

    def gaussian_log_std_score(a, m, sigma):
        ...

    assert ch02.check_gaussian_log_std_score(gaussian_log_std_score) is False
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "Hint" not in out

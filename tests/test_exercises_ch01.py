"""Chapter 1's references and exercise checkers (rlcore.exercise_checks.ch01): right answers pass,
known mistakes fail with their hint, and each reference agrees with an independent computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rlcore import tabular
from rlcore.algos import dqn
from rlcore.exercise_checks import ch01


# ------------------------------------------------------------------ independent solutions (no rlcore)
def dqn_target(rewards, next_q, terminated, truncated, gamma):
    r, q, t = (np.asarray(x, dtype=float) for x in (rewards, next_q, terminated))
    return np.array([r[i] + (0.0 if t[i] else gamma * max(q[i])) for i in range(len(r))])


def eps_greedy(q, eps):
    q = np.asarray(q, dtype=float)
    out = np.zeros_like(q)
    for i, row in enumerate(q):
        for a in range(len(row)):
            out[i, a] = eps / len(row) + (1 - eps) * (a == int(np.argmax(row)))
    return out


def q_update(Q, s, a, r, s_next, terminated, alpha, gamma):
    Q = [list(map(float, row)) for row in Q]
    target = r if terminated else r + gamma * max(Q[s_next])
    Q[s][a] = (1 - alpha) * Q[s][a] + alpha * target
    return np.array(Q)


def huber_loss(q, a, y):
    q, a, y = np.asarray(q, float), np.asarray(a), np.asarray(y, float)
    x = q[np.arange(len(a)), a] - y
    return float(np.mean([0.5 * v * v if abs(v) <= 1 else abs(v) - 0.5 for v in x]))


CHECKERS = [
    (ch01.check_dqn_target, dqn_target),
    (ch01.check_epsilon_greedy, eps_greedy),
    (ch01.check_q_learning_update, q_update),
    (ch01.check_huber_loss, huber_loss),
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
def test_stub_returning_none_is_reported(checker, solution, capsys):
    def stub(*args):
        ...

    assert checker(stub) is False
    out = capsys.readouterr().out
    assert "returned None" in out and "not implemented yet" in out and "Hint" not in out, out
    with pytest.raises(AssertionError, match="returned None"):
        checker(stub, raise_on_fail=True)


def _expect_hint(checker, fn, fragment, capsys):
    assert checker(fn) is False
    out = capsys.readouterr().out
    assert "✗" in out and fragment in out, out


def test_dqn_target_mistakes(capsys):
    def done_mask(r, q, t, u, gamma):
        return torch.as_tensor(dqn_target(r.numpy(), q.numpy(), np.maximum(t.numpy(), u.numpy()), u, gamma))

    _expect_hint(ch01.check_dqn_target, done_mask, "Only `terminated` removes the bootstrap", capsys)
    _expect_hint(ch01.check_dqn_target, lambda r, q, t, u, g: r + g * q.max(-1).values,
                 "terminal next state has value 0", capsys)
    _expect_hint(ch01.check_dqn_target, lambda r, q, t, u, g: r + g * (1 - t) * q.mean(-1), "not the mean", capsys)


def test_epsilon_greedy_mistakes(capsys):
    def others(q, eps):
        A = q.shape[-1]
        onehot = np.eye(A)[q.argmax(-1)]
        return (1 - eps) * onehot + eps / (A - 1) * (1 - onehot)

    _expect_hint(ch01.check_epsilon_greedy, others, "not over the A - 1 others", capsys)
    _expect_hint(ch01.check_epsilon_greedy, lambda q, e: np.eye(q.shape[-1])[q.argmax(-1)], "nonzero probability", capsys)
    _expect_hint(ch01.check_epsilon_greedy, lambda q, e: eps_greedy(-q, e), "largest", capsys)


def test_q_learning_update_mistakes(capsys):
    _expect_hint(ch01.check_q_learning_update,
                 lambda Q, s, a, r, sn, t, al, g: q_update(Q, s, a, r, sn, False, al, g), "the reward alone", capsys)
    _expect_hint(ch01.check_q_learning_update,
                 lambda Q, s, a, r, sn, t, al, g: q_update(Q, s, a, r, sn, t, 1.0, g), "do not replace it by the target", capsys)

    def mean_target(Q, s, a, r, sn, t, al, g):
        Q = np.array(Q, float)
        Q[s, a] += al * ((r if t else r + g * Q[sn].mean()) - Q[s, a])
        return Q

    _expect_hint(ch01.check_q_learning_update, mean_target, "not the average", capsys)


def test_huber_loss_mistakes(capsys):
    def mse(q, a, y):
        return (0.5 * (q.gather(1, a[:, None]).squeeze(1) - y) ** 2).mean()

    _expect_hint(ch01.check_huber_loss, mse, "quadratic only for |error| < 1", capsys)
    _expect_hint(ch01.check_huber_loss, lambda q, a, y: huber_loss(q, a, y) * len(a), "do not sum", capsys)
    _expect_hint(ch01.check_huber_loss,
                 lambda q, a, y: huber_loss(np.repeat(q.max(-1).values.numpy()[:, None], q.shape[1], 1), a, y),
                 "taken", capsys)


def test_q_learning_update_only_changes_one_entry_and_copies():
    Q = np.arange(6.0).reshape(3, 2)
    new = ch01.q_learning_update(Q, 1, 0, 0.5, 2, False, 0.25, 0.9)
    assert np.array_equal(Q, np.arange(6.0).reshape(3, 2))  # input untouched
    changed = np.argwhere(new != Q)
    assert changed.tolist() == [[1, 0]]
    # by hand: target = 0.5 + 0.9 * max(4, 5) = 5.0; Q = 2 + 0.25 * (5 - 2) = 2.75
    assert new[1, 0] == pytest.approx(2.75)


def test_epsilon_greedy_probs_matches_dqn_act_frequencies():
    """The reference describes what rlcore.algos.dqn.act samples (Monte Carlo, 5 standard errors)."""
    net = torch.nn.Linear(3, 4)
    torch.manual_seed(0)
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    with torch.no_grad():
        q = net(torch.as_tensor(obs)).numpy()
    eps, n = 0.3, 4000
    rng = np.random.default_rng(1)
    counts = np.zeros((5, 4))
    for _ in range(n):
        a = dqn.act(net, obs, deterministic=False, epsilon=eps, rng=rng)
        counts[np.arange(5), a] += 1
    p = ch01.epsilon_greedy_probs(q, eps)
    assert np.allclose(p.sum(-1), 1.0)
    se = np.sqrt(p * (1 - p) / n)
    assert (np.abs(counts / n - p) < 5 * se + 1e-12).all()


@pytest.mark.slow
def test_q_learning_converges_to_value_iteration():
    """Tabular Q-learning from samples approaches Q* of value iteration on the gridworld, and its
    greedy policy is within the bound 2 ||Q - Q*|| / (1 - gamma) of optimal (thm-greedy-bound)."""
    mdp = tabular.gridworld()
    V_star, Q_star, _ = tabular.value_iteration(mdp)
    Q, N, snaps = ch01.q_learning(mdp, 40_000, seed=0, record_every=10_000)
    assert snaps.shape == (4, mdp.n_states, mdp.n_actions)
    errs = [np.abs(q - Q_star.numpy()).max() for q in snaps]
    assert errs[-1] < errs[0]           # it gets closer
    assert errs[-1] < 0.15              # and is close (|Q*| is up to 1)
    assert (N[:12] > 0).all() and N[12].sum() == 0   # every non-terminal pair visited, terminal never updated
    greedy = torch.as_tensor(np.eye(mdp.n_actions)[Q.argmax(1)])
    gap = (V_star - tabular.state_values(mdp, greedy)).abs().max().item()
    assert gap <= 2 * errs[-1] / (1 - mdp.gamma)


def test_q_learning_same_seed_same_result_and_bad_input():
    mdp = tabular.gridworld()
    a = ch01.q_learning(mdp, 2_000, seed=3)[0]
    b = ch01.q_learning(mdp, 2_000, seed=3)[0]
    c = ch01.q_learning(mdp, 2_000, seed=4)[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(ValueError, match="omega"):
        ch01.q_learning(mdp, 10, omega=0.5)
    with pytest.raises(ValueError, match="n_steps"):
        ch01.q_learning(mdp, 0)


# ------------------------------------------------------------------ derivation: the deadly triad's growth factor
def test_triad_factor_right_formulas_pass(capsys):
    import sympy as sp

    def expanded(alpha, gamma, p):  # the same formula, written out differently
        return sp.expand(p * (1 + alpha * (2 * gamma - 1)) + (1 - p) * (1 - 4 * alpha))

    assert ch01.check_triad_factor(ch01.triad_factor) is True
    assert ch01.check_triad_factor(expanded, raise_on_fail=True) is True
    assert capsys.readouterr().out.startswith("✓ triad_factor")


def test_triad_factor_reference_matches_simulated_updates():
    """The expected factor against the average of many runs of randomly drawn semi-gradient updates (the
    chapter's update rule), and against the chapter's deterministic off-policy run (p = 1)."""
    rng = np.random.default_rng(0)
    alpha, gamma, p, steps, runs = 0.05, 0.9, 0.7, 20, 200_000
    w = np.ones(runs)
    features = np.array([1.0, 2.0])
    for _ in range(steps):
        first = rng.random(runs) < p
        w = np.where(first, w + alpha * (gamma * features[1] * w - features[0] * w) * features[0],
                     w + alpha * (0.0 - features[1] * w) * features[1])
    expected = ch01.triad_factor(alpha, gamma, p) ** steps
    assert abs(w.mean() - expected) < 4 * w.std() / np.sqrt(runs)
    assert ch01.triad_factor(0.1, 0.99, 1.0) == pytest.approx(1 + 0.1 * (2 * 0.99 - 1))


@pytest.mark.parametrize("fn,fragment", [
    (lambda a, g, p: 1 + a * (2 * g - 1), "first transition alone"),
    (lambda a, g, p: 1 + a * (p * (2 * g - 1) - 2 * (1 - p)), "too small by a factor 2"),
    (lambda a, g, p: 1 - a * (p * (2 * g - 1) ** 2 + 4 * (1 - p)), "differentiated through the target"),
    (lambda a, g, p: 1 + a * (p * (2 * g - 1) - 4 * p), "probabilities are swapped"),
])
def test_triad_factor_mistakes_get_their_hint(fn, fragment, capsys):
    assert ch01.check_triad_factor(fn) is False
    out = capsys.readouterr().out
    assert out.startswith("✗") and fragment in out, out


def test_triad_factor_stub_gets_not_implemented(capsys):
    def my_triad_factor(alpha, gamma, p):
        ...

    assert ch01.check_triad_factor(my_triad_factor) is False
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "Hint" not in out

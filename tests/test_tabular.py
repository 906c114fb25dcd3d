"""C1: a tabular MDP whose values are computed exactly (rlcore.tabular)."""
import numpy as np
import pytest
import torch

from rlcore import tabular as T


def iterative_policy_evaluation(mdp, pi, iters=5000):
    """Independent check: repeated Bellman backups instead of a linear solve."""
    V = torch.zeros(mdp.n_states, dtype=torch.float64)
    for _ in range(iters):
        V = (pi * (mdp.R + mdp.gamma * mdp.P @ V)).sum(-1)
    return V


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_state_values_solve_bellman_equation(seed):
    mdp = T.random_mdp(6, 3, gamma=0.9, seed=seed)
    pi = T.softmax_policy(torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    V = T.state_values(mdp, pi)
    # eq-bellman-v: V = r_pi + gamma P_pi V
    rhs = (pi * mdp.R).sum(-1) + mdp.gamma * T.state_transition_matrix(mdp, pi) @ V
    torch.testing.assert_close(V, rhs, rtol=0, atol=1e-12)
    torch.testing.assert_close(V, iterative_policy_evaluation(mdp, pi), rtol=0, atol=1e-9)
    # eq-bellman-q and eq-advantage: E_{a~pi} A(s, a) = 0
    Q = T.action_values(mdp, pi)
    torch.testing.assert_close((pi * Q).sum(-1), V, rtol=0, atol=1e-12)
    torch.testing.assert_close((pi * T.advantage_values(mdp, pi)).sum(-1), torch.zeros(6, dtype=torch.float64), rtol=0, atol=1e-12)


def test_visitation_and_state_distribution():
    mdp = T.random_mdp(5, 2, gamma=0.8, seed=3)
    pi = T.uniform_policy(mdp)
    eta = T.discounted_visitation(mdp, pi)
    # eta = sum_k mu0^T (gamma P_pi)^k, truncated series
    series = sum(mdp.mu0 @ T.rho(mdp, pi, k) for k in range(400))
    torch.testing.assert_close(eta, series, rtol=0, atol=1e-10)
    assert float(eta.sum()) == pytest.approx(1 / (1 - mdp.gamma), abs=1e-10)
    d = T.state_distribution(mdp, pi)
    assert float(d.sum()) == pytest.approx(1.0) and (d >= 0).all()
    # J = sum_s eta(s) sum_a pi(a|s) R(s,a) = (1 / (1 - gamma)) sum_s d(s) sum_a pi R: rewards weighted by visitation
    J_eta = (eta[:, None] * pi * mdp.R).sum()
    J_d = (d[:, None] * pi * mdp.R).sum() / (1 - mdp.gamma)
    torch.testing.assert_close(T.expected_return(mdp, pi), J_eta, rtol=0, atol=1e-10)
    torch.testing.assert_close(J_d, J_eta, rtol=0, atol=1e-10)


def test_expected_return_matches_monte_carlo():
    mdp = T.gridworld()
    pi = T.uniform_policy(mdp)
    returns = T.sample_returns(mdp, pi, n_episodes=20_000, horizon=300, seed=0)
    exact = float(T.expected_return(mdp, pi))
    stderr = returns.std(ddof=1) / np.sqrt(len(returns))
    assert abs(returns.mean() - exact) < 4 * stderr + 1e-6


def test_value_iteration_is_optimal_and_greedy():
    mdp = T.gridworld()
    V, Q, greedy = T.value_iteration(mdp)
    # the greedy policy's exact value equals V*, and no deterministic one-state change improves on it
    torch.testing.assert_close(T.state_values(mdp, greedy), V, rtol=0, atol=1e-8)
    g = np.random.default_rng(0)
    for _ in range(20):
        pi = T.softmax_policy(torch.as_tensor(g.normal(size=(mdp.n_states, mdp.n_actions)) * 3))
        assert (T.state_values(mdp, pi) <= V + 1e-8).all()
    # the gridworld's goal state is worth +1 and the pit -1
    assert float(V[3]) == pytest.approx(1.0) and float(V[7]) == pytest.approx(-1.0)


def test_bad_mdps_raise_clear_errors():
    P = np.full((2, 1, 2), 0.5)
    with pytest.raises(ValueError, match="probability distribution over next states"):
        T.TabularMDP(P * 2, np.zeros((2, 1)), 0.9, [1.0, 0.0])
    with pytest.raises(ValueError, match="mu0"):
        T.TabularMDP(P, np.zeros((2, 1)), 0.9, [0.7, 0.7])
    with pytest.raises(ValueError, match="gamma"):
        T.TabularMDP(P, np.zeros((2, 1)), 1.0, [1.0, 0.0])
    mdp = T.TabularMDP(P, np.zeros((2, 1)), 0.9, [1.0, 0.0])
    with pytest.raises(ValueError, match="policy must have shape"):
        T.state_values(mdp, torch.ones(3, 1))

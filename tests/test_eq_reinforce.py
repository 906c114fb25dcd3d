"""Equation tests for the policy gradient (C4, C5, C6).

* C6: on a 3-armed bandit with a softmax policy, the REINFORCE estimator built from
  ``rlcore.losses.reinforce_loss`` is unbiased for the exact gradient of ``J = sum_a pi(a) r(a)``
  (Monte Carlo mean within a CLT bound), stays unbiased with a baseline, and has a lower
  variance with the baseline; the exact variances are also computed in closed form.
* C5: the policy gradient theorem (``rlcore.tabular.policy_gradient_theorem``) equals autograd's
  gradient of the exact ``J(theta)``; the recursion ``grad V(s) = phi(s) + sum_s' rho(s->s',1) grad V(s')``
  and its unrolled form hold; ``sum_k rho(s->x, k)`` summed from ``mu0`` is ``eta``.
* C4: the exact ``J`` equals the Monte Carlo mean of sampled discounted returns.
"""
import numpy as np
import pytest
import torch

from rlcore import tabular
from rlcore.losses import reinforce_loss


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny MLPs: one intra-op thread is fastest (and CI has 2 shared cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

Z = 5.0  # CLT bound in standard errors (a false failure has probability < 1e-6 per comparison)

MEANS = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64) + 10.0  # an offset makes the baseline matter
NOISE = 1.0
THETA = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)


def exact_bandit_gradient(theta):
    th = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((torch.softmax(th, -1) * MEANS).sum(), th)
    return g


def per_sample_reinforce_gradients(theta, n, baseline, seed=0):
    """Per-sample gradients of the *ascent* direction ``-grad reinforce_loss`` (one row per pull)."""
    g = torch.Generator().manual_seed(seed)
    pi = torch.softmax(theta, -1)
    actions = torch.multinomial(pi, n, replacement=True, generator=g)
    rewards = MEANS[actions] + NOISE * torch.randn(n, generator=g, dtype=torch.float64)
    b = baseline(actions) if callable(baseline) else torch.full((n,), float(baseline), dtype=torch.float64)

    return per_sample_gradients(theta, actions, rewards - b)


def per_sample_gradients(theta, actions, weights):
    """Row ``i`` is ``grad_theta [-reinforce_loss]`` of pull ``i`` alone. Every pull gets its own copy
    of ``theta``, so one backward pass of the summed per-sample losses yields all of them."""
    thetas = theta.detach().expand(len(actions), -1).clone().requires_grad_(True)
    logp = torch.log_softmax(thetas, -1).gather(-1, actions[:, None]).squeeze(-1)
    (g,) = torch.autograd.grad(-reinforce_loss(logp, weights, reduce="none").sum(), thetas)
    return g


def exact_second_moment(theta, b):
    """``E||(r - b) grad log pi(a)||^2`` in closed form: ``sum_a pi(a) ((mu_a - b)^2 + sigma^2) ||e_a - pi||^2``."""
    pi = torch.softmax(theta, -1)
    eye = torch.eye(3, dtype=torch.float64)
    score_sq = ((eye - pi) ** 2).sum(-1)
    return (pi * ((MEANS - b) ** 2 + NOISE**2) * score_sq).sum()


def assert_unbiased(samples, exact):
    mean, se = samples.mean(0), samples.std(0) / np.sqrt(len(samples))
    assert torch.all((mean - exact).abs() <= Z * se + 1e-12), (mean, exact, se)


def test_reinforce_estimator_is_unbiased_on_a_bandit():
    exact = exact_bandit_gradient(THETA)
    samples = per_sample_reinforce_gradients(THETA, 200_000, baseline=0.0)
    assert_unbiased(samples, exact)
    # the mean-reduced loss's gradient is the mean of the per-sample gradients
    g = torch.Generator().manual_seed(1)
    a = torch.multinomial(torch.softmax(THETA, -1), 1000, replacement=True, generator=g)
    w = MEANS[a]
    th = THETA.clone().requires_grad_(True)
    (full,) = torch.autograd.grad(-reinforce_loss(torch.log_softmax(th, -1)[a], w), th)
    torch.testing.assert_close(full, per_sample_gradients(THETA, a, w).mean(0))


def test_baseline_keeps_the_estimator_unbiased_and_lowers_its_variance():
    exact = exact_bandit_gradient(THETA)
    b = float((torch.softmax(THETA, -1) * MEANS).sum())  # the mean reward J, a constant baseline
    plain = per_sample_reinforce_gradients(THETA, 200_000, baseline=0.0, seed=2)
    based = per_sample_reinforce_gradients(THETA, 200_000, baseline=b, seed=3)
    assert_unbiased(based, exact)
    var_plain = plain.var(0).sum()  # trace of the covariance of one sample
    var_based = based.var(0).sum()
    # closed-form variances: E||g_i||^2 - ||grad J||^2
    exact_plain = exact_second_moment(THETA, 0.0) - exact.pow(2).sum()
    exact_based = exact_second_moment(THETA, b) - exact.pow(2).sum()
    torch.testing.assert_close(var_plain, exact_plain, rtol=0.03, atol=0)
    torch.testing.assert_close(var_based, exact_based, rtol=0.03, atol=0)
    assert var_based < 0.1 * var_plain  # rewards ~ 10 +- 1.5: the baseline removes almost all of it


def test_action_dependent_baseline_is_biased_and_the_test_detects_it():
    """Negative control: subtracting b(a) = E[r | a] zeroes the estimator's mean, which the
    CLT check must reject (so the unbiasedness test above has the power to fail)."""
    exact = exact_bandit_gradient(THETA)
    samples = per_sample_reinforce_gradients(THETA, 200_000, baseline=lambda a: MEANS[a], seed=4)
    mean, se = samples.mean(0), samples.std(0) / np.sqrt(len(samples))
    assert torch.any((mean - exact).abs() > Z * se)


# ------------------------------------------------------------------ tabular MDPs (C4, C5)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_policy_gradient_theorem_equals_autograd(seed):
    mdp = tabular.random_mdp(n_states=4 + seed, n_actions=2 + seed % 3, gamma=0.8 + 0.04 * seed, seed=seed)
    logits = torch.randn(mdp.n_states, mdp.n_actions, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    theorem = tabular.policy_gradient_theorem(mdp, logits)
    auto = tabular.exact_policy_gradient(mdp, logits)
    assert auto.abs().max() > 1e-3  # not a trivially zero gradient
    torch.testing.assert_close(theorem, auto, atol=1e-6, rtol=0)
    # the same on the gridworld (absorbing terminal state, sparse transitions)
    grid = tabular.gridworld()
    lg = torch.randn(grid.n_states, grid.n_actions, generator=torch.Generator().manual_seed(10 + seed), dtype=torch.float64)
    torch.testing.assert_close(tabular.policy_gradient_theorem(grid, lg), tabular.exact_policy_gradient(grid, lg),
                               atol=1e-6, rtol=0)


def _jacobian_of_values(mdp, logits):
    """``d V(s) / d theta`` for every ``s``: shape ``[S, S, A]`` (autograd)."""
    return torch.autograd.functional.jacobian(
        lambda th: tabular.state_values(mdp, tabular.softmax_policy(th)), logits)


def test_gradient_recursion_and_unrolling():
    mdp = tabular.random_mdp(n_states=5, n_actions=3, gamma=0.9, seed=7)
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    pi = tabular.softmax_policy(logits)
    Q = tabular.action_values(mdp, pi).detach()
    S, A = 5, 3
    # phi(x) = sum_a Q(x, a) grad pi(a|x): only the logits of state x move pi(.|x)
    phi = torch.zeros(S, S, A, dtype=torch.float64)
    for x in range(S):
        dpi = torch.diag(pi[x]) - torch.outer(pi[x], pi[x])  # d pi(a|x) / d theta_{x,b}
        phi[x, x] = Q[x] @ dpi
    gradV = _jacobian_of_values(mdp, logits)
    rho1 = tabular.rho(mdp, pi, 1)
    torch.testing.assert_close(gradV, phi + torch.einsum("sy,yxb->sxb", rho1, gradV), atol=1e-9, rtol=0)
    K = 400  # gamma^K ~ 5e-19
    unrolled = sum(torch.einsum("sy,yxb->sxb", tabular.rho(mdp, pi, k), phi) for k in range(K))
    torch.testing.assert_close(gradV, unrolled, atol=1e-9, rtol=0)


def test_rho_summed_over_k_is_eta():
    for seed in range(3):
        mdp = tabular.random_mdp(n_states=6, n_actions=2, gamma=0.85, seed=seed)
        pi = tabular.softmax_policy(torch.randn(6, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
        series = sum(mdp.mu0 @ tabular.rho(mdp, pi, k) for k in range(300))
        eta = tabular.discounted_visitation(mdp, pi)
        torch.testing.assert_close(series, eta, atol=1e-10, rtol=0)
        torch.testing.assert_close(eta.sum(), torch.tensor(1 / (1 - mdp.gamma), dtype=torch.float64))
        torch.testing.assert_close(tabular.rho(mdp, pi, 0), torch.eye(6, dtype=torch.float64))


def test_exact_objective_matches_monte_carlo_returns():
    mdp = tabular.gridworld(gamma=0.9)
    pi = tabular.softmax_policy(torch.randn(mdp.n_states, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    J = float(tabular.expected_return(mdp, pi))
    horizon = 150
    returns = tabular.sample_returns(mdp, pi, n_episodes=10_000, horizon=horizon, seed=5)
    tail = mdp.gamma**horizon * float(mdp.R.abs().max()) / (1 - mdp.gamma)  # truncation error bound
    se = returns.std() / np.sqrt(len(returns))
    assert abs(returns.mean() - J) <= Z * se + tail, (returns.mean(), J, se)
    # J = sum_s d^pi(s) sum_a pi(a|s) R(s,a) / (1 - gamma) (eq-objective, written with d^pi)
    d = tabular.state_distribution(mdp, pi)
    assert abs(float((d[:, None] * pi * mdp.R).sum()) / (1 - mdp.gamma) - J) < 1e-10
